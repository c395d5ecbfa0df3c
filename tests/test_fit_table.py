"""`harness-fit`: scaling laws fitted to a table from anywhere, through the console script as a user runs it."""
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.test_fit import CHINCHILLA, synthetic_isoflop


def harness_fit(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness.fit_table", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_epochs_chinchilla_fit_comes_out_of_a_csv(tmp_path):
    if not CHINCHILLA.exists():
        pytest.skip(f"{CHINCHILLA} is absent (shared data of Epoch AI's Chinchilla extraction)")
    df = pd.read_csv(CHINCHILLA)
    df = df[df["loss"] < df["loss"].nlargest(5).min()]  # Epoch: drop the 5 highest losses
    table = pd.DataFrame({"params": df["Model Size"], "tokens": df["Training FLOP"] / (6 * df["Model Size"]),
                          "loss": df["loss"]})
    table.to_csv(tmp_path / "chinchilla.csv", index=False)
    done = harness_fit("chinchilla.csv", "--N", "params", "--D", "tokens", "--out", "fits", "--resamples", "20",
                       cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fits = json.loads((tmp_path / "fits" / "fits.json").read_text())
    law = fits["parametric"]
    # Besiroglu et al. 2024 (arXiv:2404.10102): E 1.8172, A 477.84, B 2143.9, alpha 0.34731, beta 0.36718
    assert law["E"] == pytest.approx(1.8172, abs=0.01) and law["alpha"] == pytest.approx(0.34731, abs=0.005)
    assert law["beta"] == pytest.approx(0.36718, abs=0.005) and law["A"] == pytest.approx(477.84, rel=0.01)
    assert law["B"] == pytest.approx(2143.9, rel=0.01) and law["alpha_interval"][0] < law["alpha"] < law["alpha_interval"][1]
    assert fits["tied"]["alpha"] == fits["tied"]["beta"] and "N_c" in fits["kaplan"]
    assert {row["law"] for row in fits["held_out"] if row["why"] == ""} == {"chinchilla", "tied", "kaplan"}
    report = (tmp_path / "fits" / "report.md").read_text()
    assert "columns read: N <- params, D <- tokens, loss <- loss" in report and "extrapolated best" in report
    for figure in ("parametric_contours", "residuals"):
        assert (tmp_path / "fits" / f"{figure}.png").exists() and (tmp_path / "fits" / f"{figure}.svg").exists()


def test_a_compute_column_adds_approach_2_and_groups_fit_apart(tmp_path):
    N, D, loss = synthetic_isoflop(noise=0.002, seed=1)
    C = 6 * N * D
    table = pd.DataFrame({"N": N, "C": C, "loss": loss, "lab": "a"})
    table = pd.concat([table, table.assign(lab="b", loss=loss * 1.01)])   # a second lab, 1% worse everywhere
    table.to_parquet(tmp_path / "runs.parquet")
    # 4 resamples: some budget's N_opt interval does not hold its estimate, which the isoflop figure's bars once
    # crashed on (matplotlib refuses negative offsets)
    done = harness_fit("runs.parquet", "--group", "lab", "--out", "out", "--resamples", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    truth = 0.28 / (0.34 + 0.28)
    for lab in ("a", "b"):
        assert fits[lab]["isoflop"]["a"] == pytest.approx(truth, abs=0.02)
        assert fits[lab]["parametric"]["a"] == pytest.approx(truth, abs=0.03)
    assert fits["b"]["parametric"]["E"] > fits["a"]["parametric"]["E"]
    assert (tmp_path / "out" / "a_isoflop.png").exists() and (tmp_path / "out" / "b_isoflop.svg").exists()
    assert "D = C / 6N (no D column)" in (tmp_path / "out" / "report.md").read_text()


@pytest.mark.parametrize("edit, args, message", [
    (lambda t: t.drop(columns="loss"), [], "no column 'loss' for loss"),
    (lambda t: t.assign(loss=t["loss"].where(t.index != 6, np.nan)), [], "column 'loss' row 7: nan is not a positive"),
    (lambda t: t.assign(D=t["D"].where(t.index != 2, -5.0)), [], "column 'D' row 3: -5.0 is not a positive"),
    (lambda t: t.assign(N=1e9), [], "the table holds 1 distinct value(s) of column 'N' (1e+09): a law in N needs "
     "at least 3 sizes"),
    (lambda t: t.assign(N=np.where(t["N"] < t["N"].median(), 1e8, 1e9)), ["--group", "lab"],
     "group lab = 'x' holds 2 distinct value(s) of column 'N' (1e+08, 1e+09)"),
    (lambda t: pd.concat([t, t.iloc[[4]]], ignore_index=True), [], "row 46 repeats row 5 in every column read"),
    (lambda t: t.assign(N=t["N"].astype(object).where(t.index != 9, "7B")), [], "column 'N' row 10: '7B' is not"),
    (lambda t: t.assign(loss=t["loss"].where(t.index != 3, np.inf)), [], "column 'loss' row 4: inf is not a positive"),
    (lambda t: t, ["--N", "size"], "no column 'size' for N"),
    (lambda t: t.drop(columns="D"), [], "neither a D (tokens) nor a C (FLOPs) column"),
])
def test_a_bad_table_is_one_line_naming_the_column_and_row(tmp_path, edit, args, message):
    N, D, loss = synthetic_isoflop(noise=0.002)
    edit(pd.DataFrame({"N": N, "D": D, "loss": loss, "lab": "x"})).to_csv(tmp_path / "t.csv", index=False)
    done = harness_fit("t.csv", *args, "--out", "out", "--resamples", "5", cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not (tmp_path / "out" / "fits.json").exists()


@pytest.mark.slow
def test_a_unique_tokens_column_adds_the_data_constrained_law(tmp_path):
    from tests.test_fit import data_constrained_points
    N, D, U, loss = data_constrained_points(noise=0.0)
    pd.DataFrame({"N": N, "D": D, "U": U, "loss": loss}).to_csv(tmp_path / "repeated.csv", index=False)
    done = harness_fit("repeated.csv", "--out", "out", "--resamples", "4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    law = fits["data_constrained"]
    assert law["R_D_star"] == pytest.approx(15.4, rel=1e-3) and law["R_N_star"] == pytest.approx(5.3, rel=1e-3)
    low, high = law["R_D_star_interval"]
    assert low * (1 - 1e-4) <= law["R_D_star"] <= high * (1 + 1e-4)  # noise-free points: a near-zero-width interval
    assert law["rows"] == len(N)
    single_epoch = int(np.sum(D <= U))
    assert fits["parametric"]["rows"] == single_epoch < len(N)
    from harness.fit import fit_parametric   # fitted on those rows alone, not on the repeated ones
    alone = fit_parametric(N[D <= U], D[D <= U], loss[D <= U])
    assert fits["parametric"]["alpha"] == pytest.approx(alone.alpha, rel=1e-6)
    two_step = fits["data_constrained_two_step"]
    assert two_step["rows"] == len(N) and two_step["R_D_star_interval"][0] > 0
    assert "data_constrained" in [row["law"] for row in fits["held_out"] if row["why"] == ""]
    assert "Muennighoff et al.'s data-constrained law" in (tmp_path / "out" / "report.md").read_text()


def test_quick_gives_the_point_fits_with_a_line_per_phase_and_a_summary(tmp_path):
    N, D, loss = synthetic_isoflop(noise=0.002, seed=1)
    pd.DataFrame({"N": N, "D": D, "C": 6 * N * D, "loss": loss}).to_csv(tmp_path / "runs.csv", index=False)
    done = harness_fit("runs.csv", "--quick", "--out", "out", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert list(fits) == ["isoflop", "parametric", "tied", "kaplan"] and "held_out" not in fits
    assert fits["parametric"]["alpha_interval"] is None and fits["parametric"]["rows"] == len(N)
    assert fits["parametric"]["alpha"] == pytest.approx(0.34, abs=0.02)
    phases = [line.split(": ", 1)[1].rsplit(" (", 1)[0] for line in done.stderr.splitlines() if line.startswith("fit ")]
    assert phases == ["isoflop", "parametric", "tied", "kaplan"]
    summary = done.stdout.splitlines()
    assert summary[0].split() == ["law", "rows", "held-out", "error", "parameters", "[95%", "interval]"]
    assert any(line.split()[:2] == ["parametric", str(len(N))] and f"alpha {fits['parametric']['alpha']:.4g}" in line
               for line in summary)


def test_an_interrupted_fit_keeps_the_laws_it_finished(tmp_path):
    import signal
    N, D, loss = synthetic_isoflop(noise=0.002, seed=1)
    pd.DataFrame({"N": N, "D": D, "loss": loss}).to_csv(tmp_path / "runs.csv", index=False)
    fit = subprocess.Popen([sys.executable, "-m", "harness.fit_table", "runs.csv", "--out", "out"], cwd=tmp_path,
                           stderr=subprocess.PIPE, text=True)
    for line in fit.stderr:
        if line.startswith("fit 2/"):   # the first law is written; stop the fit after the second
            fit.send_signal(signal.SIGINT)
            break
    fit.communicate(timeout=60)
    assert fit.returncode != 0
    fits = json.loads((tmp_path / "out" / "fits.json").read_text())
    assert "parametric" in fits and "held_out" not in fits
    assert fits["parametric"]["alpha"] == pytest.approx(0.34, abs=0.02)
    assert "### Approach 3" in (tmp_path / "out" / "report.md").read_text()
