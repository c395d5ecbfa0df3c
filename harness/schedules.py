"""Learning-rate schedules: the learning rate of each optimizer step, one formula per schedule.

Every schedule warms up linearly over its first `warmup_steps`, then:
- cosine: decays along a half cosine to lr * min_lr_ratio at the end of the run;
- constant: holds the peak;
- wsd (warmup-stable-decay): holds the peak, then decays over the last `decay_steps` to lr * min_lr_ratio with
  the `decay_shape`: linear, sqrt (1 - sqrt of the decay's progress) or cosine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

SCHEDULES = ("cosine", "constant", "wsd")

# Hägele et al. (2024), "Scaling Laws and Compute-Optimal Training Beyond Fixed Training Durations", section 3:
# the cooldown's shape as a function of its progress p in [0, 1), from 1 at its first step towards 0; 1 - sqrt(p)
# matched or beat cosine in their runs (their code: epfml/schedules-and-scaling, optim/utils.py wsd_schedule).
DECAY_SHAPES = {
    "linear": lambda p: 1 - p,
    "sqrt": lambda p: 1 - math.sqrt(p),
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * p)),
}


@dataclass(frozen=True)
class Schedule:
    name: str
    peak_lr: float
    total_steps: int
    warmup_steps: int
    min_lr_ratio: float
    decay_steps: int = 0          # wsd: the decay takes the last decay_steps steps
    decay_shape: str | None = None

    @property
    def decay_start(self) -> int:
        """The first step whose learning rate is below the peak after warm-up (wsd), the run's end otherwise."""
        return self.total_steps - self.decay_steps if self.name == "wsd" else self.total_steps

    def lr(self, step: int) -> float:
        """The learning rate of optimizer step `step` (0-based)."""
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        floor = self.min_lr_ratio
        if self.name == "constant":
            factor = 1.0
        elif self.name == "cosine":
            progress = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
            factor = floor + (1 - floor) * DECAY_SHAPES["cosine"](progress)
        elif step < self.decay_start:
            factor = 1.0
        else:
            factor = floor + (1 - floor) * DECAY_SHAPES[self.decay_shape]((step - self.decay_start) / self.decay_steps)
        return self.peak_lr * factor

    def lr_per_step(self) -> list[float]:
        """The learning rate of every optimizer step, in order."""
        return [self.lr(step) for step in range(self.total_steps)]

    def info(self) -> dict:
        """What the record says of the schedule: its parameters as resolved in steps."""
        return {**asdict(self), "decay_start": self.decay_start}


def _decay_steps(total_steps: int, warmup_steps: int, decay_fraction: float) -> int:
    """A wsd decay over `decay_fraction` of the run's steps, at least one, never into the warm-up."""
    return min(total_steps - warmup_steps, max(1, round(total_steps * decay_fraction)))


def from_task(t, total_steps: int) -> Schedule:
    """The schedule `task` asks for over a run of `total_steps` optimizer steps."""
    name = t.get("schedule", "cosine")
    warmup_steps = max(1, int(total_steps * float(t.warmup_fraction)))
    decay_steps = _decay_steps(total_steps, warmup_steps, float(t.decay_fraction)) if name == "wsd" else 0
    return Schedule(name, float(t.lr), total_steps, warmup_steps, float(t.min_lr_ratio), decay_steps,
                    str(t.decay_shape) if name == "wsd" else None)


@dataclass(frozen=True)
class Cooldown:
    """A cooldown branch of a wsd run: it follows the run (the same warm-up, the peak held) until its own decay
    starts, then decays to its end, giving a converged point at `fraction` of the run's tokens."""
    fraction: float
    schedule: Schedule

    @property
    def name(self) -> str:
        return f"cooldown-{self.fraction:g}"

    @property
    def start(self) -> int:
        """The step the branch leaves the run: the first step of its decay."""
        return self.schedule.decay_start


# Hägele et al. (2024), section 4: one run per size with a constant learning rate, and short cooldowns branched
# from its checkpoints, each decaying over the same fraction of its own length, replace a grid of cosine runs.
def cooldowns(trunk: Schedule, fractions, decay_fraction: float) -> list[Cooldown]:
    """The branches of a wsd run at these fractions of its steps, shortest first."""
    branches = []
    for fraction in sorted(float(f) for f in fractions):
        steps = max(1, round(fraction * trunk.total_steps))
        branches.append(Cooldown(fraction, Schedule("wsd", trunk.peak_lr, steps, trunk.warmup_steps, trunk.min_lr_ratio,
                                                    _decay_steps(steps, trunk.warmup_steps, decay_fraction),
                                                    trunk.decay_shape)))
    return branches
