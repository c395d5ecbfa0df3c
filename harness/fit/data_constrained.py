"""Muennighoff et al. 2023's data-constrained law: repeated tokens and parameters beyond what the unique data
supports are worth less; the base law at the effective parameters and tokens."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.fit.bootstrap import REFIT_TOLERANCES, percentile_intervals, residual_resamples, with_interval
from harness.fit.minimise import lbfgs
from harness.fit.objective import autograd_huber
from harness.fit.parametric import ParametricFit, parametric_fit_at, fit_parametric
from harness.fit.points import FitError, check_points


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


def fit_data_constrained(N, D, U, loss, *, huber_delta: float = 1e-3, init: DataConstrainedFit | None = None,
                         intervals: int = 0, seed: int = 0, workers: int | None = None) -> DataConstrainedFit:
    """Muennighoff et al.'s data-constrained law: the base law (fit_parametric) on the points that saw no token twice
    (D <= U), then R_D* and R_N* on every point by the same summed Huber loss of log residuals from a grid of 25
    starts (log R* kept within [-5, 10]), then the seven together from there; all by the batched L-BFGS of
    harness.minimise. `init`: a fit of nearby points to start from (a bootstrap resample's refit).
    `intervals`: that many resamples of the log residuals for 95% intervals, refitted in `workers` processes."""
    N, D, U, loss = check_points({"N": N, "D": D, "U": U, "loss": loss}, 7)
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
    stage = lbfgs(autograd_huber(with_base, log_loss, huber_delta), starts)
    start = np.append(base.theta, np.clip(stage.x[np.argmin(stage.value)], -5, 10))
    joint = lbfgs(autograd_huber(lambda theta: data_constrained_log_loss(theta, *columns), log_loss, huber_delta),
                  start[None], **REFIT_TOLERANCES)
    theta = joint.x[0] if joint.value[0] <= stage.value.min() else start
    fit = DataConstrainedFit(base=parametric_fit_at(theta[:5], np.nan, np.log(N), np.log(D), log_loss, False),
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
