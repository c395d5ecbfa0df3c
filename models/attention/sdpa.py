"""torch.nn.functional.scaled_dot_product_attention, optionally pinned to one backend.

``backend``: auto, math, flash, efficient, cudnn. On CPU ``flash`` is PyTorch's fused CPU kernel; ``efficient``
and ``cudnn`` exist only on CUDA. ``auto`` lets PyTorch pick among the kernels that take the inputs, in
PyTorch's order, except on Hopper and newer GPUs, where cuDNN's kernel comes first: on an H200 it ran forward and
backward at 1.8x the flash kernel (results/gpu/NVIDIA_H200/attention_kernels), and it refuses what it cannot take
(fp32, some head sizes), which then go to the next kernel.

Whether a pinned backend takes a dtype on a CUDA device is asked of the kernel once (a tiny forward and backward)
and cached: PyTorch's rules differ between versions and devices, and only the kernel knows them all.
"""
from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from models.attention.masks import softmax_attention_flops as forward_flops  # noqa: F401 (the registry asks)

BACKENDS = {
    "auto": None,
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}
CUDA_ONLY = {"efficient", "cudnn"}
# auto's order on compute capability 9.0 and newer
CUDNN_FIRST = [SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _check_backend(backend: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"unknown sdpa backend {backend!r}; known: {', '.join(BACKENDS)}")


def cudnn_first(device: torch.device) -> bool:
    """Whether auto puts cuDNN's kernel first on this device (a CUDA GPU of compute capability 9.0 or newer)."""
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (9, 0)


if torch.cuda.is_available():
    # Read once while tracing a compiled block, not a graph break. Only where CUDA is: marking it imports dynamo,
    # 1.3 s on every process's start, and off CUDA the answer is the device type, which tracing reads as a constant.
    cudnn_first = torch.compiler.assume_constant_result(cudnn_first)


def _refusal(backend: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> str:
    """Why a pinned backend refused these inputs: the reason PyTorch gives in its warnings."""
    with warnings.catch_warnings(record=True) as said, sdpa_kernel(BACKENDS[backend]):
        warnings.simplefilter("always")
        try:
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        except RuntimeError:
            pass
    # PyTorch says why each backend was not used: the pinned one's own reason, and that the others are disabled
    reasons = [str(w.message).split(" (Triggered internally")[0] for w in said]
    reason = next((r for r in reasons if not r.endswith("not used because:") and "runtime disabled" not in r),
                  "no reason given")
    return (f"sdpa backend {backend!r} cannot run these inputs ({tuple(q.shape)}, "
            f"{str(q.dtype).removeprefix('torch.')}): {reason}")


def build(causal: bool, backend: str = "auto"):
    _check_backend(backend)
    pinned = BACKENDS[backend]

    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if pinned is None:
            if not cudnn_first(q.device):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            with sdpa_kernel(CUDNN_FIRST, set_priority=True):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        # A pinned backend that cannot take these inputs fails with "No available kernel": raised as
        # NotImplementedError with PyTorch's reason (a run records it as unsupported, not failed).
        with sdpa_kernel(pinned):
            try:
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
            except RuntimeError as error:
                if "No available kernel" not in str(error):
                    raise
        raise NotImplementedError(_refusal(backend, q, k, v, causal))

    return attn


@functools.lru_cache(maxsize=None)
def kernel_refuses(backend: str, device: torch.device, dtype: torch.dtype) -> str | None:
    """Why the pinned CUDA kernel refuses `dtype` on `device` (a forward and backward at head size 64), or None."""
    q = torch.randn(1, 2, 128, 64, device=device, dtype=dtype, requires_grad=True)
    try:
        with warnings.catch_warnings():   # the refusal's reason is returned, not printed
            warnings.simplefilter("ignore")
            build(causal=True, backend=backend)(q, q, q).sum().backward()
    except NotImplementedError as error:
        return str(error)
    except RuntimeError as error:  # the kernel took the inputs and then failed
        return f"sdpa backend {backend!r} fails on {dtype}: {str(error).splitlines()[0]}"
    return None


def unsupported(device: torch.device, dtype: torch.dtype, backend: str = "auto") -> str | None:
    _check_backend(backend)
    if backend in CUDA_ONLY and device.type != "cuda":
        return f"sdpa backend {backend!r} has no kernel on {device.type}"
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    if device.type == "cuda" and backend != "auto":
        return kernel_refuses(backend, device, dtype)
    return None


def materialises_scores(backend: str = "auto", **_options) -> bool:
    """The math backend keeps the n x n scores and probabilities (the fused kernels do not)."""
    return backend == "math"
