"""Textbook attention: softmax(Q K^T / sqrt(d)) V with the full n x n score matrix."""
from __future__ import annotations

import math

import torch

from models.attention.masks import softmax_attention_flops as forward_flops  # noqa: F401 (the registry asks)


def build(causal: bool):
    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        scores_bhnn = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
        if causal:
            n_q, n_k = scores_bhnn.shape[-2:]
            mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
            scores_bhnn = scores_bhnn.masked_fill(~mask, float("-inf"))
        return torch.softmax(scores_bhnn.float(), dim=-1).to(q.dtype) @ v

    return attn


def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    return None


def materialises_scores(**_options) -> bool:
    return True
