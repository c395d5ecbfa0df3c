"""The attention registry: the one place that knows the variants.

Every variant is a callable ``attn(q, k, v) -> out`` over tensors shaped
``(batch, heads, seq, head_dim)``. ``get_attention`` builds one by name,
``unsupported`` says why it cannot run on a device and dtype (None: it can).
``get_decoder`` builds the form a cached decoding step uses (the newest queries against the cached keys their
causal mask lets them see); a variant without an exact one says why in ``NO_CACHED_DECODING``.
"""
from __future__ import annotations

import inspect
from typing import Callable

import torch

from models.attention import dense, flash_attn, longformer, performer, sdpa, xformers_attn

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# name -> module with `build(causal, **options) -> Attention` and
# `unsupported(device, dtype, **options) -> str | None` (None: can run; else the reason it cannot).
VARIANTS = {"dense": dense, "sdpa": sdpa, "xformers": xformers_attn, "flash_attn": flash_attn,
            "performer": performer, "longformer": longformer}
# Variants that compute exact softmax attention (the rest approximate it).
EXACT = ("dense", "sdpa", "xformers", "flash_attn", "longformer")


def names() -> list[str]:
    return sorted(VARIANTS)


def _variant(name: str):
    if name not in VARIANTS:
        raise ValueError(f"unknown attention {name!r}; known: {', '.join(names())}")
    return VARIANTS[name]


def get_attention(name: str, *, causal: bool, **options) -> Attention:
    try:
        return _variant(name).build(causal=causal, **options)
    except TypeError as error:  # an option the variant does not take
        raise ValueError(f"attention {name!r}: {error}") from None


def unsupported_decoding(name: str) -> str | None:
    """Why this variant cannot decode from a KV cache exactly (None: it can)."""
    return getattr(_variant(name), "NO_CACHED_DECODING", None)


def get_decoder(name: str, **options) -> Attention:
    """attn(q, k, v) for a decoding step: q holds the newest positions, k and v every cached position before and
    including them. A variant whose mask is more than causal (a sliding window) builds its own; for the rest
    every cached key is visible, the non-causal form."""
    refused = unsupported_decoding(name)
    if refused:
        raise ValueError(f"attention {name!r}: {refused}")
    module = _variant(name)
    build = getattr(module, "build_decoder", None)
    try:
        return build(**options) if build else module.build(causal=False, **options)
    except TypeError as error:
        raise ValueError(f"attention {name!r}: {error}") from None


def decodes_every_key(name: str) -> bool:
    """Whether a decoding step of `name` lets each new query see every cached key (its decoder is the non-causal
    form rather than one of its own), so query rows at the same position may share one call over the same keys."""
    return not hasattr(_variant(name), "build_decoder")


def option_names(name: str) -> list[str]:
    """The options `name` takes (its conf/attention/*.yaml keys but name): its build's keyword arguments."""
    return [p for p in inspect.signature(_variant(name).build).parameters if p != "causal"]


def unsupported(name: str, device: str | torch.device, dtype: torch.dtype = torch.float32, **options) -> str | None:
    """Why `name` cannot run on this device and dtype with these options (None: it can)."""
    try:
        return _variant(name).unsupported(torch.device(device), dtype, **options)
    except TypeError as error:
        raise ValueError(f"attention {name!r}: {error}") from None


# An attention call's FLOPs: batch x heads x its variant's `forward_flops` (counted by matmul, 2 per multiply-add),
# and the backward's by a named convention (each attention record says which in `flops_convention`):
#   flash     2.5 x forward: dQ, dK, dV, dP and the recomputed QK^T, FlashAttention's benchmark count (Dao 2023,
#             benchmarks/benchmark_flash_attention.py). Credited to every exact kernel alike, so their FLOP/s are
#             rates of the same work and compare; a kernel that keeps the scores (dense, sdpa math) does 2x.
#   autograd  2 x forward: the products of the backward of plain matmuls (a variant's FLOP_CONVENTION says so).
# `flops_no_recompute` (2 x forward for every variant) is beside it in the record. A fused kernel's recomputation
# is hardware work, not model work, and is not counted.
FLOP_CONVENTIONS = {"flash": 2.5, "autograd": 2.0}


def flop_convention(name: str) -> str:
    return getattr(_variant(name), "FLOP_CONVENTION", "flash")


def flops(name: str, *, batch: int, heads: int, seq_len: int, head_dim: int, causal: bool, backward: bool,
          options: dict | None = None, convention: str | None = None) -> float:
    """Forward FLOPs, plus the backward's by `convention` (default: the variant's, flop_convention)."""
    per_head = _variant(name).forward_flops(seq_len=seq_len, head_dim=head_dim, causal=causal, **(options or {}))
    forward = float(batch * heads * per_head)
    return forward * (1 + FLOP_CONVENTIONS[convention or flop_convention(name)]) if backward else forward


def memory_estimate(name: str, *, batch: int, heads: int, seq_len: int, head_dim: int, bytes_per_element: int,
                    backward: bool, options: dict | None = None) -> float:
    """Bytes of the largest intermediates a variant materialises (a guard against an OS-level OOM kill): a variant
    whose `materialises_scores(**options)` is true keeps the n x n scores and probabilities, and in backward their
    gradients too; the others are linear in n and are not guarded."""
    materialises = getattr(_variant(name), "materialises_scores", None)
    if materialises is None or not materialises(**(options or {})):
        return 0.0
    square = batch * heads * seq_len * seq_len * max(bytes_per_element, 4)  # softmax runs in fp32
    return float(square * (4 if backward else 2))
