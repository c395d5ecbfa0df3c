"""Scaling-law fits on stored results.

fit_power_law  y = E + A * x^-alpha (or A * x^-alpha), least squares on log y with a soft-L1 (robust) loss, several starts.
fit_isoflop    Chinchilla approach 2 (Hoffmann et al. 2022, sec. 3.2): per compute budget a parabola of loss in
               log N, its minimum N_opt; then N_opt = k * C^a and D_opt = C / (6 N_opt) ~ C^b.
fit_envelope   Chinchilla approach 1 (sec. 3.1): the lower envelope of loss over FLOPs across training curves, the
               model size on it per FLOP value, and power laws N_opt ~ C^a, D_opt ~ C^b.
fit_parametric Chinchilla approach 3 (sec. 3.3): L = E + A/N^alpha + B/D^beta, the Huber loss of log L summed
               over points, L-BFGS from the paper's grid of starts.
bootstrap      resampling confidence intervals for any of them.
"""
from __future__ import annotations

import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields

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
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high) when asked for

    def predict(self, x) -> np.ndarray:
        return self.E + self.A * np.asarray(x, dtype=float) ** -self.alpha


def fit_power_law(x, y, *, irreducible: bool = True, intervals: int = 0, seed: int = 0) -> PowerLawFit:
    """`intervals`: that many bootstrap resamples for 95% intervals on the fit (0: none)."""
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
    fit = PowerLawFit(A=float(np.exp(log_a)), alpha=float(alpha), E=float(np.exp(best.x[2])) if irreducible else 0.0)
    if intervals:
        fit.intervals = bootstrap(fit_power_law, x, y, n_resamples=intervals, seed=seed, irreducible=irreducible,
                                  params=["A", "alpha", "E"] if irreducible else ["A", "alpha"])
    return fit


@dataclass
class IsoFlopFit:
    a: float                 # N_opt ~ C^a
    b: float                 # D_opt ~ C^b
    k: float                 # N_opt = k * C^a
    minima: pd.DataFrame     # one row per budget: C, N_opt, D_opt, loss_opt, interior, curvature
    parabolas: dict = field(default_factory=dict)   # C -> (c2, c1, c0) of loss = c2 (ln N)^2 + c1 ln N + c0
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high) when asked for

    def predict(self, C) -> np.ndarray:
        """N_opt for compute C."""
        return self.k * np.asarray(C, dtype=float) ** self.a


def fit_isoflop(C, N, loss, *, intervals: int = 0, seed: int = 0) -> IsoFlopFit:
    """`intervals`: that many bootstrap resamples of the runs for 95% intervals on a, b and k (0: none)."""
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
    fit = IsoFlopFit(a=float(a), b=float(b), k=float(np.exp(log_k)), minima=minima, parabolas=parabolas)
    if intervals:
        fit.intervals = bootstrap(fit_isoflop, C, N, loss, n_resamples=intervals, seed=seed, params=["a", "b", "k"])
    return fit


# --- approach 1 ---------------------------------------------------------------------------------------------

@dataclass
class EnvelopeFit:
    a: float                 # N_opt ~ C^a along the envelope
    b: float                 # D_opt ~ C^b
    k: float                 # N_opt = k * C^a
    envelope: pd.DataFrame   # per FLOP value: flops, loss, N_opt, D_opt
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high) when asked for

    def predict(self, C) -> np.ndarray:
        """N_opt for compute C."""
        return self.k * np.asarray(C, dtype=float) ** self.a


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
        _as_positive_array(curves[column], column)
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
            fit.intervals = {name: tuple(np.percentile([getattr(d, name) for d in draws], [2.5, 97.5])) for name in ("a", "b")}
            fit.intervals["_failed"] = intervals - len(draws)
    return fit


# --- approach 3 ---------------------------------------------------------------------------------------------
# Chinchilla's grid of starts (Hoffmann et al. 2022, app. D.2): alpha, beta in {0, 0.5, ..., 2},
# e = log E in {-1, -0.5, ..., 1}, a = log A and b = log B in {0, 5, ..., 25}: 4500 starts.
CHINCHILLA_STARTS = np.array(list(itertools.product(
    np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))))


@dataclass
class ParametricFit:
    E: float
    A: float
    B: float
    alpha: float
    beta: float
    objective: float            # the summed Huber loss at the optimum
    n_points: int
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high), filled by bootstrap

    @property
    def a(self) -> float:
        """N_opt ~ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ~ C^b."""
        return self.alpha / (self.alpha + self.beta)

    def predict(self, N, D) -> np.ndarray:
        return self.E + self.A / np.asarray(N, float) ** self.alpha + self.B / np.asarray(D, float) ** self.beta

    def compute_optimal(self, C):
        """(N_opt, D_opt) minimising the fitted loss under C = 6 N D (Hoffmann et al. 2022, eq. 4)."""
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        C = np.asarray(C, float)
        return G * (C / 6) ** self.a, (C / 6) ** self.b / G

    @property
    def theta(self) -> np.ndarray:
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])


def huber_objective(theta, log_n, log_d, log_loss, delta):
    """Sum over points of Huber_delta(log L_pred - log L), L_pred by log-sum-exp, and its gradient."""
    a, b, e, alpha, beta = theta
    z_n, z_d = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(z_n, z_d), e)
    x_n, x_d, x_e = np.exp(z_n - top), np.exp(z_d - top), np.exp(e - top)
    total = x_n + x_d + x_e
    r = top + np.log(total) - log_loss
    inside = np.abs(r) <= delta
    value = np.where(inside, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta)).sum()
    slope = np.where(inside, r, delta * np.sign(r)) / total
    g_n, g_d = slope * x_n, slope * x_d
    # Elementwise sums, not BLAS dot products: BLAS threads in several worker processes fight over the cores.
    return value, np.array([g_n.sum(), g_d.sum(), (slope * x_e).sum(), -(g_n * log_n).sum(), -(g_d * log_d).sum()])


def _one_blas_thread() -> None:
    """Worker initialiser: scipy's L-BFGS-B calls BLAS on 5-vectors; threaded BLAS in every worker just spins."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)


def _minimise_from(starts, log_n, log_d, log_loss, delta, options=None):
    """L-BFGS from each start in turn; the best (objective, theta)."""
    best = (np.inf, None)
    for start in starts:
        result = optimize.minimize(huber_objective, start, args=(log_n, log_d, log_loss, delta), jac=True,
                                   method="L-BFGS-B", options=options)
        if result.fun < best[0]:
            best = (float(result.fun), result.x)
    return best


def _check_points(arrays: dict, n_params: int) -> list[np.ndarray]:
    checked = [_as_positive_array(v, name) for name, v in arrays.items()]
    if len({len(v) for v in checked}) != 1:
        raise FitError(f"{', '.join(arrays)} differ in length ({', '.join(str(len(v)) for v in checked)})")
    if len(checked[0]) <= n_params:
        raise FitError(f"{len(checked[0])} points cannot fit {n_params} parameters (need at least {n_params + 1})")
    return checked


def fit_parametric(N, D, loss, *, huber_delta: float = 1e-3, init: ParametricFit | None = None,
                   workers: int | None = None, intervals: int = 0, seed: int = 0) -> ParametricFit:
    """L = E + A/N^alpha + B/D^beta as Chinchilla fitted it: the Huber loss (delta 1e-3) of log-space residuals,
    summed, not averaged (an average makes the gradients ~240x smaller and scipy's L-BFGS stops after a couple
    of iterations near its start, the known cause of the paper's unreproducible numbers), minimised with L-BFGS
    from all 4500 grid starts in `workers` processes (default: every core). `init` starts from one earlier fit
    instead (what bootstrap resamples do). `intervals`: that many bootstrap resamples for 95% intervals (0: none).
    """
    N, D, loss = _check_points({"N": N, "D": D, "loss": loss}, 5)
    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)
    if np.ptp(log_n + log_d) < 1e-9:
        raise FitError("every point has the same compute C = 6 N D: one budget cannot separate the N and D terms")
    if init is not None:
        # From a nearby optimum the summed Huber gradients (~1e-5) sit under scipy's default gtol: tighten it,
        # or a resample would stop where it started and the bootstrap intervals would collapse.
        objective, theta = _minimise_from([init.theta], log_n, log_d, log_loss, huber_delta,
                                          {"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    else:
        workers = workers or os.cpu_count() or 1
        if workers == 1:
            objective, theta = _minimise_from(CHINCHILLA_STARTS, log_n, log_d, log_loss, huber_delta)
        else:
            shares = np.array_split(CHINCHILLA_STARTS, workers)
            with ProcessPoolExecutor(workers, initializer=_one_blas_thread) as pool:
                found = list(pool.map(_minimise_from, shares, *([x] * workers for x in (log_n, log_d, log_loss, huber_delta))))
            objective, theta = min(found, key=lambda pair: pair[0])
    a, b, e, alpha, beta = theta
    with np.errstate(over="ignore"):  # an unidentified fit can run log A off to where A is inf: report it as such
        fit = ParametricFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                            beta=float(beta), objective=objective, n_points=len(N))
    if intervals:
        fit.intervals = bootstrap(fit_parametric, N, D, loss, n_resamples=intervals, seed=seed, init=fit,
                                  huber_delta=huber_delta, workers=workers)
    return fit


# --- bootstrap --------------------------------------------------------------------------------------------------

def _refit(job):
    fit_fn, arrays, indices, kwargs = job
    try:
        return fit_fn(*(a[indices] for a in arrays), **kwargs)
    except FitError:
        return None


def bootstrap(fit_fn, *arrays, n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
              params=None, workers: int | None = None, **kwargs) -> dict:
    """Percentile intervals: refit on `n_resamples` resamples of the points (with replacement, seeded).

    Returns {parameter: (low, high)} for the fit's float attributes (or `params`); resamples the fit rejects
    (e.g. a budget left with too few sizes) are skipped and counted under "_failed".
    """
    arrays = [np.asarray(a, float) for a in arrays]
    rng = np.random.default_rng(seed)
    samples = [rng.integers(0, len(arrays[0]), len(arrays[0])) for _ in range(n_resamples)]
    jobs = [(fit_fn, arrays, indices, kwargs) for indices in samples]
    workers = workers or os.cpu_count() or 1
    if workers > 1:
        with ProcessPoolExecutor(workers, initializer=_one_blas_thread) as pool:
            fits = list(pool.map(_refit, jobs, chunksize=max(1, n_resamples // (4 * workers))))
    else:
        fits = [_refit(job) for job in jobs]
    good = [f for f in fits if f is not None]
    if not good:
        raise FitError(f"every one of {n_resamples} bootstrap resamples failed to fit")
    names = params or [f.name for f in fields(good[0]) if f.type in ("float", float) and f.name != "objective"]
    names += [p for p in ("a", "b") if params is None and hasattr(good[0], p) and p not in names]
    tail = (1 - level) / 2 * 100
    result = {name: tuple(np.percentile([getattr(f, name) for f in good], [tail, 100 - tail])) for name in names}
    result["_failed"] = len(fits) - len(good)
    return result
