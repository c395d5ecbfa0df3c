"""Scaling-law fits on stored results.

fit_power_law  y = E + A * x^-alpha (or A * x^-alpha), least squares on log y with a soft-L1 (robust) loss, several starts.
fit_isoflop    Chinchilla approach 2 (Hoffmann et al. 2022, sec. 3.2): per compute budget a parabola of loss in
               log N, its minimum N_opt; then N_opt = k * C^a and D_opt = C / (6 N_opt) ~ C^b.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize


class FitError(ValueError):
    pass


def _as_positive_array(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim != 1:
        raise FitError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise FitError(f"{name} holds NaN or infinite values")
    if np.any(array <= 0):
        raise FitError(f"{name} must be positive; got {array[array <= 0][0]:g}")
    return array


@dataclass
class PowerLawFit:
    A: float
    alpha: float
    E: float = 0.0

    def predict(self, x) -> np.ndarray:
        return self.E + self.A * np.asarray(x, dtype=float) ** -self.alpha


def fit_power_law(x, y, *, irreducible: bool = True) -> PowerLawFit:
    x, y = _as_positive_array(x, "x"), _as_positive_array(y, "y")
    if len(x) != len(y):
        raise FitError(f"x and y differ in length ({len(x)} vs {len(y)})")
    n_params = 3 if irreducible else 2
    if len(x) < n_params + 1:
        raise FitError(f"{len(x)} points cannot fit {n_params} parameters (need at least {n_params + 1})")
    log_x, log_y = np.log(x), np.log(y)

    # Parameters: log A, alpha, and log E (E > 0) when irreducible.
    def residuals(theta):
        reducible = theta[0] - theta[1] * log_x
        if not irreducible:
            return reducible - log_y
        return np.logaddexp(theta[2], reducible) - log_y

    slope, intercept = np.polyfit(log_x, log_y, 1)
    starts = [[intercept, -slope]] if not irreducible else [
        [intercept + shift, max(-slope, 1e-3) * scale, np.log(y.min() * frac)]
        for shift in (0.0, 1.0) for scale in (1.0, 2.0, 4.0) for frac in (0.1, 0.5, 0.9)
    ]
    best = min((optimize.least_squares(residuals, start, loss="soft_l1", f_scale=0.05) for start in starts),
               key=lambda result: result.cost)
    log_a, alpha = best.x[0], best.x[1]
    return PowerLawFit(A=float(np.exp(log_a)), alpha=float(alpha), E=float(np.exp(best.x[2])) if irreducible else 0.0)


@dataclass
class IsoFlopFit:
    a: float                 # N_opt ~ C^a
    b: float                 # D_opt ~ C^b
    k: float                 # N_opt = k * C^a
    minima: pd.DataFrame     # one row per budget: C, N_opt, D_opt, loss_opt, interior, curvature
    parabolas: dict = field(default_factory=dict)   # C -> (c2, c1, c0) of loss = c2 (ln N)^2 + c1 ln N + c0

    def predict(self, C) -> np.ndarray:
        """N_opt for compute C."""
        return self.k * np.asarray(C, dtype=float) ** self.a


def fit_isoflop(C, N, loss) -> IsoFlopFit:
    C, N, loss = (_as_positive_array(v, name) for v, name in ((C, "C"), (N, "N"), (loss, "loss")))
    if not len(C) == len(N) == len(loss):
        raise FitError(f"C, N and loss differ in length ({len(C)}, {len(N)}, {len(loss)})")
    budgets = np.unique(C)
    if len(budgets) < 2:
        raise FitError(f"an IsoFLOP fit needs at least 2 compute budgets, got {len(budgets)}")
    rows, parabolas = [], {}
    for budget in budgets:
        at = C == budget
        log_n = np.log(N[at])
        if len(np.unique(log_n)) < 3:
            rows.append({"C": budget, "N_opt": np.nan, "loss_opt": np.nan, "interior": False, "curvature": np.nan,
                         "why": f"{len(np.unique(log_n))} model sizes (a parabola needs 3)"})
            continue
        c2, c1, c0 = np.polyfit(log_n, loss[at], 2)
        parabolas[float(budget)] = (c2, c1, c0)
        vertex = -c1 / (2 * c2) if c2 > 0 else np.nan
        # Interior: the parabola opens upward, its vertex lies inside the sizes tried, and the measured
        # losses bracket it (the best run is neither the smallest nor the largest model).
        best_n = N[at][np.argmin(loss[at])]
        bracketed = N[at].min() < best_n < N[at].max()
        interior = bool(c2 > 0 and log_n.min() <= vertex <= log_n.max() and bracketed)
        if interior:
            why = ""
        elif c2 <= 0:
            why = "loss is not convex in log N"
        else:
            edge = "smallest" if best_n == N[at].min() else "largest"
            why = f"the {edge} model is best: the minimum lies outside the sizes tried, extend the grid"
        rows.append({"C": budget, "N_opt": float(np.exp(vertex)) if interior else np.nan,
                     "loss_opt": float(np.polyval([c2, c1, c0], vertex)) if interior else np.nan,
                     "interior": interior, "curvature": float(c2), "why": why})
    minima = pd.DataFrame(rows)
    minima["D_opt"] = minima["C"] / (6 * minima["N_opt"])
    good = minima[minima["interior"]]
    if len(good) < 2:
        raise FitError(f"only {len(good)} of {len(budgets)} budgets have an interior minimum; "
                       f"a power law needs 2: {'; '.join(f'C={r.C:.3g}: {r.why}' for r in minima.itertuples() if not r.interior)}")
    a, log_k = np.polyfit(np.log(good["C"]), np.log(good["N_opt"]), 1)
    b, _ = np.polyfit(np.log(good["C"]), np.log(good["D_opt"]), 1)
    return IsoFlopFit(a=float(a), b=float(b), k=float(np.exp(log_k)), minima=minima, parabolas=parabolas)
