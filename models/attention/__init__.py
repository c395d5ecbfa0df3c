"""The attention registry: the one place that knows the variants.

Every variant is a callable ``attn(q, k, v) -> out`` over tensors shaped
``(batch, heads, seq, head_dim)``. ``get_attention`` builds one by name,
``available`` says whether it can run on a device and dtype, and why not.
``get_decoder`` builds the form a cached decoding step uses (the newest queries against the cached keys their
causal mask lets them see); a variant without an exact one says why in ``NO_CACHED_DECODING``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from models.attention import dense, flash_attn, longformer, performer, sdpa, xformers_attn

Attention = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

# name -> module with `build(causal, **options) -> Attention` and
# `available(device, dtype, **options) -> str | None` (None: can run; else the reason it cannot).
VARIANTS = {"dense": dense, "sdpa": sdpa, "xformers": xformers_attn, "flash_attn": flash_attn,
            "performer": performer, "longformer": longformer}
# Variants that compute exact softmax attention (the rest approximate it).
EXACT = ("dense", "sdpa", "xformers", "flash_attn", "longformer")


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""

    def __bool__(self) -> bool:
        return self.ok


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


def cached_decoding_refused(name: str) -> str | None:
    """Why this variant cannot decode from a KV cache exactly (None: it can)."""
    return getattr(_variant(name), "NO_CACHED_DECODING", None)


def get_decoder(name: str, **options) -> Attention:
    """attn(q, k, v) for a decoding step: q holds the newest positions, k and v every cached position before and
    including them. A variant whose mask is more than causal (a sliding window) builds its own; for the rest
    every cached key is visible, the non-causal form."""
    refused = cached_decoding_refused(name)
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


def available(name: str, device: str | torch.device, dtype: torch.dtype = torch.float32, **options) -> Availability:
    try:
        reason = _variant(name).available(torch.device(device), dtype, **options)
    except TypeError as error:
        raise ValueError(f"attention {name!r}: {error}") from None
    return Availability(reason is None, reason or "")
