"""Many local minimisations at once: L-BFGS stepped for every start together.

A multi-start fit (Chinchilla's 4500 starts, 64 per bootstrap resample) runs one small problem from many points.
Evaluating the objective for all of them in one array pass costs little more per start than a vectorised pass
for one, while a loop of scipy calls pays Python's overhead per start and per step. Each start keeps its own
history, step length and stopping test (scipy's L-BFGS-B defaults: ftol 2.2e-9 relative, gtol 1e-5) and leaves
the batch when it stops (Nocedal & Wright 2006, "Numerical Optimization", alg. 7.4 and 7.5; an Armijo backtracking
line search whose next step is the minimum of the quadratic through f(0), f'(0) and f(step), held within 0.1-0.5 of
the step (their sec. 3.5); a curvature pair kept only when s.y > 0, so the inverse Hessian stays positive definite).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FTOL = 2.220446049250313e-09   # scipy's L-BFGS-B default (factr 1e7 times machine epsilon)


@dataclass
class Minima:
    x: np.ndarray          # (starts, parameters): where each start stopped
    value: np.ndarray      # (starts,): the objective there
    iterations: int        # of the longest-running start
    evaluations: int       # objective evaluations, summed over starts


def _dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.einsum("kp,kp->k", u, v)


def lbfgs(objective, starts, *, memory: int = 10, ftol: float = FTOL, gtol: float = 1e-5,
          max_iterations: int = 15000, max_backtracks: int = 40) -> Minima:
    """Minimise from every row of `starts` at once. `objective(theta, rows)` returns the values (k,) and gradients
    (k, p) at the k rows of theta, `rows` being their indices in `starts` (for objectives whose data differ per
    start, e.g. one bootstrap resample per start). A start stops when an iteration lowers its value by at most
    ftol * max(|f|, 1), its largest gradient component is at most gtol, or its line search finds no lower point."""
    with np.errstate(all="ignore"):   # a run-away start's arithmetic overflows: its step is rejected, not raised
        return _lbfgs(objective, np.array(starts, dtype=float), memory, ftol, gtol, max_iterations, max_backtracks)


def _lbfgs(objective, x, memory, ftol, gtol, max_iterations, max_backtracks) -> Minima:
    k, p = x.shape
    value, gradient = objective(x, np.arange(k))
    evaluations = k
    out_x, out_value = x.copy(), value.copy()
    rows = np.flatnonzero(~(np.max(np.abs(gradient), axis=1) <= gtol))
    x, value, gradient = x[rows], value[rows], gradient[rows]
    steps, changes, rho = np.zeros((len(rows), memory, p)), np.zeros((len(rows), memory, p)), np.zeros((len(rows), memory))
    iteration = 0
    while len(rows) and iteration < max_iterations:
        # Two-loop recursion over the pairs kept (newest first); a pair that failed the curvature test has rho 0.
        q = gradient.copy()
        history = [(iteration - 1 - j) % memory for j in range(min(iteration, memory))]
        alphas = np.zeros((len(rows), memory))
        for j in history:
            alphas[:, j] = rho[:, j] * _dot(steps[:, j], q)
            q -= alphas[:, j, None] * changes[:, j]
        if iteration:
            newest = history[0]
            yy = _dot(changes[:, newest], changes[:, newest])
            scale = np.where(rho[:, newest] > 0, 1 / (rho[:, newest] * yy), 1.0)
        else:
            scale = 1 / np.linalg.norm(gradient, axis=1)   # a first step of unit length
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        q *= scale[:, None]
        for j in reversed(history):
            q += steps[:, j] * (alphas[:, j] - rho[:, j] * _dot(changes[:, j], q))[:, None]
        direction = -q
        slope = _dot(gradient, direction)
        uphill = ~(slope < 0)
        direction[uphill] = -gradient[uphill] * scale[uphill, None]
        slope[uphill] = _dot(gradient[uphill], direction[uphill])

        step = np.ones(len(rows))
        new_x, new_value, new_gradient = x.copy(), value.copy(), gradient.copy()
        pending = np.arange(len(rows))
        for _ in range(max_backtracks):
            trial = x[pending] + step[pending, None] * direction[pending]
            trial_value, trial_gradient = objective(trial, rows[pending])
            evaluations += len(pending)
            sufficient = np.isfinite(trial_value) & (trial_value <= value[pending] + 1e-4 * step[pending] * slope[pending])
            accepted = pending[sufficient]
            new_x[accepted], new_value[accepted], new_gradient[accepted] = (
                trial[sufficient], trial_value[sufficient], trial_gradient[sufficient])
            failed, failed_value = pending[~sufficient], trial_value[~sufficient]
            pending = failed
            if not len(pending):
                break
            # The minimum of the quadratic through f(0), its slope and f(step), kept within [0.1, 0.5] of the step.
            t, rise = step[failed], failed_value - value[failed] - slope[failed] * step[failed]
            shrink = np.where(np.isfinite(rise) & (rise > 0), -slope[failed] * t / (2 * rise), 0.1)
            step[failed] = t * np.clip(shrink, 0.1, 0.5)
        stalled = np.zeros(len(rows), dtype=bool)
        stalled[pending] = True

        s, y = new_x - x, new_gradient - gradient
        sy = _dot(s, y)
        inverse = 1 / sy
        curved = (sy > 1e-10 * _dot(y, y)) & np.isfinite(inverse)
        slot = iteration % memory
        steps[:, slot], changes[:, slot] = np.where(curved[:, None], s, 0.0), np.where(curved[:, None], y, 0.0)
        rho[:, slot] = np.where(curved, inverse, 0.0)
        done = (stalled | (value - new_value <= ftol * np.maximum(np.maximum(np.abs(value), np.abs(new_value)), 1.0))
                | (np.max(np.abs(new_gradient), axis=1) <= gtol))
        x, value, gradient = new_x, new_value, new_gradient
        iteration += 1
        if done.any():
            out_x[rows[done]], out_value[rows[done]] = x[done], value[done]
            keep = ~done
            rows, x, value, gradient = rows[keep], x[keep], value[keep], gradient[keep]
            steps, changes, rho = steps[keep], changes[keep], rho[keep]
    out_x[rows], out_value[rows] = x, value
    return Minima(x=out_x, value=out_value, iterations=iteration, evaluations=evaluations)
