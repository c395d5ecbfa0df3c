"""profile=N: torch.profiler over N training steps, summed up in the record's profile_info.

The window opens after the steps left out of timing (task.timing_warmup_steps) and one more step of the profiler's
own warm-up; those N + 1 steps are left out of the run's step-time statistics, since profiling slows them.

profile_info says, per profiled step: where the device's time went (by kernel, and by kind: matrix products,
attention, normalisation, loss, optimizer, copies, other element-wise work), how busy the device was from the
window's first kernel to its last (idle gaps are the host not keeping up), and how often the host waited for the
device (synchronize calls). On a CPU the same table is read off the operators' own time.
"""
from __future__ import annotations

import re
import statistics

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, schedule

# Kernel or operator name -> kind, the first pattern that matches. Names seen on an H200 (cuBLAS sm90_xmma, nvjet,
# cutlass; PyTorch's flash and cuDNN attention; inductor's triton_* kernels, named after the ops they fuse) and
# PyTorch's CPU operators.
KINDS = (
    ("optimizer", r"adam|multi_tensor_apply|_foreach_|optimizer"),
    ("attention", r"flash|fmha|sdpa|attention|cudnn_generated"),
    ("matmul", r"gemm|xmma|nvjet|cutlass|addmm|\bmm\b|aten::mm|aten::bmm|matmul|aten::linear"),
    ("norm", r"layer_norm|rms_norm|layernorm"),
    ("loss", r"nll_loss|log_softmax|cross_entropy|softmax"),
    ("copy", r"copy|memcpy|memset|cat\b|fill"),
)
SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")
TOP = 15


def kind_of(name: str) -> str:
    lowered = name.lower()
    return next((kind for kind, pattern in KINDS if re.search(pattern, lowered)), "elementwise/other")


class StepProfiler:
    """Profiles steps [skip + 1, skip + 1 + steps) of a loop that calls step() after each of its steps."""

    def __init__(self, device: torch.device, skip: int, steps: int):
        self.device, self.steps, self.summary = device, steps, None
        self.first = skip                      # the profiler's warm-up step; the window follows it
        self._profile = None
        if steps > 0:
            cuda = device.type == "cuda"
            self._profile = profile(
                activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else []),
                schedule=schedule(wait=skip, warmup=1, active=steps, repeat=1),
                on_trace_ready=self._summarise)
            self._profile.start()

    def step(self) -> None:
        if self._profile is not None:
            self._profile.step()

    def stop(self) -> None:
        if self._profile is not None:
            self._profile.stop()
            self._profile = None

    def touched(self, step_index: int) -> bool:
        """Whether the step_index-th step of the loop ran under the profiler (and is left out of timing)."""
        return self.steps > 0 and self.first <= step_index < self.first + 1 + self.steps

    def info(self, loop_steps: int) -> dict:
        if self.steps <= 0:
            return {}
        if self.summary is None:
            return {"steps": 0, "unsupported": f"profile={self.steps}: the window starts after step "
                                               f"{self.first + 1} and this run has {loop_steps} steps"}
        return self.summary

    def _summarise(self, prof) -> None:
        self.summary = summarise(prof, self.steps, self.device)


def annotation(name: str) -> bool:
    """A range the profiler or the optimizer marks around work (a step, Optimizer.step), not work of its own."""
    return name.startswith(("ProfilerStep", "Optimizer."))


def table(prof, device_type: DeviceType, steps: int) -> tuple[float, dict, list[dict]]:
    """Self time per step on the device or the host: in all (ms), by kind (shares), and the top entries."""
    times = {}
    for event in prof.key_averages():
        if event.device_type != device_type or annotation(event.key):
            continue
        spent = event.self_device_time_total if device_type == DeviceType.CUDA else event.self_cpu_time_total
        if spent > 0:
            times[event.key] = (spent, event.count)
    total = sum(spent for spent, _ in times.values()) or float("nan")
    by_kind: dict[str, float] = {}
    for name, (spent, _) in times.items():
        by_kind[kind_of(name)] = by_kind.get(kind_of(name), 0.0) + spent / total
    top = sorted(times.items(), key=lambda item: -item[1][0])[:TOP]
    return (total / steps / 1e3, dict(sorted(by_kind.items(), key=lambda item: -item[1])),
            [{"name": name[:160], "kind": kind_of(name), "ms_per_step": spent / steps / 1e3, "share": spent / total,
              "calls_per_step": count / steps} for name, (spent, count) in top])


def summarise(prof, steps: int, device: torch.device) -> dict:
    """On a GPU: the kernels' time (time_per_step_ms, by_kind, top) and the host's (host_ms_per_step, host_top); on a
    CPU the operators' time is both."""
    on_device = device.type == "cuda"
    events = prof.events()
    host_ms, _, host_top = table(prof, DeviceType.CPU, steps)
    spent, by_kind, top = table(prof, DeviceType.CUDA, steps) if on_device else (host_ms, None, host_top)
    if by_kind is None:
        by_kind = table(prof, DeviceType.CPU, steps)[1]
    summary = {
        "steps": steps, "device": device.type, "time_per_step_ms": spent, "by_kind": by_kind, "top": top,
        "host_ms_per_step": host_ms, "host_top": host_top[:8],
        # the host's wall time per step (its ProfilerStep ranges): near the step time with the device's time well
        # below it, the host is what limits the step
        "host_wall_per_step_ms": statistics.fmean(e.cpu_time_total for e in events
                                                  if e.device_type == DeviceType.CPU and e.name.startswith("ProfilerStep")) / 1e3
        if any(e.name.startswith("ProfilerStep") for e in events) else None,
        "host_syncs_per_step": sum(1 for e in events if e.device_type == DeviceType.CPU and e.name in SYNCS) / steps,
    }
    if on_device:
        kernels = sorted((e.time_range.start, e.time_range.end) for e in events
                         if e.device_type == DeviceType.CUDA and not annotation(e.name))
        busy, reach = 0.0, None
        for start, end in kernels:   # the union of the kernels' intervals
            if reach is None or start > reach:
                busy, reach = busy + end - start, end
            elif end > reach:
                busy, reach = busy + end - reach, end
        span = kernels[-1][1] - kernels[0][0] if kernels else float("nan")
        summary.update(busy_fraction=busy / span if span else None, span_per_step_ms=span / steps / 1e3)
    return summary
