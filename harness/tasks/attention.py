"""task=attention: time one attention variant on random q, k, v and record what it costs and how exact it is.

One job = one (variant, seq_len, batch, heads, head_dim, dtype, causal, mode) point. Times are medians over
repeats after warm-up, with the device synchronised around each call. FLOPs follow the convention the record
names in `flops_convention` (models/attention/__init__.py: backward 2.5x forward for exact kernels, FlashAttention's count). Peak memory is what the call allocates
beyond its inputs: CUDA's allocator statistics, or on CPU the tensor allocations the profiler records.
"""
from __future__ import annotations


import numpy as np
import torch
from omegaconf import DictConfig

from harness import measure
from harness.config import ATTENTION_DTYPES
from harness.plan import attention_options
from harness.errors import Unsupported, first_line
from models import attention as attention_registry
from models.attention.reference import reference, relative_error



def _inputs(shape, dtype, device, seed: int, grad: bool):
    generator = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype).requires_grad_(grad)
            for _ in range(3)]


def _call(attn, q, k, v, grad_out):
    out = attn(q, k, v)
    if grad_out is not None:
        out.backward(grad_out)
    return out


def mask_options(cfg: DictConfig) -> dict:
    if cfg.attention.name != "longformer":
        return {}
    return {"window": int(cfg.attention.window), "global_tokens": int(cfg.attention.global_tokens)}


def errors(attn, cfg: DictConfig, dtype, device, backward: bool) -> dict:
    """Relative error against float64 at a small size, forward and (for fwd_bwd) the worst of dq, dk, dv."""
    t = cfg.task
    n = min(int(t.seq_len), int(t.error_seq_len))
    q, k, v = _inputs((int(t.batch), int(t.heads), n, int(t.head_dim)), dtype, device, int(t.seed) + 1, backward)
    out = attn(q, k, v)
    exact = reference(q, k, v, causal=bool(t.causal), **mask_options(cfg))
    result = {"error_seq_len": n, "error_fwd": relative_error(out, exact)}
    if backward:
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (q, k, v), grad)
        want = torch.autograd.grad(exact, (q, k, v), grad.double())
        result["error_grad"] = max(relative_error(g, w) for g, w in zip(got, want))
    return result


def run(cfg: DictConfig) -> dict:
    t = cfg.task
    device = measure.device_here(cfg.device)
    dtype = ATTENTION_DTYPES[t.dtype]
    name, options = cfg.attention.name, attention_options(cfg)
    refused = attention_registry.unsupported(name, device, dtype, **options)
    if refused:
        raise Unsupported(f"attention={name}: {refused}")
    backward = t.mode == "fwd_bwd"
    shape = dict(batch=int(t.batch), heads=int(t.heads), seq_len=int(t.seq_len), head_dim=int(t.head_dim))
    needs = attention_registry.memory_estimate(name, **shape, bytes_per_element=dtype.itemsize, backward=backward, options=options)
    free = measure.free_memory_bytes(device)
    if needs > min(float(t.max_memory_gb) * 2**30, 0.8 * free):
        raise Unsupported(f"attention={name} at seq_len={t.seq_len} would materialise ~{needs / 2**30:.1f} GiB: more "
                          f"than task.max_memory_gb={t.max_memory_gb} or 80% of the {free / 2**30:.1f} GiB free on {device}")

    attn = attention_registry.get_attention(name, causal=bool(t.causal), **options)
    q, k, v = _inputs((shape["batch"], shape["heads"], shape["seq_len"], shape["head_dim"]), dtype, device, int(t.seed), backward)
    grad_out = torch.randn_like(q) if backward else None
    context = torch.enable_grad() if backward else torch.no_grad()
    try:
        with context:
            times = measure.time_calls(lambda: _call(attn, q, k, v, grad_out), device, warmup=int(t.warmup),
                                       min_repeats=int(t.min_repeats), max_repeats=int(t.max_repeats),
                                       max_seconds=float(t.max_seconds))
            memory = measure.allocated_by(lambda: _call(attn, q, k, v, grad_out), device).peak
            accuracy = errors(attn, cfg, dtype, device, backward)
    except NotImplementedError as error:  # e.g. FlexAttention's missing CPU backward, xformers' missing kernels
        raise Unsupported(f"attention={name}: {first_line(error)}") from None

    convention = attention_registry.flop_convention(name) if backward else "forward"
    needed = attention_registry.flops(name, **shape, causal=bool(t.causal), backward=backward, options=options)
    no_recompute = attention_registry.flops(name, **shape, causal=bool(t.causal), backward=backward, options=options,
                                         convention="autograd")
    p10, median, p90 = np.quantile(times, [0.1, 0.5, 0.9])
    metrics = {
        "time_median_s": float(median), "time_p10_s": float(p10), "time_p90_s": float(p90), "repeats": len(times),
        "flops": needed, "flops_convention": convention, "flops_no_recompute": no_recompute,
        "flops_per_s": needed / float(median), "peak_memory_bytes": memory, **accuracy,
    }
    # The same device's square matrix product in this dtype: what a kernel that only multiplied would reach.
    metrics["matmul_flops_per_s"] = measure.matmul_flops_per_s(device, dtype)
    metrics["fraction_of_matmul"] = metrics["flops_per_s"] / metrics["matmul_flops_per_s"]
    kernel_info = {"variant": name, "device_name": measure.device_name(device), "dtype": t.dtype,
                   "exact": name in attention_registry.EXACT, **{f"option_{k}": v for k, v in options.items()}}
    return {"metrics": metrics, "kernel_info": kernel_info}
