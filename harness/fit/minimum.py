"""A minimum of loss in ln x (a model size's for approach 2, a learning rate's for a ladder): where each method
reads it, and the one-line reasons it is not interior."""
from __future__ import annotations

import numpy as np


# Where a budget's minimum is read from (fit_isoflop's `minimum`):
#   "parabola"  one parabola of loss in ln N through every size (Hoffmann et al. 2022, sec. 3.2).
#   "local"     a quadratic weighted by a Gaussian kernel in ln N (bandwidth LOCAL_BANDWIDTH) centred on the minimum,
#               recentred until it stays put: a local regression (Cleveland & Devlin 1988, "Locally Weighted
#               Regression"). Over sizes spanning little of ln N it is the parabola; over wide grids the far sizes,
#               where the loss is no parabola in ln N, stop pulling the vertex.
#   "window"    a parabola through the LOCAL_POINTS sizes around the lowest loss.
#   "akima"     the minimum of Akima's interpolant of loss in ln N (as Porian et al. 2024 locate it).
# tests/bench/isoflop_bias.py measures each against the truth on synthetic designs as wide as published ones.
MINIMUM_METHODS = ("parabola", "local", "window", "akima")
# The default, by evidence: of the four, the lowest root-mean-square error in a (bias and noise together) averaged
# over tests/bench/isoflop_bias.py's noisy designs (results/isoflop_bias: local 0.0083, parabola 0.0094, window 0.0108,
# akima 0.0221; window is the least biased, 0.0028 against local's 0.0042, but the noisiest). Tested against the
# committed measurement.
DEFAULT_MINIMUM = "local"
LOCAL_BANDWIDTH = 1.5     # in ln N: a size e^1.5 = 4.5 times the centre's weighs e^-1/2
LOCAL_POINTS = 5


def _parabola_vertex(log_n, loss, method: str, best: float) -> tuple[np.ndarray, float]:
    """(c2, c1, c0) of the quadratic that `method` fits around the budget's lowest loss (at ln N = best), and where
    the minimum lies (the vertex; for akima, the interpolant's minimum)."""
    if method == "parabola":
        coefficients = np.polyfit(log_n, loss, 2)
    elif method == "window":
        sizes = np.unique(log_n)
        centre = int(np.searchsorted(sizes, best))
        first = min(max(centre - LOCAL_POINTS // 2, 0), max(len(sizes) - LOCAL_POINTS, 0))
        near = np.isin(log_n, sizes[first:first + LOCAL_POINTS])
        coefficients = np.polyfit(log_n[near], loss[near], 2)
    elif method == "local":
        centre = best
        for _ in range(50):
            weights = np.exp(-0.5 * ((log_n - centre) / LOCAL_BANDWIDTH) ** 2)
            coefficients = np.polyfit(log_n, loss, 2, w=np.sqrt(weights))
            if coefficients[0] <= 0:
                break
            moved, centre = centre, float(np.clip(-coefficients[1] / (2 * coefficients[0]), log_n.min(), log_n.max()))
            if abs(centre - moved) < 1e-9:
                break
    else:  # akima
        from scipy.interpolate import Akima1DInterpolator
        sizes = np.unique(log_n)
        mean_loss = np.array([loss[log_n == size].mean() for size in sizes])
        grid = np.linspace(sizes[0], sizes[-1], 4001)
        curve = Akima1DInterpolator(sizes, mean_loss)(grid)
        coefficients = np.polyfit(log_n, loss, 2)   # drawn and used for the residuals; the minimum is the curve's
        return coefficients, float(grid[np.argmin(curve)])
    c2, c1, _ = coefficients
    return coefficients, (-c1 / (2 * c2) if c2 > 0 else np.nan)


# What a minimum is sought over, for the one-line reasons a minimum is not interior.
AXES = {"N": {"points": "model sizes", "one": "model", "range": "the sizes tried"},
        "lr": {"points": "learning rates", "one": "learning rate", "range": "the learning rates tried"}}


def interior_minimum(log_x: np.ndarray, loss: np.ndarray, method: str, axis: str) -> dict:
    """The minimum of loss in ln x (x: AXES, a model size or a learning rate) by `method` (MINIMUM_METHODS):
    interior when the fit opens upward, its minimum lies inside the values tried, and the measured losses bracket
    it (the best run is neither at the smallest nor at the largest x); else `why`, in one line."""
    names = AXES[axis]
    if len(np.unique(log_x)) < 3:
        return {"interior": False, "why": f"{len(np.unique(log_x))} {names['points']} (a parabola needs 3)"}
    best = log_x[np.argmin(loss)]
    (c2, c1, c0), vertex = _parabola_vertex(log_x, loss, method, best)
    bracketed = log_x.min() < best < log_x.max()
    row = {"curvature": float(c2), "parabola": (c2, c1, c0), "interior": True, "why": "", "vertex": vertex}
    if c2 <= 0:
        why = f"loss is not convex in log {axis}"
    elif not bracketed:
        why = (f"the {'smallest' if best == log_x.min() else 'largest'} {names['one']} is best: the minimum lies outside "
               f"{names['range']}, extend the grid")
    elif not log_x.min() <= vertex <= log_x.max():
        why = (f"the parabola's vertex lies {'below' if vertex < log_x.min() else 'above'} {names['range']} though the "
               f"best run is inside them: the losses are not a parabola over this range of {axis}")
    else:
        return row
    return {**row, "interior": False, "why": why}
