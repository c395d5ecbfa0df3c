"""Chinchilla approach 3 (Hoffmann et al. 2022, sec. 3.3): L = E + A/N^alpha + B/D^beta, the summed Huber loss of
log L, L-BFGS from the paper's grid of starts; with tied exponents (alpha = beta) as Muennighoff et al. and Gadre et
al. fit it. Whether the points pin the law down (standard errors at the optimum)."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import optimize

from harness.fit.bootstrap import (REFIT_TOLERANCES, RESAMPLE_STARTS, distinct_ends, percentiles, refit_resamples,
                                   residual_resamples, with_interval)
from harness.fit.minimise import lbfgs
from harness.fit.objective import summed_huber, torch_threads_for
from harness.fit.points import FitError, check_points


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
    resample_starts: np.ndarray | None = field(default=None, repr=False)   # where refits of resampled points start

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


def untied(theta: np.ndarray) -> np.ndarray:
    """A tied theta (log A, log B, log E, alpha) as the five parameters, beta = alpha; a five-parameter one as is."""
    return np.append(theta, theta[3]) if len(theta) == 4 else theta


def huber_objectives(log_n, log_d, log_loss, delta: float, tied: bool = False):
    """Approach 3's summed Huber loss of log L_pred - log L (objective.summed_huber) and its gradient at many theta
    at once, as minimise.lbfgs calls it: objective(theta, rows) with theta's rows
    (log A, log B, log E, alpha, beta), or (log A, log B, log E, alpha) when `tied`. `log_loss` is one row of log
    losses, or one row per start (each start fitting its own bootstrap resample), indexed by `rows`. In torch,
    float64: one pass over starts x points, on every core. Each term is exp(z) with z clamped to +-700 (a run-away
    start's value stays finite and is rejected by the line search), the sum of the three terms' logarithm taken
    directly: at the optimum this equals a log-sum-exp evaluation to the last bits (tested)."""
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
        value, clipped = summed_huber(r, delta)
        slope = clipped.div_(total)
        from_n, from_d = (slope * x_n) @ to_n.T, x_d.mul_(slope) @ to_d.T
        gradient = torch.stack([from_n[:, 0], from_d[:, 0], x_e[:, 0] * slope.sum(1), from_n[:, 1], from_d[:, 1]], 1)
        if tied:
            gradient = torch.cat([gradient[:, :3], gradient[:, 3:4] + gradient[:, 4:5]], dim=1)
        return value.numpy(), gradient.numpy()

    return objective


def standard_errors(jacobian: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """The parameters' standard errors from the Gauss-Newton covariance s^2 (J^T J)^-1 at an optimum, J the
    derivatives of log L_pred and s^2 the residual variance (raises LinAlgError when J's columns are dependent)."""
    variance = residuals @ residuals / max(1, len(residuals) - jacobian.shape[1])
    return np.sqrt(np.abs(np.diag(variance * np.linalg.inv(jacobian.T @ jacobian))))


def loose_exponent(exponents: dict, errors) -> str:
    """Why an exponent is not pinned down (its standard error exceeds the exponent itself), or ""."""
    for (name, value), error in zip(exponents.items(), errors):
        if not error <= abs(value):
            return f"{name} = {value:.3g} with a standard error of {error:.2g}: the points do not pin {name} down"
    return ""


def identification(theta: np.ndarray, log_n, log_d, log_loss, tied: bool = False) -> str:
    """Why the points do not pin the fitted law down, or "" when they do. From the parameters' standard errors at
    the optimum (standard_errors): the law is not identified when log E's standard error exceeds 1 (E not known
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
        errors = standard_errors(jacobian, residuals)
        errors = np.append(errors, errors[3]) if tied else errors
    except np.linalg.LinAlgError:
        return "the law's derivatives at the optimum are linearly dependent: its parameters trade off"
    if not errors[2] <= 1:
        return (f"E = {np.exp(e):.3g} with a standard error of {errors[2]:.2g} in log E: the points do not separate the "
                "irreducible loss from the power terms, so the parameters trade off")
    return loose_exponent({"alpha": alpha, "beta": beta}, errors[3:])


def grid_objectives(starts: np.ndarray, log_n, log_d, log_loss, delta: float) -> np.ndarray:
    """The summed Huber objective at every start at once (rows of theta = log A, log B, log E, alpha, beta)."""
    a, b, e, alpha, beta = (column[:, None] for column in starts.T)
    r = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e) - log_loss
    return summed_huber(r, delta)[0]


# The tied form's four parameters leave fewer basins: refitting each resample from the 8 distinct ends of its grid
# gave the same 1000-resample intervals to the fourth digit as 16 on Epoch's 240 points and on a synthetic IsoFLOP
# table (1% noise), in two thirds of the time (4.3 s -> 2.9 s on Epoch's, 2 cores). The untied form's moved (E's lower
# end 1.7899 -> 1.7907): it keeps 16.
TIED_RESAMPLE_STARTS = 8


def fit_parametric(N, D, loss, *, tie_exponents: bool = False, huber_delta: float = 1e-3,
                   init: ParametricFit | None = None, intervals: int = 0, seed: int = 0, strata=None) -> ParametricFit:
    """L = E + A/N^alpha + B/D^beta as Chinchilla fitted it: the Huber loss (delta 1e-3) of log-space residuals,
    summed, not averaged (an average makes the gradients ~240x smaller and scipy's L-BFGS stops after a couple
    of iterations near its start, the known cause of the paper's unreproducible numbers), minimised with L-BFGS
    from all 4500 grid starts, stepped together (harness.minimise). `init` (a fit of nearby points) starts from that
    fit and the grid starts that score best on these points (RESAMPLE_STARTS in all; TIED_RESAMPLE_STARTS tied).

    `intervals`: that many bootstrap resamples for 95% intervals (0: none): the points stay, and each log loss
    is the fitted law's plus a residual drawn from the fit's log residuals (within each of `strata`, e.g. the
    compute budgets, when given), scaled by sqrt(n / (n - 5)) for the five fitted parameters. Each resample is
    refitted from RESAMPLE_STARTS starts (TIED_RESAMPLE_STARTS tied), all resamples' starts stepped together.
    `unidentified` says why, when the points do not pin the law down (see identification).

    `tie_exponents`: alpha = beta, four parameters, the form Muennighoff et al. (2023, "Scaling Data-Constrained
    Language Models") and Gadre et al. (2024, "Language models scale reliably with over-training and on downstream
    tasks") fit, the latter to predict runs trained on many tokens per parameter; Chinchilla's grid restricted to
    its alpha = beta diagonal (900 starts).
    """
    n_params = 4 if tie_exponents else 5
    N, D, loss = check_points({"N": N, "D": D, "loss": loss}, n_params)
    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)
    if np.ptp(log_n + log_d) < 1e-9:
        raise FitError("every point has the same compute C = 6 N D: one budget cannot separate the N and D terms")
    grid = TIED_STARTS if tie_exponents else CHINCHILLA_STARTS
    objective = huber_objectives(log_n, log_d, log_loss, huber_delta, tied=tie_exponents)
    starts = TIED_RESAMPLE_STARTS if tie_exponents else RESAMPLE_STARTS
    if init is None:
        minima = lbfgs(objective, grid)
        # the grid's distinct ends run on to the tolerances a fit from `init` stops on, so the two reach one optimum
        # (on the default ones a held-out prediction moved 1e-4 between them, and with the CPU)
        minima = lbfgs(objective, distinct_ends(minima.x, minima.value, starts), **REFIT_TOLERANCES)
        best = int(np.argmin(minima.value))
        resample_starts = distinct_ends(minima.x, minima.value, starts)
    else:
        scores = grid_objectives(np.array([untied(start) for start in grid]), log_n, log_d, log_loss, huber_delta)
        nearest = grid[np.argsort(scores)[:starts - 1]]
        minima = lbfgs(objective, np.vstack([init.theta, nearest]), **REFIT_TOLERANCES)
        best = int(np.argmin(minima.value))
        resample_starts = np.vstack([minima.x[best], nearest])
    fit = parametric_fit_at(minima.x[best], float(minima.value[best]), log_n, log_d, log_loss, tie_exponents)
    fit.resample_starts = resample_starts
    if intervals:
        fitted = np.log(fit.predict(N, D))
        datasets = residual_resamples(log_loss, fitted, strata, n_params=n_params, fit_per_stratum=False,
                                      n_resamples=intervals, seed=seed)
        fit.resampled = refit_resamples(
            lambda targets: huber_objectives(log_n, log_d, targets, huber_delta, tied=tie_exponents),
            lambda theta, value, row: parametric_fit_at(theta, value, log_n, log_d, row, tie_exponents),
            np.array(datasets), resample_starts)
        fit.intervals = percentiles(fit.resampled, intervals, ["E", "A", "B", "alpha", "beta", "a", "b"])
    return fit


def parametric_from_theta(theta, objective: float, n_points: int, tied: bool = False) -> ParametricFit:
    """The law at theta = (log A, log B, log E, alpha[, beta])."""
    a, b, e, alpha, beta = untied(theta)
    with np.errstate(over="ignore"):  # an unidentified fit can run log A off to where A is inf: report it as such
        return ParametricFit(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha),
                             beta=float(beta), objective=objective, n_points=n_points, tie_exponents=tied)


def parametric_fit_at(theta, objective: float, log_n, log_d, log_loss, tied: bool) -> ParametricFit:
    """The law at theta, and whether these points pin it down."""
    fit = parametric_from_theta(theta, objective, len(log_n), tied)
    fit.unidentified = identification(untied(theta), log_n, log_d, log_loss, tied=tied)
    return fit
