"""The one definition of which keys each query may see, for every variant and its reference.

  full:    causal -> j <= i;  non-causal -> every j
  window:  causal -> i - window < j <= i;  non-causal -> |i - j| <= window // 2
  global:  the first `global_tokens` positions attend to every key and every query attends to them
           (in causal mode still only to keys j <= i)
"""
from __future__ import annotations

import numpy as np
import torch


def allowed(i, j, *, causal: bool, window: int | None = None, global_tokens: int = 0):
    """Elementwise rule on index tensors/arrays (broadcasts): True where query i may attend key j."""
    if window is None:
        local = j <= i if causal else (i >= 0) & (j >= 0)
    elif causal:
        local = (j <= i) & (i - j < window)
    else:
        local = abs(i - j) <= window // 2
    if global_tokens:
        extra = (j < global_tokens) | (i < global_tokens)
        if causal:
            extra = extra & (j <= i)
        local = local | extra
    return local


def dense_mask(n: int, *, causal: bool, window: int | None = None, global_tokens: int = 0,
               device: torch.device | str = "cpu") -> torch.Tensor:
    index = torch.arange(n, device=device)
    return allowed(index[:, None], index[None, :], causal=causal, window=window, global_tokens=global_tokens)


def attended_pairs(n: int, *, causal: bool, window: int | None = None, global_tokens: int = 0) -> int:
    """How many (query, key) pairs the mask lets through, counted row by row in O(n)."""
    i = np.arange(n, dtype=np.int64)
    g = min(global_tokens, n)
    if window is None:
        rows = i + 1 if causal else np.full(n, n)
    elif causal:
        local = np.minimum(i + 1, window)
        outside = np.clip(np.minimum(g, i - window + 1), 0, None)  # global keys left of the window
        rows = np.where(i < g, i + 1, local + outside)
    else:
        half = window // 2
        lo, hi = np.maximum(i - half, 0), np.minimum(i + half, n - 1)
        outside = np.clip(np.minimum(g, lo), 0, None)  # global keys left of the window
        rows = np.where(i < g, n, hi - lo + 1 + outside)
    return int(rows.sum())


def softmax_attention_flops(seq_len: int, head_dim: int, causal: bool, window: int | None = None,
                            global_tokens: int = 0, **_options) -> float:
    """Exact softmax attention's forward FLOPs per (batch, head), counted by matmul (2 per multiply-add): Q K^T and
    P V, 4 x head_dim per (query, key) pair the mask lets through (attended_pairs): n^2 full, n(n+1)/2 causal,
    about n x window for a sliding window."""
    return float(4 * head_dim * attended_pairs(seq_len, causal=causal, window=window, global_tokens=global_tokens))
