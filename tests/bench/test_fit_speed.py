"""fit_parametric over the full Chinchilla grid (4500 starts, stepped together) on the 240 points Epoch extracted,
beside a plain one-start-at-a-time scipy L-BFGS-B loop over the same starts in the same run: the same optimum, and
the ratio of their times; and a 1000-resample bootstrap, each resample refitted from RESAMPLE_STARTS starts.

    .venv/bin/python -m pytest tests/bench/test_fit_speed.py --benchmark-only
"""
import time

import numpy as np
import pytest
from scipy import optimize

from harness.fit import CHINCHILLA_STARTS, RESAMPLE_STARTS, fit_parametric
from tests.fit_references import huber_objective
from tests.test_fit import chinchilla_points


def scipy_loop(starts, log_n, log_d, log_loss, delta=1e-3) -> float:
    """The reference: scipy's L-BFGS-B from each start in turn, the best objective."""
    return min(optimize.minimize(huber_objective, start, args=(log_n, log_d, log_loss, delta), jac=True,
                                 method="L-BFGS-B").fun for start in starts)


def test_full_grid_fit(benchmark):
    N, D, loss = chinchilla_points()
    fit_parametric(N, D, loss)   # torch's first call sets up its thread pool
    fit = benchmark.pedantic(fit_parametric, args=(N, D, loss), rounds=3, iterations=1)
    began = time.perf_counter()
    plain = scipy_loop(CHINCHILLA_STARTS, np.log(N), np.log(D), np.log(loss))
    loop_s = time.perf_counter() - began
    benchmark.extra_info.update(objective=fit.objective, scipy_loop_objective=plain, starts=len(CHINCHILLA_STARTS),
                                scipy_loop_s=loop_s, loop_over_batched=loop_s / benchmark.stats.stats.median)
    assert fit.objective == pytest.approx(plain, abs=1e-9)


def test_bootstrap_1000(benchmark):
    N, D, loss = chinchilla_points()
    fit = benchmark.pedantic(fit_parametric, args=(N, D, loss), kwargs=dict(intervals=1000), rounds=1, iterations=1)
    benchmark.extra_info.update({k: list(v) for k, v in fit.intervals.items() if k != "_failed"})
    benchmark.extra_info.update(failed=fit.intervals["_failed"], starts_per_resample=RESAMPLE_STARTS)
    assert fit.intervals["_failed"] == 0 and len(fit.resampled) == 1000
