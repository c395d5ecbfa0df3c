"""Float64 reference attention for any mask in masks.py, and the relative error measure used against it."""
from __future__ import annotations

import math

import torch

from models.attention.masks import dense_mask


def reference(q, k, v, *, causal: bool, window: int | None = None, global_tokens: int = 0,
              dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """softmax(QK^T/sqrt(d) masked) V computed in `dtype` (float64 for the truth; the input dtype for a peer)."""
    q, k, v = (t.to(dtype) for t in (q, k, v))
    scores = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    mask = dense_mask(q.shape[-2], causal=causal, window=window, global_tokens=global_tokens, device=q.device)
    return torch.softmax(scores.masked_fill(~mask, float("-inf")).to(dtype), dim=-1) @ v


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    approx, exact = approx.detach().double(), exact.detach().double()
    return float((approx - exact).norm() / exact.norm())
