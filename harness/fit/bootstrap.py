"""Bootstrap intervals for every law: resampling (cases or residuals, within strata), refits in worker processes or
batched through the minimiser, percentile intervals, and a fitted law's prediction with its interval."""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields

import numpy as np
import torch

from harness.fit.minimise import lbfgs
from harness.fit.points import FitError


def with_interval(fit, value, of, interval: float | None):
    """`value` alone, or with `interval` (e.g. 0.95): (value, low, high), the percentiles of `of(resample)` over the
    fits of the fit's bootstrap resamples (`fit.resampled`, kept when it was fitted with intervals)."""
    if interval is None:
        return value
    if not fit.resampled:
        raise FitError(f"{type(fit).__name__}.predict(..., interval=) needs the fit's bootstrap: fit with intervals=N")
    tail = (1 - interval) / 2 * 100
    low, high = np.percentile(np.array([of(resample) for resample in fit.resampled]), [tail, 100 - tail], axis=0)
    return value, low, high


# A resample is refitted from this many starts: the fit's optimum and the best ends of the grid's other basins on the
# original points (distinct_ends; with `init`: that fit and the grid's starts that score lowest on the new points).
# From the optimum alone L-BFGS stays in its basin and the intervals come out too narrow. The summed Huber loss is
# kinked at every point whose residual is within delta, so starts stall a little apart on its floor; the grid's 64
# lowest ends were mostly such copies of the optimum. On 40 resamples of Epoch's Chinchilla points, 16 distinct
# ends came within 1.2e-7 of the full 4500-start grid's objective (64 lowest ends: 6e-6) at a quarter of the cost,
# and 1000-resample intervals moved in their fourth digit. From a nearby optimum the summed Huber gradients can sit
# under the default gtol, so refits stop on tighter tolerances.
RESAMPLE_STARTS = 16
REFIT_TOLERANCES = {"gtol": 1e-8, "ftol": 1e-11}
# Starts x resamples per batch of refits: enough to fill the vector units, few enough to stay in cache-sized arrays.
BATCH_ROWS = 8192


def one_blas_thread() -> None:
    """Worker initialiser: a refit works on small arrays; threaded BLAS and torch in every worker just spin."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    torch.set_num_threads(1)


def distinct_ends(ends: np.ndarray, values: np.ndarray, count: int = RESAMPLE_STARTS, apart: float = 1e-2) -> np.ndarray:
    """The `count` lowest of a multi-start fit's ends that lie in different basins: each kept end differs from every
    lower kept one by more than `apart` in some parameter (logs and exponents, so a relative 1%), the lowest first."""
    kept = []
    for at in np.argsort(values):
        if np.isfinite(values[at]) and all(np.max(np.abs(ends[at] - ends[k])) > apart for k in kept):
            kept.append(at)
            if len(kept) == count:
                break
    return ends[kept]


def refit_resamples(objective_of, fit_of, log_losses: np.ndarray, starts: np.ndarray,
                    tolerances: dict = REFIT_TOLERANCES) -> list:
    """A law refitted on each row of `log_losses` (bootstrap resamples) from every one of `starts`, in batches of
    resamples x starts stepped together: `objective_of(targets)` is the law's batched objective for one row of
    log losses per start, `fit_of(theta, objective, log_loss)` its fit from the best start of a resample.
    `tolerances`: the refits' stopping tests, for an objective on the scale of the summed Huber loss."""
    fits = []
    per_batch = max(1, BATCH_ROWS // len(starts))
    for first in range(0, len(log_losses), per_batch):
        batch = log_losses[first:first + per_batch]
        minima = lbfgs(objective_of(np.repeat(batch, len(starts), axis=0)), np.tile(starts, (len(batch), 1)),
                       **tolerances)
        values = minima.value.reshape(len(batch), len(starts))
        for i, best in enumerate(np.argmin(values, axis=1)):
            fits.append(fit_of(minima.x[i * len(starts) + best], float(values[i, best]), batch[i]))
    return fits


def _refit(job):
    fit_fn, arrays, kwargs = job
    try:
        return fit_fn(*arrays, **kwargs)
    except FitError:
        return None


def percentile_intervals(fit_fn, datasets: list, *, level: float = 0.95, params=None, workers: int | None = None,
                         resampled: list | None = None, **kwargs) -> dict:
    """Refit on each resampled data set (a tuple of arrays) in `workers` processes; percentile intervals.

    Returns {parameter: (low, high)} for the fit's float attributes (or `params`); data sets the fit rejects
    (e.g. a budget left without an interior minimum) are skipped and counted under "_failed". The resamples' fits
    are appended to `resampled` when given (what predict(..., interval=) reads)."""
    jobs = [(fit_fn, arrays, kwargs) for arrays in datasets]
    workers = workers or os.cpu_count() or 1
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=one_blas_thread) as pool:
            fits = list(pool.map(_refit, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        fits = [_refit(job) for job in jobs]
    good = [f for f in fits if f is not None]
    if resampled is not None:
        resampled.extend(good)
    return percentiles(good, len(jobs), params, level)


def percentiles(good: list, tried: int, params=None, level: float = 0.95) -> dict:
    """{parameter: (low, high)} over the resamples' fits for the fit's float attributes (or `params`), and the
    count of resamples that failed to fit under "_failed"."""
    if not good:
        raise FitError(f"every one of {tried} bootstrap resamples failed to fit")
    names = params or [f.name for f in fields(good[0]) if f.type in ("float", float) and f.name != "objective"]
    names += [p for p in ("a", "b") if params is None and hasattr(good[0], p) and p not in names]
    tail = (1 - level) / 2 * 100
    result = {name: tuple(np.percentile([getattr(f, name) for f in good], [tail, 100 - tail])) for name in names}
    result["_failed"] = tried - len(good)
    return result


def residual_resamples(y, fitted, strata, *, n_params: int, fit_per_stratum: bool, n_resamples: int,
                       seed: int) -> list[np.ndarray]:
    """Fixed-design residual bootstrap: fitted + residuals drawn with replacement within each stratum (all points
    when `strata` is None). A fit's residuals are smaller than its errors by sqrt((n - p) / n) on average, so they
    are scaled by sqrt(n / (n - p)): n and p per stratum when each stratum has its own fit of `n_params`
    (approach 2's parabolas), over all points for one fit. Points without a fitted value keep their measured y."""
    y, fitted = np.asarray(y, float), np.asarray(fitted, float)
    groups = np.zeros(len(y)) if strata is None else np.asarray(strata)
    has_fit = np.isfinite(fitted)
    members = [at for at in (np.flatnonzero((groups == g) & has_fit) for g in np.unique(groups)) if len(at)]
    total = int(has_fit.sum())
    scaled = []
    for at in members:
        n = len(at) if fit_per_stratum else total
        scaled.append((y[at] - fitted[at]) * np.sqrt(n / (n - n_params)) if n > n_params else np.zeros(len(at)))
    rng = np.random.default_rng(seed)
    datasets = []
    for _ in range(n_resamples):
        draw = y.copy()
        for at, residuals in zip(members, scaled):
            draw[at] = fitted[at] + rng.choice(residuals, len(at))
        datasets.append(draw)
    return datasets


def bootstrap(fit_fn, *arrays, n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
              params=None, workers: int | None = None, strata=None, resampled: list | None = None, **kwargs) -> dict:
    """Percentile intervals: refit on `n_resamples` resamples of the points (with replacement, seeded; within
    each of `strata` when given, so every stratum keeps its count). See percentile_intervals."""
    arrays = [np.asarray(a, float) for a in arrays]
    groups = np.zeros(len(arrays[0])) if strata is None else np.asarray(strata)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    rng = np.random.default_rng(seed)
    datasets = []
    for _ in range(n_resamples):
        indices = np.concatenate([rng.choice(at, len(at)) for at in members])
        datasets.append(tuple(a[indices] for a in arrays))
    return percentile_intervals(fit_fn, datasets, level=level, params=params, workers=workers, resampled=resampled,
                                **kwargs)
