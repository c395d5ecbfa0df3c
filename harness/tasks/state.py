"""What a training run continues from, as one object: saved and restored by harness.checkpoint."""
from __future__ import annotations

import torch

from harness import checkpoint, measure, parallel
from harness import data as data_sources
from models.spec import Examples


class TrainingState:
    """The model and optimizer (on several ranks, this rank's part of them), the gradient scaler and the steps it
    skipped, the data's position (the order of windows, the family's example generators, the batch already made for
    the next step), torch's generators, the step, the curve so far and the step times before this process."""

    def __init__(self, layout: parallel.Layout, scaler: torch.amp.GradScaler | None, batches: data_sources.Batches,
                 examples: Examples, device: torch.device, sharded: bool):
        self.layout, self.scaler, self.batches, self.examples = layout, scaler, batches, examples
        self.device, self.sharded = device, sharded
        self.step = 0                      # the next step to train
        self.skipped_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.batch: tuple | None = None    # (inputs, targets) of the next step
        self.curve: list[dict] = []
        self.interval_losses: list[float] = []   # the training losses since the last evaluation
        self.earlier_seconds: list[float] = []   # the step times of the process(es) before a resume
        self.clock = measure.StepClock(device)  # this process's

    def seconds(self) -> list[float]:
        """Every step's time, the earlier processes' first."""
        return self.earlier_seconds + self.clock.seconds()

    def state_dict(self) -> dict:
        model = self.layout.model
        weights = (checkpoint.rank_state(model, self.layout.optimizer) if self.sharded else
                   {"model": model.state_dict(), "optimizer": self.layout.optimizer.state_dict()})
        return {"step": self.step, **weights,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "skipped_steps": int(self.skipped_steps), "batches": self.batches.state(),
                "examples": self.examples.state(), "next_batch": self.batch, "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "curve": self.curve, "interval_losses": self.interval_losses, "step_seconds": self.seconds()}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.curve, self.interval_losses = state["step"], state["curve"], state["interval_losses"]
        self.earlier_seconds, self.batch = state["step_seconds"], state["next_batch"]
        if self.sharded:
            checkpoint.restore_rank_state(self.layout.model, self.layout.optimizer, state)
        else:
            self.layout.model.load_state_dict(state["model"])
            self.layout.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps += state["skipped_steps"]
        self.batches.restore(state["batches"])
        self.examples.restore(state["examples"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
