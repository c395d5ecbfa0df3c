"""Laws of the whole loss curve under a learning-rate schedule: fitted on a few runs' curves, they give the loss of a
schedule nobody ran at every step.

Tissue et al. 2024, "Scaling Law with Learning Rate Annealing" (arXiv:2408.11029), eq. 1 ("annealing"):
    L(s) = L0 + A * S1(s)^-alpha - C * S2(s)
    S1(s) = eta_1 + ... + eta_s (the forward area), S2(s) = m_1 + ... + m_s, m_i = lambda * m_(i-1) + (eta_(i-1) - eta_i)
Luo et al. 2025, "A Multi-Power Law for Loss Curve Prediction Across Learning Rate Schedules" (arXiv:2503.12811),
eq. 4 ("multi_power"):
    L(t) = L0 + A * (S1(t) + S_W)^-alpha - LD(t)
    LD(t) = B * sum over k <= t of (eta_(k-1) - eta_k) * G(eta_k^-gamma * S_k(t)),  G(x) = 1 - (C x + 1)^-beta,
    S_k(t) = eta_k + ... + eta_t
A curve's learning rate is known at every step 1..T. S1 counts the warm-up (Luo's S1 + S_W), and the drops count from
the schedule's first peak on: a warm-up's rises are not annealing. Both laws are fitted as approach 3 is: the summed
Huber loss (delta 1e-3) of log L, L-BFGS from the best of a grid of starts, all stepped together.

The sum over drops makes a naive evaluation cost steps x measured points. Here each curve's drops are gathered into
segments, cut at every measured step (so a segment lies wholly before or after each) and wherever a segment would hold
more than 1/SEGMENTS of the curve's total drop or of its steps; a segment acts at its drop-weighted mean log eta and
mean S1 before it. A step schedule's drops are each a segment of their own (exact); a smooth decay's error is second
order in the segment's length (tests compare it with the exact double sum).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.signal import lfilter

from harness.fit.minimise import lbfgs
from harness.fit.objective import autograd_huber, summed_huber
from harness.fit.parametric import standard_errors
from harness.fit.points import FitError

LAWS = ("multi_power", "annealing")
PARAMETERS = {"multi_power": ("L0", "A", "alpha", "B", "C", "beta", "gamma"), "annealing": ("L0", "A", "alpha", "C")}
FORMULAS = {"multi_power": "L0 + A (S1 + S_W)^-alpha - B sum_k (eta_(k-1) - eta_k) [1 - (C eta_k^-gamma S_k(t) + 1)^-beta]",
            "annealing": "L0 + A S1^-alpha - C S2"}
ANNEALING_DECAY = 0.999     # Tissue et al.'s lambda, "0.999 works well in most cases" (sec. 3)
SEGMENTS = 64               # drop segments per curve, besides the cuts at measured steps
# Measured points per curve a fit uses at most (evenly spread over the measured ones, the last kept): the sum over
# drops costs points x segments, and a 25k-step curve logged every 100 steps says little more at 250 than at 128.
FIT_POINTS = 128
# The first tenth of the shortest fitted run is left out of the fit and of the held-out errors: there the loss falls
# from the initialisation's log(vocabulary) faster than any power of the learning-rate area (Luo et al. fit their
# curves after their first 10% of steps too), and its steep misfit would set the law's floor.
FIT_FROM = 0.1
PREDICTED_POINTS = 1000     # the most points per curve a prediction is scored or drawn at
STARTS = 16                 # the grid's best starts that L-BFGS refines
HUBER_DELTA = 1e-3
# The summed Huber loss of curves fitted to 0.1% is ~1e-4 and its gradients ~1e-6: scipy's default gtol (1e-5) stops
# the starts where they began; these let them reach the optimum.
TOLERANCES = {"gtol": 1e-11, "ftol": 1e-12}


@dataclass(frozen=True)
class Curve:
    """One run: the learning rate of each of its steps 1..T, and the steps whose loss was measured with that loss."""
    run: str
    lr: np.ndarray
    steps: np.ndarray
    loss: np.ndarray

    @property
    def total_steps(self) -> int:
        return len(self.lr)


def from_step(curve: Curve, first: int) -> Curve:
    """The curve's measured points from step `first` on (its learning rate whole)."""
    keep = curve.steps >= first
    return Curve(curve.run, curve.lr, curve.steps[keep], curve.loss[keep])


def thinned(curve: Curve, at_most: int) -> Curve:
    """The curve at no more than `at_most` of its measured steps, evenly spread over them, its last step kept."""
    if len(curve.steps) <= at_most:
        return curve
    keep = np.unique(np.linspace(0, len(curve.steps) - 1, at_most).round().astype(int))
    return Curve(curve.run, curve.lr, curve.steps[keep], curve.loss[keep])


def checked_curve(run: str, lr, steps, loss) -> Curve:
    """A curve whose every value a law can use, or a FitError naming the run and the value."""
    lr, steps, loss = np.asarray(lr, dtype=float), np.asarray(steps), np.asarray(loss, dtype=float)
    if lr.ndim != 1 or not len(lr) or not np.all(np.isfinite(lr)) or np.any(lr < 0) or not lr.max() > 0:
        raise FitError(f"run {run!r}: its learning rate must be finite, non-negative and somewhere positive")
    if len(steps) != len(loss):
        raise FitError(f"run {run!r}: {len(steps)} steps but {len(loss)} losses")
    if len(steps) and (np.any(steps != np.round(steps)) or steps.min() < 1 or steps.max() > len(lr)):
        raise FitError(f"run {run!r}: measured steps must be whole numbers in 1..{len(lr)}")
    if np.any(np.diff(steps) <= 0):
        raise FitError(f"run {run!r}: step {int(steps[1:][np.diff(steps) <= 0][0])} appears twice or out of order")
    if not np.all(np.isfinite(loss) & (loss > 0)):
        raise FitError(f"run {run!r}: loss {loss[~(np.isfinite(loss) & (loss > 0))][0]:g} is not a positive finite number")
    return Curve(run, lr, steps.astype(int), loss)


@dataclass(frozen=True)
class Features:
    """What the laws need of curves at their measured steps, concatenated over curves: the point's S1 and S2, and
    every (point, drop segment before it) pair with the segment's drop, log eta and S_k(t)."""
    s1: np.ndarray
    s2: np.ndarray
    pair_point: np.ndarray
    pair_drop: np.ndarray
    pair_log_eta: np.ndarray
    pair_area: np.ndarray


def drops_after_peak(lr: np.ndarray) -> np.ndarray:
    """eta_(k-1) - eta_k at each step (0-based index k-1), zero up to the schedule's first peak."""
    drops = np.zeros(len(lr))
    peak = int(np.argmax(lr))
    drops[peak + 1:] = lr[peak:-1] - lr[peak + 1:]
    return drops


def annealing_area(lr: np.ndarray, decay: float = ANNEALING_DECAY) -> np.ndarray:
    """Tissue et al.'s S2 at every step: the running sum of the momentum of the learning rate's drops."""
    return np.cumsum(lfilter([1.0], [1.0, -decay], drops_after_peak(lr)))


def _segments(lr: np.ndarray, cuts: np.ndarray, segments: int):
    """The curve's drop segments: each one's end (a 0-based step index: its drops act on the steps from there on),
    its summed drop, and its drop-weighted mean log eta and S1 before its steps."""
    drops = drops_after_peak(lr)
    first = int(np.argmax(lr)) + 1
    if first >= len(lr) or not drops.any():
        return (np.zeros(0, dtype=int),) + (np.zeros(0),) * 3
    weight = np.abs(drops)
    mass = np.cumsum(weight)
    by_mass = np.searchsorted(mass, mass[-1] * np.arange(1, segments) / segments, side="right")
    by_steps = np.linspace(first, len(lr), segments + 1).round().astype(int)
    bounds = np.unique(np.concatenate([[first, len(lr)], by_mass + 1, by_steps, cuts]))
    bounds = bounds[(bounds >= first) & (bounds <= len(lr))]
    starts, ends = bounds[:-1], bounds[1:]
    before = np.concatenate([[0.0], np.cumsum(lr)])[:-1]           # S1 of the steps before each step
    log_eta = np.log(np.maximum(lr, lr.max() * 1e-12))              # a learning rate of 0 drives G to 1
    total = np.add.reduceat(weight, starts)
    keep = total > 0
    with np.errstate(invalid="ignore"):
        mean_log_eta = np.add.reduceat(weight * log_eta, starts) / total
        mean_before = np.add.reduceat(weight * before, starts) / total
    return ends[keep], np.add.reduceat(drops, starts)[keep], mean_log_eta[keep], mean_before[keep]


def features(curves: list[Curve], decay: float = ANNEALING_DECAY, segments: int = SEGMENTS) -> Features:
    """The laws' inputs at each curve's measured steps."""
    parts = []
    offset = 0
    for curve in curves:
        at = curve.steps
        s1 = np.cumsum(curve.lr)
        ends, drop, log_eta, before = _segments(curve.lr, at, segments)
        point, seg = np.nonzero(ends[None, :] <= at[:, None])
        parts.append((s1[at - 1], annealing_area(curve.lr, decay)[at - 1], point + offset, drop[seg], log_eta[seg],
                      s1[at - 1][point] - before[seg]))
        offset += len(at)
    return Features(*(np.concatenate([p[i] for p in parts]) for i in range(6)))


def log_loss(law: str, theta: torch.Tensor, f: Features) -> torch.Tensor:
    """log L at every point for each row of theta: multi_power's (log L0, log A, log alpha, log B, log C, log beta,
    gamma) or annealing's (log L0, log A, log alpha, C)."""
    L0, A, alpha = theta[:, 0:1].exp(), theta[:, 1:2].exp(), theta[:, 2:3].exp()
    loss = L0 + A * torch.exp(-alpha * torch.as_tensor(np.log(f.s1)))
    if law == "annealing":
        return torch.log(loss - theta[:, 3:4] * torch.as_tensor(f.s2))
    B, C, beta, gamma = theta[:, 3:4].exp(), theta[:, 4:5].exp(), theta[:, 5:6].exp(), theta[:, 6:7]
    x = torch.exp(-gamma * torch.as_tensor(f.pair_log_eta)) * torch.as_tensor(f.pair_area)
    g = 1 - torch.exp(-beta * torch.log1p(C * x))
    ld = torch.zeros(theta.shape[0], len(f.s1), dtype=theta.dtype).index_add_(1, torch.as_tensor(f.pair_point),
                                                                             g * torch.as_tensor(f.pair_drop))
    return torch.log(loss - B * ld)


LOGGED = {"multi_power": 6, "annealing": 3}   # the leading parameters the fit moves in log (they are positive)


def natural(law: str, theta: np.ndarray) -> np.ndarray:
    """The parameters named in PARAMETERS[law] from the fit's coordinates (theta: rows of them)."""
    theta = np.atleast_2d(theta)
    logged = LOGGED[law]
    return np.concatenate([np.exp(theta[:, :logged]), theta[:, logged:]], axis=1)


def coordinates(law: str, params: np.ndarray) -> np.ndarray:
    params = np.atleast_2d(np.asarray(params, dtype=float))
    logged = LOGGED[law]
    return np.concatenate([np.log(params[:, :logged]), params[:, logged:]], axis=1)


def _grid(law: str, f: Features, loss: np.ndarray) -> np.ndarray:
    """Starts in the fit's coordinates: a grid over the nonlinear parameters, each with the linear ones (A, and B or
    C) solved by least squares on L - L0 (variable projection) for a grid of floors L0, and with L0 solved too where
    that gives a floor below the lowest loss and positive A and B (a start whose B is clamped near zero cannot move
    away: the gradient in log B vanishes there)."""
    shapes = [()] if law == "annealing" else list(itertools.product([0.3, 0.6, 1.0], [0.3, 0.6, 0.9], [0.1, 1.0, 10.0]))
    starts = []
    for alpha, shape in itertools.product([0.2, 0.5, 1.0], shapes):
        if law == "annealing":
            anneal = f.s2
        else:
            beta, gamma, C = shape
            g = 1 - (C * np.exp(-gamma * f.pair_log_eta) * f.pair_area + 1) ** -beta
            anneal = np.bincount(f.pair_point, g * f.pair_drop, minlength=len(f.s1))
        columns = np.stack([f.s1 ** -alpha, -anneal], axis=1)
        (L0, A, second), *_ = np.linalg.lstsq(np.column_stack([np.ones_like(loss), columns]), loss, rcond=None)
        solved = [(L0, A, second)] if 0 < L0 < loss.min() and A > 0 and second > 0 else []
        for floor in [0.5, 0.75, 0.9, 0.97]:
            (A, second), *_ = np.linalg.lstsq(columns, loss - floor * loss.min(), rcond=None)
            solved.append((floor * loss.min(), A, second))
        for L0, A, second in solved:
            if law == "annealing":
                starts.append([L0, max(A, 1e-6), alpha, second])
            else:
                starts.append([L0, max(A, 1e-6), alpha, max(second, 1e-6), C, beta, gamma])
    return coordinates(law, np.array(starts))


def identification(law: str, theta: np.ndarray, f: Features, targets: np.ndarray) -> str:
    """Why the curves do not pin the law down, or "" when they do: from the Gauss-Newton standard errors at the
    optimum (parametric.standard_errors), a positive parameter whose log is not known within 1 (a factor e), or
    gamma (or annealing's C) whose standard error exceeds its value. Such a fit sits on a flat valley: its parameters
    trade off and move with the last bits of the arithmetic, though its predictions may not."""
    point = torch.as_tensor(theta)
    with torch.enable_grad():
        jacobian = torch.autograd.functional.jacobian(lambda t: log_loss(law, t[None, :], f)[0], point).numpy()
    with torch.no_grad():
        residuals = log_loss(law, point[None, :], f)[0].numpy() - targets
    try:
        errors = standard_errors(jacobian, residuals)
    except np.linalg.LinAlgError:
        return "the law's derivatives at the optimum are linearly dependent: its parameters trade off"
    values = natural(law, theta)[0]
    for index, (name, error) in enumerate(zip(PARAMETERS[law], errors)):
        logged = index < LOGGED[law]
        if not (error <= 1 if logged else error <= abs(theta[index])):
            return (f"{name} = {values[index]:.3g} with a standard error of {error:.2g}{' in log ' + name if logged else ''}: "
                    f"the curves do not pin {name} down")
    return ""


@dataclass
class CurveLawFit:
    law: str
    params: dict                 # name -> value, the names of PARAMETERS[law]
    objective: float             # the summed Huber loss at the fit
    runs: list                   # the curves it was fitted on
    points: int                  # measured points it was fitted on
    decay: float                 # annealing's lambda (the multi-power law ignores it)
    intervals: dict = field(default_factory=dict)   # name -> (low, high); "_failed": resamples that did not fit
    resampled: np.ndarray | None = None             # (resamples, parameters) of the bootstrap's refits
    resample: str = "blocks"
    from_step: int = 1           # the first step whose loss the fit used (and the held-out errors use)
    unidentified: str = ""       # why the curves do not pin the law down (identification), "" when they do

    @property
    def identified(self) -> bool:
        return not self.unidentified

    def theta(self) -> np.ndarray:
        return coordinates(self.law, [self.params[name] for name in PARAMETERS[self.law]])

    def predict(self, lr, steps, interval: float | None = None):
        """The loss at `steps` of a run with learning rate `lr` at every step 1..T; with `interval` (e.g. 0.95),
        (loss, low, high): the percentiles of the bootstrap refits' predictions."""
        curve = Curve("predicted", np.asarray(lr, dtype=float), np.asarray(steps, dtype=int), np.zeros(len(steps)))
        f = features([curve], self.decay)
        loss = self._loss(self.theta(), f)[0]
        if interval is None:
            return loss
        if self.resampled is None or not len(self.resampled):
            raise FitError("a prediction's interval needs the fit's bootstrap: fit with intervals=N")
        tail = (1 - interval) / 2 * 100
        low, high = np.nanpercentile(self._loss(coordinates(self.law, self.resampled), f), [tail, 100 - tail], axis=0)
        return loss, low, high

    def _loss(self, theta: np.ndarray, f: Features) -> np.ndarray:
        with torch.no_grad():
            return np.exp(log_loss(self.law, torch.as_tensor(theta), f).numpy())

    def held_out(self, curves: list[Curve]) -> dict:
        """Each curve's relative errors of prediction: mean and largest over its measured steps from the fit's
        `from_step` on (at most PREDICTED_POINTS of them, evenly spread), and at its last; a curve with no point
        there is left out."""
        errors = {}
        for curve in (thinned(from_step(c, self.from_step), PREDICTED_POINTS) for c in curves):
            if not len(curve.steps):
                continue
            error = np.abs(self.predict(curve.lr, curve.steps) / curve.loss - 1)
            errors[curve.run] = {"mean_rel_error": float(np.mean(error)), "max_rel_error": float(np.max(error)),
                                 "final_rel_error": float(error[-1])}
        return errors


def block_weights(curves: list[Curve], resamples: int, rng: np.random.Generator, resample: str = "blocks") -> np.ndarray:
    """(resamples, points) counts of each measured point in each bootstrap resample. "blocks": within each curve,
    blocks of sqrt(points) consecutive points drawn with replacement (a curve's residuals are not independent);
    "curves": whole curves drawn with replacement.

    The blocks are circular (Politis and Romano 1992, "A Circular Block-Resampling Procedure for Stationary Data"):
    one may wrap from a curve's last point to its first, so every point is drawn once a resample on average. Blocks
    that stop at the end draw a curve's first and last points ~1/block as often as the rest, and the refits lean
    away from the curve's end, where its final loss is.
    """
    sizes = [len(c.steps) for c in curves]
    weights = np.zeros((resamples, sum(sizes)))
    if resample == "curves":
        chosen = rng.integers(0, len(curves), size=(resamples, len(curves)))
        starts = np.cumsum([0, *sizes])
        for r in range(resamples):
            for index in chosen[r]:
                weights[r, starts[index]:starts[index + 1]] += 1
        return weights
    offset = 0
    for size in sizes:
        block = max(1, int(round(np.sqrt(size))))
        count = -(-size // block)
        first = rng.integers(0, size, size=(resamples, count))
        taken = ((first[:, :, None] + np.arange(block)) % size).reshape(resamples, -1)[:, :size]
        for r in range(resamples):
            np.add.at(weights[r], offset + taken[r], 1)
        offset += size
    return weights


def fit_curve_law(curves: list[Curve], law: str = "multi_power", *, intervals: int = 0, resample: str = "blocks",
                  decay: float = ANNEALING_DECAY, huber_delta: float = HUBER_DELTA, fit_points: int = FIT_POINTS,
                  fit_from: float = FIT_FROM, seed: int = 0) -> CurveLawFit:
    """The law fitted on these curves' measured points from `fit_from` of the shortest curve's steps on (at most
    `fit_points` of each); with intervals=N, N bootstrap resamples (blocks of steps, or whole curves), each refitted
    from the fit, give 95% percentile intervals of every parameter that the refits moved."""
    if law not in LAWS:
        raise FitError(f"law {law!r}: known curve laws are {', '.join(LAWS)}")
    names = PARAMETERS[law]
    curves = [c for c in curves if len(c.steps)]
    first = max(1, int(fit_from * min((c.total_steps for c in curves), default=0)))
    curves = [thinned(from_step(c, first), fit_points) for c in curves]
    curves = [c for c in curves if len(c.steps)]
    points = sum(len(c.steps) for c in curves)
    if points <= len(names):
        raise FitError(f"{points} measured points cannot fit the {law} law's {len(names)} parameters")
    f = features(curves, decay)
    loss = np.concatenate([c.loss for c in curves])
    targets = np.log(loss)
    grid = _grid(law, f, loss)
    with torch.no_grad():
        scores, _ = summed_huber(log_loss(law, torch.as_tensor(grid), f).numpy() - targets, huber_delta)
    scores = np.nan_to_num(scores, nan=np.inf)
    best_starts = grid[np.argsort(scores)[:STARTS]]
    objective = autograd_huber(lambda theta: log_loss(law, theta, f), targets, huber_delta)
    minima = lbfgs(objective, best_starts, **TOLERANCES)
    best = int(np.argmin(minima.value))
    if not np.isfinite(minima.value[best]):
        raise FitError(f"the {law} law could not be fitted to these curves (every start's loss went non-positive)")
    fit = CurveLawFit(law, dict(zip(names, natural(law, minima.x[best])[0].tolist())), float(minima.value[best]),
                      [c.run for c in curves], points, decay, resample=resample, from_step=first,
                      unidentified=identification(law, minima.x[best], f, targets))
    if intervals:
        weights = block_weights(curves, intervals, np.random.default_rng(seed), resample)
        weighted = autograd_huber(lambda theta: log_loss(law, theta, f), targets, huber_delta, weights=weights)
        refits = lbfgs(weighted, np.repeat(minima.x[best:best + 1], intervals, axis=0), **TOLERANCES)
        good = np.isfinite(refits.value)
        if not good.any():
            raise FitError(f"every one of {intervals} bootstrap resamples of the {law} law failed to fit")
        fit.resampled = natural(law, refits.x[good])
        low, high = np.percentile(fit.resampled, [2.5, 97.5], axis=0)
        # A parameter no refit moved sits where the objective no longer depends on it (an unidentified law's L0
        # run off to ~1e-9): its resamples say nothing of its uncertainty, so it gets no interval.
        fit.intervals = {name: (float(lo), float(hi)) for name, lo, hi in zip(names, low, high)
                         if hi - lo > 1e-6 * max(abs(lo), abs(hi))}
        fit.intervals["_failed"] = int((~good).sum())
    return fit


def final_loss(law: str, theta: torch.Tensor, lr: torch.Tensor, decay: float = ANNEALING_DECAY) -> torch.Tensor:
    """The law's loss at the last step of a schedule given at every step (a differentiable torch vector): one point,
    so the sum over drops is exact and costs O(steps)."""
    L0, A, alpha = theta[0].exp(), theta[1].exp(), theta[2].exp()
    area = lr.sum()
    peak = int(torch.argmax(lr.detach()))
    drops = torch.cat([torch.zeros(peak + 1, dtype=lr.dtype), lr[peak:-1] - lr[peak + 1:]])
    if law == "annealing":
        remaining = torch.arange(len(lr), 0, -1, dtype=lr.dtype)         # steps k..T for the drop at step k
        return L0 + A * area ** -alpha - theta[3] * (drops * (1 - decay ** remaining) / (1 - decay)).sum()
    B, C, beta, gamma = theta[3].exp(), theta[4].exp(), theta[5].exp(), theta[6]
    after = area - torch.cat([torch.zeros(1, dtype=lr.dtype), lr.cumsum(0)[:-1]])   # S_k(T)
    eta = lr.clamp_min(lr.detach().max() * 1e-12)
    g = 1 - (C * eta ** -gamma * after + 1) ** -beta
    return L0 + A * area ** -alpha - B * (drops * g).sum()


def optimal_schedule(fit: CurveLawFit, total_steps: int, warmup_steps: int, peak_lr: float, knots: int = 64,
                     iterations: int = 400) -> np.ndarray:
    """The schedule of `total_steps` that the fitted law says ends lowest (Luo et al. 2025, sec. 5: the schedule
    minimising the predicted final loss): a linear warm-up to peak_lr, then a non-increasing learning rate, linear
    between `knots` evenly spaced knots, each knot the one before times exp(-softplus(u)) (so it never rises and
    stays above zero). Adam on the u's, from a nearly constant schedule."""
    theta = torch.as_tensor(fit.theta()[0])
    decay_steps = total_steps - warmup_steps
    position = torch.linspace(0, knots - 1, decay_steps, dtype=torch.float64)
    left = position.floor().long().clamp(max=knots - 2)
    weight = position - left
    warmup = peak_lr * torch.arange(1, warmup_steps + 1, dtype=torch.float64) / warmup_steps
    raw = torch.full((knots - 1,), -6.0, dtype=torch.float64, requires_grad=True)

    def schedule(raw):
        values = peak_lr * torch.exp(-torch.cat([torch.zeros(1, dtype=torch.float64),
                                                 torch.cumsum(torch.nn.functional.softplus(raw), 0)]))
        return torch.cat([warmup, values[left] * (1 - weight) + values[left + 1] * weight])

    optimiser = torch.optim.Adam([raw], lr=0.05)
    for _ in range(iterations):
        optimiser.zero_grad()
        loss = final_loss(fit.law, theta, schedule(raw), fit.decay)
        loss.backward()
        optimiser.step()
    return schedule(raw).detach().numpy()

