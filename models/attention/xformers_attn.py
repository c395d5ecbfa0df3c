"""xformers.ops.memory_efficient_attention; `op` pins an implementation (cutlass, flash, ck, ...).

xformers ships no CPU kernels: `available` says so rather than letting a call fail deep inside.
"""
from __future__ import annotations

import functools

import torch

from models.attention.masks import softmax_attention_flops as forward_flops  # noqa: F401 (the registry asks)


def _ops(op: str | None):
    if op is None:
        return None
    from xformers.ops import fmha
    if not hasattr(fmha, op):
        raise ValueError(f"unknown xformers op {op!r}; e.g. cutlass, flash, flash3, ck")
    module = getattr(fmha, op)
    return (module.FwOp, module.BwOp)


def build(causal: bool, op: str | None = None):
    import xformers.ops as xops
    from xformers.ops.fmha.attn_bias import LowerTriangularMask

    ops = _ops(op)
    bias = LowerTriangularMask() if causal else None

    def attn(q, k, v):
        out = xops.memory_efficient_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_bias=bias, op=ops)
        return out.transpose(1, 2)

    return attn


@functools.lru_cache(maxsize=None)
def kernel_missing(device: torch.device, dtype: torch.dtype, op: str | None = None) -> str | None:
    """None when a tiny causal call runs here; otherwise the first line of why not."""
    if device.type != "cuda":  # checked first: importing xformers on a CPU-only torch prints a page of warnings
        return f"xformers has no {device.type} kernels"
    if not torch.cuda.is_available():
        return "CUDA is not available"
    try:
        import xformers.ops  # noqa: F401
    except ImportError as error:
        return f"xformers is not installed ({error})"
    try:
        x = torch.zeros(1, 1, 8, 64, device=device, dtype=dtype)
        build(True, op)(x, x, x)
    except Exception as error:  # xformers raises NotImplementedError with a table of every op it tried
        return f"xformers cannot run here: {str(error).strip().splitlines()[0]}"
    return None


def unsupported(device: torch.device, dtype: torch.dtype, op: str | None = None) -> str | None:
    return kernel_missing(device, dtype, op)
