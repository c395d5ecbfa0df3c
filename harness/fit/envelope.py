"""Chinchilla approach 1 (Hoffmann et al. 2022, sec. 3.1): the lower envelope of loss over FLOPs across training
curves, the model size on it per FLOP value, and power laws N_opt ~ C^a, D_opt ~ C^b."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.fit.bootstrap import with_interval
from harness.fit.points import FitError, positive_array


@dataclass
class EnvelopeFit:
    a: float                 # N_opt ~ C^a along the envelope
    b: float                 # D_opt ~ C^b
    k: float                 # N_opt = k * C^a
    envelope: pd.DataFrame   # per FLOP value: flops, loss, N_opt, D_opt
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high) when asked for
    resampled: list = field(default_factory=list, repr=False)   # the bootstrap resamples' fits

    def predict(self, C, interval: float | None = None):
        """N_opt for compute C (with `interval`: and its interval from the bootstrap)."""
        return with_interval(self, self.k * np.asarray(C, dtype=float) ** self.a, lambda fit: fit.predict(C), interval)


def fit_envelope(curves: pd.DataFrame, *, points: int = 1500, intervals: int = 0, seed: int = 0) -> EnvelopeFit:
    """`curves`: one row per evaluation with columns run, N, tokens, flops, loss.

    At `points` log-spaced FLOP values, each run's loss is interpolated (linearly in log FLOPs, within the run's
    own range only); the lowest is the envelope, and its run's N (and the tokens it had seen) are N_opt and D_opt.
    Chinchilla fitted 1500 such points. As there, the intermediate points of a run with a cosine schedule sit
    above what a run ending there would reach, which biases the envelope toward longer schedules.
    `intervals`: that many bootstrap resamples of whole runs (a curve is resampled as a unit) for 95% intervals.
    """
    missing = {"run", "N", "tokens", "flops", "loss"} - set(curves.columns)
    if missing:
        raise FitError(f"curves lack the columns {sorted(missing)}")
    for column in ("N", "tokens", "flops", "loss"):
        positive_array(curves[column], column)
    if curves["N"].nunique() < 2:
        raise FitError(f"an envelope needs runs of at least 2 model sizes, got {curves['N'].nunique()}")
    grid = np.geomspace(curves["flops"].min(), curves["flops"].max(), points)
    log_grid = np.log(grid)
    best_loss = np.full(points, np.inf)
    best_n, best_d = np.full(points, np.nan), np.full(points, np.nan)
    for _, run in curves.sort_values("flops").groupby("run"):
        if len(run) < 2:
            continue
        log_f = np.log(run["flops"].to_numpy())
        inside = (log_grid >= log_f[0]) & (log_grid <= log_f[-1])
        loss = np.interp(log_grid[inside], log_f, run["loss"].to_numpy())
        tokens = np.exp(np.interp(log_grid[inside], log_f, np.log(run["tokens"].to_numpy())))
        better = loss < best_loss[inside]
        where = np.flatnonzero(inside)[better]
        best_loss[where], best_n[where], best_d[where] = loss[better], run["N"].iloc[0], tokens[better]
    found = np.isfinite(best_loss)
    envelope = pd.DataFrame({"flops": grid[found], "loss": best_loss[found], "N_opt": best_n[found], "D_opt": best_d[found]})
    if envelope["N_opt"].nunique() < 2:
        raise FitError("one model size is best at every FLOP value: the envelope does not move, add smaller/larger models")
    a, log_k = np.polyfit(np.log(envelope["flops"]), np.log(envelope["N_opt"]), 1)
    b, _ = np.polyfit(np.log(envelope["flops"]), np.log(envelope["D_opt"]), 1)
    fit = EnvelopeFit(a=float(a), b=float(b), k=float(np.exp(log_k)), envelope=envelope)
    if intervals:
        runs = curves["run"].unique()
        rng = np.random.default_rng(seed)
        draws = []
        for _ in range(intervals):
            picked = rng.choice(runs, len(runs))
            resample = pd.concat([curves[curves["run"] == run].assign(run=i) for i, run in enumerate(picked)])
            try:
                draws.append(fit_envelope(resample, points=points))
            except FitError:
                continue
        if draws:
            fit.resampled = draws
            fit.intervals = {name: tuple(np.percentile([getattr(d, name) for d in draws], [2.5, 97.5])) for name in ("a", "b")}
            fit.intervals["_failed"] = intervals - len(draws)
    return fit
