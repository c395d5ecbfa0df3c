"""Kernel regression suite: every attention variant this device can run, at several shapes, forward and
forward+backward. `harness-bench` times it on two revisions in alternating processes and judges each case;
`make bench` / `make bench-compare` keep a stored baseline for this machine.

Each case records in extra_info its FLOPs (models/attention: each variant's forward_flops), TFLOP/s, the fraction of this machine's measured
matrix-product rate it reaches, and `reference_s`: the median time of a fixed matrix product timed before every
round of the case, in the same process, so a comparison can divide out how fast the machine happened to be.

Between rounds (untimed) the reference product runs; on CUDA a 256 MB buffer is also rewritten, flushing the L2
cache before every timed call, and the kernel is timed with CUDA events (`event_median_s`, what harness-bench
compares) besides the host clock, which also counts the launch and a ~1 ms spin the GPU runs first (so that the
events time the device's work alone). BENCH_ROUNDS and BENCH_THREADS (torch's CPU threads) are set per process by harness-bench.

Under callgrind (`harness-bench --instructions` sets BENCH_CALLGRIND_OUT to its --callgrind-out-file prefix), each
case runs one call and then counts the instructions of the next (`instructions` in extra_info,
harness.measure.instructions), at the smallest shape only: callgrind runs these kernels ~500 times slower than the
CPU does (measured: the whole suite took 51 min, its six dense cases 10 min), and FlexAttention, which compiles, not
at all. The times such a process records mean nothing and harness-bench does not read them.
"""
import os
import statistics

import pytest
import torch

from harness import measure
from models import attention

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPE = torch.bfloat16 if DEVICE == "cuda" else torch.float32
ROUNDS = int(os.environ.get("BENCH_ROUNDS", 7))
if os.environ.get("BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["BENCH_THREADS"]))
# (batch, heads, seq_len, head_dim): a change can slow one shape only. Sized so one process of the whole suite
# takes ~20 s on 2 CPU cores (harness-bench's default comparison: 6 processes a side, under 5 minutes).
SHAPES = {"cpu": [(1, 4, 256, 64), (1, 4, 1024, 64), (1, 2, 1024, 128)],
          "cuda": [(4, 16, 1024, 64), (4, 16, 4096, 64), (4, 16, 4096, 128), (1, 16, 16384, 128)]}[DEVICE]
CALLGRIND_OUT = os.environ.get("BENCH_CALLGRIND_OUT")
if CALLGRIND_OUT:
    SHAPES = SHAPES[:1]
WINDOW = {"cpu": 256, "cuda": 512}[DEVICE]   # longformer's, a quarter of the longest CPU sequence
REFERENCE_SIZE = {"cpu": 256, "cuda": 4096}[DEVICE]
L2_FLUSH_BYTES = 256 * 2**20
SPIN_CYCLES = 2_000_000   # ~1 ms at a GPU's ~2 GHz: longer than any case here takes to launch

CASES = [
    ("sdpa", {"backend": "auto"}), ("sdpa", {"backend": "math"}), ("sdpa", {"backend": "flash"}),
    ("sdpa", {"backend": "efficient"}), ("sdpa", {"backend": "cudnn"}), ("dense", {}), ("xformers", {}),
    ("flash_attn", {}), ("performer", {"num_features": 256}),
    ("longformer", {"impl": "blocked", "window": WINDOW}), ("longformer", {"impl": "flex", "window": WINDOW}),
    ("longformer", {"impl": "xformers", "window": WINDOW}),
]


def case_id(case):
    name, options = case
    return name + "".join(f"-{v}" for k, v in options.items() if k in ("backend", "impl"))


def shape_id(shape):
    batch, heads, seq, head_dim = shape
    return f"s{seq}-d{head_dim}"


@pytest.fixture(scope="session")
def matmul_rate():
    if CALLGRIND_OUT:   # a 2048-square product would take minutes under callgrind, and no time is read here
        return None
    return measure.matmul_flops_per_s(torch.device(DEVICE), DTYPE)


def between_rounds():
    """What runs before each timed round: the L2 flush (CUDA) and the reference product, whose times it keeps."""
    a = torch.randn(REFERENCE_SIZE, REFERENCE_SIZE, device=DEVICE, dtype=DTYPE)
    flush = torch.empty(L2_FLUSH_BYTES // 4, device=DEVICE) if DEVICE == "cuda" else None
    times = []
    device = torch.device(DEVICE)

    def setup():
        start = measure.timer(device)
        a @ a
        times.append(measure.timer(device) - start)
        if flush is not None:
            flush.zero_()
            measure.synchronize(device)

    return setup, times


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("shape", SHAPES, ids=shape_id)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_attention_kernel(benchmark, matmul_rate, case, shape, mode):
    name, options = case
    refused = attention.unsupported(name, DEVICE, DTYPE, **options)
    if refused:
        pytest.skip(refused)
    backward = mode == "fwd_bwd"
    if backward and name == "longformer" and options["impl"] == "flex" and DEVICE == "cpu":
        pytest.skip("FlexAttention has no CPU backward")
    if CALLGRIND_OUT and name == "longformer" and options["impl"] == "flex":
        pytest.skip("FlexAttention compiles with inductor: hours under callgrind")
    batch, heads, seq, head_dim = shape
    attn = attention.get_attention(name, causal=True, **options)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, device=DEVICE, dtype=DTYPE, requires_grad=backward) for _ in range(3))
    grad = torch.randn_like(q)
    events = []

    def call():
        if DEVICE == "cuda":
            events.append((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)))
            # nvbench's blocking kernel: the GPU spins while the host queues the start event and the kernel's
            # launches behind it, so the events time the device's work, not how fast the host launched it
            torch.cuda._sleep(SPIN_CYCLES)
            events[-1][0].record()
        with torch.set_grad_enabled(backward):
            out = attn(q, k, v)
            if backward:
                out.backward(grad)
        if DEVICE == "cuda":
            events[-1][1].record()
            torch.cuda.synchronize()

    setup, reference_times = between_rounds()
    benchmark.group = f"attention-{mode}-{shape_id(shape)}"
    flop_count = attention.flops(name, batch=batch, heads=heads, seq_len=seq, head_dim=head_dim, causal=True,
                                       backward=backward, options=options)
    benchmark.extra_info.update(device=DEVICE, dtype=str(DTYPE), batch=batch, heads=heads, seq_len=seq,
                                head_dim=head_dim, flops=flop_count, threads=torch.get_num_threads())
    if CALLGRIND_OUT:
        benchmark.pedantic(call, rounds=1, iterations=1)   # the untimed first call: lazy set-up, allocator growth
        benchmark.extra_info["instructions"] = measure.instructions(call, CALLGRIND_OUT)
        return
    benchmark.pedantic(call, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=2)
    if benchmark.stats is None:   # --benchmark-disable: the call ran once, untimed
        return
    median = benchmark.stats.stats.median
    if events:
        median = statistics.median(start.elapsed_time(end) / 1e3 for start, end in events[-ROUNDS:])
        benchmark.extra_info["event_median_s"] = median
    benchmark.extra_info.update(reference_s=statistics.median(reference_times[-ROUNDS:]),
                                tflops_per_s=flop_count / median / 1e12,
                                matmul_fraction=flop_count / median / matmul_rate)
