"""Parameter counts in closed form, and picking a shape for a parameter target.

Sizing by target keeps the aspect ratio d_model / n_layer fixed (default 32, near the
middle of the flat optimum Kaplan et al. 2020 found, Fig. 5) and the head size fixed,
so n_head = d_model / head_dim. Among shapes whose non-embedding count is within
`tolerance` of the target, the one whose aspect ratio is closest to the asked one wins.
"""
from __future__ import annotations

import math
from typing import Callable


def shape_for_params(target: float, count: Callable[[int, int, int], int], *, aspect_ratio: float = 32.0,
                     head_dim: int = 32, tolerance: float = 0.10) -> tuple[int, int, int]:
    """(n_layer, d_model, n_head) whose non-embedding count, count(n_layer, d_model, n_head) (the family's closed
    form), is within `tolerance` of `target`."""
    if target <= 0:
        raise ValueError(f"model.params={target:g} must be positive")
    candidates = []
    for n_layer in range(1, 257):
        for n_head in range(1, 1025):
            d_model = n_head * head_dim
            n = count(n_layer, d_model, n_head)
            if n > target * (1 + tolerance):
                break
            if n >= target * (1 - tolerance):
                candidates.append((abs(math.log(d_model / n_layer / aspect_ratio)), abs(n / target - 1), n_layer, d_model, n_head))
    if not candidates:
        raise ValueError(f"model.params={target:g}: no shape with head_dim={head_dim} has a non-embedding "
                         f"parameter count within {tolerance:.0%}; try a larger target or a smaller model.head_dim")
    _, _, n_layer, d_model, n_head = min(candidates)
    return n_layer, d_model, n_head
