"""Chinchilla approach 2 (Hoffmann et al. 2022, sec. 3.2): per compute budget the minimum of loss in ln N, N_opt
there and the tokens D_opt the budget's runs trained there; N_opt = k C^a, D_opt ~ C^b."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.fit.bootstrap import percentile_intervals, residual_resamples, with_interval
from harness.fit.minimum import DEFAULT_MINIMUM, MINIMUM_METHODS, interior_minimum
from harness.fit.points import FitError, positive_array


@dataclass
class IsoFlopFit:
    a: float                 # N_opt ~ C^a
    b: float                 # D_opt ~ C^b
    k: float                 # N_opt = k * C^a
    minima: pd.DataFrame     # one row per budget: C, N_opt, D_opt, loss_opt, interior, curvature, why
    parabolas: dict = field(default_factory=dict)   # C -> (c2, c1, c0) of loss = c2 (ln N)^2 + c1 ln N + c0
    minimum: str = DEFAULT_MINIMUM   # how each budget's minimum was located (MINIMUM_METHODS)
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high) when asked for
    resampled: list = field(default_factory=list, repr=False)   # the bootstrap resamples' fits

    def predict(self, C, interval: float | None = None):
        """N_opt for compute C (with `interval`: and its interval from the bootstrap)."""
        return with_interval(self, self.k * np.asarray(C, dtype=float) ** self.a, lambda fit: fit.predict(C), interval)


def _budget_minimum(log_n: np.ndarray, loss: np.ndarray, log_d: np.ndarray, method: str) -> dict:
    """One budget's minimum in ln N by `method` (MINIMUM_METHODS) and, where it is interior, N_opt and the tokens
    trained there."""
    row = interior_minimum(log_n, loss, method, "N")
    vertex = row.pop("vertex", None)
    if not row["interior"]:
        return row
    order = np.argsort(log_n)
    # The tokens the budget's runs trained, interpolated (log-log) between the two sizes around N_opt.
    log_d_opt = np.interp(vertex, log_n[order], log_d[order])
    return {**row, "N_opt": float(np.exp(vertex)), "D_opt": float(np.exp(log_d_opt)),
            "loss_opt": float(np.polyval(row["parabola"], vertex))}


def fit_isoflop(C, N, loss, D=None, *, minimum: str = DEFAULT_MINIMUM, intervals: int = 0, seed: int = 0) -> IsoFlopFit:
    """`minimum`: how each budget's minimum is located (MINIMUM_METHODS; DEFAULT_MINIMUM, "parabola" as Chinchilla).
    `D`: the tokens each run trained. D_opt is read off them at N_opt, so it lies within the tokens the budget's
    runs trained; without D it is taken as C/(6N) per run, the 6ND convention (right only when C was counted so).
    `intervals`: that many bootstrap resamples for 95% intervals on a, b and k (0: none): the sizes of each
    budget stay, and each run's loss is its budget's fitted quadratic plus a residual drawn from that budget's
    (a fixed-design residual bootstrap, residuals scaled by sqrt(n / (n - 3)) for the parabola's 3 parameters; with
    a local minimum the far sizes' residuals also hold the quadratic's misfit there, which widens the interval)."""
    C, N, loss = (positive_array(v, name) for v, name in ((C, "C"), (N, "N"), (loss, "loss")))
    D = C / (6 * N) if D is None else positive_array(D, "D")
    if not len(C) == len(N) == len(loss) == len(D):
        raise FitError(f"C, N, loss and D differ in length ({len(C)}, {len(N)}, {len(loss)}, {len(D)})")
    if minimum not in MINIMUM_METHODS:
        raise FitError(f"minimum={minimum!r} is not one of {', '.join(MINIMUM_METHODS)}")
    budgets = np.unique(C)
    if len(budgets) < 2:
        raise FitError(f"an IsoFLOP fit needs at least 2 compute budgets, got {len(budgets)}")
    rows, parabolas = [], {}
    for budget in budgets:
        at = C == budget
        row = _budget_minimum(np.log(N[at]), loss[at], np.log(D[at]), minimum)
        if "parabola" in row:
            parabolas[float(budget)] = row.pop("parabola")
        rows.append({"C": budget, "N_opt": np.nan, "D_opt": np.nan, "loss_opt": np.nan, "curvature": np.nan, **row})
    minima = pd.DataFrame(rows)[["C", "N_opt", "D_opt", "loss_opt", "interior", "curvature", "why"]]
    good = minima[minima["interior"]]
    if len(good) < 2:
        failed = [f"C={r.C:.3g}: {r.why}" for r in minima.itertuples() if not r.interior]
        more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise FitError(f"only {len(good)} of {len(budgets)} budgets have an interior minimum; "
                       f"a power law needs 2: {'; '.join(failed[:3])}{more}")
    a, log_k = np.polyfit(np.log(good["C"]), np.log(good["N_opt"]), 1)
    b, _ = np.polyfit(np.log(good["C"]), np.log(good["D_opt"]), 1)
    fit = IsoFlopFit(a=float(a), b=float(b), k=float(np.exp(log_k)), minima=minima, parabolas=parabolas, minimum=minimum)
    if intervals:
        fitted = np.array([np.polyval(parabolas[float(c)], np.log(n)) if float(c) in parabolas else np.nan
                           for c, n in zip(C, N)])
        datasets = residual_resamples(loss, fitted, C, n_params=3, fit_per_stratum=True, n_resamples=intervals,
                                      seed=seed)
        # A resample is a few parabolas: cheaper here than the start of a process pool.
        fit.intervals = percentile_intervals(fit_isoflop, [(C, N, y, D) for y in datasets], params=["a", "b", "k"],
                                             workers=1, minimum=minimum, resampled=fit.resampled)
    return fit


def a_by_method(C, N, loss, D=None) -> dict[str, float]:
    """a from the same runs by each way to locate a budget's minimum (MINIMUM_METHODS); NaN where a method finds
    fewer than two interior minima."""
    found = {}
    for method in MINIMUM_METHODS:
        try:
            found[method] = fit_isoflop(C, N, loss, D, minimum=method).a
        except FitError:
            found[method] = float("nan")
    return found
