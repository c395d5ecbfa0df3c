"""Precision modes for training: what the matmuls compute in, where the weights live, how gradients are scaled.

  fp32       everything in float32
  tf32       float32 weights, matmuls in TF32 (torch.set_float32_matmul_precision("high")); NVIDIA Ampere or newer
  bf16       autocast to bfloat16, float32 master weights and optimizer state
  fp16       autocast to float16 with dynamic gradient scaling; steps whose gradients overflow are skipped (counted)
  bf16_pure  weights, gradients and optimizer state all in bfloat16
  fp8        torchao float8 training (dynamic scaling) of the blocks' linear layers on GPUs with FP8 tensor cores
             (compute capability >= 8.9); the output head stays in high precision, as torchtitan leaves it, and the
             rest of the step runs under bf16 autocast, so fused attention kernels can run

Only parameters change dtype: buffers stay as built, so rotary frequencies, sinusoid tables and ALiBi slopes
stay fp32 (a bf16 position angle or distance keeps 8 bits of mantissa: wrong past position 256).
MFU is read against the peak of the dtype the matmuls run in (`mfu_peak`); fp8 mixes fp8 block matmuls with a
bf16 head and attention, so, as torchtitan does, it has no MFU.
"""
from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass

import torch

from harness import quantize


@dataclass(frozen=True)
class Mode:
    name: str
    mfu_peak: str | None             # the dtype of harness.flops.PEAK_FLOPS MFU is read against (None: no MFU)
    autocast: torch.dtype | None
    params: torch.dtype
    grad_scaling: bool = False


MODES = {
    "fp32": Mode("fp32", "fp32", None, torch.float32),
    "tf32": Mode("tf32", "tf32", None, torch.float32),
    "bf16": Mode("bf16", "bf16", torch.bfloat16, torch.float32),
    "fp16": Mode("fp16", "fp16", torch.float16, torch.float32, grad_scaling=True),
    "bf16_pure": Mode("bf16_pure", "bf16", None, torch.bfloat16),
    "fp8": Mode("fp8", None, torch.bfloat16, torch.float32),
}
# The modules fp8 leaves in high precision (torchtitan's float8 converter skips the output projection too).
FP8_SKIPPED = ("lm_head",)


def unsupported(name: str, device: torch.device) -> str | None:
    """Why this device cannot train in this mode, or None."""
    if name in ("tf32", "fp8"):
        if device.type != "cuda" or not torch.cuda.is_available():
            return f"precision={name} needs an NVIDIA GPU (this run is on {device.type})"
        major, minor = torch.cuda.get_device_capability(device)
        if name == "tf32" and major < 8:
            return f"precision=tf32 needs compute capability >= 8.0, this GPU has {major}.{minor}"
        if name == "fp8" and (major, minor) < (8, 9):
            return f"precision=fp8 needs compute capability >= 8.9 (Ada/Hopper), this GPU has {major}.{minor}"
        if name == "fp8" and importlib.util.find_spec("torchao") is None:
            return "precision=fp8 needs torchao, not installed here (pip install -e '.[quant]')"
        if name == "fp8" and quantize.torchao_problem():
            return f"precision=fp8: {quantize.torchao_problem()}"
    return None


def slow_here(name: str, device: torch.device) -> str | None:
    """Runs, but slowly: said in the record rather than refused."""
    if name == "fp16" and device.type == "cpu":
        return "fp16 matmuls on this CPU are emulated; expect it slower than fp32"
    if name in ("bf16", "bf16_pure") and device.type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:  # bf16 tensor cores came with Ampere
            return f"bf16 on compute capability {major}.{minor} has no bf16 tensor cores; expect it slower than fp16"
    return None


def cast_weights(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """The parameters in `dtype` (tied ones stay tied); buffers keep the dtype they were built in."""
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model


def prepare(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """Put the weights where the mode keeps them (before the optimizer is built). tf32 sets the process's matmul
    precision: the job's own setting (harness.measure.job_state puts it back for the next job)."""
    mode = MODES[name]
    if name == "tf32":
        torch.set_float32_matmul_precision("high")
    elif name == "fp8":
        from torchao.float8 import convert_to_float8_training
        convert_to_float8_training(model, module_filter_fn=lambda module, fqn: fqn not in FP8_SKIPPED)
    return cast_weights(model, mode.params)


def autocast(name: str, device: torch.device):
    mode = MODES[name]
    if mode.autocast is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=mode.autocast)


def grad_scaler(name: str, device: torch.device, init_scale: float = 2.0**16) -> torch.amp.GradScaler | None:
    return torch.amp.GradScaler(device.type, init_scale=init_scale) if MODES[name].grad_scaling else None


def scale_tensor(scaler: torch.amp.GradScaler) -> torch.Tensor:
    """The scaler's current scale as the device tensor it keeps; its public get_scale() copies it to the host, a
    device sync on every step (torch's own step code reads it this way too)."""
    return scaler._get_scale_async()
