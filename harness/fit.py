"""Scaling-law fits on stored results.

fit_power_law  y = E + A * x^-alpha (or A * x^-alpha), least squares on log y with a soft-L1 (robust) loss, several starts.
fit_isoflop    Chinchilla approach 2 (Hoffmann et al. 2022, sec. 3.2): per compute budget a parabola of loss in
               log N, its minimum N_opt and the tokens D_opt the budget's runs trained there; N_opt = k C^a, D_opt ~ C^b.
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
    intervals: dict = field(default_factory=dict)   # parameter -> (low, high) when asked for
    resampled: list = field(default_factory=list, repr=False)   # the bootstrap resamples' fits

    def predict(self, C, interval: float | None = None):
        """N_opt for compute C (with `interval`: and its interval from the bootstrap)."""
        return with_interval(self, self.k * np.asarray(C, dtype=float) ** self.a, lambda fit: fit.predict(C), interval)


def _budget_minimum(log_n: np.ndarray, loss: np.ndarray, log_d: np.ndarray) -> dict:
    """One budget's parabola of loss in log N and, where its vertex is interior, N_opt and the tokens trained there."""
    if len(np.unique(log_n)) < 3:
        return {"interior": False, "why": f"{len(np.unique(log_n))} model sizes (a parabola needs 3)"}
    c2, c1, c0 = np.polyfit(log_n, loss, 2)
    vertex = -c1 / (2 * c2) if c2 > 0 else np.nan
    # Interior: the parabola opens upward, its vertex lies inside the sizes tried, and the measured losses
    # bracket it (the best run is neither the smallest nor the largest model).
    best = log_n[np.argmin(loss)]
    bracketed = log_n.min() < best < log_n.max()
    row = {"curvature": float(c2), "parabola": (c2, c1, c0)}
    if not (c2 > 0 and log_n.min() <= vertex <= log_n.max() and bracketed):
        if c2 <= 0:
            why = "loss is not convex in log N"
        elif bracketed:
            why = (f"the parabola's vertex lies {'below' if vertex < log_n.min() else 'above'} the sizes tried though the "
                   "best run is inside them: the losses are not a parabola over this range of N")
        else:
            why = (f"the {'smallest' if best == log_n.min() else 'largest'} model is best: the minimum lies outside "
                   "the sizes tried, extend the grid")
        return {**row, "interior": False, "why": why}
    order = np.argsort(log_n)
    # The tokens the budget's runs trained, interpolated (log-log) between the two sizes around N_opt.
    log_d_opt = np.interp(vertex, log_n[order], log_d[order])
    return {**row, "interior": True, "why": "", "N_opt": float(np.exp(vertex)), "D_opt": float(np.exp(log_d_opt)),
            "loss_opt": float(np.polyval([c2, c1, c0], vertex))}


def fit_isoflop(C, N, loss, D=None, *, intervals: int = 0, seed: int = 0) -> IsoFlopFit:
    """`D`: the tokens each run trained. D_opt is read off them at N_opt, so it lies within the tokens the budget's
    runs trained; without D it is taken as C/(6N) per run, the 6ND convention (right only when C was counted so).
    `intervals`: that many bootstrap resamples for 95% intervals on a, b and k (0: none): the sizes of each
    budget stay, and each run's loss is its budget's parabola plus a residual drawn from that budget's
    (a fixed-design residual bootstrap, residuals scaled by sqrt(n / (n - 3)) for the parabola's 3 parameters)."""
    C, N, loss = (_as_positive_array(v, name) for v, name in ((C, "C"), (N, "N"), (loss, "loss")))
    D = C / (6 * N) if D is None else _as_positive_array(D, "D")
    if not len(C) == len(N) == len(loss) == len(D):
        raise FitError(f"C, N, loss and D differ in length ({len(C)}, {len(N)}, {len(loss)}, {len(D)})")
    budgets = np.unique(C)
    if len(budgets) < 2:
        raise FitError(f"an IsoFLOP fit needs at least 2 compute budgets, got {len(budgets)}")
    rows, parabolas = [], {}
    for budget in budgets:
        at = C == budget
        row = _budget_minimum(np.log(N[at]), loss[at], np.log(D[at]))
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
    fit = IsoFlopFit(a=float(a), b=float(b), k=float(np.exp(log_k)), minima=minima, parabolas=parabolas)
    if intervals:
        fitted = np.array([np.polyval(parabolas[float(c)], np.log(n)) if float(c) in parabolas else np.nan
                           for c, n in zip(C, N)])
        datasets = residual_resamples(loss, fitted, C, n_params=3, fit_per_stratum=True, n_resamples=intervals,
                                      seed=seed)
        # A resample is a few parabolas: cheaper here than the start of a process pool.
        fit.intervals = percentile_intervals(fit_isoflop, [(C, N, y, D) for y in datasets], params=["a", "b", "k"], workers=1,
                                             resampled=fit.resampled)
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
    """Worker initialiser: scipy's L-BFGS-B calls BLAS on 5-vectors; threaded BLAS in every worker just spins."""
    from threadpoolctl import threadpool_limits
    threadpool_limits(1)


def _minimise_from(starts, log_n, log_d, log_loss, delta, options=None):
    """L-BFGS from each start in turn (four parameters: tied exponents); the best (objective, theta)."""
    best = (np.inf, None)
    for start in starts:
        objective = tied_objective if len(start) == 4 else huber_objective
        result = optimize.minimize(objective, start, args=(log_n, log_d, log_loss, delta), jac=True,
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


# A resample's fit restarts from the full-data optimum and from this many of the grid's starts that score best on
# the resample: from the full-data optimum alone, L-BFGS stays in its basin and the intervals come out too narrow.
RESAMPLE_STARTS = 8


def identification(theta: np.ndarray, log_n, log_d, log_loss, tied: bool = False) -> str:
    """Why the points do not pin the fitted law down, or "" when they do. From the Gauss-Newton covariance of the
    parameters at the optimum, s^2 (J^T J)^-1 with J the derivatives of log L_pred and s^2 the residual variance:
    the law is not identified when log E's standard error exceeds 1 (E not known within a factor e: the points do
    not separate the irreducible loss from the power terms) or an exponent's exceeds the exponent itself. Such an
    optimum lies on a flat valley: its parameters trade off and move with the last bits of the arithmetic."""
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
    variance = residuals @ residuals / max(1, len(log_loss) - jacobian.shape[1])
    try:
        errors = np.sqrt(np.abs(np.diag(variance * np.linalg.inv(jacobian.T @ jacobian))))
        errors = np.append(errors, errors[3]) if tied else errors
    except np.linalg.LinAlgError:
        return "the law's derivatives at the optimum are linearly dependent: its parameters trade off"
    if not errors[2] <= 1:
        return (f"E = {np.exp(e):.3g} with a standard error of {errors[2]:.2g} in log E: the points do not separate the "
                "irreducible loss from the power terms, so the parameters trade off")
    for name, value, error in (("alpha", alpha, errors[3]), ("beta", beta, errors[4])):
        if not error <= abs(value):
            return f"{name} = {value:.3g} with a standard error of {error:.2g}: the points do not pin {name} down"
    return ""


def grid_objectives(starts: np.ndarray, log_n, log_d, log_loss, delta: float) -> np.ndarray:
    """The summed Huber objective at every start at once (rows of theta = log A, log B, log E, alpha, beta)."""
    a, b, e, alpha, beta = (column[:, None] for column in starts.T)
    r = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e) - log_loss
    return _huber(r, delta).sum(axis=1)


def fit_parametric(N, D, loss, *, tie_exponents: bool = False, huber_delta: float = 1e-3,
                   init: ParametricFit | None = None, workers: int | None = None, intervals: int = 0, seed: int = 0,
                   strata=None) -> ParametricFit:
    """L = E + A/N^alpha + B/D^beta as Chinchilla fitted it: the Huber loss (delta 1e-3) of log-space residuals,
    summed, not averaged (an average makes the gradients ~240x smaller and scipy's L-BFGS stops after a couple
    of iterations near its start, the known cause of the paper's unreproducible numbers), minimised with L-BFGS
    from all 4500 grid starts in `workers` processes (default: every core). `init` (what a bootstrap resample
    passes) starts from that earlier fit and the RESAMPLE_STARTS grid starts that score best on these points.

    `intervals`: that many bootstrap resamples for 95% intervals (0: none): the points stay, and each log loss
    is the fitted law's plus a residual drawn from the fit's log residuals (within each of `strata`, e.g. the
    compute budgets, when given), scaled by sqrt(n / (n - 5)) for the five fitted parameters.
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
    if init is not None:
        # From a nearby optimum the summed Huber gradients (~1e-5) sit under scipy's default gtol: tighten it,
        # or a resample would stop where it started and the bootstrap intervals would collapse.
        scores = grid_objectives(np.array([untied(start) for start in grid]), log_n, log_d, log_loss, huber_delta)
        starts = [init.theta, *grid[np.argsort(scores)[:RESAMPLE_STARTS]]]
        objective, theta = _minimise_from(starts, log_n, log_d, log_loss, huber_delta,
                                          {"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    else:
        workers = workers or os.cpu_count() or 1
        if workers == 1:
            objective, theta = _minimise_from(grid, log_n, log_d, log_loss, huber_delta)
        else:
            shares = np.array_split(grid, workers)
            with ProcessPoolExecutor(workers, initializer=_one_blas_thread) as pool:
                found = list(pool.map(_minimise_from, shares, *([x] * workers for x in (log_n, log_d, log_loss, huber_delta))))
            objective, theta = min(found, key=lambda pair: pair[0])
    a, b, e, alpha, beta = untied(theta)
    with np.errstate(over="ignore"):  # an unidentified fit can run log A off to where A is inf: report it as such
        fit = ParametricFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                            beta=float(beta), objective=objective, n_points=len(N), tie_exponents=tie_exponents)
    fit.unidentified = identification(untied(theta), log_n, log_d, log_loss, tied=tie_exponents)
    if intervals:
        fitted = np.log(fit.predict(N, D))
        datasets = residual_resamples(log_loss, fitted, strata, n_params=n_params, fit_per_stratum=False,
                                      n_resamples=intervals, seed=seed)
        fit.intervals = percentile_intervals(fit_parametric, [(N, D, np.exp(y)) for y in datasets], init=fit,
                                             huber_delta=huber_delta, workers=workers, tie_exponents=tie_exponents,
                                             resampled=fit.resampled)
    return fit


# --- data-constrained: Muennighoff et al. 2023 ---------------------------------------------------------------
# "Scaling Data-Constrained Language Models", eq. 5-7: repeated data is worth less than fresh data, and parameters
# beyond what the unique data supports are worth less than needed ones. With U_D unique tokens seen and R_D = D / U_D - 1
# repetitions, the effective data is D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)); with U_N = min(N, the base law's
# compute-optimal N for U_D tokens) and R_N = N / U_N - 1, the effective parameters N' likewise with R_N*. The loss
# is the base law at (N', D'). The paper fits the base law on single-epoch runs, then R_D* and R_N* with it fixed
# (their fit: R_D* = 15.4, R_N* = 5.3); fit_data_constrained does so, then refines all seven parameters together on
# every point, since a single-epoch run larger than its tokens support is discounted too (R_N > 0).
DATA_CONSTRAINED_STARTS = np.array(list(itertools.product(np.log([0.5, 2, 8, 32, 128]), np.log([0.5, 2, 8, 32, 128]))))


def _effective(unique: np.ndarray, total: np.ndarray, r_star: float) -> np.ndarray:
    repeats = np.maximum(total / unique - 1, 0.0)
    return unique + unique * r_star * -np.expm1(-repeats / r_star)


@dataclass
class DataConstrainedFit:
    base: ParametricFit         # L(N, D) fitted on the single-epoch points
    R_D_star: float
    R_N_star: float
    objective: float            # the summed Huber loss of log residuals over every point
    n_points: int
    intervals: dict = field(default_factory=dict)

    def __getattr__(self, name):   # the base law's attributes: E, A, B, alpha, beta, a, b
        if name in ("E", "A", "B", "alpha", "beta", "a", "b"):
            return getattr(self.base, name)
        raise AttributeError(name)

    def effective(self, N, D, U) -> tuple[np.ndarray, np.ndarray]:
        """(N', D'): the parameters and tokens a run is worth, U its unique tokens."""
        N, D, U = (np.asarray(x, float) for x in (N, D, U))
        unique_d = np.minimum(D, U)
        G = (self.base.alpha * self.base.A / (self.base.beta * self.base.B)) ** (1 / (self.base.alpha + self.base.beta))
        # the base law's compute-optimal N for unique_d tokens: D_opt = (C/6)^b / G, N_opt = G (C/6)^a
        unique_n = np.minimum(N, G * (unique_d * G) ** (self.base.a / self.base.b))
        return _effective(unique_n, N, self.R_N_star), _effective(unique_d, D, self.R_D_star)

    def predict(self, N, D, U) -> np.ndarray:
        return self.base.predict(*self.effective(N, D, U))


def fit_data_constrained(N, D, U, loss, *, huber_delta: float = 1e-3, workers: int | None = None) -> DataConstrainedFit:
    """Muennighoff et al.'s data-constrained law: the base law (fit_parametric) on the points that saw no token twice
    (D <= U), then R_D* and R_N* on every point by the same summed Huber loss of log residuals, L-BFGS over log R*
    from a grid of 25 starts, then the seven together from there."""
    N, D, U, loss = _check_points({"N": N, "D": D, "U": U, "loss": loss}, 7)
    single = D <= U * (1 + 1e-9)
    if single.sum() < 6 or single.all():
        raise FitError(f"a data-constrained fit needs at least 6 single-epoch points (D <= U) and some repeated ones; "
                       f"got {int(single.sum())} single-epoch of {len(N)}")
    base = fit_parametric(N[single], D[single], loss[single], huber_delta=huber_delta, workers=workers)
    log_loss = np.log(loss)
    trial = DataConstrainedFit(base=base, R_D_star=1.0, R_N_star=1.0, objective=np.inf, n_points=len(N))

    def objective(log_r):
        trial.R_D_star, trial.R_N_star = np.exp(log_r)
        return float(_huber(np.log(trial.predict(N, D, U)) - log_loss, huber_delta).sum())

    best = min((optimize.minimize(objective, start, method="L-BFGS-B", bounds=[(-5, 10), (-5, 10)])
                for start in DATA_CONSTRAINED_STARTS), key=lambda found: found.fun)

    def law(params) -> DataConstrainedFit:
        a, b, e, alpha, beta, r_d, r_n = params
        with np.errstate(over="ignore"):
            fitted = ParametricFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                                   beta=float(beta), objective=np.nan, n_points=int(single.sum()))
        return DataConstrainedFit(base=fitted, R_D_star=float(np.exp(r_d)), R_N_star=float(np.exp(r_n)),
                                  objective=np.nan, n_points=len(N))

    def joint(params) -> float:
        with np.errstate(all="ignore"):
            value = _huber(np.log(law(params).predict(N, D, U)) - log_loss, huber_delta).sum()
        return float(value) if np.isfinite(value) else 1e30

    start = np.append(base.theta, best.x)
    refined = optimize.minimize(joint, start, method="L-BFGS-B", options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 5000})
    fit = law(refined.x if refined.fun < best.fun else start)
    fit.objective = min(float(refined.fun), float(best.fun))
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

    def predict(self, N, D, interval: float | None = None):
        n, d = np.asarray(N, float), np.asarray(D, float)
        value = ((self.N_c / n) ** (self.alpha_N / self.alpha_D) + self.D_c / d) ** self.alpha_D
        return with_interval(self, value, lambda fit: fit.predict(N, D), interval)


def kaplan_objective(theta, log_n, log_d, log_loss, delta):
    """Summed Huber of log L_pred - log L for theta = (log N_c, log D_c, alpha_N, alpha_D), and its gradient:
    log L_pred = alpha_D * logaddexp(u, v), u = (alpha_N / alpha_D)(log N_c - log N), v = log D_c - log D."""
    c_n, c_d, alpha_n, alpha_d = theta
    ratio = alpha_n / alpha_d
    u, v = ratio * (c_n - log_n), c_d - log_d
    s = np.logaddexp(u, v)
    w_u, w_v = np.exp(u - s), np.exp(v - s)
    r = alpha_d * s - log_loss
    slope = np.where(np.abs(r) <= delta, r, delta * np.sign(r))
    gradient = np.array([(slope * alpha_n * w_u).sum(), (slope * alpha_d * w_v).sum(),
                         (slope * w_u * (c_n - log_n)).sum(), (slope * (s - w_u * u)).sum()])
    return _huber(r, delta).sum(), gradient


def fit_kaplan_nd(N, D, loss, *, huber_delta: float = 1e-3, intervals: int = 0, seed: int = 0,
                  workers: int | None = None) -> KaplanFit:
    """Kaplan et al.'s L(N, D) (eq. 1.5) by the same estimator as approach 3: the summed Huber loss (delta 1e-3) of
    log residuals, L-BFGS from each of KAPLAN_STARTS (exponents kept positive). `intervals`: that many resamples of
    the points (with replacement) for 95% percentile intervals."""
    N, D, loss = _check_points({"N": N, "D": D, "loss": loss}, 4)
    args = (np.log(N), np.log(D), np.log(loss), huber_delta)
    best = (np.inf, None)
    bounds = [(None, None), (None, None), (1e-4, 10.0), (1e-4, 10.0)]
    for start in KAPLAN_STARTS:
        found = optimize.minimize(kaplan_objective, start, args=args, jac=True, method="L-BFGS-B", bounds=bounds)
        if found.fun < best[0]:
            best = (float(found.fun), found.x)
    objective, (c_n, c_d, alpha_n, alpha_d) = best
    fit = KaplanFit(N_c=float(np.exp(c_n)), D_c=float(np.exp(c_d)), alpha_N=float(alpha_n), alpha_D=float(alpha_d),
                    objective=objective, n_points=len(N))
    if intervals:
        fit.intervals = bootstrap(fit_kaplan_nd, N, D, loss, n_resamples=intervals, seed=seed, workers=workers,
                                  huber_delta=huber_delta, resampled=fit.resampled)
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
    if not good:
        raise FitError(f"every one of {len(jobs)} bootstrap resamples failed to fit")
    if resampled is not None:
        resampled.extend(good)
    names = params or [f.name for f in fields(good[0]) if f.type in ("float", float) and f.name != "objective"]
    names += [p for p in ("a", "b") if params is None and hasattr(good[0], p) and p not in names]
    tail = (1 - level) / 2 * 100
    result = {name: tuple(np.percentile([getattr(f, name) for f in good], [tail, 100 - tail])) for name in names}
    result["_failed"] = len(fits) - len(good)
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
