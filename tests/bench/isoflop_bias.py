"""The exponent error of approach 2's ways of locating a budget's minimum (harness.fit.MINIMUM_METHODS), against
the truth, on synthetic IsoFLOP designs as wide as published ones.

Each design: 7 budgets from 1e18 to 1e22 FLOPs; per budget `sizes` model sizes log-spaced over a `span`-fold range
(published grids span 10-30x) whose centre drifts from 1/drift to drift times the budget's optimal N as the budget
grows (a fixed ladder of model sizes lags the optimum: small budgets find it near the ladder's top, large ones near
its bottom); D = C / 6N; each loss times (1 + noise x N(0, 1)). The law is Chinchilla's (Hoffmann et al. 2022, eq. 10)
or Epoch's refit of it (Besiroglu et al. 2024), so the true a = beta / (alpha + beta) is known in closed form.
A method's error is its fitted a minus the true a: the mean over data sets is its bias, the root mean square its
total error (bias and noise together).

    .venv/bin/python -m tests.bench.isoflop_bias          # about a minute on 2 cores
Writes results/isoflop_bias/bias.json and bias.md (or --out).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis import markdown_table
from harness.fit import MINIMUM_METHODS, FitError, fit_isoflop

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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bias.json").write_text(json.dumps({"budgets": BUDGETS.tolist(), "laws": LAWS,
                                                    "datasets_per_noisy_cell": args.datasets, "rows": rows}, indent=1))
    table = pd.DataFrame(rows)
    shown = table[["law", "span", "sizes", "drift", "noise"] + [f"{m} {s}" for m in MINIMUM_METHODS for s in ("bias", "rms")]]
    (args.out / "bias.md").write_text(
        "# Approach 2: exponent error of each way to locate a budget's minimum\n\n" + __doc__.split("\n\n")[1] + "\n\n"
        + f"{args.datasets} data sets per noisy row (one noise-free data set per noise-free row); fitted a minus true a.\n\n"
        + markdown_table(shown.round(4)) + "\n")


if __name__ == "__main__":
    main()
