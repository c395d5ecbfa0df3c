"""The flash-attn package (Dao et al.), CUDA only, fp16/bf16 (optional extra: pip install flash-attn)."""
from __future__ import annotations

import importlib.util

import torch


def build(causal: bool):
    from flash_attn import flash_attn_func

    def attn(q, k, v):
        return flash_attn_func(*(t.transpose(1, 2) for t in (q, k, v)), causal=causal).transpose(1, 2)

    return attn


def available(device: torch.device, dtype: torch.dtype) -> str | None:
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed (pip install flash-attn, CUDA only)"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"flash-attn has no {device.type} kernels"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"flash-attn needs fp16 or bf16, not {dtype}"
    return None
