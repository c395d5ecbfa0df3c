"""A model's loss on held-out windows: the validation loss along a training run, at other lengths than it trained at,
and of its weight-only quantized copies. Training and inference both evaluate through here."""
from __future__ import annotations

import contextlib

import numpy as np
import torch
from omegaconf import DictConfig

from harness import data as data_sources
from harness import parallel, quantize
from harness.errors import first_line
from models.positions import TABLE_KINDS
from models.spec import IGNORE, Examples


@torch.no_grad()
def evaluate(layout: parallel.Layout, windows: np.ndarray, batch_size: int, cast=contextlib.nullcontext,
             examples: Examples | None = None) -> float:
    """Mean loss per predicted token over the windows (for an encoder, over the masked tokens)."""
    layout.model.eval()
    total, count = 0.0, 0
    for index, i in enumerate(range(0, len(windows), batch_size)):
        chunk = torch.from_numpy(windows[i:i + batch_size])
        x, y = examples.for_evaluation(index)(chunk) if examples else (chunk[:, :-1], chunk[:, 1:])
        predicted = int((y != IGNORE).sum())
        if predicted:
            total += parallel.eval_loss(layout, x.to(layout.device), y.to(layout.device), cast) * predicted
            count += predicted
    layout.model.train()
    return total / count


def length_extrapolation(layout: parallel.Layout, seq_len: int, positions: str | None, val_tokens: np.ndarray,
                         t: DictConfig, cast, examples: Examples) -> dict:
    """Validation loss on windows of `multiple` x model.seq_len tokens, the loss averaged over every position.

    A learned position table has no entry past model.seq_len, so longer windows are recorded as unsupported."""
    results = {}
    for multiple in t.eval_lengths:
        length = int(round(float(multiple) * seq_len))
        key = f"x{multiple:g}"
        if positions in TABLE_KINDS and length > seq_len:
            results[key] = {"seq_len": length, "val_loss": None,
                            "unsupported": f"{positions} positions stop at model.seq_len={seq_len}"}
            continue
        if len(val_tokens) < length + 1:
            results[key] = {"seq_len": length, "val_loss": None,
                            "unsupported": f"the validation split ({len(val_tokens)} tokens) is shorter than {length + 1}"}
            continue
        windows = data_sources.validation_windows(val_tokens, length, int(t.eval_tokens))
        results[key] = {"seq_len": length, "val_loss": evaluate(layout, windows, max(1, int(t.batch_size) * seq_len // length), cast, examples),
                        "windows": len(windows)}
    return results


def quantized_evaluation(model: torch.nn.Module, t: DictConfig, val_windows: np.ndarray, batch_size: int,
                         device: torch.device, val_loss: float, examples: Examples) -> dict:
    """Each of task.eval_quantized's weight-only copies: its bytes and validation-loss change (or why it was not made)."""
    quantized = {"full_bytes": quantize.model_bytes(model)}
    for method in t.eval_quantized:
        if quantize.unsupported(method):
            quantized[method] = {"unsupported": quantize.unsupported(method)}
            continue
        try:  # a quantization that fails costs its own entry, never the training result
            copy, kept = quantize.quantized_copy(model, method)
            loss = evaluate(parallel.local(copy, device), val_windows, batch_size, examples=examples)
            quantized[method] = {"model_bytes": quantize.model_bytes(copy), "val_loss": loss,
                                 "val_loss_change": loss - val_loss, "layers_left_full_precision": kept}
        except Exception as error:
            quantized[method] = {"error": f"{type(error).__name__}: {first_line(error)}"}
    return quantized
