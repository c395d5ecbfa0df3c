"""Clocks, peak memory and the environment a run happened in."""
from __future__ import annotations

import contextlib
import datetime as dt
import os
import platform
import random
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import harness
from harness.errors import ConfigError, Unsupported

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _process_state() -> dict:
    """The process-wide settings a job can change and a later job would inherit."""
    return {"matmul_precision": torch.get_float32_matmul_precision(),
            "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32, "cudnn_tf32": torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": torch.backends.cudnn.benchmark, "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "deterministic": torch.are_deterministic_algorithms_enabled(), "threads": torch.get_num_threads()}


def _set_process_state(state: dict) -> None:
    # cuda.matmul.allow_tf32 goes with the matmul precision ("highest" <-> False); set the precision last.
    torch.backends.cuda.matmul.allow_tf32 = state["cuda_matmul_tf32"]
    torch.set_float32_matmul_precision(state["matmul_precision"])
    torch.backends.cudnn.allow_tf32 = state["cudnn_tf32"]
    torch.backends.cudnn.benchmark = state["cudnn_benchmark"]
    torch.backends.cudnn.deterministic = state["cudnn_deterministic"]
    if torch.are_deterministic_algorithms_enabled() != state["deterministic"]:
        torch.use_deterministic_algorithms(state["deterministic"])   # it imports inductor: 1.5 s of a CPU job's start
    torch.set_num_threads(state["threads"])


STARTING_STATE = _process_state()  # as this process started, before any job


@contextlib.contextmanager
def job_state(seed: int, threads: int | None = None):
    """Every job starts from the state the process started in, whatever the job before it set (a basic-launcher
    sweep runs its jobs in one process: a tf32 job must not leave the next fp32 job in TF32), with its seeds set,
    its CPU threads (`threads`, else torch's default) and compiled graphs dropped; the starting state is back when
    it ends."""
    _set_process_state(STARTING_STATE)
    if threads is not None:
        torch.set_num_threads(threads)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    try:
        yield
    finally:
        _set_process_state(STARTING_STATE)


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def resolve_device(name: str) -> torch.device:
    """device=: auto (cuda where there is one, else cpu), cpu, cuda or cuda:N, the devices the harness times and
    measures on; anything else a ConfigError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(name))
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device={name!r}: one of auto, cpu, cuda, cuda:N")
    return device


def device_here(setting: str) -> torch.device:
    """The device `device=` names (resolve_device), or Unsupported (the point's record) where this machine has none."""
    device = resolve_device(setting)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise Unsupported(f"device={setting!r} but CUDA is not available")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise Unsupported(f"device={setting!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(device: torch.device) -> float:
    """Seconds, with the device's queued work finished first so the time is honest."""
    synchronize(device)
    return time.perf_counter()


class StepClock:
    """Times training steps without making the host wait for the device: CUDA events recorded around each step and
    read back only at the end (or when asked), perf_counter on a CPU."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list[tuple] = []
        self._start = None

    def start(self) -> None:
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._start = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
        else:
            end = time.perf_counter()
        self.marks.append((self._start, end))
        self._start = None

    @property
    def steps(self) -> int:
        return len(self.marks)

    def seconds(self) -> list[float]:
        """Each step's seconds (on CUDA: waits for the last recorded step to finish)."""
        if not self.cuda:
            return [end - start for start, end in self.marks]
        if self.marks:
            self.marks[-1][1].synchronize()
        return [start.elapsed_time(end) / 1e3 for start, end in self.marks]

    def total_seconds(self) -> float:
        return sum(self.seconds()) or float("nan")


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    # Linux: writing 5 to clear_refs resets the process's peak resident set (VmHWM).
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: max bytes allocated by tensors. CPU: the process's peak resident set since the last reset."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak_kb = _proc_field("/proc/self/status", "VmHWM")
    return int(peak_kb.split()[0]) * 1024 if peak_kb else int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def free_memory_bytes(device: torch.device) -> float:
    """Bytes a new allocation can still get: the GPU's free memory, or the machine's available memory."""
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    available_kb = _proc_field("/proc/meminfo", "MemAvailable")
    return float(available_kb.split()[0]) * 1024 if available_kb else float("inf")


@dataclass(frozen=True)
class Allocation:
    peak: int   # the most bytes of tensors alive at once during fn(), beyond those alive before
    held: int   # bytes fn() allocated that are still alive when it returns (what it kept, or leaked)


def cpu_allocated_by(fn) -> Allocation:
    """Allocation of fn() on a CPU, from the profiler's memory record (public API: each event's self allocation
    and the free events): allocations counted when their op starts, frees when it ends. An allocation an op
    makes and frees inside itself nets out of its own count, so the peak is that of the ops' net allocations."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    changes = sorted((e.time_range.start if e.self_cpu_memory_usage > 0 else e.time_range.end, e.self_cpu_memory_usage)
                     for e in prof.events() if e.self_cpu_memory_usage)
    live = peak = 0
    for _, change in changes:
        live += change
        peak = max(peak, live)
    return Allocation(int(peak), int(live))


def allocated_by(fn, device: torch.device) -> Allocation:
    """Allocation of fn(): the CUDA allocator's counters (its peak counter reset for fn, so it covers all of fn),
    or on a CPU the profiler's record (the allocator has no counters there). fn's return value is dropped."""
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return Allocation(int(torch.cuda.max_memory_allocated(device) - before), int(torch.cuda.memory_allocated(device) - before))
    return cpu_allocated_by(fn)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device) if torch.cuda.is_available() else "cuda (not available)"
    return _cpu_model() or platform.processor() or platform.machine()


def _cpu_model() -> str | None:
    return _proc_field("/proc/cpuinfo", "model name")


def _proc_field(path: str, name: str) -> str | None:
    """The value of the first `name: value` line of a /proc file (Linux), or None."""
    try:
        for line in Path(path).read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == name:
                return value.strip()
    except OSError:
        pass
    return None


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(PROJECT_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    return {
        "harness_version": harness.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "device": str(device),
        "device_name": device_name(device),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
    }


def time_calls(fn, device: torch.device, *, warmup: int = 1, min_repeats: int = 3, max_repeats: int = 20,
               max_seconds: float = 5.0) -> list[float]:
    """Seconds per call of fn() after `warmup` calls, repeated until max_repeats or max_seconds (at least min_repeats)."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    spent = 0.0
    while len(times) < max_repeats and (len(times) < min_repeats or spent < max_seconds):
        start = timer(device)
        fn()
        times.append(timer(device) - start)
        spent += times[-1]
    return times


def interleaved_medians(fns: dict, device: torch.device, *, rounds: int = 15, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, calling them in turn every round so noise hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = timer(device)
            fn()
            times[name].append(timer(device) - start)
    return {name: float(sorted(t)[len(t) // 2]) for name, t in times.items()}


def instructions(fn, callgrind_out: str) -> int:
    """Instructions one call of fn() executes (callgrind's Ir, every thread), in a process that runs under
    `valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file=<callgrind_out>.%p`: collection is switched
    on around the call and the counts dumped (torch's own callgrind bindings), then read back from the dump file.
    Counts are all but deterministic (a few hundred instructions in 30 million move between processes), so they see
    a change that adds or removes work through any amount of timing noise; they do not see one that only waits
    longer (cache misses, memory bandwidth, contention)."""
    if not torch._C._valgrind_supported_platform():
        raise RuntimeError("this torch build has no callgrind bindings")
    torch._C._valgrind_toggle()
    fn()
    torch._C._valgrind_toggle_and_dump_stats()
    dumps = Path(callgrind_out).parent.glob(f"{Path(callgrind_out).name}.{os.getpid()}.*")
    latest = max(dumps, key=lambda path: int(path.suffix[1:]), default=None)
    if latest is None:
        raise RuntimeError(f"no callgrind dump at {callgrind_out}.{os.getpid()}.*: is this process under callgrind?")
    for line in latest.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"{latest} has no totals line")


_MATMUL_RATES: dict[tuple, float] = {}   # matmul_flops_per_s's measurements in this process
CPU_MATMUL_SECONDS = 2.0


def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, size: int | None = None) -> float:
    """This device's measured rate for a square matrix product in `dtype` (median of 5 after warm-up), under the
    matmul precision in effect now: the ceiling an attention kernel's achieved FLOP/s is read against. Measured once
    per process for each device, dtype, size, float32 matmul precision and CPU thread count, the settings that move
    it, so the jobs of a sweep in one process share it (on a CPU it took 3 s of each attention point's 3.3 s) and a
    tf32 job never reads an fp32 job's rate. Default size: 8192 on a GPU; on a CPU 2048, or smaller where one product
    of 2048 would take over CPU_MATMUL_SECONDS: a CPU without kernels for the dtype (bf16 on an AVX2-only CPU runs
    at ~0.3 GFLOP/s, a minute per product) is sized from the rate of a first product of 512."""
    key = (str(device), dtype, size, torch.get_float32_matmul_precision(), torch.get_num_threads())
    if key not in _MATMUL_RATES:
        n = size or (8192 if device.type == "cuda" else _cpu_matmul_size(dtype))
        _MATMUL_RATES[key] = _matmul_rate(device, dtype, n, repeats=5)
    return _MATMUL_RATES[key]


def _matmul_rate(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=generator).to(dtype) for _ in range(2))
    times = time_calls(lambda: a @ b, device, warmup=2, min_repeats=repeats, max_repeats=repeats)
    return 2 * n**3 / statistics.median(times)


def _cpu_matmul_size(dtype: torch.dtype) -> int:
    rate = _matmul_rate(torch.device("cpu"), dtype, 512, repeats=3)
    if 2 * 2048**3 / rate <= CPU_MATMUL_SECONDS:
        return 2048
    return int(max(512, (CPU_MATMUL_SECONDS / 4 * rate / 2) ** (1 / 3)))   # a quarter of the budget per product
