"""The exponent error of approach 2's ways of locating a budget's minimum (harness.fit.MINIMUM_METHODS), against
the truth, on synthetic IsoFLOP designs as wide as published ones.

Each design: 7 budgets from 1e18 to 1e22 FLOPs; per budget `sizes` model sizes log-spaced over a `span`-fold range
(published grids span 10-30x) whose centre drifts from 1/drift to drift times the budget's optimal N as the budget
grows (a fixed ladder of model sizes lags the optimum: small budgets find it near the ladder's top, large ones near
its bottom); D = C / 6N; each loss times (1 + noise x N(0, 1)). The law is Chinchilla's (Hoffmann et al. 2022, eq. 10)
or Epoch's refit of it (Besiroglu et al. 2024), so the true a = beta / (alpha + beta) is known in closed form.
A method's error is its fitted a minus the true a: the mean over data sets is its bias, the root mean square its
total error (bias and noise together).

The default (harness.fit.DEFAULT_MINIMUM) is the method with the lowest rms averaged over the noisy designs. The
committed studies with IsoFLOP grids (results/demo, results/families per family) have no known truth: there each
method's a, the width of its 95% bootstrap interval (its spread) and its distance from approach 3's a on the same
runs show how much the choice matters on real CPU-scale runs.

    .venv/bin/python -m tests.bench.isoflop_bias          # about two minutes on 2 cores
Writes results/isoflop_bias/bias.json and bias.md (or --out).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis import markdown_table
from harness.fit import DEFAULT_MINIMUM, MINIMUM_METHODS, FitError, fit_isoflop, fit_parametric
from harness.records import load_results

LAWS = {"Chinchilla": (1.69, 406.4, 410.7, 0.34, 0.28), "Epoch": (1.8172, 482.01, 2085.43, 0.3478, 0.3658)}
BUDGETS = np.geomspace(1e18, 1e22, 7)
DESIGNS = [(10, 7, 2.0), (16, 8, 2.5), (30, 9, 3.0), (30, 12, 4.0)]   # (span, sizes, drift)


def true_a(law) -> float:
    _, _, _, alpha, beta = law
    return beta / (alpha + beta)


def design(law, span: float, sizes: int, drift: float, noise: float, rng: np.random.Generator):
    E, A, B, alpha, beta = law
    G = (alpha * A / (beta * B)) ** (1 / (alpha + beta))
    C, N = [], []
    for budget, centre in zip(BUDGETS, np.geomspace(1 / drift, drift, len(BUDGETS))):
        for n in G * (budget / 6) ** true_a(law) * centre * np.geomspace(1 / np.sqrt(span), np.sqrt(span), sizes):
            C.append(budget)
            N.append(n)
    C, N = np.array(C), np.array(N)
    D = C / (6 * N)
    return C, N, D, (E + A / N**alpha + B / D**beta) * (1 + noise * rng.standard_normal(len(C)))


def exponent_errors(law, span, sizes, drift, noise, datasets: int, seed: int = 0) -> dict:
    """{method: [fitted a - true a per data set]} (a data set a method cannot fit is left out of its list)."""
    rng = np.random.default_rng(seed)
    errors = {method: [] for method in MINIMUM_METHODS}
    for _ in range(datasets if noise else 1):
        C, N, D, loss = design(law, span, sizes, drift, noise, rng)
        for method in MINIMUM_METHODS:
            try:
                errors[method].append(fit_isoflop(C, N, loss, D, minimum=method).a - true_a(law))
            except FitError:
                continue
    return errors


def best_method(rows: list[dict]) -> tuple[str, dict]:
    """The method with the lowest rms error in a averaged over the noisy designs, and each method's average."""
    mean_rms = {method: float(np.mean([row[f"{method} rms"] for row in rows if row["noise"] > 0]))
                for method in MINIMUM_METHODS}
    return min(mean_rms, key=mean_rms.get), mean_rms


# The committed studies whose records hold IsoFLOP grids: (its results folder, the record column that splits it).
COMMITTED = [("demo", None), ("families", "model_info.family")]
COMMITTED_RESAMPLES = 200


def committed_rows(root: Path) -> list[dict]:
    """Per committed study (and family): each method's a, its 95% interval's width from COMMITTED_RESAMPLES
    resamples, and a minus approach 3's a (fit_parametric on the same runs)."""
    from studies.isoflop import runs_of
    rows = []
    for study, by in COMMITTED:
        records = load_results([root / study])
        ok = records[records["status"] == "ok"]
        for name, part in (ok.groupby(by) if by else [(study, ok)]):
            runs = runs_of(part)
            try:
                approach_3 = fit_parametric(runs["params"], runs["tokens"], runs["val_loss"]).a
            except FitError:
                approach_3 = float("nan")
            row = {"study": study if by is None else f"{study}: {name}", "runs": len(runs), "approach 3 a": approach_3}
            for method in MINIMUM_METHODS:
                try:
                    fit = fit_isoflop(runs["C"], runs["params"], runs["val_loss"], runs["tokens"], minimum=method,
                                      intervals=COMMITTED_RESAMPLES)
                    low, high = fit.intervals["a"]
                    row.update({f"{method} a": fit.a, f"{method} width": high - low,
                                f"{method} - approach 3": fit.a - approach_3})
                except FitError:
                    row.update({f"{method} a": float("nan"), f"{method} width": float("nan"),
                                f"{method} - approach 3": float("nan")})
            found = [row[f"{method} a"] for method in MINIMUM_METHODS if row[f"{method} a"] == row[f"{method} a"]]
            row["a moves"] = max(found) - min(found) if found else float("nan")
            rows.append(row)
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=50)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.001, 0.003])
    parser.add_argument("--out", type=Path, default=Path("results/isoflop_bias"))
    args = parser.parse_args(argv)
    rows = []
    for name, law in LAWS.items():
        for span, sizes, drift in DESIGNS:
            for noise in args.noise:
                errors = exponent_errors(law, span, sizes, drift, noise, args.datasets)
                row = {"law": name, "span": span, "sizes": sizes, "drift": drift, "noise": noise}
                for method, found in errors.items():
                    row[f"{method} bias"] = float(np.mean(found))
                    row[f"{method} rms"] = float(np.sqrt(np.mean(np.square(found))))
                    row[f"{method} failed"] = (args.datasets if noise else 1) - len(found)
                rows.append(row)
                print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    best, mean_rms = best_method(rows)
    committed = committed_rows(Path("results"))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bias.json").write_text(json.dumps({"budgets": BUDGETS.tolist(), "laws": LAWS,
                                                    "datasets_per_noisy_cell": args.datasets, "rows": rows,
                                                    "mean_rms_over_noisy_designs": mean_rms, "best": best,
                                                    "committed": committed}, indent=1))
    table = pd.DataFrame(rows)
    shown = table[["law", "span", "sizes", "drift", "noise"] + [f"{m} {s}" for m in MINIMUM_METHODS for s in ("bias", "rms")]]
    mean_bias = {m: float(np.mean(np.abs(table.loc[table["noise"] > 0, f"{m} bias"]))) for m in MINIMUM_METHODS}
    verdict = pd.DataFrame({"method": list(MINIMUM_METHODS), "mean rms": [mean_rms[m] for m in MINIMUM_METHODS],
                            "mean abs bias": [mean_bias[m] for m in MINIMUM_METHODS]})
    columns = ["study", "runs", "approach 3 a"] + [f"{m} {s}" for m in MINIMUM_METHODS
                                                   for s in ("a", "width", "- approach 3")] + ["a moves"]
    (args.out / "bias.md").write_text(
        "# Approach 2: exponent error of each way to locate a budget's minimum\n\n" + __doc__.split("\n\n")[1] + "\n\n"
        + f"{args.datasets} data sets per noisy row (one noise-free data set per noise-free row); fitted a minus true a.\n\n"
        + markdown_table(shown.round(4))
        + "\n\n## Which method: the default by evidence\n\nAveraged over the noisy designs above (both laws, every grid):\n\n"
        + markdown_table(verdict.round(4)) + f"\n\n**{best}** has the lowest rms error (bias and noise together): the "
        + f"default (harness.fit.DEFAULT_MINIMUM = {DEFAULT_MINIMUM!r}"
        + ("" if best == DEFAULT_MINIMUM else f", which disagrees with this measurement: change it to {best!r}") + ").\n\n"
        + "## The committed studies\n\n" + __doc__.split("\n\n")[2] + f" Intervals from {COMMITTED_RESAMPLES} "
        + "resamples.\n\n" + markdown_table(pd.DataFrame(committed)[columns].round(4)) + "\n")


if __name__ == "__main__":
    main()
