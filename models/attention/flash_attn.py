"""The flash-attn package (Dao et al.), CUDA only, fp16/bf16 (optional extra: pip install flash-attn)."""
from __future__ import annotations

import functools
import importlib.util

import torch

from models.attention.masks import softmax_attention_flops as forward_flops  # noqa: F401 (the registry asks)


def build(causal: bool):
    from flash_attn import flash_attn_func

    def attn(q, k, v):
        return flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), causal=causal).transpose(1, 2)

    return attn


@functools.lru_cache(maxsize=None)
def package_problem() -> str | None:
    """Why the flash-attn package cannot be used here: absent, or installed but failing to load (a wheel built for
    another torch or CUDA fails on import with an undefined symbol)."""
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install flash-attn, CUDA only)"
    try:
        import flash_attn  # noqa: F401
    except Exception as error:  # ImportError, OSError from its compiled extension, ...
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"the flash-attn package is installed but does not load: {message}"
    return None


def unsupported(device: torch.device, dtype: torch.dtype) -> str | None:
    problem = package_problem()
    if problem:
        return problem
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"flash-attn has no {device.type} kernels"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs fp16 or bf16, not {dtype}"
    return None
