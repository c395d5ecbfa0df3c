"""Clocks, peak memory and the environment a run happened in."""
from __future__ import annotations

import datetime as dt
import functools
import os
import platform
import resource
import socket
import statistics
import subprocess
import time
from pathlib import Path

import torch

import harness

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timer(device: torch.device) -> float:
    """Seconds, with the device's queued work finished first so the time is honest."""
    synchronize(device)
    return time.perf_counter()


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


def cpu_peak_tensor_bytes(fn) -> int:
    """Peak bytes of tensors alive at once during fn(), beyond those that existed before (profiler timeline)."""
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action  # the timeline behind profile.export_memory_timeline
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        fn()
    live = peak = 0
    for _, action, _, size in prof._memory_profile().timeline:
        if action == Action.CREATE:
            live += size
        elif action == Action.DESTROY:
            live -= size
        peak = max(peak, live)
    return int(peak)


def peak_tensor_bytes(fn, device: torch.device) -> int:
    """Peak bytes of tensors fn() allocates beyond those alive before: the CUDA allocator's count, or on a CPU
    the profiler's memory timeline (the allocator has no peak counter there)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    return cpu_peak_tensor_bytes(fn)


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


@functools.lru_cache(maxsize=None)
def matmul_flops_per_s(device: torch.device, dtype: torch.dtype, size: int | None = None) -> float:
    """This device's measured rate for a square matrix product in `dtype` (median of 5 after warm-up): the
    ceiling an attention kernel's achieved FLOP/s is read against. Default size: 8192 on a GPU, 2048 on a CPU."""
    n = size or (8192 if device.type == "cuda" else 2048)
    generator = torch.Generator(device=device).manual_seed(0)
    a, b = (torch.randn(n, n, device=device, generator=generator).to(dtype) for _ in range(2))
    times = time_calls(lambda: a @ b, device, warmup=2, min_repeats=5, max_repeats=5)
    return 2 * n**3 / statistics.median(times)
