"""fit_parametric over the full Chinchilla grid (4500 starts) and a 1000-resample bootstrap, on the 240 points
Epoch extracted; the parallel fit must land on the same optimum as a plain one-start-at-a-time scipy loop.

    .venv/bin/python -m pytest tests/bench/test_fit_speed.py --benchmark-only
"""
import numpy as np
import pytest

from harness.fit import CHINCHILLA_STARTS, _minimise_from, bootstrap, fit_parametric
from tests.test_fit import chinchilla_points


def test_full_grid_fit(benchmark):
    N, D, loss = chinchilla_points()
    fit = benchmark.pedantic(fit_parametric, args=(N, D, loss), rounds=1, iterations=1)
    plain, _ = _minimise_from(CHINCHILLA_STARTS, np.log(N), np.log(D), np.log(loss), 1e-3)  # the serial scipy loop
    benchmark.extra_info.update(objective=fit.objective, plain_loop_objective=plain, starts=len(CHINCHILLA_STARTS))
    assert fit.objective == pytest.approx(plain, abs=1e-9)


def test_bootstrap_1000(benchmark):
    N, D, loss = chinchilla_points()
    fit = fit_parametric(N, D, loss)
    intervals = benchmark.pedantic(bootstrap, args=(fit_parametric, N, D, loss), kwargs=dict(n_resamples=1000, init=fit),
                                   rounds=1, iterations=1)
    benchmark.extra_info.update({k: list(v) for k, v in intervals.items() if k != "_failed"})
