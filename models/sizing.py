"""Parameter counts in closed form, and picking a shape for a parameter target.

Sizing by target keeps the aspect ratio d_model / n_layer fixed (default 32, near the
middle of the flat optimum Kaplan et al. 2020 found, Fig. 5) and the head size fixed,
so n_head = d_model / head_dim. Among shapes whose non-embedding count is within
`tolerance` of the target, the one whose aspect ratio is closest to the asked one wins.
"""
from __future__ import annotations

import math

from models.gpt import GPTConfig


def non_embedding_params(cfg: GPTConfig, family: str = "gpt") -> int:
    """One stack of n_layer blocks and a final norm; an encoder-decoder has two, the decoder's blocks with
    cross-attention (query, key-value and output projections) and a third norm."""
    d, h, bias = cfg.d_model, cfg.d_mlp, int(cfg.bias)
    attention = 4 * d * d + bias * 4 * d
    mlp = 2 * d * h + bias * (h + d)
    norm = d + bias * d
    stack = cfg.n_layer * (attention + mlp + 2 * norm) + norm
    if family != "encdec":
        return stack
    return 2 * stack + cfg.n_layer * (attention + norm)


def shape_for_params(target: float, *, aspect_ratio: float = 32.0, head_dim: int = 32,
                     mlp_ratio: float = 4.0, bias: bool = True, tolerance: float = 0.10,
                     family: str = "gpt") -> tuple[int, int, int]:
    """(n_layer, d_model, n_head) with non-embedding params within `tolerance` of `target`."""
    if target <= 0:
        raise ValueError(f"model.params={target:g} must be positive")
    candidates = []
    for n_layer in range(1, 257):
        for n_head in range(1, 1025):
            d_model = n_head * head_dim
            n = non_embedding_params(GPTConfig(n_layer=n_layer, d_model=d_model, n_head=n_head, mlp_ratio=mlp_ratio,
                                               bias=bias), family)
            if n > target * (1 + tolerance):
                break
            if n >= target * (1 - tolerance):
                candidates.append((abs(math.log(d_model / n_layer / aspect_ratio)), abs(n / target - 1), n_layer, d_model, n_head))
    if not candidates:
        raise ValueError(f"model.params={target:g}: no shape with head_dim={head_dim} has a non-embedding "
                         f"parameter count within {tolerance:.0%}; try a larger target or a smaller model.head_dim")
    _, _, n_layer, d_model, n_head = min(candidates)
    return n_layer, d_model, n_head
