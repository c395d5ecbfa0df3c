"""A learning-rate ladder's law: per model size the optimum of loss in ln lr, then lr_opt = c N^-gamma."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.fit.bootstrap import residual_resamples
from harness.fit.minimum import interior_minimum
from harness.fit.points import FitError, positive_array


@dataclass
class LrLawFit:
    c: float                 # lr_opt = c N^-gamma
    gamma: float
    optima: pd.DataFrame     # per size: N, lr_opt, low, high (95%), interior, why
    intervals: dict = field(default_factory=dict)   # c, gamma -> (low, high)
    curves: dict = field(default_factory=dict)      # N -> (c2, c1, c0) of loss in ln lr about the optimum

    def predict(self, N):
        """The law's learning rate for N non-embedding parameters."""
        return self.c * np.asarray(N, float) ** -self.gamma


def _lr_optimum(log_lr: np.ndarray, loss: np.ndarray) -> dict:
    """One size's optimum: the local quadratic of loss in ln lr around the lowest loss (as approach 2 locates a
    budget's minimum in ln N), where the grid brackets it."""
    row = interior_minimum(log_lr, loss, "local", "lr")
    return {"interior": row["interior"], "why": row["why"], **({"curve": row["parabola"]} if "parabola" in row else {}),
            **({"lr_opt": float(np.exp(row["vertex"]))} if row["interior"] else {})}


def fit_lr_law(N, lr, loss, *, intervals: int = 1000, seed: int = 0) -> LrLawFit:
    """A learning-rate ladder's law: per model size (N) the optimum of loss against ln lr (_lr_optimum), then
    lr_opt = c N^-gamma by least squares in logs across the sizes whose optimum is interior. `intervals`: resamples of
    each size's residuals about its quadratic (a fixed-design residual bootstrap, as approach 2's); each resample's
    optima give per-size percentile intervals and a refit of c and gamma."""
    N, lr, loss = (positive_array(v, name) for v, name in ((N, "N"), (lr, "lr"), (loss, "loss")))
    if not len(N) == len(lr) == len(loss):
        raise FitError(f"N, lr and loss differ in length ({len(N)}, {len(lr)}, {len(loss)})")
    sizes = np.unique(N)

    def optima_of(losses) -> dict:
        return {float(n): _lr_optimum(np.log(lr[N == n]), losses[N == n]) for n in sizes}

    found = optima_of(loss)
    good = [n for n, row in found.items() if row["interior"]]
    if len(good) < 2:
        raise FitError(f"only {len(good)} of {len(sizes)} sizes have an interior optimum; a law needs 2: "
                       + "; ".join(f"N={n:.3g}: {row['why']}" for n, row in found.items() if not row["interior"]))
    slope, intercept = np.polyfit(np.log(good), np.log([found[n]["lr_opt"] for n in good]), 1)
    rows = [{"N": n, "lr_opt": row.get("lr_opt", np.nan), "low": np.nan, "high": np.nan, "interior": row["interior"],
             "why": row["why"]} for n, row in found.items()]
    fit = LrLawFit(c=float(np.exp(intercept)), gamma=float(-slope), optima=pd.DataFrame(rows),
                   curves={n: tuple(row["curve"]) for n, row in found.items() if "curve" in row})
    if intervals:
        fitted = np.array([np.polyval(fit.curves[float(n)], np.log(x)) if float(n) in fit.curves else np.nan
                           for n, x in zip(N, lr)])
        draws, laws = {n: [] for n in good}, []
        for resample in residual_resamples(loss, fitted, N, n_params=3, fit_per_stratum=True, n_resamples=intervals,
                                           seed=seed):
            again = optima_of(resample)
            inside = [n for n in good if again[n]["interior"]]
            for n in inside:
                draws[n].append(again[n]["lr_opt"])
            if len(inside) >= 2:
                laws.append(np.polyfit(np.log(inside), np.log([again[n]["lr_opt"] for n in inside]), 1))
        for i, n in enumerate(fit.optima["N"]):
            if draws.get(n):
                fit.optima.loc[i, ["low", "high"]] = np.percentile(draws[n], [2.5, 97.5])
        slopes, intercepts = np.array(laws).T
        fit.intervals = {"gamma": tuple(np.percentile(-slopes, [2.5, 97.5])),
                         "c": tuple(np.percentile(np.exp(intercepts), [2.5, 97.5])), "_failed": intervals - len(laws)}
    return fit
