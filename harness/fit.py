"""Scaling-law fits on stored results.

fit_power_law  y = E + A * x^-alpha (or A * x^-alpha), least squares on log y with a soft-L1 (robust) loss, several starts.
fit_isoflop    Chinchilla approach 2 (Hoffmann et al. 2022, sec. 3.2): per compute budget the minimum of loss in
               log N (a local quadratic around the lowest loss by default; the paper's one parabola, a window or
               Akima's interpolant on request), N_opt there and the tokens D_opt the budget's runs trained there;
               N_opt = k C^a, D_opt ~ C^b.
fit_envelope   Chinchilla approach 1 (sec. 3.1): the lower envelope of loss over FLOPs across training curves, the
               model size on it per FLOP value, and power laws N_opt ~ C^a, D_opt ~ C^b.
fit_parametric Chinchilla approach 3 (sec. 3.3): L = E + A/N^alpha + B/D^beta, the Huber loss of log L summed
               over points, L-BFGS from the paper's grid of starts.
bootstrap      resampling confidence intervals for any of them (cases, optionally within strata);
               approaches 2 and 3 resample residuals within each budget (a fixed design: the sizes tried stay).

C is one quantity throughout: the training FLOPs a run spent, as the caller counts them (the harness: exact
FLOPs, harness/flops.py). Approach 2 reads D_opt off the tokens trained, not C/(6 N_opt); approach 3's
compute-optimal frontier takes the same FLOPs per token (`flops_per_token`), 6N only when none is given.
"""
from __future__ import annotations

import contextlib
import functools
import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import torch
from scipy import optimize

from harness.minimise import lbfgs


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


@dataclass
class PowerLawFit:
    A: float
    alpha: float
    E: float = 0.0
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high) when asked for
    resampled: list = field(default_factory=list, repr=False)   # the bootstrap resamples' fits

    def predict(self, x, interval: float | None = None):
        value = self.E + self.A * np.asarray(x, dtype=float) ** -self.alpha
        return with_interval(self, value, lambda fit: fit.predict(x), interval)


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
                                  params=["A", "alpha", "E"] if irreducible else ["A", "alpha"], resampled=fit.resampled)
    return fit


@dataclass
class IsoFlopFit:
    a: float                 # N_opt ~ C^a
    b: float                 # D_opt ~ C^b
    k: float                 # N_opt = k * C^a
    minima: pd.DataFrame     # one row per budget: C, N_opt, D_opt, loss_opt, interior, curvature, why
    parabolas: dict = field(default_factory=dict)   # C -> (c2, c1, c0) of loss = c2 (ln N)^2 + c1 ln N + c0
    minimum: str = "local"   # how each budget's minimum was located (MINIMUM_METHODS)
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high) when asked for
    resampled: list = field(default_factory=list, repr=False)   # the bootstrap resamples' fits

    def predict(self, C, interval: float | None = None):
        """N_opt for compute C (with `interval`: and its interval from the bootstrap)."""
        return with_interval(self, self.k * np.asarray(C, dtype=float) ** self.a, lambda fit: fit.predict(C), interval)


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


def _interior_minimum(log_x: np.ndarray, loss: np.ndarray, method: str, axis: str) -> dict:
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


def _budget_minimum(log_n: np.ndarray, loss: np.ndarray, log_d: np.ndarray, method: str = "local") -> dict:
    """One budget's minimum in ln N by `method` (MINIMUM_METHODS) and, where it is interior, N_opt and the tokens
    trained there."""
    row = _interior_minimum(log_n, loss, method, "N")
    vertex = row.pop("vertex", None)
    if not row["interior"]:
        return row
    order = np.argsort(log_n)
    # The tokens the budget's runs trained, interpolated (log-log) between the two sizes around N_opt.
    log_d_opt = np.interp(vertex, log_n[order], log_d[order])
    return {**row, "N_opt": float(np.exp(vertex)), "D_opt": float(np.exp(log_d_opt)),
            "loss_opt": float(np.polyval(row["parabola"], vertex))}


def fit_isoflop(C, N, loss, D=None, *, minimum: str = "local", intervals: int = 0, seed: int = 0) -> IsoFlopFit:
    """`minimum`: how each budget's minimum is located (MINIMUM_METHODS; "local" by default, "parabola" as Chinchilla).
    `D`: the tokens each run trained. D_opt is read off them at N_opt, so it lies within the tokens the budget's
    runs trained; without D it is taken as C/(6N) per run, the 6ND convention (right only when C was counted so).
    `intervals`: that many bootstrap resamples for 95% intervals on a, b and k (0: none): the sizes of each
    budget stay, and each run's loss is its budget's fitted quadratic plus a residual drawn from that budget's
    (a fixed-design residual bootstrap, residuals scaled by sqrt(n / (n - 3)) for the parabola's 3 parameters; with
    a local minimum the far sizes' residuals also hold the quadratic's misfit there, which widens the interval)."""
    C, N, loss = (_as_positive_array(v, name) for v, name in ((C, "C"), (N, "N"), (loss, "loss")))
    D = C / (6 * N) if D is None else _as_positive_array(D, "D")
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
        raise FitError(f"only {len(good)} of {len(budgets)} budgets have an interior minimum; "
                       f"a power law needs 2: {'; '.join(f'C={r.C:.3g}: {r.why}' for r in minima.itertuples() if not r.interior)}")
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


# --- approach 1 ---------------------------------------------------------------------------------------------

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
            fit.resampled = draws
            fit.intervals = {name: tuple(np.percentile([getattr(d, name) for d in draws], [2.5, 97.5])) for name in ("a", "b")}
            fit.intervals["_failed"] = intervals - len(draws)
    return fit


# --- approach 3 ---------------------------------------------------------------------------------------------
# Chinchilla's grid of starts (Hoffmann et al. 2022, app. D.2): alpha, beta in {0, 0.5, ..., 2},
# e = log E in {-1, -0.5, ..., 1}, a = log A and b = log B in {0, 5, ..., 25}: 4500 starts.
CHINCHILLA_STARTS = np.array(list(itertools.product(
    np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5), np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))))
# With tied exponents (alpha = beta): the grid's starts on that diagonal, theta = (log A, log B, log E, alpha): 900.
TIED_STARTS = CHINCHILLA_STARTS[CHINCHILLA_STARTS[:, 3] == CHINCHILLA_STARTS[:, 4], :4]


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
    unidentified: str = ""      # why the points do not pin the five parameters down ("" when they do)
    tie_exponents: bool = False  # fitted with alpha = beta
    resampled: list = field(default_factory=list, repr=False)   # the bootstrap resamples' fits

    @property
    def identified(self) -> bool:
        return not self.unidentified

    @property
    def a(self) -> float:
        """N_opt ~ C^a."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """D_opt ~ C^b."""
        return self.alpha / (self.alpha + self.beta)

    def predict(self, N, D, interval: float | None = None):
        """The fitted loss at (N, D) (with `interval`: and its interval from the bootstrap)."""
        value = self.E + self.A / np.asarray(N, float) ** self.alpha + self.B / np.asarray(D, float) ** self.beta
        return with_interval(self, value, lambda fit: fit.predict(N, D), interval)

    def compute_optimal(self, C, flops_per_token=None):
        """(N_opt, D_opt) minimising the fitted loss at training FLOPs C = flops_per_token(N) x D.

        Without `flops_per_token`, C = 6 N D and the optimum is closed-form (Hoffmann et al. 2022, eq. 4). With it
        (the FLOPs per token the runs were counted with), the minimum over log N is found numerically, so approach
        3's frontier uses the same C as approaches 1 and 2."""
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        C = np.asarray(C, float)
        n_6nd, d_6nd = G * (C / 6) ** self.a, (C / 6) ** self.b / G
        if flops_per_token is None:
            return n_6nd, d_6nd

        def optimum(budget: float, guess: float) -> float:
            def loss_at(log_n):
                n = np.exp(log_n)
                return float(self.predict(n, budget / flops_per_token(n)))
            found = optimize.minimize_scalar(loss_at, bounds=(np.log(guess) - 12, np.log(guess) + 12), method="bounded",
                                             options={"xatol": 1e-10})
            return float(np.exp(found.x))

        n_opt = np.vectorize(optimum)(C, n_6nd)
        return n_opt, C / flops_per_token(n_opt)

    def exponents_at(self, C, flops_per_token) -> tuple[float, float]:
        """Slopes of log N_opt and log D_opt against log C over these budgets, with C counted as the runs were."""
        n_opt, d_opt = self.compute_optimal(np.asarray(C, float), flops_per_token)
        log_c = np.log(np.asarray(C, float))
        return float(np.polyfit(log_c, np.log(n_opt), 1)[0]), float(np.polyfit(log_c, np.log(d_opt), 1)[0])

    @property
    def theta(self) -> np.ndarray:
        """The fitted parameters as the optimiser moves them: log A, log B, log E, alpha (and beta unless tied)."""
        theta = np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])
        return theta[:4] if self.tie_exponents else theta


def _huber(r, delta):
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def huber_objective(theta, log_n, log_d, log_loss, delta):
    """Sum over points of Huber_delta(log L_pred - log L), L_pred by log-sum-exp, and its gradient."""
    a, b, e, alpha, beta = theta
    z_n, z_d = a - alpha * log_n, b - beta * log_d
    top = np.maximum(np.maximum(z_n, z_d), e)
    x_n, x_d, x_e = np.exp(z_n - top), np.exp(z_d - top), np.exp(e - top)
    total = x_n + x_d + x_e
    r = top + np.log(total) - log_loss
    inside = np.abs(r) <= delta
    value = _huber(r, delta).sum()
    slope = np.where(inside, r, delta * np.sign(r)) / total
    g_n, g_d = slope * x_n, slope * x_d
    # Elementwise sums, not BLAS dot products: BLAS threads in several worker processes fight over the cores.
    return value, np.array([g_n.sum(), g_d.sum(), (slope * x_e).sum(), -(g_n * log_n).sum(), -(g_d * log_d).sum()])


def untied(theta: np.ndarray) -> np.ndarray:
    """A tied theta (log A, log B, log E, alpha) as the five parameters, beta = alpha; a five-parameter one as is."""
    return np.append(theta, theta[3]) if len(theta) == 4 else theta


def tied_objective(theta, log_n, log_d, log_loss, delta):
    """huber_objective with beta = alpha: the same sum, its gradient in alpha the sum of the two exponents' gradients."""
    value, gradient = huber_objective(untied(theta), log_n, log_d, log_loss, delta)
    return value, np.append(gradient[:3], gradient[3] + gradient[4])


def _one_blas_thread() -> None:
    """Worker initialiser: a refit works on small arrays; threaded BLAS and torch in every worker just spin."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)
    torch.set_num_threads(1)


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


def huber_objectives(log_n, log_d, log_loss, delta: float, tied: bool = False):
    """huber_objective at many theta at once, as minimise.lbfgs calls it: objective(theta, rows) with theta's rows
    (log A, log B, log E, alpha, beta), or (log A, log B, log E, alpha) when `tied`. `log_loss` is one row of log
    losses, or one row per start (each start fitting its own bootstrap resample), indexed by `rows`. In torch,
    float64: one pass over starts x points, on every core. Each term is exp(z) with z clamped to +-700 (a run-away
    start's value stays finite and is rejected by the line search), the sum of the three terms' logarithm taken
    directly: at the optimum this equals the log-sum-exp of huber_objective to the last bits."""
    log_n, log_d = torch.as_tensor(log_n, dtype=torch.float64), torch.as_tensor(log_d, dtype=torch.float64)
    targets = torch.as_tensor(np.asarray(log_loss, float))
    to_n = torch.stack([torch.ones_like(log_n), -log_n])   # (log A, alpha) -> log A - alpha log N
    to_d = torch.stack([torch.ones_like(log_d), -log_d])

    def objective(theta: np.ndarray, rows: np.ndarray):
        with torch_threads_for(len(theta) * targets.shape[-1]):
            return evaluate(theta, rows)

    def evaluate(theta: np.ndarray, rows: np.ndarray):
        theta = torch.from_numpy(np.ascontiguousarray(theta))
        if tied:
            theta = torch.cat([theta, theta[:, 3:4]], dim=1)
        x_n = (theta[:, [0, 3]] @ to_n).clamp_(-700, 700).exp_()
        x_d = (theta[:, [1, 4]] @ to_d).clamp_(-700, 700).exp_()
        x_e = theta[:, 2:3].clamp(-700, 700).exp()
        total = (x_n + x_d).add_(x_e)
        r = total.log().sub_(targets[torch.from_numpy(rows)] if targets.ndim == 2 else targets)
        clipped = r.clamp(-delta, delta)           # Huber's derivative
        value = (clipped * r).sum(1) - 0.5 * (clipped * clipped).sum(1)
        slope = clipped.div_(total)
        from_n, from_d = (slope * x_n) @ to_n.T, x_d.mul_(slope) @ to_d.T
        gradient = torch.stack([from_n[:, 0], from_d[:, 0], x_e[:, 0] * slope.sum(1), from_n[:, 1], from_d[:, 1]], 1)
        if tied:
            gradient = torch.cat([gradient[:, :3], gradient[:, 3:4] + gradient[:, 4:5]], dim=1)
        return value.numpy(), gradient.numpy()

    return objective


def _check_points(arrays: dict, n_params: int) -> list[np.ndarray]:
    checked = [_as_positive_array(v, name) for name, v in arrays.items()]
    if len({len(v) for v in checked}) != 1:
        raise FitError(f"{', '.join(arrays)} differ in length ({', '.join(str(len(v)) for v in checked)})")
    if len(checked[0]) <= n_params:
        raise FitError(f"{len(checked[0])} points cannot fit {n_params} parameters (need at least {n_params + 1})")
    return checked


# A resample is refitted from this many starts: the fit's optimum and the grid's starts whose fits on the original
# points ended lowest (with `init`: that fit and the grid's starts that score lowest on the new points). From the
# optimum alone L-BFGS stays in its basin and the intervals come out too narrow. From a nearby optimum the summed
# Huber gradients can sit under the default gtol, so refits stop on tighter tolerances (on Epoch's Chinchilla points,
# tightening them a further 1000x moves no interval's end in its fourth digit).
RESAMPLE_STARTS = 64
REFIT_TOLERANCES = {"gtol": 1e-8, "ftol": 1e-11}
# Starts x resamples per batch of refits: enough to fill the vector units, few enough to stay in cache-sized arrays.
BATCH_ROWS = 8192


def _standard_errors(jacobian: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """The parameters' standard errors from the Gauss-Newton covariance s^2 (J^T J)^-1 at an optimum, J the
    derivatives of log L_pred and s^2 the residual variance (raises LinAlgError when J's columns are dependent)."""
    variance = residuals @ residuals / max(1, len(residuals) - jacobian.shape[1])
    return np.sqrt(np.abs(np.diag(variance * np.linalg.inv(jacobian.T @ jacobian))))


def _loose_exponent(exponents: dict, errors) -> str:
    """Why an exponent is not pinned down (its standard error exceeds the exponent itself), or ""."""
    for (name, value), error in zip(exponents.items(), errors):
        if not error <= abs(value):
            return f"{name} = {value:.3g} with a standard error of {error:.2g}: the points do not pin {name} down"
    return ""


def identification(theta: np.ndarray, log_n, log_d, log_loss, tied: bool = False) -> str:
    """Why the points do not pin the fitted law down, or "" when they do. From the parameters' standard errors at
    the optimum (_standard_errors): the law is not identified when log E's standard error exceeds 1 (E not known
    within a factor e: the points do not separate the irreducible loss from the power terms) or an exponent's
    exceeds the exponent itself. Such an optimum lies on a flat valley: its parameters trade off and move with the
    last bits of the arithmetic."""
    a, b, e, alpha, beta = theta
    if not np.all(np.isfinite(theta)) or abs(a) > 700 or abs(b) > 700:
        return "a power term ran off to infinity against its exponent"
    z = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    weights = np.exp(z - z.max(axis=0))
    weights /= weights.sum(axis=0)  # each term's share of L_pred
    exponent_columns = ([-weights[0] * log_n - weights[1] * log_d] if tied else
                        [-weights[0] * log_n, -weights[1] * log_d])
    jacobian = np.stack([weights[0], weights[1], weights[2], *exponent_columns], axis=1)
    residuals = np.log(np.exp(z - z.max(axis=0)).sum(axis=0)) + z.max(axis=0) - log_loss
    try:
        errors = _standard_errors(jacobian, residuals)
        errors = np.append(errors, errors[3]) if tied else errors
    except np.linalg.LinAlgError:
        return "the law's derivatives at the optimum are linearly dependent: its parameters trade off"
    if not errors[2] <= 1:
        return (f"E = {np.exp(e):.3g} with a standard error of {errors[2]:.2g} in log E: the points do not separate the "
                "irreducible loss from the power terms, so the parameters trade off")
    return _loose_exponent({"alpha": alpha, "beta": beta}, errors[3:])


def grid_objectives(starts: np.ndarray, log_n, log_d, log_loss, delta: float) -> np.ndarray:
    """The summed Huber objective at every start at once (rows of theta = log A, log B, log E, alpha, beta)."""
    a, b, e, alpha, beta = (column[:, None] for column in starts.T)
    r = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e) - log_loss
    return _huber(r, delta).sum(axis=1)


def fit_parametric(N, D, loss, *, tie_exponents: bool = False, huber_delta: float = 1e-3,
                   init: ParametricFit | None = None, intervals: int = 0, seed: int = 0, strata=None) -> ParametricFit:
    """L = E + A/N^alpha + B/D^beta as Chinchilla fitted it: the Huber loss (delta 1e-3) of log-space residuals,
    summed, not averaged (an average makes the gradients ~240x smaller and scipy's L-BFGS stops after a couple
    of iterations near its start, the known cause of the paper's unreproducible numbers), minimised with L-BFGS
    from all 4500 grid starts, stepped together (harness.minimise). `init` (a fit of nearby points) starts from that
    fit and the RESAMPLE_STARTS - 1 grid starts that score best on these points.

    `intervals`: that many bootstrap resamples for 95% intervals (0: none): the points stay, and each log loss
    is the fitted law's plus a residual drawn from the fit's log residuals (within each of `strata`, e.g. the
    compute budgets, when given), scaled by sqrt(n / (n - 5)) for the five fitted parameters. Each resample is
    refitted from RESAMPLE_STARTS starts, all resamples' starts stepped together.
    `unidentified` says why, when the points do not pin the law down (see identification).

    `tie_exponents`: alpha = beta, four parameters, the form Muennighoff et al. (2023, "Scaling Data-Constrained
    Language Models") and Gadre et al. (2024, "Language models scale reliably with over-training and on downstream
    tasks") fit, the latter to predict runs trained on many tokens per parameter; Chinchilla's grid restricted to
    its alpha = beta diagonal (900 starts).
    """
    n_params = 4 if tie_exponents else 5
    N, D, loss = _check_points({"N": N, "D": D, "loss": loss}, n_params)
    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)
    if np.ptp(log_n + log_d) < 1e-9:
        raise FitError("every point has the same compute C = 6 N D: one budget cannot separate the N and D terms")
    grid = TIED_STARTS if tie_exponents else CHINCHILLA_STARTS
    objective = huber_objectives(log_n, log_d, log_loss, huber_delta, tied=tie_exponents)
    if init is None:
        minima = lbfgs(objective, grid)
        best = int(np.argmin(minima.value))
        resample_starts = np.vstack([minima.x[best], grid[np.argsort(minima.value)[:RESAMPLE_STARTS - 1]]])
    else:
        scores = grid_objectives(np.array([untied(start) for start in grid]), log_n, log_d, log_loss, huber_delta)
        nearest = grid[np.argsort(scores)[:RESAMPLE_STARTS - 1]]
        minima = lbfgs(objective, np.vstack([init.theta, nearest]), **REFIT_TOLERANCES)
        best = int(np.argmin(minima.value))
        resample_starts = np.vstack([minima.x[best], nearest])
    fit = _parametric_fit(minima.x[best], float(minima.value[best]), log_n, log_d, log_loss, tie_exponents)
    if intervals:
        fitted = np.log(fit.predict(N, D))
        datasets = residual_resamples(log_loss, fitted, strata, n_params=n_params, fit_per_stratum=False,
                                      n_resamples=intervals, seed=seed)
        fit.resampled = refit_resamples(
            lambda targets: huber_objectives(log_n, log_d, targets, huber_delta, tied=tie_exponents),
            lambda theta, value, row: _parametric_fit(theta, value, log_n, log_d, row, tie_exponents),
            np.array(datasets), resample_starts)
        fit.intervals = _percentiles(fit.resampled, intervals, ["E", "A", "B", "alpha", "beta", "a", "b"])
    return fit


def _parametric_fit(theta, objective: float, log_n, log_d, log_loss, tied: bool) -> ParametricFit:
    a, b, e, alpha, beta = untied(theta)
    with np.errstate(over="ignore"):  # an unidentified fit can run log A off to where A is inf: report it as such
        fit = ParametricFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                            beta=float(beta), objective=objective, n_points=len(log_n), tie_exponents=tied)
    fit.unidentified = identification(untied(theta), log_n, log_d, log_loss, tied=tied)
    return fit


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


# --- data-constrained: Muennighoff et al. 2023 ---------------------------------------------------------------
# "Scaling Data-Constrained Language Models", eq. 5-7: repeated data is worth less than fresh data, and parameters
# beyond what the unique data supports are worth less than needed ones. With U_D unique tokens seen and R_D = D / U_D - 1
# repetitions, the effective data is D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)); with U_N = min(N, the base law's
# compute-optimal N for U_D tokens) and R_N = N / U_N - 1, the effective parameters N' likewise with R_N*. The loss
# is the base law at (N', D'). The paper fits the base law on single-epoch runs, then R_D* and R_N* with it fixed
# (their fit: R_D* = 15.4, R_N* = 5.3); fit_data_constrained does so, then refines all seven parameters together on
# every point, since a single-epoch run larger than its tokens support is discounted too (R_N > 0).
DATA_CONSTRAINED_STARTS = np.array(list(itertools.product(np.log([0.5, 2, 8, 32, 128]), np.log([0.5, 2, 8, 32, 128]))))


def data_constrained_effective(params: torch.Tensor, log_n, log_d, log_u) -> tuple[torch.Tensor, torch.Tensor]:
    """(log N', log D') at each row of params (log A, log B, log E, alpha, beta, log R_D*, log R_N*), one column per
    point (N, D, U): the law's one home, in torch so that its fit differentiates it."""
    a, b, _, alpha, beta, log_r_d, log_r_n = params.T[:, :, None]
    log_unique_d = torch.minimum(log_d, log_u)
    # The base law's compute-optimal N for the unique tokens: N_opt = G (G D_opt)^(beta/alpha), with
    # G = (alpha A / (beta B))^(1 / (alpha + beta)) (Hoffmann et al. 2022, eq. 4).
    log_g = (torch.log(alpha) + a - torch.log(beta) - b) / (alpha + beta)
    log_unique_n = torch.minimum(log_n, log_g + beta / alpha * (log_g + log_unique_d))

    def log_effective(log_unique, log_total, log_r_star):
        repeats = torch.clamp(torch.exp(log_total - log_unique) - 1, min=0.0)
        r_star = torch.exp(log_r_star)
        return log_unique + torch.log1p(r_star * -torch.expm1(-repeats / r_star))

    return log_effective(log_unique_n, log_n, log_r_n), log_effective(log_unique_d, log_d, log_r_d)


def data_constrained_log_loss(params: torch.Tensor, log_n, log_d, log_u) -> torch.Tensor:
    """log L = log(E + A / N'^alpha + B / D'^beta) at each row of params, one column per point."""
    a, b, e, alpha, beta = params.T[:5, :, None]
    log_n_eff, log_d_eff = data_constrained_effective(params, log_n, log_d, log_u)
    terms = [a - alpha * log_n_eff, b - beta * log_d_eff]
    return torch.logsumexp(torch.stack(terms + [e.expand_as(terms[0])]), dim=0)


@dataclass
class DataConstrainedFit:
    base: ParametricFit         # L(N, D): E, A, B, alpha, beta (from the single-epoch points, then refined on all)
    R_D_star: float
    R_N_star: float
    objective: float            # the summed Huber loss of log residuals over every point
    n_points: int
    intervals: dict = field(default_factory=dict)
    resampled: list = field(default_factory=list, repr=False)   # the bootstrap resamples' fits

    def __getattr__(self, name):   # the base law's attributes: E, A, B, alpha, beta, a, b
        if name in ("E", "A", "B", "alpha", "beta", "a", "b"):
            return getattr(self.base, name)
        raise AttributeError(name)

    @property
    def theta(self) -> np.ndarray:
        return np.append(self.base.theta, np.log([self.R_D_star, self.R_N_star]))

    def effective(self, N, D, U) -> tuple[np.ndarray, np.ndarray]:
        """(N', D'): the parameters and tokens a run is worth, U its unique tokens."""
        N, D, U = np.broadcast_arrays(*(np.asarray(x, float) for x in (N, D, U)))
        columns = (torch.as_tensor(np.log(x).ravel()) for x in (N, D, U))
        log_n, log_d = data_constrained_effective(torch.as_tensor(self.theta)[None], *columns)
        return np.exp(log_n[0].numpy()).reshape(N.shape), np.exp(log_d[0].numpy()).reshape(N.shape)

    def predict(self, N, D, U, interval: float | None = None):
        """The loss of runs of N parameters that saw D tokens, U of them unique."""
        N, D, U = np.broadcast_arrays(*(np.asarray(x, float) for x in (N, D, U)))
        columns = (torch.as_tensor(np.log(x).ravel()) for x in (N, D, U))
        value = torch.exp(data_constrained_log_loss(torch.as_tensor(self.theta)[None], *columns))[0].numpy()
        return with_interval(self, value.reshape(N.shape), lambda fit: fit.predict(N, D, U), interval)


def _autograd_huber(log_loss_of, targets: np.ndarray, delta: float):
    """An objective for minimise.lbfgs from a law in torch: the summed Huber loss of log L(theta) - targets per
    row of theta, differentiated by autograd (a non-finite value rejects the step)."""
    targets = torch.as_tensor(targets)

    def objective(theta: np.ndarray, rows: np.ndarray):
        with torch_threads_for(len(theta) * targets.shape[-1]):
            return evaluate(theta)

    def evaluate(theta: np.ndarray):
        theta = torch.tensor(theta, requires_grad=True)
        r = log_loss_of(theta) - targets
        clipped = r.clamp(-delta, delta)
        value = (clipped * r).sum(1) - 0.5 * (clipped * clipped).sum(1)
        value.sum().backward()
        values = value.detach().numpy()
        return np.where(np.isnan(values), np.inf, values), torch.nan_to_num(theta.grad).numpy()

    return objective


def fit_data_constrained(N, D, U, loss, *, huber_delta: float = 1e-3, init: DataConstrainedFit | None = None,
                         intervals: int = 0, seed: int = 0, workers: int | None = None) -> DataConstrainedFit:
    """Muennighoff et al.'s data-constrained law: the base law (fit_parametric) on the points that saw no token twice
    (D <= U), then R_D* and R_N* on every point by the same summed Huber loss of log residuals from a grid of 25
    starts (log R* kept within [-5, 10]), then the seven together from there; all by the batched L-BFGS of
    harness.minimise. `init`: a fit of nearby points to start from (a bootstrap resample's refit).
    `intervals`: that many resamples of the log residuals for 95% intervals, refitted in `workers` processes."""
    N, D, U, loss = _check_points({"N": N, "D": D, "U": U, "loss": loss}, 7)
    single = D <= U * (1 + 1e-9)
    if single.sum() < 6 or single.all():
        raise FitError(f"a data-constrained fit needs at least 6 single-epoch points (D <= U) and some repeated ones; "
                       f"got {int(single.sum())} single-epoch of {len(N)}")
    base = fit_parametric(N[single], D[single], loss[single], huber_delta=huber_delta,
                          init=None if init is None else init.base)
    columns = [torch.as_tensor(np.log(x)) for x in (N, D, U)]
    log_loss = np.log(loss)
    fixed = torch.as_tensor(base.theta)

    def with_base(log_r: torch.Tensor) -> torch.Tensor:
        return data_constrained_log_loss(torch.cat([fixed.expand(len(log_r), 5), log_r.clamp(-5, 10)], dim=1), *columns)

    starts = DATA_CONSTRAINED_STARTS if init is None else np.vstack([init.theta[5:], DATA_CONSTRAINED_STARTS])
    stage = lbfgs(_autograd_huber(with_base, log_loss, huber_delta), starts)
    start = np.append(base.theta, np.clip(stage.x[np.argmin(stage.value)], -5, 10))
    joint = lbfgs(_autograd_huber(lambda theta: data_constrained_log_loss(theta, *columns), log_loss, huber_delta),
                  start[None], **REFIT_TOLERANCES)
    theta = joint.x[0] if joint.value[0] <= stage.value.min() else start
    fit = DataConstrainedFit(base=_parametric_fit(theta[:5], np.nan, np.log(N), np.log(D), log_loss, False),
                             R_D_star=float(np.exp(theta[5])), R_N_star=float(np.exp(theta[6])),
                             objective=float(min(joint.value[0], stage.value.min())), n_points=len(N))
    fit.base.unidentified = base.unidentified
    if intervals:
        datasets = residual_resamples(log_loss, np.log(fit.predict(N, D, U)), None, n_params=7, fit_per_stratum=False,
                                      n_resamples=intervals, seed=seed)
        fit.intervals = percentile_intervals(fit_data_constrained, [(N, D, U, np.exp(y)) for y in datasets], init=fit,
                                             huber_delta=huber_delta, workers=workers, resampled=fit.resampled,
                                             params=["R_D_star", "R_N_star", "E", "A", "B", "alpha", "beta"])
    return fit


# --- Kaplan's L(N, D) -------------------------------------------------------------------------------------------
# Kaplan et al. 2020, "Scaling Laws for Neural Language Models", eq. 1.5: L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D,
# no irreducible term. Their fit (Table 2): alpha_N 0.076, alpha_D 0.103, N_c 6.4e13, D_c 1.8e13 (non-embedding N).
# Starts: log N_c and log D_c over 0..50 in steps of 10, each exponent in {0.05, 0.1, 0.2, 0.4}: 576 starts.
KAPLAN_STARTS = np.array(list(itertools.product(np.arange(0, 60, 10.0), np.arange(0, 60, 10.0),
                                                (0.05, 0.1, 0.2, 0.4), (0.05, 0.1, 0.2, 0.4))))


@dataclass
class KaplanFit:
    N_c: float
    D_c: float
    alpha_N: float
    alpha_D: float
    objective: float            # the summed Huber loss of log residuals at the optimum
    n_points: int
    intervals: dict = field(default_factory=dict)
    resampled: list = field(default_factory=list, repr=False)   # the bootstrap resamples' fits
    unidentified: str = ""      # why the points do not pin the exponents down ("" when they do)

    @property
    def identified(self) -> bool:
        return not self.unidentified

    def predict(self, N, D, interval: float | None = None):
        n, d = np.asarray(N, float), np.asarray(D, float)
        value = ((self.N_c / n) ** (self.alpha_N / self.alpha_D) + self.D_c / d) ** self.alpha_D
        return with_interval(self, value, lambda fit: fit.predict(N, D), interval)


def kaplan_objectives(log_n, log_d, log_loss, delta: float):
    """The summed Huber of log L_pred - log L at many theta = (log N_c, log D_c, alpha_N, alpha_D) at once, and its
    gradient, as minimise.lbfgs calls it (`log_loss` one row, or one per start indexed by `rows`):
    log L_pred = alpha_D * logaddexp(u, v), u = (alpha_N / alpha_D)(log N_c - log N), v = log D_c - log D.
    A non-positive exponent is out of the law's domain: its value is infinite, so the line search steps back."""
    log_loss = np.asarray(log_loss, float)

    def objective(theta: np.ndarray, rows: np.ndarray):
        c_n, c_d, alpha_n, alpha_d = (column[:, None] for column in theta.T)
        u, v = alpha_n / alpha_d * (c_n - log_n), c_d - log_d
        s = np.logaddexp(u, v)
        w_u = np.exp(u - s)
        r = alpha_d * s - (log_loss[rows] if log_loss.ndim == 2 else log_loss)
        clipped = np.clip(r, -delta, delta)
        value = (clipped * r).sum(1) - 0.5 * (clipped * clipped).sum(1)
        gradient = np.stack([(clipped * alpha_n * w_u).sum(1), (clipped * alpha_d * (1 - w_u)).sum(1),
                             (clipped * w_u * (c_n - log_n)).sum(1), (clipped * (s - w_u * u)).sum(1)], axis=1)
        outside = (theta[:, 2] <= 0) | (theta[:, 3] <= 0)
        return np.where(outside, np.inf, value), np.where(outside[:, None], 0.0, gradient)

    return objective


def kaplan_identification(theta: np.ndarray, log_n, log_d, log_loss) -> str:
    """Why the points do not pin Kaplan's law down, or "": an exponent whose standard error (_standard_errors)
    exceeds the exponent itself, as for approach 3 (identification)."""
    c_n, c_d, alpha_n, alpha_d = theta
    u, v = alpha_n / alpha_d * (c_n - log_n), c_d - log_d
    s = np.logaddexp(u, v)
    w_u = np.exp(u - s)
    jacobian = np.stack([alpha_n * w_u, alpha_d * (1 - w_u), w_u * (c_n - log_n), s - w_u * u], axis=1)
    try:
        errors = _standard_errors(jacobian, alpha_d * s - log_loss)
    except np.linalg.LinAlgError:
        return "the law's derivatives at the optimum are linearly dependent: its parameters trade off"
    return _loose_exponent({"alpha_N": alpha_n, "alpha_D": alpha_d}, errors[2:])


def kaplan_objective(theta, log_n, log_d, log_loss, delta):
    """kaplan_objectives at one theta: (value, gradient)."""
    value, gradient = kaplan_objectives(log_n, log_d, log_loss, delta)(np.asarray(theta, float)[None], np.zeros(1, int))
    return value[0], gradient[0]


def fit_kaplan_nd(N, D, loss, *, huber_delta: float = 1e-3, intervals: int = 0, seed: int = 0) -> KaplanFit:
    """Kaplan et al.'s L(N, D) (eq. 1.5) by the same estimator as approach 3: the summed Huber loss (delta 1e-3) of
    log residuals, L-BFGS from all of KAPLAN_STARTS stepped together (exponents kept positive). `intervals`: that
    many resamples of the log residuals about the fit for 95% percentile intervals, each refitted from
    RESAMPLE_STARTS starts, as approach 3's. `unidentified` says why, when the points do not pin the exponents down
    (see kaplan_identification)."""
    N, D, loss = _check_points({"N": N, "D": D, "loss": loss}, 4)
    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)

    def objectives(targets):
        # Minimised in units of delta: the raw sum is ~1e-4, below the stopping tests' absolute floors (a change of
        # ftol * max(|f|, 1), a gradient of gtol), so starts stopped wherever they were, and the best of them moved
        # with the last bits of the arithmetic (the held-out prediction by up to 10% between two CPUs).
        objective = kaplan_objectives(log_n, log_d, targets, huber_delta)
        return lambda theta, rows: tuple(part / huber_delta for part in objective(theta, rows))

    minima = lbfgs(objectives(log_loss), KAPLAN_STARTS)
    best = int(np.argmin(minima.value))

    def kaplan_fit(theta, objective: float, _log_loss) -> KaplanFit:
        c_n, c_d, alpha_n, alpha_d = theta
        with np.errstate(over="ignore"):
            return KaplanFit(N_c=float(np.exp(c_n)), D_c=float(np.exp(c_d)), alpha_N=float(alpha_n),
                             alpha_D=float(alpha_d), objective=objective * huber_delta, n_points=len(N))

    fit = kaplan_fit(minima.x[best], float(minima.value[best]), log_loss)
    fit.unidentified = kaplan_identification(minima.x[best], log_n, log_d, log_loss)
    if intervals:
        datasets = residual_resamples(log_loss, np.log(fit.predict(N, D)), None, n_params=4, fit_per_stratum=False,
                                      n_resamples=intervals, seed=seed)
        starts = np.vstack([minima.x[best], KAPLAN_STARTS[np.argsort(minima.value)[:RESAMPLE_STARTS - 1]]])
        # the objective is in units of delta, so the refits' tolerances are too (tighter ones only lengthen the
        # crawl of starts along the flat valleys of resamples that do not pin the law down)
        fit.resampled = refit_resamples(objectives, kaplan_fit, np.array(datasets), starts,
                                        {name: value / huber_delta for name, value in REFIT_TOLERANCES.items()})
        fit.intervals = _percentiles(fit.resampled, intervals, ["N_c", "D_c", "alpha_N", "alpha_D"])
    return fit


# --- bootstrap --------------------------------------------------------------------------------------------------

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
        with ProcessPoolExecutor(workers, initializer=_one_blas_thread) as pool:
            fits = list(pool.map(_refit, jobs, chunksize=max(1, len(jobs) // (4 * workers))))
    else:
        fits = [_refit(job) for job in jobs]
    good = [f for f in fits if f is not None]
    if resampled is not None:
        resampled.extend(good)
    return _percentiles(good, len(jobs), params, level)


def _percentiles(good: list, tried: int, params=None, level: float = 0.95) -> dict:
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


# --- held-out prediction ----------------------------------------------------------------------------------------
# The law forms a table of runs can be fitted with, and the columns each reads: a form's fit takes those columns
# and the loss (and intervals=, seed=), and its predict the same columns (and interval=).
LAW_FORMS = {
    "chinchilla": (fit_parametric, ("N", "D")),
    "tied": (functools.partial(fit_parametric, tie_exponents=True), ("N", "D")),
    "kaplan": (fit_kaplan_nd, ("N", "D")),
    "data_constrained": (fit_data_constrained, ("N", "D", "U")),
}
LAW_NAMES = {"chinchilla": "E + A/N^alpha + B/D^beta", "tied": "E + A/N^alpha + B/D^alpha (tied exponents)",
             "kaplan": "Kaplan's [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
             "data_constrained": "Muennighoff et al.'s data-constrained law"}


@dataclass
class Holdout:
    law: str
    by: str
    fit: object                 # the law fitted on the points kept
    points: pd.DataFrame        # the held-out points: their columns, loss, predicted, low, high, error, inside
    n_fitted: int

    @property
    def mean_abs_error(self) -> float:
        """Mean |predicted / measured - 1| over the held-out points."""
        return float(self.points["error"].abs().mean())

    @property
    def coverage(self) -> float:
        """The share of held-out losses inside their predicted intervals (NaN without intervals)."""
        return float(self.points["inside"].astype(float).mean())


def holdout(frame: pd.DataFrame, law: str = "chinchilla", *, by: str = "N", largest: int = 1, interval: float = 0.95,
            intervals: int = 200, seed: int = 0) -> Holdout:
    """Fit `law` (LAW_FORMS) on every point but those at the `largest` largest values of column `by`, predict those,
    and compare: per held-out point the prediction, its `interval` from `intervals` bootstrap resamples, the relative
    error predicted / measured - 1 and whether the measured loss lies inside the interval (with intervals=0: no
    interval, and `inside` is NaN)."""
    if law not in LAW_FORMS:
        raise FitError(f"law={law!r} is not one of {', '.join(LAW_FORMS)}")
    fit_fn, columns = LAW_FORMS[law]
    missing = [c for c in (*columns, "loss", by) if c not in frame.columns]
    if missing:
        raise FitError(f"{law} needs the columns {', '.join(missing)}, which the table lacks")
    scales = np.sort(frame[by].unique())
    if len(scales) <= largest + 1:
        raise FitError(f"{by} takes {len(scales)} values: holding out the largest {largest} leaves too few scales to fit")
    held = frame[by] >= scales[-largest]
    train, test = frame[~held], frame[held]
    fit = fit_fn(*(train[c].to_numpy(float) for c in columns), train["loss"].to_numpy(float), intervals=intervals,
                 seed=seed)
    at = [test[c].to_numpy(float) for c in columns]
    predicted, low, high = (fit.predict(*at, interval=interval) if intervals else
                            (fit.predict(*at), np.full(len(test), np.nan), np.full(len(test), np.nan)))
    loss = test["loss"].to_numpy(float)
    points = test[[*dict.fromkeys([*columns, by])]].assign(
        loss=loss, predicted=predicted, low=low, high=high, error=predicted / loss - 1,
        inside=((low <= loss) & (loss <= high)) if intervals else np.nan).reset_index(drop=True)
    return Holdout(law=law, by=by, fit=fit, points=points, n_fitted=len(train))


def applicable_laws(frame: pd.DataFrame) -> dict[str, str]:
    """{law: why it cannot be fitted to this table} for the forms that cannot ("" for those that can)."""
    why = {}
    for law, (_, columns) in LAW_FORMS.items():
        missing = [c for c in columns if c not in frame.columns or frame[c].isna().any()]
        if missing:
            why[law] = f"no {', '.join(missing)} column"
        elif law == "data_constrained" and not (frame["D"] > frame["U"] * (1 + 1e-9)).any():
            why[law] = "no run saw a token twice (D <= U everywhere)"
        else:
            why[law] = ""
    return why


def compare_laws(frame: pd.DataFrame, *, by: str = "N", largest: int = 1, intervals: int = 200,
                 seed: int = 0) -> pd.DataFrame:
    """Every applicable law form (LAW_FORMS) held out on the same points (see holdout), ranked by mean absolute
    relative error of the held-out predictions, best first: law, held_out (points), fitted (points), mean and max
    |error|, coverage of the 95% intervals, whether the fit is identified, and why a form could not be compared or
    is not identified (its numbers then move with the last bits of the arithmetic)."""
    rows = []
    for law, why in applicable_laws(frame).items():
        row = {"law": law, "form": LAW_NAMES[law]}
        if why:
            rows.append({**row, "why": why})
            continue
        try:
            result = holdout(frame, law, by=by, largest=largest, intervals=intervals, seed=seed)
        except FitError as error:
            rows.append({**row, "why": str(error)})
            continue
        rows.append({**row, "held_out": len(result.points), "fitted": result.n_fitted,
                     "mean_abs_error": result.mean_abs_error, "max_abs_error": float(result.points["error"].abs().max()),
                     "coverage": result.coverage, "identified": result.fit.identified,
                     "why": "" if result.fit.identified else f"not identified: {result.fit.unidentified}"})
    table = pd.DataFrame(rows)
    if "mean_abs_error" not in table:
        table["mean_abs_error"] = np.nan
    return table.sort_values("mean_abs_error", na_position="last", kind="stable").reset_index(drop=True)


# --- learning-rate ladders ------------------------------------------------------------------------------------------

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
    row = _interior_minimum(log_lr, loss, "local", "lr")
    return {"interior": row["interior"], "why": row["why"], **({"curve": row["parabola"]} if "parabola" in row else {}),
            **({"lr_opt": float(np.exp(row["vertex"]))} if row["interior"] else {})}


def fit_lr_law(N, lr, loss, *, intervals: int = 1000, seed: int = 0) -> LrLawFit:
    """A learning-rate ladder's law: per model size (N) the optimum of loss against ln lr (_lr_optimum), then
    lr_opt = c N^-gamma by least squares in logs across the sizes whose optimum is interior. `intervals`: resamples of
    each size's residuals about its quadratic (a fixed-design residual bootstrap, as approach 2's); each resample's
    optima give per-size percentile intervals and a refit of c and gamma."""
    N, lr, loss = (_as_positive_array(v, name) for v, name in ((N, "N"), (lr, "lr"), (loss, "loss")))
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
