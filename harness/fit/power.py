"""y = E + A x^-alpha (or A x^-alpha): least squares on log y with a soft-L1 (robust) loss, from several starts."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from harness.fit.bootstrap import bootstrap, with_interval
from harness.fit.points import FitError, positive_array


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
    x, y = positive_array(x, "x"), positive_array(y, "y")
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
