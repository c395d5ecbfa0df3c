"""Progress for a run or a job of phases: a tqdm bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import contextlib
import logging
import sys
import time

from tqdm import tqdm

log = logging.getLogger("harness")


MODES = ("auto", "bar", "lines", "off")   # progress=: auto is a bar on a terminal, lines otherwise


class Progress:
    def __init__(self, total_tokens: int, mode: str = "auto", every_s: float = 10.0, label: str = "train", done: int = 0):
        """done: tokens already trained (a run resumed from a checkpoint)."""
        if mode == "auto":
            mode = "bar" if sys.stderr.isatty() else "lines"
        self.mode, self.total, self.every_s, self.label = mode, total_tokens, every_s, label
        self.start = self.last_line = time.perf_counter()
        self.bar = (tqdm(total=total_tokens, initial=done, unit="tok", unit_scale=True, desc=label, leave=False)
                    if mode == "bar" else None)
        self.done = done

    def update(self, tokens: int, loss: float, tokens_per_s: float) -> None:
        self.done += tokens
        if self.bar is not None:
            self.bar.update(tokens)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:,.0f}", refresh=False)
        elif self.mode == "lines":
            now = time.perf_counter()
            if now - self.last_line >= self.every_s or self.done >= self.total:
                self.last_line = now
                eta = (self.total - self.done) / tokens_per_s if tokens_per_s > 0 else float("nan")
                log.info("%s %5.1f%% %s/%s tokens  loss %.4f  %.0f tok/s  eta %.0fs", self.label,
                         100 * self.done / self.total, f"{self.done:,}", f"{self.total:,}", loss, tokens_per_s, eta)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class Phases:
    """The named phases of a job (a table's law fits): a tqdm bar over them on a terminal, one line per phase
    otherwise, each with how long it took."""

    def __init__(self, names: list[str], label: str = "fit"):
        self.total, self.label, self.count = len(names), label, 0
        self.bar = tqdm(total=len(names), desc=label, unit="phase", leave=False) if sys.stderr.isatty() else None

    @contextlib.contextmanager
    def phase(self, name: str):
        self.count += 1
        if self.bar is not None:
            self.bar.set_description(f"{self.label}: {name}")
        start = time.perf_counter()
        yield
        if self.bar is not None:
            self.bar.update(1)
        else:
            log.info("%s %d/%d: %s (%.1f s)", self.label, self.count, self.total, name, time.perf_counter() - start)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
