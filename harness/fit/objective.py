"""The summed Huber loss of log residuals that approach 3, Kaplan's law and the data-constrained law minimise
(Hoffmann et al. 2022, app. D.2: Huber with delta 1e-3 on log L, summed over points), and how it is evaluated in
torch: on one thread when the arrays are small."""
from __future__ import annotations

import contextlib

import numpy as np
import torch


def summed_huber(r, delta: float, weights=None):
    """Huber_delta(r) summed over the last axis (one sum per row of residuals), and its derivative in each r: the
    residual clipped to [-delta, delta]. r: a numpy array or a torch tensor; `weights`: each residual's count (a
    bootstrap resample's), shaped as r."""
    clipped = r.clip(-delta, delta)
    if weights is not None:
        return (weights * (clipped * r - 0.5 * clipped * clipped)).sum(-1), clipped
    return (clipped * r).sum(-1) - 0.5 * (clipped * clipped).sum(-1), clipped


# Starts x points below which one torch thread evaluates faster than several: the threads' hand-offs cost more
# than the arithmetic (and far more when other processes hold the cores: 3-6x, measured on 2 cores).
SMALL_BATCH = 200_000


@contextlib.contextmanager
def torch_threads_for(elements: int):
    """Evaluate on one torch thread when the arrays are small (under SMALL_BATCH elements), on all of them otherwise."""
    if elements >= SMALL_BATCH:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def autograd_huber(log_loss_of, targets: np.ndarray, delta: float, weights: np.ndarray | None = None,
                   per_row: bool = False):
    """An objective for minimise.lbfgs from a law in torch: the summed Huber loss of log L(theta) - targets per
    row of theta, differentiated by autograd (a non-finite value rejects the step). `weights`: one row of point
    counts per start (a bootstrap resample each). `per_row`: targets hold one row per start (a resample each), and
    the law is called as log_loss_of(theta, rows), rows being the starts' indices (for per-start constants)."""
    targets = torch.as_tensor(targets)
    weights = torch.as_tensor(weights) if weights is not None else None

    def objective(theta: np.ndarray, rows: np.ndarray):
        with torch_threads_for(len(theta) * targets.shape[-1]):
            at = torch.as_tensor(rows)
            return evaluate(theta, at, weights[at] if weights is not None else None)

    def evaluate(theta: np.ndarray, rows: torch.Tensor, row_weights):
        theta = torch.tensor(theta, requires_grad=True)
        log_loss = log_loss_of(theta, rows) if per_row else log_loss_of(theta)
        value, _ = summed_huber(log_loss - (targets[rows] if per_row else targets), delta, row_weights)
        value.sum().backward()
        values = value.detach().numpy()
        return np.where(np.isnan(values), np.inf, values), torch.nan_to_num(theta.grad).numpy()

    return objective
