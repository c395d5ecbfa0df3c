"""Fits against data generated from known laws (issue 5 adds the published Chinchilla check)."""

import numpy as np
import pytest

from harness.fit import FitError, fit_isoflop, fit_power_law


def test_power_law_recovers_known_parameters():
    rng = np.random.default_rng(0)
    x = np.geomspace(1e5, 1e9, 20)
    y = (1.7 + 400 * x ** -0.34) * (1 + rng.normal(0, 0.01, x.size))  # 1% noise
    fit = fit_power_law(x, y)
    assert fit.alpha == pytest.approx(0.34, abs=0.03)
    assert fit.E == pytest.approx(1.7, abs=0.05)
    np.testing.assert_allclose(fit.predict(x), 1.7 + 400 * x ** -0.34, rtol=0.02)


def test_pure_power_law_without_irreducible_term():
    x = np.geomspace(10, 1e4, 12)
    fit = fit_power_law(x, 3 * x ** -0.5, irreducible=False)
    assert (fit.A, fit.alpha, fit.E) == (pytest.approx(3, rel=1e-6), pytest.approx(0.5, rel=1e-6), 0.0)


def isoflop_grid(a_true=0.5, noise=0.0, seed=0, budgets=4, sizes=9):
    """Loss = E + A/N^alpha + B/D^beta with D = C/(6N): its optimum has N_opt ~ C^(beta/(alpha+beta))."""
    rng = np.random.default_rng(seed)
    E, A, B, alpha = 1.7, 400.0, 400.0, 0.34
    beta = alpha * a_true / (1 - a_true)
    rows = []
    for C in np.geomspace(1e18, 1e21 if budgets == 4 else 1e22, budgets):
        n_star = (alpha * A / (beta * B) * (C / 6) ** beta) ** (1 / (alpha + beta))
        for N in n_star * np.geomspace(0.25 if sizes == 9 else 0.1, 4 if sizes == 9 else 10, sizes):
            loss = (E + A / N**alpha + B / (C / (6 * N)) ** beta) * np.exp(rng.normal(0, noise))
            rows.append((C, N, loss))
    return np.array(rows).T


@pytest.mark.parametrize("a_true", [0.45, 0.5, 0.6])
def test_isoflop_recovers_the_allocation_exponent(a_true):
    # A Chinchilla-like design (9 budgets over 4 decades, 15 sizes each, centred on the optimum), 1% noise, ten noise
    # draws: the fit is unbiased (mean error under 0.01) and its root mean square error is under 0.04 (a = 0.6, the
    # flattest profiles, is the hardest: the local minimum's was 0.034 over these draws, its worst draw 0.070;
    # one parabola's, unbiased on a centred grid and using every size, 0.031 over 30 draws).
    fits = [fit_isoflop(*isoflop_grid(a_true, noise=0.01, seed=seed, budgets=9, sizes=15)) for seed in range(10)]
    errors = np.array([fit.a - a_true for fit in fits])
    assert abs(errors.mean()) < 0.01 and np.sqrt(np.mean(errors**2)) < 0.04 and np.abs(errors).max() < 0.08
    assert all(fit.b == pytest.approx(1 - fit.a) for fit in fits) and all(fit.minima["interior"].sum() >= 7 for fit in fits)


def test_d_opt_is_read_off_the_tokens_trained_not_6n():
    # Runs whose FLOPs per token are not 6N (exact counts add attention and logits, which grow more slowly than N:
    # here 60 N^0.9): a budget's D_opt must lie among the tokens its runs trained, and b = 1 - 0.9 a, not 1 - a.
    C, N, loss = isoflop_grid(noise=0.0)
    D = C / (60 * N**0.9)
    fit = fit_isoflop(C, N, loss, D)
    for row in fit.minima[fit.minima["interior"]].itertuples():
        trained = D[C == row.C]
        assert trained.min() < row.D_opt < trained.max()
        order = np.argsort(N[C == row.C])  # between the two runs around N_opt
        assert np.interp(np.log(row.N_opt), np.log(N[C == row.C][order]), np.log(trained[order])) == pytest.approx(np.log(row.D_opt))
    assert fit.b == pytest.approx(1 - 0.9 * fit.a, abs=1e-3) and fit.b > 1 - fit.a + 0.04
    minima = fit.minima[fit.minima["interior"]]
    assert fit.b == pytest.approx(np.polyfit(np.log(minima["C"]), np.log(minima["D_opt"]), 1)[0])


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


# --- approach 3 (fit_parametric) and bootstrap -------------------------------------------------------------
import pandas as pd  # noqa: E402

from harness.fit import ParametricFit, bootstrap, fit_parametric  # noqa: E402
from tests.conftest import SHARED_DATA  # noqa: E402

CHINCHILLA = SHARED_DATA / "chinchilla" / "svg_extracted_data.csv"


def chinchilla_points():
    if not CHINCHILLA.exists():
        pytest.skip(f"{CHINCHILLA} is absent (shared data of Epoch AI's Chinchilla extraction)")
    df = pd.read_csv(CHINCHILLA)
    df = df[df["loss"] < df["loss"].nlargest(5).min()]  # Epoch: drop the 5 highest losses
    N, C = df["Model Size"].to_numpy(), df["Training FLOP"].to_numpy()
    return N, C / (6 * N), df["loss"].to_numpy()


def test_fit_parametric_reproduces_epochs_chinchilla_replication():
    N, D, loss = chinchilla_points()
    assert len(N) == 240
    fit = fit_parametric(N, D, loss)
    # Besiroglu et al. 2024 (arXiv:2404.10102): E 1.8172, A 477.84, B 2143.9, alpha 0.34731, beta 0.36718
    assert fit.E == pytest.approx(1.8172, abs=0.01)
    assert fit.alpha == pytest.approx(0.34731, abs=0.005) and fit.beta == pytest.approx(0.36718, abs=0.005)
    assert fit.A == pytest.approx(477.84, rel=0.01) and fit.B == pytest.approx(2143.9, rel=0.01)


def synthetic_isoflop(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, noise=0.01, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for C in np.geomspace(1e18, 1e22, 5):
        n_opt = ((alpha * A) / (beta * B)) ** (1 / (alpha + beta)) * (C / 6) ** (beta / (alpha + beta))
        for N in n_opt * np.geomspace(0.1, 10, 9):
            D = C / (6 * N)
            rows.append((N, D, (E + A / N**alpha + B / D**beta) * (1 + rng.normal(0, noise))))
    return np.array(rows).T


def test_fit_parametric_recovers_known_exponents_from_noisy_isoflop_points():
    N, D, loss = synthetic_isoflop()
    fit = fit_parametric(N, D, loss)
    assert fit.alpha == pytest.approx(0.34, abs=0.03) and fit.beta == pytest.approx(0.28, abs=0.03)


def test_compute_optimal_is_the_minimum_of_the_fitted_law():
    fit = ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, objective=0.0, n_points=0)
    C = 1e21
    n_opt, d_opt = fit.compute_optimal(C)
    assert n_opt * d_opt * 6 == pytest.approx(C)
    grid = n_opt * np.geomspace(0.5, 2, 2001)
    assert grid[np.argmin(fit.predict(grid, C / (6 * grid)))] == pytest.approx(n_opt, rel=1e-3)
    assert (fit.a, fit.b) == (pytest.approx(0.28 / 0.62), pytest.approx(0.34 / 0.62))


@pytest.mark.parametrize("bad,match", [
    (dict(N=[1e6] * 5, D=[1e9] * 5, loss=[3.0] * 5), "5 points cannot fit 5 parameters"),
    (dict(N=[1e6, 2e6, 0, 4e6, 5e6, 6e6]), "N must be positive"),
    (dict(loss=[3, 3, np.nan, 3, 3, 3]), "loss holds NaN"),
    (dict(N=[1e6, 2e6, 4e6, 8e6, 16e6, 32e6], D=[32e9, 16e9, 8e9, 4e9, 2e9, 1e9]), "same compute"),
])
def test_fit_parametric_bad_input_is_a_clear_error(bad, match):
    args = dict(N=[1e6, 2e6, 4e6, 8e6, 16e6, 32e6], D=[1e9, 3e9, 1e9, 3e9, 1e9, 3e9], loss=[3.2, 3.0, 2.9, 2.8, 2.75, 2.7])
    args.update(bad)
    with pytest.raises(FitError, match=match):
        fit_parametric(**args)


def test_a_resample_is_refitted_from_several_starts():
    # From a start in the wrong basin alone L-BFGS stops there; the best of the grid's starts reach the optimum.
    N, D, loss = synthetic_isoflop(noise=0.02, seed=3)
    full = fit_parametric(N, D, loss)
    wrong = ParametricFit(E=0.05, A=1e9, B=5.0, alpha=1.9, beta=0.02, objective=0.0, n_points=0)
    refit = fit_parametric(N, D, loss, init=wrong)
    assert refit.objective == pytest.approx(full.objective, rel=1e-6)
    assert (refit.alpha, refit.beta) == (pytest.approx(full.alpha, rel=1e-4), pytest.approx(full.beta, rel=1e-4))


def test_an_unidentified_law_says_so():
    # Losses with no irreducible floor: the fit drives E to zero, and says the points do not pin the law down.
    truth = ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, objective=0.0, n_points=0)
    N, D, loss = synthetic_isoflop(E=0.0, noise=0.0)
    fit = fit_parametric(N, D, loss, init=truth)  # from the truth and the grid's best starts: faster than all 4500
    assert not fit.identified and "in log E: the points do not separate the irreducible loss" in fit.unidentified
    assert fit_parametric(*synthetic_isoflop(), init=truth).identified


def test_a_budget_whose_losses_are_no_parabola_says_so():
    # One budget of a demo design that gave every width every budget (8e10 FLOPs): the best run (6.6e3) is inside
    # the sizes, but the far larger ones rise so steeply that the parabola through all six has its vertex below them.
    from harness.fit.isoflop import _budget_minimum
    N = np.array([3792, 6592, 14496, 25472, 56640, 100096])
    loss = np.array([2.227, 2.214, 2.304, 2.420, 2.503, 2.629])
    row = _budget_minimum(np.log(N), loss, np.log(8e10 / (6 * N)), "parabola")
    assert not row["interior"] and row["why"].startswith("the parabola's vertex lies below the sizes tried")


def test_compute_optimal_counts_flops_as_the_runs_did():
    fit = ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, objective=0.0, n_points=0)
    C = np.array([1e20, 1e21])
    six_n = fit.compute_optimal(C, lambda n: 6 * n)  # the same C as the closed form, found numerically
    np.testing.assert_allclose(six_n, fit.compute_optimal(C), rtol=1e-6)
    exact = lambda n: 6 * n + 1e9  # noqa: E731 (a fixed cost per token: attention, logits)
    n_opt, d_opt = fit.compute_optimal(C, exact)
    np.testing.assert_allclose(d_opt * exact(n_opt), C)
    for budget, n in zip(C, n_opt):
        grid = n * np.geomspace(0.8, 1.25, 2001)
        assert grid[np.argmin(fit.predict(grid, budget / exact(grid)))] == pytest.approx(n, rel=1e-3)
    assert fit.exponents_at(C, exact)[0] != pytest.approx(fit.a, abs=1e-3)


@pytest.mark.slow
def test_approach_2_intervals_cover_the_truth_as_often_as_they_say():
    # 100 data sets from a known law on an IsoFLOP design (tests/bench/bootstrap_coverage.py, which also runs
    # approach 3): the nominal 95% interval of a must cover the true a 88-99% of the time. Resampling whole runs
    # within each budget covers 100% here (too wide); the residual bootstrap covers 98%.
    from tests.bench.bootstrap_coverage import coverage
    result = coverage(2, datasets=100, resamples=400, noise=0.01, seed=0)
    assert result["fitted"] == 100 and 0.88 <= result["coverage"] <= 0.99, result["coverage"]


def test_bootstrap_within_strata_keeps_every_strata_count():
    from harness.fit import residual_resamples
    strata = np.repeat([1.0, 2.0, 3.0], [4, 5, 6])
    y = np.arange(15.0)
    fitted = y + np.where(strata == 2.0, 0.5, -0.5)  # residuals -0.5 in stratum 2, +0.5 elsewhere
    for draw in residual_resamples(y, fitted, strata, n_params=3, fit_per_stratum=True, n_resamples=20, seed=0):
        residuals = draw - fitted
        assert np.allclose(residuals[strata == 2.0], -0.5 * np.sqrt(5 / 2))  # drawn within the stratum, df-scaled
        assert np.allclose(residuals[strata == 1.0], 0.5 * np.sqrt(4 / 1))
    counts = bootstrap(lambda s, x: ParametricFit(E=float(np.sum(s == 1.0)), A=float(np.sum(s == 3.0)), B=0, alpha=0,
                                                  beta=0, objective=0, n_points=0),
                       strata, y, n_resamples=20, strata=strata, params=["E", "A"], workers=1)
    assert counts["E"] == (4, 4) and counts["A"] == (6, 6)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
    N, D, loss = synthetic_isoflop(noise=0.02, seed=3)
    fit = fit_parametric(N, D, loss)
    first = bootstrap(fit_parametric, N, D, loss, n_resamples=30, seed=7, init=fit)
    again = bootstrap(fit_parametric, N, D, loss, n_resamples=30, seed=7, init=fit)
    assert first == again and first["_failed"] == 0
    for name in ("E", "alpha", "beta", "a", "b"):
        low, high = first[name]
        assert low < high and low <= getattr(fit, name) <= high


# --- approach 1 (fit_envelope) ----------------------------------------------------------------------------
from harness.fit import fit_envelope  # noqa: E402


def synthetic_curves(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28):
    """Loss curves of 40 model sizes, each trained across 3 decades of tokens, from a known law."""
    rows = []
    for run, N in enumerate(np.geomspace(1e7, 1e10, 40)):
        for D in np.geomspace(1e8, 1e12, 60):
            rows.append({"run": run, "N": N, "tokens": D, "flops": 6 * N * D, "loss": E + A / N**alpha + B / D**beta})
    return pd.DataFrame(rows)


def test_envelope_recovers_the_allocation_exponents():
    fit = fit_envelope(synthetic_curves(), intervals=50)
    a_true = 0.28 / (0.34 + 0.28)
    assert fit.a == pytest.approx(a_true, abs=0.03) and fit.b == pytest.approx(1 - a_true, abs=0.03)
    assert fit.intervals["a"][0] <= fit.a <= fit.intervals["a"][1]
    assert (np.diff(fit.envelope["loss"]) <= 1e-12).all()  # the envelope only falls with compute


def test_envelope_bad_input_is_a_clear_error():
    one_size = synthetic_curves().query("run == 3")
    with pytest.raises(FitError, match="at least 2 model sizes"):
        fit_envelope(one_size)
    with pytest.raises(FitError, match="lack the columns"):
        fit_envelope(one_size.drop(columns="tokens"))


# --- tied exponents (alpha = beta) ----------------------------------------------------------------------------

def test_tied_exponents_recover_a_law_whose_exponents_are_equal():
    N, D, loss = synthetic_isoflop(E=1.8, A=480.0, B=2000.0, alpha=0.33, beta=0.33, noise=0.005, seed=2)
    fit = fit_parametric(N, D, loss, tie_exponents=True)
    assert fit.tie_exponents and fit.alpha == fit.beta == pytest.approx(0.33, abs=0.02)
    assert fit.E == pytest.approx(1.8, abs=0.05) and fit.identified
    assert fit.a == fit.b == 0.5   # equal exponents: N_opt and D_opt both grow as C^0.5


def test_tying_the_exponents_costs_objective_when_they_differ():
    N, D, loss = synthetic_isoflop(alpha=0.45, beta=0.25, noise=0.0)
    free, tied = fit_parametric(N, D, loss), fit_parametric(N, D, loss, tie_exponents=True)
    assert free.objective < 1e-9 < tied.objective and tied.alpha == tied.beta


def test_the_tied_objectives_gradient_is_its_derivative():
    from tests.fit_references import tied_objective
    N, D, loss = synthetic_isoflop(noise=0.01)
    args = (np.log(N), np.log(D), np.log(loss), 1e-3)
    theta = np.array([6.0, 6.5, 0.5, 0.3])
    _, gradient = tied_objective(theta, *args)
    step = 1e-6
    numeric = [(tied_objective(theta + step * e, *args)[0] - tied_objective(theta - step * e, *args)[0]) / (2 * step)
               for e in np.eye(4)]
    assert gradient == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def test_tied_bootstrap_intervals_hold_the_fit():
    N, D, loss = synthetic_isoflop(alpha=0.3, beta=0.3, noise=0.01, seed=5)
    fit = fit_parametric(N, D, loss, tie_exponents=True, intervals=40, seed=1)
    low, high = fit.intervals["alpha"]
    assert low <= fit.alpha <= high and fit.intervals["alpha"] == fit.intervals["beta"]


# --- Kaplan's L(N, D) ------------------------------------------------------------------------------------------

def test_kaplans_law_is_its_limits():
    from harness.fit import KaplanFit
    law = KaplanFit(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103, objective=0.0, n_points=0)
    # Kaplan et al. 2020, eq. 1.5: with data unlimited L -> (N_c / N)^alpha_N, with parameters unlimited (D_c / D)^alpha_D
    assert law.predict(1e9, 1e40) == pytest.approx((6.4e13 / 1e9) ** 0.076, rel=1e-9)
    assert law.predict(1e40, 1e10) == pytest.approx((1.8e13 / 1e10) ** 0.103, rel=1e-9)


def test_fit_kaplan_nd_recovers_the_papers_parameters_from_noisy_points():
    from harness.fit import KaplanFit, fit_kaplan_nd
    from tests.fit_references import kaplan_objective
    truth = KaplanFit(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103, objective=0.0, n_points=0)
    rng = np.random.default_rng(0)
    N, D = (grid.ravel() for grid in np.meshgrid(np.geomspace(1e6, 1e9, 7), np.geomspace(1e8, 1e11, 7)))
    loss = truth.predict(N, D) * (1 + rng.normal(0, 0.003, N.size))
    exact = fit_kaplan_nd(N, D, truth.predict(N, D))
    for name in ("N_c", "D_c", "alpha_N", "alpha_D"):
        assert getattr(exact, name) == pytest.approx(getattr(truth, name), rel=1e-4), name
    fit = fit_kaplan_nd(N, D, loss)
    assert fit.alpha_N == pytest.approx(0.076, rel=0.03) and fit.alpha_D == pytest.approx(0.103, rel=0.03)
    assert fit.predict(1e10, 1e12) == pytest.approx(truth.predict(1e10, 1e12), rel=0.01)   # beyond the points
    theta, args = np.array([30.0, 29.0, 0.09, 0.12]), (np.log(N), np.log(D), np.log(loss), 1e-3)
    step, (_, gradient) = 1e-6, kaplan_objective(theta, *args)
    numeric = [(kaplan_objective(theta + step * e, *args)[0] - kaplan_objective(theta - step * e, *args)[0]) / (2 * step)
               for e in np.eye(4)]
    assert gradient == pytest.approx(numeric, rel=1e-5, abs=1e-9)


def small_sweep(seed: int, tokens=(2e6, 2e7)):
    """12 noisy (1%) points of a Kaplan law at 4 sizes x 3 token counts: a first sweep's N-D grid."""
    from harness.fit import KaplanFit
    truth = KaplanFit(N_c=np.exp(12.8), D_c=np.exp(18.7), alpha_N=0.146, alpha_D=0.162, objective=0.0, n_points=0)
    N, D = (grid.ravel() for grid in np.meshgrid(np.geomspace(2e4, 2e5, 4), np.geomspace(*tokens, 3)))
    return N, D, truth.predict(N, D) * (1 + np.random.default_rng(seed).normal(0, 0.01, N.size))


@pytest.mark.parametrize("seed", range(4))
def test_fit_kaplan_nd_stops_at_its_optimum_not_where_the_last_bits_leave_it(seed):
    # its summed Huber loss is ~1e-4, below the stopping tests' absolute floors: fitted as it is, starts stopped
    # short and a change in the 13th digit of the losses (another CPU's exp) moved the exponents by 1e-4 to 4x
    from harness.fit import fit_kaplan_nd
    N, D, loss = small_sweep(seed)
    fit, nudged = fit_kaplan_nd(N, D, loss), fit_kaplan_nd(N, D, loss * (1 + 1e-13))
    assert fit.identified
    for name in ("N_c", "D_c", "alpha_N", "alpha_D"):
        assert getattr(nudged, name) == pytest.approx(getattr(fit, name), rel=1e-6), name


def test_a_kaplan_fit_whose_tokens_barely_vary_says_an_exponent_is_not_pinned_down():
    from harness.fit import fit_kaplan_nd
    fit = fit_kaplan_nd(*small_sweep(0, tokens=(2e6, 2.2e6)))   # D over 10%: the law's two terms trade off
    assert not fit.identified and "with a standard error of" in fit.unidentified
    assert "the points do not pin alpha_" in fit.unidentified


# --- data-constrained (Muennighoff et al. 2023) ---------------------------------------------------------------

def data_constrained_points(noise: float, seed: int = 0):
    """Single-epoch IsoFLOP points, then runs repeating U unique tokens up to 60 epochs at sizes up to 30x the
    size U supports, from Muennighoff et al.'s fitted R_D* = 15.4 and R_N* = 5.3 on a Chinchilla-like base law."""
    from harness.fit import DataConstrainedFit
    base = ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, objective=0.0, n_points=0)
    truth = DataConstrainedFit(base=base, R_D_star=15.4, R_N_star=5.3, objective=0.0, n_points=0)
    N, D, _ = synthetic_isoflop(noise=0.0)
    U = D.copy()
    for unique in (1e8, 1e9):
        G = (0.34 * 406.4 / (0.28 * 410.7)) ** (1 / 0.62)
        supported = G * (unique * G) ** (base.a / base.b)
        for epochs in (2, 4, 8, 16, 32, 60):
            for size in (0.3, 1, 3, 10, 30):
                N, D, U = np.append(N, supported * size), np.append(D, unique * epochs), np.append(U, unique)
    loss = truth.predict(N, D, U) * (1 + np.random.default_rng(seed).normal(0, noise, len(N)))
    return N, D, U, loss


def test_fit_data_constrained_recovers_the_papers_repetition_constants():
    from harness.fit import fit_data_constrained
    exact = fit_data_constrained(*data_constrained_points(noise=0.0))
    assert exact.R_D_star == pytest.approx(15.4, rel=1e-3) and exact.R_N_star == pytest.approx(5.3, rel=1e-3)
    assert exact.alpha == pytest.approx(0.34, rel=1e-3) and exact.E == pytest.approx(1.69, rel=1e-3)
    noisy = fit_data_constrained(*data_constrained_points(noise=0.003))
    assert noisy.R_D_star == pytest.approx(15.4, rel=0.1) and noisy.R_N_star == pytest.approx(5.3, rel=0.2)


def test_the_two_step_fit_recovers_the_constants_when_no_single_epoch_run_is_discounted():
    from harness.fit import DataConstrainedFit, fit_data_constrained
    N, D, U, loss = data_constrained_points(noise=0.0)
    base = ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, objective=0.0, n_points=0)
    truth = DataConstrainedFit(base=base, R_D_star=15.4, R_N_star=5.3, objective=0.0, n_points=0)
    # The paper's two steps assume the single-epoch runs are worth their full size: keep only those that are.
    kept = (D > U) | np.isclose(truth.effective(N, D, U)[0], N, rtol=1e-12)
    assert 6 <= np.sum(kept & (D <= U)) < np.sum(D <= U)
    two_step = fit_data_constrained(N[kept], D[kept], U[kept], loss[kept], two_step=True)
    assert two_step.R_D_star == pytest.approx(15.4, rel=1e-3) and two_step.R_N_star == pytest.approx(5.3, rel=1e-3)
    assert two_step.alpha == pytest.approx(0.34, rel=1e-3)
    # With every single-epoch run, those larger than their tokens support bias the base law the second step keeps.
    biased = fit_data_constrained(N, D, U, loss, two_step=True)
    assert abs(biased.R_D_star / 15.4 - 1) > 0.02


def test_repeated_tokens_are_worth_less_and_the_law_says_when_it_cannot_fit():
    from harness.fit import DataConstrainedFit, fit_data_constrained
    base = ParametricFit(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28, objective=0.0, n_points=0)
    law = DataConstrainedFit(base=base, R_D_star=15.4, R_N_star=5.3, objective=0.0, n_points=0)
    _, once = law.effective(1e6, 1e9, 1e9)
    _, four = law.effective(1e6, 4e9, 1e9)
    # four epochs: 3 repeats, worth 15.4 (1 - e^(-3/15.4)) = 2.72 fresh epochs, so 3.72e9 tokens, not 4e9
    assert once == pytest.approx(1e9, rel=1e-12) and four == pytest.approx(1e9 * (1 + 15.4 * (1 - np.exp(-3 / 15.4))))
    N, D, U, loss = data_constrained_points(noise=0.0)
    with pytest.raises(FitError, match="single-epoch points"):
        fit_data_constrained(N, D, np.full_like(D, 1e7), loss)


# --- predictions with intervals ---------------------------------------------------------------------------------

def test_every_fit_predicts_with_an_interval_from_its_bootstrap():
    from harness.fit import KaplanFit, fit_kaplan_nd, fit_power_law
    N, D, loss = synthetic_isoflop(noise=0.01, seed=4)
    law = fit_parametric(N, D, loss, intervals=40, seed=1)
    value, low, high = law.predict([1e9, 1e11], [1e11, 1e13], interval=0.95)
    assert np.all(low < value) and np.all(value < high) and len(law.resampled) == 40 - law.intervals["_failed"]
    # the interval is the resamples' predictions' percentiles, at each point
    draws = np.array([fit.predict([1e9, 1e11], [1e11, 1e13]) for fit in law.resampled])
    assert (low, high) == (pytest.approx(np.percentile(draws, 2.5, axis=0)), pytest.approx(np.percentile(draws, 97.5, axis=0)))
    inside = law.predict(N[22], D[22], interval=0.95)   # among the points, the law they came from is inside
    assert inside[1] < 1.69 + 406.4 / N[22] ** 0.34 + 410.7 / D[22] ** 0.28 < inside[2]
    with pytest.raises(FitError, match="fit with intervals=N"):
        fit_parametric(N, D, loss).predict(1e9, 1e11, interval=0.95)
    C = np.repeat(np.geomspace(1e18, 1e22, 5), 9)
    iso = fit_isoflop(C, N, loss, D, intervals=50)
    n_opt, n_low, n_high = iso.predict(1e23, interval=0.9)
    assert n_low < n_opt < n_high
    x = np.geomspace(1, 1e3, 12)
    power = fit_power_law(x, 2.0 * x ** -0.5 * (1 + np.random.default_rng(0).normal(0, 0.01, 12)), irreducible=False,
                          intervals=30)
    assert power.predict(1e4, interval=0.95)[1] < power.predict(1e4) < power.predict(1e4, interval=0.95)[2]
    kaplan_truth = KaplanFit(N_c=6.4e13, D_c=1.8e13, alpha_N=0.076, alpha_D=0.103, objective=0.0, n_points=0)
    grid_n, grid_d = (g.ravel() for g in np.meshgrid(np.geomspace(1e6, 1e9, 5), np.geomspace(1e8, 1e11, 5)))
    kaplan = fit_kaplan_nd(grid_n, grid_d, kaplan_truth.predict(grid_n, grid_d) * (1 + np.random.default_rng(1).normal(0, 0.003, 25)),
                           intervals=10)
    k_value, k_low, k_high = kaplan.predict(1e10, 1e12, interval=0.95)
    assert k_low <= k_value <= k_high


# --- the batched minimiser ------------------------------------------------------------------------------------------

def test_batched_lbfgs_reaches_the_rosenbrock_minimum_from_every_start():
    from harness.fit.minimise import lbfgs

    def rosenbrock(theta, rows):   # scaled per row, so that the rows must not share step lengths
        x, y = theta.T
        scale = 1.0 + rows
        value = scale * (100 * (y - x * x) ** 2 + (1 - x) ** 2)
        gradient = scale[:, None] * np.stack([-400 * x * (y - x * x) - 2 * (1 - x), 200 * (y - x * x)], axis=1)
        return value, gradient

    starts = np.random.default_rng(0).uniform(-2, 2, (50, 2))
    found = lbfgs(rosenbrock, starts, gtol=1e-10, ftol=0.0)
    np.testing.assert_allclose(found.x, 1.0, atol=1e-6)
    assert found.value.max() < 1e-10


def test_the_batched_fit_lands_where_scipy_does_from_the_same_starts():
    from scipy import optimize

    from harness.fit import CHINCHILLA_STARTS, huber_objectives
    from tests.fit_references import huber_objective
    from harness.fit.minimise import lbfgs
    N, D, loss = chinchilla_points()
    args = (np.log(N), np.log(D), np.log(loss), 1e-3)
    starts = CHINCHILLA_STARTS[::90]   # 50 starts across the grid
    batched = lbfgs(huber_objectives(*args), starts)
    plain = np.array([optimize.minimize(huber_objective, s, args=args, jac=True, method="L-BFGS-B").fun for s in starts])
    assert batched.value.min() == pytest.approx(plain.min(), abs=1e-9)


def test_every_bootstrap_resample_gets_a_full_multi_start_fit():
    # Each resample's refit from RESAMPLE_STARTS starts, batched with the others' (one row of losses per start),
    # reaches what the full 4500-start grid reaches on that resample alone: the same floor of the summed Huber loss
    # (starts stall a little apart on it, ~1e-4 of its value), exponents well inside the intervals' width (~0.03).
    N, D, loss = chinchilla_points()
    fit = fit_parametric(N, D, loss, intervals=4, seed=7)
    from harness.fit import residual_resamples
    datasets = residual_resamples(np.log(loss), np.log(fit.predict(N, D)), None, n_params=5, fit_per_stratum=False,
                                  n_resamples=4, seed=7)
    assert len(fit.resampled) == 4
    for refit, log_loss in zip(fit.resampled, datasets):
        alone = fit_parametric(N, D, np.exp(log_loss))
        assert refit.objective == pytest.approx(alone.objective, rel=2e-4)
        assert refit.alpha == pytest.approx(alone.alpha, abs=2e-3) and refit.E == pytest.approx(alone.E, abs=2e-3)


def test_the_data_constrained_law_predicts_with_an_interval():
    from harness.fit import fit_data_constrained
    N, D, U, loss = data_constrained_points(noise=0.003, seed=2)
    fit = fit_data_constrained(N, D, U, loss, intervals=6, seed=0)
    assert fit.intervals["_failed"] == 0 and len(fit.resampled) == 6
    low, high = fit.intervals["R_D_star"]
    assert low < fit.R_D_star < high
    value, low, high = fit.predict(1e9, 4e10, 1e9, interval=0.95)
    assert low < value < high
    truth = fit.base.predict(*fit.effective(1e9, 4e10, 1e9))
    assert value == pytest.approx(truth, rel=1e-12)


def test_a_local_minimum_removes_the_wide_grid_bias_of_one_parabola():
    # Noise-free IsoFLOP points of Chinchilla's law on a 30x grid of 12 sizes whose centre drifts from 1/4 to 4 times
    # the optimum: one parabola through all sizes is biased (the loss is no parabola in ln N that far out), the
    # local quadratic less, a window of the 5 nearest sizes and Akima's interpolant hardly at all.
    from tests.bench.isoflop_bias import LAWS, exponent_errors
    errors = {method: found[0] for method, found in exponent_errors(LAWS["Chinchilla"], 30, 12, 4.0, 0.0, 1).items()}
    assert errors["parabola"] > 0.008
    assert abs(errors["local"]) < 0.7 * errors["parabola"]
    assert abs(errors["window"]) < 1e-3 and abs(errors["akima"]) < 1e-3
    with pytest.raises(FitError, match="minimum='cubic' is not one of"):
        fit_isoflop([1e18, 1e18, 1e18, 1e19, 1e19, 1e19], [1, 2, 3, 1, 2, 3], [3, 2, 3, 3, 2, 3], minimum="cubic")


def test_approach_2s_default_minimum_is_the_one_the_committed_comparison_measured_best():
    import json
    from pathlib import Path
    from harness.analysis import minimum_methods_line
    from harness.fit import DEFAULT_MINIMUM, MINIMUM_METHODS, a_by_method
    from tests.bench.isoflop_bias import best_method
    measured = json.loads((Path(__file__).parent.parent / "results" / "isoflop_bias" / "bias.json").read_text())
    assert best_method(measured["rows"])[0] == measured["best"] == DEFAULT_MINIMUM
    assert fit_isoflop([1e18] * 3 + [1e19] * 3, [1, 2, 3] * 2, [3, 2, 3] * 2).minimum == DEFAULT_MINIMUM
    N, D, loss = synthetic_isoflop(noise=0.003, seed=3)
    found = a_by_method(6 * N * D, N, loss, D)
    assert found == {m: fit_isoflop(6 * N * D, N, loss, D, minimum=m).a for m in MINIMUM_METHODS}
    line = minimum_methods_line(found, "local")
    assert f"local {found['local']:.4g} (used)" in line
    low, high = min(found, key=found.get), max(found, key=found.get)
    assert f"moves {found[high] - found[low]:.3g} ({low} {found[low]:.4g} to {high} {found[high]:.4g})" in line


# --- held-out prediction --------------------------------------------------------------------------------------------

def test_held_out_fits_started_from_the_full_fits_find_the_grids_optimum():
    """compare_laws(inits=): each held-out fit starts from the law's fit of every point (harness-fit shares that
    work) and lands where the full grid of starts does."""
    import pandas as pd
    from harness.fit import compare_laws, fit_kaplan_nd
    N, D, loss = synthetic_isoflop(noise=0.003, seed=2)
    frame = pd.DataFrame({"N": N, "D": D, "loss": loss})
    inits = {"chinchilla": fit_parametric(N, D, loss), "tied": fit_parametric(N, D, loss, tie_exponents=True),
             "kaplan": fit_kaplan_nd(N, D, loss)}
    shared, grid = compare_laws(frame, intervals=0, inits=inits), compare_laws(frame, intervals=0)
    assert list(shared["law"]) == list(grid["law"])
    np.testing.assert_allclose(shared["mean_abs_error"][:3], grid["mean_abs_error"][:3], rtol=1e-5)


def test_kaplan_from_a_nearby_fit_whose_basins_miss_the_deepest_minimum_still_reaches_it():
    # The table above without its largest size has two minima 1.2e-5 apart (relative) whose predictions at that size
    # differ 0.5%; `shallow` is the shallower one (a strict local minimum: L-BFGS from it stays put). A nearby fit
    # whose basins hold only that one must not decide the held-out fit.
    import dataclasses
    from harness.fit import fit_kaplan_nd
    from harness.fit.kaplan import kaplan_objectives
    from harness.fit.minimise import lbfgs
    N, D, loss = synthetic_isoflop(noise=0.003, seed=2)
    fitted = N < N.max()
    held_out = N[~fitted], D[~fitted]
    N, D, loss = N[fitted], D[fitted], loss[fitted]
    shallow = np.array([[28.14151312, 32.05266205, 0.1102993, 0.1074705]])
    grid = fit_kaplan_nd(N, D, loss)
    stays = lbfgs(kaplan_objectives(np.log(N), np.log(D), np.log(loss), 1e-3), shallow, gtol=1e-12, ftol=0)
    assert stays.value[0] > grid.objective * (1 + 1e-5)
    started = fit_kaplan_nd(N, D, loss, init=dataclasses.replace(grid, resample_starts=shallow))
    assert started.objective == pytest.approx(grid.objective, rel=1e-9)
    assert started.predict(*held_out) == pytest.approx(grid.predict(*held_out), rel=1e-6)


def test_trusting_compare_laws_predicts_over_trained_runs_17x_larger_within_1_percent():
    # tests/bench/overtraining.py: runs of 11M-411M parameters at 20-640 tokens per parameter, 0.3% noise; the
    # user ranks the forms on those runs alone and predicts 1.4B at 640 and 6.9B at 20 tokens per parameter.
    from tests.bench.overtraining import LAWS, protocol
    for law in ("Epoch", "Chinchilla"):
        found = protocol(LAWS[law], noise=0.003, seed=0)
        assert found["ranking"][-1] == "kaplan"   # no irreducible loss: 6-18% off at 17x
        assert max(abs(e) for e in found["errors"][found["chosen"]]) < 0.01, found
    # Chinchilla's own law has alpha 0.34 != beta 0.28: the tied form misses the 6.9B run by more than 1%, and the
    # ranking, made without seeing it, says so.
    assert found["chosen"] == "chinchilla" and abs(found["errors"]["tied"][1]) > 0.01


def test_holdout_predicts_the_largest_scale_with_an_interval():
    import pandas as pd

    from harness.fit import compare_laws, holdout
    N, D, loss = synthetic_isoflop(noise=0.003, seed=2)
    frame = pd.DataFrame({"N": N, "D": D, "loss": loss})
    result = holdout(frame, "chinchilla", by="N", largest=2, intervals=30)
    held = frame[frame["N"] >= np.sort(frame["N"].unique())[-2]]
    assert len(result.points) == len(held) and result.n_fitted == len(frame) - len(held)
    refit = fit_parametric(frame.loc[~frame.index.isin(held.index), "N"], frame.loc[~frame.index.isin(held.index), "D"],
                           frame.loc[~frame.index.isin(held.index), "loss"])
    np.testing.assert_allclose(result.points["predicted"], refit.predict(held["N"], held["D"]), rtol=1e-8)
    np.testing.assert_allclose(result.points["error"], result.points["predicted"] / held["loss"].to_numpy() - 1)
    assert (result.points["low"] < result.points["predicted"]).all() and 0 <= result.coverage <= 1
    table = compare_laws(frame, largest=2, intervals=0)
    assert list(table["law"][:3]) != [] and table["why"].iloc[-1] == "no U column"
    assert table["mean_abs_error"].iloc[0] == table["mean_abs_error"].min()
    with pytest.raises(FitError, match="law='hoffmann' is not one of"):
        holdout(frame, "hoffmann")
    with pytest.raises(FitError, match="N takes 2 values"):
        holdout(frame[frame["N"] <= np.sort(frame["N"].unique())[1]], "chinchilla")


# --- learning-rate ladders ------------------------------------------------------------------------------------------

def test_fit_lr_law_recovers_the_optima_and_the_exponent():
    # loss = f(N) + 0.05 ln(lr / lr_opt(N))^2 + 0.5% noise, lr_opt = 0.3 N^-0.4, on a factor-2 grid of 10 rates.
    from harness.fit import fit_lr_law
    rng = np.random.default_rng(0)
    N, lr, loss = [], [], []
    for n in (4e3, 1.6e4, 6.4e4, 2.56e5):
        for x in 0.0005 * 2.0 ** np.arange(10):
            N.append(n), lr.append(x), loss.append(3 - 0.1 * np.log10(n) + 0.05 * np.log(x / (0.3 * n**-0.4)) ** 2
                                                   + rng.normal(0, 0.005))
    fit = fit_lr_law(N, lr, loss, intervals=100)
    assert fit.gamma == pytest.approx(0.4, abs=0.02) and fit.c == pytest.approx(0.3, rel=0.15)
    assert fit.intervals["gamma"][0] < 0.4 < fit.intervals["gamma"][1]
    for row in fit.optima.itertuples():
        assert row.lr_opt == pytest.approx(0.3 * row.N**-0.4, rel=0.05) and row.low < row.lr_opt < row.high
    edge = np.array(lr) < 0.004   # every size's optimum above the grid
    with pytest.raises(FitError, match="the largest learning rate is best"):
        fit_lr_law(np.array(N)[edge], np.array(lr)[edge], np.array(loss)[edge])
