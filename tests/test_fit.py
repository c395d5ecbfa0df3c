"""Fits against data generated from known laws (issue 5 adds the published Chinchilla check)."""
import numpy as np
import pytest

from harness.fit import FitError, fit_isoflop, fit_power_law


def test_power_law_recovers_known_parameters():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e5, 1e9, 20)
    y = (1.7 + 400 * x ** -0.34) * np.exp(rng.normal(0, 0.005, x.size))
    fit = fit_power_law(x, y)
    assert fit.alpha == pytest.approx(0.34, abs=0.03)
    assert fit.E == pytest.approx(1.7, abs=0.05)
    np.testing.assert_allclose(fit.predict(x), 1.7 + 400 * x ** -0.34, rtol=0.02)


def test_pure_power_law_without_irreducible_term():
    x = np.geomspace(10, 1e4, 12)
    fit = fit_power_law(x, 3 * x ** -0.5, irreducible=False)
    assert (fit.A, fit.alpha, fit.E) == (pytest.approx(3, rel=1e-6), pytest.approx(0.5, rel=1e-6), 0.0)


def isoflop_grid(a_true=0.5, noise=0.0, seed=0):
    """Loss = E + A/N^alpha + B/D^beta with D = C/(6N): its optimum has N_opt ~ C^(beta/(alpha+beta))."""
    rng = np.random.default_rng(seed)
    E, A, B, alpha = 1.7, 400.0, 400.0, 0.34
    beta = alpha * a_true / (1 - a_true)
    rows = []
    for C in np.geomspace(1e18, 1e21, 4):
        n_star = (alpha * A / (beta * B) * (C / 6) ** beta) ** (1 / (alpha + beta))
        for N in n_star * np.geomspace(0.25, 4, 9):
            loss = (E + A / N**alpha + B / (C / (6 * N)) ** beta) * np.exp(rng.normal(0, noise))
            rows.append((C, N, loss))
    return np.array(rows).T


@pytest.mark.parametrize("a_true", [0.45, 0.5, 0.6])
def test_isoflop_recovers_the_allocation_exponent(a_true):
    C, N, loss = isoflop_grid(a_true, noise=0.002)
    fit = fit_isoflop(C, N, loss)
    assert fit.a == pytest.approx(a_true, abs=0.03)
    assert fit.b == pytest.approx(1 - a_true, abs=0.03)
    assert fit.minima["interior"].all()


def test_isoflop_names_budgets_without_an_interior_minimum():
    C, N, loss = isoflop_grid()
    first = C == C.min()
    keep = ~first | (N < np.median(N[first]))  # first budget: only sizes below its optimum
    fit = fit_isoflop(C[keep], N[keep], loss[keep])
    row = fit.minima.set_index("C").loc[C.min()]
    assert not row["interior"] and "largest model is best" in row["why"]


@pytest.mark.parametrize("bad,match", [
    (dict(C=[1e18] * 5), "at least 2 compute budgets"),
    (dict(N=[1, 2, -3, 4, 5]), "N must be positive"),
    (dict(loss=[1, 2, np.nan, 3, 4]), "loss holds NaN"),
])
def test_isoflop_bad_input_is_a_clear_error(bad, match):
    args = dict(C=[1e18, 1e18, 1e18, 1e19, 1e19], N=[1, 2, 3, 4, 5], loss=[3, 2, 3, 2, 1])
    args.update(bad)
    with pytest.raises(FitError, match=match):
        fit_isoflop(**args)


def test_power_law_needs_more_points_than_parameters():
    with pytest.raises(FitError, match="3 points cannot fit 3 parameters"):
        fit_power_law([1, 2, 3], [3, 2, 1])
