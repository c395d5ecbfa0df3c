"""Muennighoff et al. 2023's data-constrained law: repeated tokens and parameters beyond what the unique data
supports are worth less; the base law at the effective parameters and tokens."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.fit.bootstrap import REFIT_TOLERANCES, percentiles, refit_resamples, residual_resamples, with_interval
from harness.fit.minimise import lbfgs
from harness.fit.objective import autograd_huber
from harness.fit.parametric import (ParametricFit, fit_parametric, huber_objectives, parametric_fit_at,
                                    parametric_from_theta)
from harness.fit.points import FitError, check_points


# "Scaling Data-Constrained Language Models", eq. 5-7: repeated data is worth less than fresh data, and parameters
# beyond what the unique data supports are worth less than needed ones. With U_D unique tokens seen and R_D = D / U_D - 1
# repetitions, the effective data is D' = U_D + U_D R_D* (1 - exp(-R_D / R_D*)); with U_N = min(N, the base law's
# compute-optimal N for U_D tokens) and R_N = N / U_N - 1, the effective parameters N' likewise with R_N*. The loss
# is the base law at (N', D'). The paper fits the base law on single-epoch runs, then R_D* and R_N* on the repeated
# ones with it fixed (their fit: R_D* = 15.4, R_N* = 5.3): fit_data_constrained(two_step=True). The joint fit (the
# default) starts there on every point and refines all seven parameters together, since a single-epoch run larger
# than its tokens support is discounted too (R_N > 0). Starts for log R_D* and log R_N*: 25.
# R_N* is often loosely pinned (a flat valley the grid's far starts crawl along for thousands of iterations); on a
# 296-row table stopping the stage at 500 moved no bootstrap interval's end in its fourth digit. The joint fit from
# there runs to its own tolerances.
STAGE_ITERATIONS = 500
DATA_CONSTRAINED_STARTS = np.array(list(itertools.product(np.log([0.5, 2, 8, 32, 128]), np.log([0.5, 2, 8, 32, 128]))))


def single_epoch_points(D, U) -> np.ndarray:
    """Which runs saw no token twice: D <= U (to rounding in a table's printed numbers)."""
    return np.asarray(D, float) <= np.asarray(U, float) * (1 + 1e-9)


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

    def __getattr__(self, name):   # the base law's attributes: E, A, B, alpha, beta, a, b, and whether it is identified
        if name in ("E", "A", "B", "alpha", "beta", "a", "b", "identified", "unidentified"):
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


def fit_data_constrained(N, D, U, loss, *, two_step: bool = False, huber_delta: float = 1e-3,
                         base: ParametricFit | None = None, intervals: int = 0, seed: int = 0) -> DataConstrainedFit:
    """Muennighoff et al.'s data-constrained law: the base law (fit_parametric) on the points that saw no token twice
    (D <= U), then R_D* and R_N* with it fixed by the same summed Huber loss of log residuals from a grid of 25
    starts (log R* kept within [-5, 10]): on the repeated points (`two_step`, the paper's fit), or on every point and
    then all seven parameters together from there (the default); all by the batched L-BFGS of harness.minimise.
    `base`: the base law already fitted to the single-epoch points (fit_parametric, as harness-fit's approach 3 is).
    `intervals`: that many resamples of the log residuals for 95% intervals, all resamples' refits batched together:
    the joint fit's from its optimum, all seven parameters at once; the two-step fit's as the fit itself (the base
    law on the single-epoch rows from the distinct ends of its grid, then R_D* and R_N* from the fit's)."""
    N, D, U, loss = check_points({"N": N, "D": D, "U": U, "loss": loss}, 7)
    single = single_epoch_points(D, U)
    if single.sum() < 6 or single.all():
        raise FitError(f"a data-constrained fit needs at least 6 single-epoch points (D <= U) and some repeated ones; "
                       f"got {int(single.sum())} single-epoch of {len(N)}")
    base = base or fit_parametric(N[single], D[single], loss[single], huber_delta=huber_delta)
    columns = [torch.as_tensor(np.log(x)) for x in (N, D, U)]
    log_loss = np.log(loss)
    on = ~single if two_step else np.ones(len(N), dtype=bool)
    thetas, values = _fit_rows(columns, log_loss[None], base.theta[None], DATA_CONSTRAINED_STARTS, on, two_step,
                               huber_delta)
    theta = thetas[0]
    fit = DataConstrainedFit(base=parametric_fit_at(theta[:5], np.nan, np.log(N), np.log(D), log_loss, False),
                             R_D_star=float(np.exp(theta[5])), R_N_star=float(np.exp(theta[6])),
                             objective=float(values[0]), n_points=len(N))
    fit.base.unidentified = base.unidentified
    if intervals:
        datasets = np.array(residual_resamples(log_loss, np.log(fit.predict(N, D, U)), None, n_params=7,
                                               fit_per_stratum=False, n_resamples=intervals, seed=seed))
        if two_step:   # each resample's base law refitted on its single-epoch rows, then R* from the fit's
            log_n, log_d = np.log(N[single]), np.log(D[single])
            bases = refit_resamples(lambda targets: huber_objectives(log_n, log_d, targets, huber_delta),
                                    lambda theta, value, row: theta, datasets[:, single], base.resample_starts)
            thetas, values = _fit_rows(columns, datasets, np.array(bases), theta[None, 5:], on, True, huber_delta)
        else:   # all seven from the fit's optimum
            joint = lbfgs(autograd_huber(lambda params, rows: data_constrained_log_loss(params, *columns), datasets,
                                         huber_delta, per_row=True), np.repeat(theta[None], len(datasets), axis=0),
                          **REFIT_TOLERANCES)
            thetas, values = joint.x, joint.value
        fit.resampled = [DataConstrainedFit(base=parametric_from_theta(row[:5], np.nan, len(N)),
                                            R_D_star=float(np.exp(row[5])), R_N_star=float(np.exp(row[6])),
                                            objective=float(value), n_points=len(N))
                         for row, value in zip(thetas, values) if np.all(np.isfinite(row))]
        fit.intervals = percentiles(fit.resampled, intervals, ["R_D_star", "R_N_star", "E", "A", "B", "alpha", "beta"])
    return fit


def _fit_rows(columns, targets: np.ndarray, bases: np.ndarray, starts: np.ndarray, on: np.ndarray, two_step: bool,
              delta: float) -> tuple[np.ndarray, np.ndarray]:
    """The law fitted to each row of `targets` (log losses) from its base law (a row of `bases`: log A, log B, log E,
    alpha, beta): log R_D* and log R_N* from every one of `starts` with the base fixed, on the points `on`; unless
    `two_step`, then all seven together on every point. Every row's starts stepped together. Returns each row's
    theta and objective."""
    k, m = len(targets), len(starts)
    base_rows = torch.as_tensor(np.repeat(bases, m, axis=0))
    kept = [column[torch.as_tensor(on)] for column in columns]

    def with_base(log_r: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return data_constrained_log_loss(torch.cat([base_rows[rows], log_r.clamp(-5, 10)], dim=1), *kept)

    stage = lbfgs(autograd_huber(with_base, np.repeat(targets[:, on], m, axis=0), delta, per_row=True),
                  np.tile(starts, (k, 1)), max_iterations=STAGE_ITERATIONS)
    values = stage.value.reshape(k, m)
    best = np.argmin(values, axis=1)
    log_r = np.clip(stage.x.reshape(k, m, 2)[np.arange(k), best], -5, 10)
    theta, value = np.hstack([bases, log_r]), values[np.arange(k), best]
    if two_step:
        return theta, value
    joint = lbfgs(autograd_huber(lambda params, rows: data_constrained_log_loss(params, *columns), targets, delta,
                                 per_row=True), theta, **REFIT_TOLERANCES)
    better = joint.value <= value
    return np.where(better[:, None], joint.x, theta), np.where(better, joint.value, value)
