"""Positional encodings: learned table, fixed sinusoids (Vaswani et al. 2017), rotary (Su et al. 2021),
ALiBi linear attention biases (Press et al. 2022)."""
from __future__ import annotations

import math

import torch
from torch import nn

KINDS = ("learned", "sinusoidal", "rope", "alibi")
# Encodings added to the token embeddings, so bounded by a table of model.seq_len positions.
TABLE_KINDS = ("learned",)


def sinusoidal_table(n_positions: int, dim: int) -> torch.Tensor:
    position = torch.arange(n_positions, dtype=torch.float64)[:, None]
    inv_freq = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(n_positions, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq[: dim // 2])
    return table.float()


class Rotary(nn.Module):
    """Rotates each (even, odd) pair of q/k channels by a position-dependent angle."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rope needs an even head_dim, got {head_dim}")
        self.register_buffer("inv_freq", base ** (-torch.arange(0, head_dim, 2).float() / head_dim), persistent=False)

    def forward(self, x_bhnd: torch.Tensor, offset: int = 0) -> torch.Tensor:
        n = x_bhnd.shape[-2]
        angles_nd2 = torch.arange(offset, offset + n, device=x_bhnd.device, dtype=torch.float32)[:, None] * self.inv_freq
        cos, sin = angles_nd2.cos().to(x_bhnd.dtype), angles_nd2.sin().to(x_bhnd.dtype)
        x_even, x_odd = x_bhnd[..., 0::2], x_bhnd[..., 1::2]
        rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
        return rotated.flatten(-2)


def alibi_slopes(n_head: int) -> torch.Tensor:
    """Per-head slopes: the geometric sequence 2^(-8/n), 2^(-16/n), ... (for a power-of-two head count; otherwise
    the closest power of two's slopes, then every other slope of the next one, as in the paper's code)."""
    def powers(n: int) -> list[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]
    closest = 2 ** math.floor(math.log2(n_head))
    slopes = powers(closest)
    if closest < n_head:
        slopes += powers(2 * closest)[0::2][: n_head - closest]
    return torch.tensor(slopes)


def alibi_bias(slopes_h: torch.Tensor, queries: int, keys: int, *, causal: bool, dtype=torch.float32) -> torch.Tensor:
    """(heads, queries, keys) additive bias -slope * |i - j|, the queries being the last `queries` of the keys'
    positions (decoding with a cache); future keys get -inf when causal. Computed in fp32 and rounded to `dtype`
    once (distances past 256 are not integers in bf16)."""
    q_pos = torch.arange(keys - queries, keys, device=slopes_h.device)[:, None]
    k_pos = torch.arange(keys, device=slopes_h.device)[None, :]
    distance = (q_pos - k_pos).abs().float()
    bias = -slopes_h.float()[:, None, None] * distance
    if causal:
        bias = bias.masked_fill(k_pos > q_pos, float("-inf"))
    return bias.to(dtype)
