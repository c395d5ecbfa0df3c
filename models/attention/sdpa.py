"""torch.nn.functional.scaled_dot_product_attention, optionally pinned to one backend.

``backend``: auto (PyTorch picks), math, flash, efficient, cudnn. On CPU ``flash`` is
PyTorch's fused CPU kernel; ``efficient`` and ``cudnn`` exist only on CUDA.
"""
from __future__ import annotations

import warnings

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
        if pinned is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        # A pinned backend that cannot take these inputs says why in warnings, then fails with "No available kernel":
        # raise that as NotImplementedError with its reason (a run records it as unsupported, not failed).
        with warnings.catch_warnings(record=True) as said, sdpa_kernel(pinned):
            warnings.simplefilter("always")
            try:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            except RuntimeError as error:
                if "No available kernel" not in str(error):
                    raise
                reasons = [str(w.message).split(" (Triggered internally")[0] for w in said]
                reason = next((r for r in reasons if not r.endswith("not used because:")), "no reason given")
                raise NotImplementedError(f"sdpa backend {backend!r} cannot run these inputs ({tuple(q.shape)}, "
                                          f"{str(q.dtype).removeprefix('torch.')}): {reason}") from None

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
