"""Kaplan et al. 2020's L(N, D) (eq. 1.5), fitted by the same estimator as approach 3."""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch

from harness.fit.bootstrap import (REFIT_TOLERANCES, distinct_ends, percentiles, refit_resamples,
                                   residual_resamples, with_interval)
from harness.fit.minimise import lbfgs
from harness.fit.objective import summed_huber, torch_threads_for
from harness.fit.parametric import loose_exponent, standard_errors
from harness.fit.points import check_points


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
    resample_starts: np.ndarray | None = field(default=None, repr=False)   # where refits of nearby points start

    @property
    def identified(self) -> bool:
        return not self.unidentified

    def predict(self, N, D, interval: float | None = None):
        n, d = np.asarray(N, float), np.asarray(D, float)
        value = ((self.N_c / n) ** (self.alpha_N / self.alpha_D) + self.D_c / d) ** self.alpha_D
        return with_interval(self, value, lambda fit: fit.predict(N, D), interval)


def kaplan_log_loss(theta, log_n, log_d):
    """Kaplan's log L_pred at each row of theta = (log N_c, log D_c, alpha_N, alpha_D), one column per point, and its
    derivatives in theta (rows x points x 4): log L_pred = alpha_D * logaddexp(u, v), with
    u = (alpha_N / alpha_D)(log N_c - log N) and v = log D_c - log D. numpy arrays in, numpy out; torch tensors in
    (the fit's batched objective), torch out."""
    if not isinstance(theta, torch.Tensor):
        log_pred, derivatives = kaplan_log_loss(*(torch.as_tensor(np.asarray(x, float)) for x in (theta, log_n, log_d)))
        return log_pred.numpy(), derivatives.numpy()
    c_n, c_d, alpha_n, alpha_d = (column[:, None] for column in theta.T)
    below_n = c_n - log_n
    u, v = alpha_n / alpha_d * below_n, c_d - log_d
    s = torch.logaddexp(u, v)
    w_u = torch.exp(u - s)
    derivatives = torch.broadcast_tensors(alpha_n * w_u, alpha_d * (1 - w_u), w_u * below_n, s - w_u * u)
    return alpha_d * s, torch.stack(derivatives, dim=-1)


def kaplan_objectives(log_n, log_d, log_loss, delta: float):
    """The summed Huber of log L_pred - log L (objective.summed_huber) at many theta at once, and its gradient, as
    minimise.lbfgs calls it (`log_loss` one row, or one per start indexed by `rows`), in torch float64. A
    non-positive exponent is out of the law's domain: its value is infinite, so the line search steps back."""
    log_n, log_d = torch.as_tensor(np.asarray(log_n, float)), torch.as_tensor(np.asarray(log_d, float))
    targets = torch.as_tensor(np.asarray(log_loss, float))

    def objective(theta: np.ndarray, rows: np.ndarray):
        with torch_threads_for(len(theta) * targets.shape[-1]):
            log_pred, derivatives = kaplan_log_loss(torch.from_numpy(np.ascontiguousarray(theta)), log_n, log_d)
            value, clipped = summed_huber(log_pred - (targets[torch.from_numpy(rows)] if targets.ndim == 2 else targets),
                                          delta)
            gradient = torch.einsum("kn,knp->kp", clipped, derivatives)
            value, gradient = value.numpy(), gradient.numpy()
        outside = (theta[:, 2] <= 0) | (theta[:, 3] <= 0)
        return np.where(outside, np.inf, value), np.where(outside[:, None], 0.0, gradient)

    return objective


def kaplan_identification(theta: np.ndarray, log_n, log_d, log_loss) -> str:
    """Why the points do not pin Kaplan's law down, or "": an exponent whose standard error (standard_errors)
    exceeds the exponent itself, as for approach 3 (identification)."""
    log_pred, derivatives = kaplan_log_loss(theta[None], log_n, log_d)
    try:
        errors = standard_errors(derivatives[0], log_pred[0] - log_loss)
    except np.linalg.LinAlgError:
        return "the law's derivatives at the optimum are linearly dependent: its parameters trade off"
    return loose_exponent({"alpha_N": theta[2], "alpha_D": theta[3]}, errors[2:])


def fit_kaplan_nd(N, D, loss, *, huber_delta: float = 1e-3, init: KaplanFit | None = None, intervals: int = 0,
                  seed: int = 0) -> KaplanFit:
    """Kaplan et al.'s L(N, D) (eq. 1.5) by the same estimator as approach 3: the summed Huber loss (delta 1e-3) of
    log residuals, L-BFGS from all of KAPLAN_STARTS stepped together (exponents kept positive); `init` (a fit of
    nearby points) adds the distinct ends of its grid to those starts.
    `intervals`: that many resamples of the log residuals about the fit for 95% percentile intervals, each refitted
    from RESAMPLE_STARTS distinct ends of the grid, as approach 3's. `unidentified` says why, when the points do not
    pin the exponents down (see kaplan_identification)."""
    N, D, loss = check_points({"N": N, "D": D, "loss": loss}, 4)
    log_n, log_d, log_loss = np.log(N), np.log(D), np.log(loss)

    def objectives(targets):
        # Minimised in units of delta: the raw sum is ~1e-4, below the stopping tests' absolute floors (a change of
        # ftol * max(|f|, 1), a gradient of gtol), so starts stopped wherever they were, and the best of them moved
        # with the last bits of the arithmetic (the held-out prediction by up to 10% between two CPUs).
        objective = kaplan_objectives(log_n, log_d, targets, huber_delta)
        return lambda theta, rows: tuple(part / huber_delta for part in objective(theta, rows))

    # With `init`, its basins (the distinct ends of its grid) as well as the grid: the law has near-equal local
    # minima that extrapolate apart, and which one a start reaches moves with the last bits of the arithmetic. On one
    # held-out table two minima lay 1.2e-5 apart (relative; Hessian positive definite at both), their predictions
    # 0.5% apart; init's 14 basins all led to the shallower one, and of the grid's 576 starts 31 reached the deeper,
    # but the 7th best-scoring start did so only when stepped with the whole grid (the batch changes the arithmetic).
    objective = objectives(log_loss)
    minima = lbfgs(objective, KAPLAN_STARTS if init is None else np.vstack([init.resample_starts, KAPLAN_STARTS]))
    best = int(np.argmin(minima.value))

    def kaplan_fit(theta, objective: float, _log_loss) -> KaplanFit:
        c_n, c_d, alpha_n, alpha_d = theta
        with np.errstate(over="ignore"):
            return KaplanFit(N_c=float(np.exp(c_n)), D_c=float(np.exp(c_d)), alpha_N=float(alpha_n),
                             alpha_D=float(alpha_d), objective=objective * huber_delta, n_points=len(N))

    fit = kaplan_fit(minima.x[best], float(minima.value[best]), log_loss)
    fit.unidentified = kaplan_identification(minima.x[best], log_n, log_d, log_loss)
    fit.resample_starts = distinct_ends(minima.x, minima.value)
    if intervals:
        datasets = residual_resamples(log_loss, np.log(fit.predict(N, D)), None, n_params=4, fit_per_stratum=False,
                                      n_resamples=intervals, seed=seed)
        # the objective is in units of delta, so the refits' tolerances are too (tighter ones only lengthen the
        # crawl of starts along the flat valleys of resamples that do not pin the law down)
        fit.resampled = refit_resamples(objectives, kaplan_fit, np.array(datasets), fit.resample_starts,
                                        {name: value / huber_delta for name, value in REFIT_TOLERANCES.items()})
        fit.intervals = percentiles(fit.resampled, intervals, ["N_c", "D_c", "alpha_N", "alpha_D"])
    return fit
