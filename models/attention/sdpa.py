"""torch.nn.functional.scaled_dot_product_attention, optionally pinned to one backend.

``backend``: auto (PyTorch picks), math, flash, efficient, cudnn. On CPU ``flash`` is
PyTorch's fused CPU kernel; ``efficient`` and ``cudnn`` exist only on CUDA.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "auto": None,
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
CUDA_ONLY = {"efficient", "cudnn"}


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sdpa backend {backend!r}; known: {', '.join(BACKENDS)}")


def build(causal: bool, backend: str = "auto"):
    _check_backend(backend)
    pinned = BACKENDS[backend]

    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        context = sdpa_kernel(pinned) if pinned is not None else contextlib.nullcontext()
        with context:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return attn


def available(device: torch.device, dtype: torch.dtype, backend: str = "auto") -> str | None:
    _check_backend(backend)
    if backend in CUDA_ONLY and device.type != "cuda":
        return f"sdpa backend {backend!r} has no kernel on {device.type}"
    if backend == "flash" and device.type == "cuda" and dtype not in (torch.float16, torch.bfloat16):
        return f"sdpa flash on CUDA needs fp16 or bf16, not {dtype}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    return None
