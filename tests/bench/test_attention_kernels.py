"""Kernel regression suite: every attention variant this device can run, at fixed sizes.

`make bench` saves a baseline for this machine; `make bench-compare` re-runs and fails when a median is
more than 10% slower. FLOPs (harness/flops.py) ride along in extra_info. On CUDA each timed call ends
with a synchronize, so the time is the kernel's, not the launch's.
"""
import os

import pytest
import torch

from harness import flops
from models import attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
BATCH, HEADS, SEQ, HEAD_DIM = 1, 4, 2048, 64
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 7))   # harness-bench sets it per process

CASES = [
    ("sdpa", {"backend": "auto"}), ("sdpa", {"backend": "math"}), ("sdpa", {"backend": "flash"}),
    ("sdpa", {"backend": "efficient"}), ("sdpa", {"backend": "cudnn"}), ("dense", {}), ("xformers", {}),
    ("flash_attn", {}), ("performer", {"num_features": 256}),
    ("longformer", {"impl": "blocked", "window": 512}), ("longformer", {"impl": "flex", "window": 512}),
    ("longformer", {"impl": "xformers", "window": 512}),
]


def case_id(case):
    name, options = case
    return name + "".join(f"-{v}" for k, v in options.items() if k in ("backend", "impl"))


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_attention_kernel(benchmark, case, mode):
    name, options = case
    verdict = attention.available(name, DEVICE, DTYPE, **options)
    if not verdict:
        pytest.skip(verdict.reason)
    backward = mode == "fwd_bwd"
    if backward and name == "longformer" and options["impl"] == "flex" and DEVICE == "cpu":
        pytest.skip("FlexAttention has no CPU backward")
    attn = attention.get_attention(name, causal=True, **options)
    q, k, v = (torch.randn(BATCH, HEADS, SEQ, HEAD_DIM, device=DEVICE, dtype=DTYPE, requires_grad=backward) for _ in range(3))
    grad = torch.randn_like(q)

    def call():
        with torch.set_grad_enabled(backward):
            out = attn(q, k, v)
            if backward:
                out.backward(grad)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"attention-{mode}"
    benchmark.extra_info.update(device=DEVICE, dtype=str(DTYPE), seq_len=SEQ, flops=flops.attention_flops(
        name, batch=BATCH, heads=HEADS, seq_len=SEQ, head_dim=HEAD_DIM, causal=True, backward=backward, options=options))
    benchmark.pedantic(call, rounds=ROUNDS, iterations=1, warmup_rounds=2)
