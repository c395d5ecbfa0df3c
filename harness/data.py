"""Token sources, all on local disk or synthetic; the harness never touches the network.

  stdlib  the running interpreter's standard-library .py sources, byte-level (vocab 256)
  text    the user's text files or globs, byte-level
  tokens  the user's uint16/uint32 .bin token files (nanoGPT / Megatron convention), memory-mapped
  markov  a random order-k Markov source whose exact entropy rate is known (order 0: independent tokens, any vocabulary)

Splits are deterministic: a file goes to validation when a hash of its path says so,
so the split does not depend on the order the file system lists files in.
"""
from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.errors import DataError, check_count, check_positive, check_range


@dataclass
class TokenData:
    train: np.ndarray           # 1-D token ids (memmap or array)
    val: np.ndarray
    vocab_size: int
    bytes_per_token: float | None = None  # 1.0 for byte-level data: lets loss be reported in bits/byte
    info: dict = field(default_factory=dict)


def _cache_dir(cfg) -> Path:
    path = Path(os.path.expanduser(cfg.get("cache_dir") or "~/.cache/scaling-harness"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _is_validation(relative_path: str, val_fraction: float) -> bool:
    digest = hashlib.sha256(relative_path.encode()).digest()
    return int.from_bytes(digest[:8], "little") / 2**64 < val_fraction


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    array.tofile(tmp)
    os.replace(tmp, path)


def _split_files_bytes(files: list[Path], root: Path | None, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    train, val = [], []
    for f in files:
        name = str(f.relative_to(root)) if root else str(f)
        (val if _is_validation(name, val_fraction) else train).append(np.fromfile(f, dtype=np.uint8))
    if len(files) == 1 or not val or not train:
        # One file (or an unlucky hash): fall back to its tail for validation.
        everything = np.concatenate(train + val)
        cut = int(len(everything) * (1 - val_fraction))
        return everything[:cut], everything[cut:]
    return np.concatenate(train), np.concatenate(val)


def stdlib_source_files() -> tuple[Path, list[Path]]:
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts and p.is_file())
    return root, files


def load_stdlib(cfg) -> TokenData:
    root, files = stdlib_source_files()
    val_fraction = float(cfg.val_fraction)
    key = hashlib.sha256(f"{root}|{len(files)}|{val_fraction}".encode()).hexdigest()[:12]
    train_path = _cache_dir(cfg) / f"stdlib-{key}-train.u8"
    val_path = _cache_dir(cfg) / f"stdlib-{key}-val.u8"
    if not (train_path.exists() and val_path.exists()):
        train, val = _split_files_bytes(files, root, val_fraction)
        _atomic_save(train_path, train)
        _atomic_save(val_path, val)
    return TokenData(
        train=np.memmap(train_path, dtype=np.uint8, mode="r"),
        val=np.memmap(val_path, dtype=np.uint8, mode="r"),
        vocab_size=256, bytes_per_token=1.0,
        info={"source": str(root), "files": len(files), "cache": str(train_path)},
    )


def _expand(paths) -> list[Path]:
    if not paths:
        raise DataError("data.paths is empty: give text files or globs, e.g. data.paths='[notes/*.txt]'")
    if isinstance(paths, str):
        paths = [paths]
    files = []
    for pattern in paths:
        matches = sorted(glob.glob(os.path.expanduser(str(pattern)), recursive=True))
        if not matches:
            raise DataError(f"data.paths: no file matches {pattern!r}")
        files += [Path(m) for m in matches if Path(m).is_file()]
    return files


def load_text(cfg) -> TokenData:
    files = _expand(cfg.paths)
    train, val = _split_files_bytes(files, None, float(cfg.val_fraction))
    return TokenData(train=train, val=val, vocab_size=256, bytes_per_token=1.0, info={"files": len(files)})


TOKEN_DTYPES = {"uint16": np.uint16, "uint32": np.uint32}


def _memmap_tokens(path, dtype, key: str) -> np.ndarray:
    if not path or not Path(path).is_file():
        raise DataError(f"{key}={path!r}: no such token file")
    size, width = Path(path).stat().st_size, np.dtype(dtype).itemsize
    if size == 0 or size % width:
        raise DataError(f"{key}={path!r}: {size} bytes is not a whole, non-zero number of "
                        f"{np.dtype(dtype).name} tokens ({width} bytes each): another data.dtype?")
    return np.memmap(path, dtype=dtype, mode="r")


def load_tokens(cfg) -> TokenData:
    if cfg.dtype not in TOKEN_DTYPES:
        raise DataError(f"data.dtype={cfg.dtype!r}; known: {', '.join(TOKEN_DTYPES)}")
    if not cfg.get("vocab_size") or cfg.vocab_size <= 0:
        raise DataError(f"data.vocab_size={cfg.get('vocab_size')!r}: token files need a positive vocab size")
    dtype = TOKEN_DTYPES[cfg.dtype]
    train = _memmap_tokens(cfg.train_path, dtype, "data.train_path")
    if cfg.get("val_path"):
        val = _memmap_tokens(cfg.val_path, dtype, "data.val_path")
    else:
        cut = int(len(train) * (1 - float(cfg.val_fraction)))
        train, val = train[:cut], train[cut:]
    for name, split in (("train", train), ("val", val)):
        top = max((int(split[i:i + (1 << 24)].max()) for i in range(0, len(split), 1 << 24)), default=0)
        if top >= cfg.vocab_size:
            raise DataError(f"data.vocab_size={cfg.vocab_size} but the {name} tokens hold id {top}")
    return TokenData(train=train, val=val, vocab_size=int(cfg.vocab_size), info={"train_path": str(cfg.train_path)})


# --- markov -------------------------------------------------------------------------------

# The largest transition table (contexts x next tokens) a source may hold: 2^24 float64s, 128 MB. A vocabulary of
# 50,304 (GPT-2's, padded) fits at order 0, where each token is drawn independently from one Dirichlet draw.
MARKOV_TABLE_MAX = 2**24


def markov_chain(vocab_size: int, order: int, concentration: float, seed: int) -> np.ndarray:
    """Transition table P[context, next] with context = the last `order` tokens in base vocab_size (order 0: one
    row, every token drawn independently)."""
    rng = np.random.default_rng(seed)
    return rng.dirichlet(np.full(vocab_size, concentration), size=vocab_size**order)


def markov_entropy_rate(transitions: np.ndarray, vocab_size: int) -> float:
    """Exact entropy rate in nats/token: sum over contexts of stationary prob x entropy of the next token."""
    n_contexts = transitions.shape[0]
    # Context c = (t_1..t_k) moves to (t_2..t_k, x): index (c * V + x) mod V^k.
    next_context = (np.arange(n_contexts)[:, None] * vocab_size + np.arange(vocab_size)[None, :]) % n_contexts
    stationary = np.full(n_contexts, 1.0 / n_contexts)
    for _ in range(100_000):
        updated = np.zeros(n_contexts)
        np.add.at(updated, next_context, stationary[:, None] * transitions)
        if np.abs(updated - stationary).sum() < 1e-13:
            stationary = updated
            break
        stationary = updated
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(transitions > 0, transitions * np.log(transitions), 0.0).sum(axis=1)
    return float(stationary @ entropy)


def markov_sample(transitions: np.ndarray, vocab_size: int, order: int, n_tokens: int, seed: int,
                  n_chains: int = 64) -> np.ndarray:
    """n_tokens from `n_chains` independent chains laid end to end (each chain far longer than a sequence)."""
    rng = np.random.default_rng(seed)
    n_contexts = transitions.shape[0]
    cumulative = np.cumsum(transitions, axis=1)
    cumulative[:, -1] = 1.0
    dtype = np.uint16 if vocab_size <= 65535 else np.uint32
    if order == 0:   # independent draws: one search per token, not one pass over the vocabulary
        return np.searchsorted(cumulative[0], rng.random(n_tokens), side="left").astype(dtype)
    steps = -(-n_tokens // n_chains)
    out = np.empty((n_chains, steps), dtype=dtype)
    context = rng.integers(0, n_contexts, size=n_chains)
    for _ in range(64 * order):  # burn-in towards the stationary distribution
        nxt = (cumulative[context] < rng.random(n_chains)[:, None]).sum(axis=1)
        context = (context * vocab_size + nxt) % n_contexts
    for t in range(steps):
        nxt = (cumulative[context] < rng.random(n_chains)[:, None]).sum(axis=1)
        out[:, t] = nxt
        context = (context * vocab_size + nxt) % n_contexts
    return out.reshape(-1)[:n_tokens]


def load_markov(cfg) -> TokenData:
    check_count(cfg.seed, "data.seed")
    check_positive(cfg.concentration, "data.concentration")
    vocab, order = int(cfg.vocab_size), int(cfg.order)
    if vocab < 2 or order < 0 or vocab ** (order + 1) > MARKOV_TABLE_MAX:
        raise DataError(f"data.vocab_size={vocab}, data.order={order}: need vocab >= 2, order >= 0 and a transition "
                        f"table of vocab^(order+1) <= 2^{MARKOV_TABLE_MAX.bit_length() - 1} entries")
    transitions = markov_chain(vocab, order, float(cfg.concentration), int(cfg.seed))
    n_train, n_val = int(cfg.train_tokens), int(cfg.val_tokens)
    return TokenData(
        train=markov_sample(transitions, vocab, order, n_train, int(cfg.seed) + 1),
        val=markov_sample(transitions, vocab, order, n_val, int(cfg.seed) + 2),
        vocab_size=vocab,
        info={"entropy_rate": markov_entropy_rate(transitions, vocab), "order": order},
    )


LOADERS = {"stdlib": load_stdlib, "text": load_text, "tokens": load_tokens, "markov": load_markov}


def load(cfg) -> TokenData:
    if cfg.name not in LOADERS:
        raise DataError(f"data.name={cfg.name!r}; known: {', '.join(LOADERS)}")
    if cfg.get("val_fraction") is not None and not cfg.get("val_path"):   # the share held out for validation
        check_positive(cfg.val_fraction, "data.val_fraction")
        check_range(cfg.val_fraction, "data.val_fraction", 0, 1)
    return LOADERS[cfg.name](cfg)


# --- batches --------------------------------------------------------------------------------

class Batches:
    """Non-overlapping windows of seq_len + 1 tokens, visited in a seeded random order each epoch.

    Asking for more tokens than the split holds wraps into further epochs, each with a fresh order.
    """

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int):
        self.tokens, self.seq_len, self.batch_size = tokens, seq_len, batch_size
        self.n_windows = (len(tokens) - 1) // seq_len
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(self.n_windows)
        self.position = 0
        self.epoch = 0

    def windows_per_epoch_tokens(self) -> int:
        return self.n_windows * self.seq_len

    def state(self) -> dict:
        """Where the data order stands (a checkpoint's): this epoch's order, the position in it, the generator."""
        return {"order": self.order.copy(), "position": self.position, "epoch": self.epoch,
                "rng": self.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.order, self.position, self.epoch = state["order"].copy(), state["position"], state["epoch"]
        self.rng.bit_generator.state = state["rng"]

    def next(self) -> np.ndarray:
        starts = []
        for _ in range(self.batch_size):
            if self.position == self.n_windows:
                self.order = self.rng.permutation(self.n_windows)
                self.position = 0
                self.epoch += 1
            starts.append(self.order[self.position] * self.seq_len)
            self.position += 1
        return np.stack([self.tokens[s:s + self.seq_len + 1] for s in starts]).astype(np.int64)


def validation_windows(tokens: np.ndarray, seq_len: int, max_tokens: int) -> np.ndarray:
    """Evenly spaced windows covering at most max_tokens of the validation split (the same set every evaluation)."""
    n_windows = (len(tokens) - 1) // seq_len
    take = max(1, min(n_windows, max_tokens // seq_len))
    starts = np.linspace(0, (n_windows - 1) * seq_len, take).astype(np.int64) // seq_len * seq_len
    return np.stack([tokens[s:s + seq_len + 1] for s in starts]).astype(np.int64)
