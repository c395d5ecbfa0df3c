"""Coverage of the bootstrap intervals of the compute-optimal exponent a (N_opt ~ C^a), approaches 2 and 3.

Data sets are drawn from a known law, Chinchilla's L = 1.69 + 406.4 / N^0.34 + 410.7 / D^0.28 (Hoffmann et al.
2022, eq. 10; a = beta / (alpha + beta) = 0.4516), on an IsoFLOP design: 5 budgets from 1e18 to 1e21 FLOPs,
7 sizes per budget from 1/4 to 4 times its optimal N (D = C / 6N), each loss times exp(noise x N(0, 1)). Each
data set is fitted as a study fits it (fit_isoflop with the tokens, fit_parametric within budgets) with
`--resamples` bootstrap resamples; an interval covers when it contains the true a. A nominal 95% interval should
cover 95% of the time; issue 11 asks for 88-99% over at least 100 data sets.

    .venv/bin/python -m tests.bench.bootstrap_coverage                       # 100 data sets, 1% noise (~30 min on 2 cores)
    .venv/bin/python -m tests.bench.bootstrap_coverage --datasets 20 --approaches 2
Writes results/bootstrap_coverage/coverage.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from harness.fit import FitError, fit_isoflop, fit_parametric

E, A, B, ALPHA, BETA = 1.69, 406.4, 410.7, 0.34, 0.28
A_TRUE = BETA / (ALPHA + BETA)
BUDGETS = np.geomspace(1e18, 1e21, 5)
SPAN, SIZES = 4.0, 7


def isoflop_design(rng: np.random.Generator, noise: float):
    C, N = [], []
    for budget in BUDGETS:
        n_opt = (ALPHA * A / (BETA * B)) ** (1 / (ALPHA + BETA)) * (budget / 6) ** A_TRUE
        for n in n_opt * np.geomspace(1 / SPAN, SPAN, SIZES):
            C.append(budget)
            N.append(n)
    C, N = np.array(C), np.array(N)
    D = C / (6 * N)
    loss = (E + A / N**ALPHA + B / D**BETA) * np.exp(noise * rng.standard_normal(len(C)))
    return C, N, D, loss


def coverage(approach: int, datasets: int, resamples: int, noise: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    rows, start = [], time.perf_counter()
    for index in range(datasets):
        C, N, D, loss = isoflop_design(rng, noise)
        try:
            if approach == 2:
                fit = fit_isoflop(C, N, loss, D, intervals=resamples, seed=index)
            else:
                fit = fit_parametric(N, D, loss, intervals=resamples, seed=index, strata=C)
        except FitError as error:
            rows.append({"a": None, "error": str(error)})
            continue
        low, high = fit.intervals["a"]
        rows.append({"a": fit.a, "low": low, "high": high, "covers": bool(low <= A_TRUE <= high),
                     "failed_resamples": fit.intervals["_failed"]})
        print(f"approach {approach}, data set {index + 1}/{datasets}: a = {fit.a:.4f} [{low:.4f}, {high:.4f}]"
              f"{'' if low <= A_TRUE <= high else '  misses'}  ({time.perf_counter() - start:.0f} s)", flush=True)
    fitted = [r for r in rows if r["a"] is not None]
    return {"approach": approach, "datasets": datasets, "fitted": len(fitted),
            "coverage": float(np.mean([r["covers"] for r in fitted])),
            "median_width": float(np.median([r["high"] - r["low"] for r in fitted])),
            "mean_a": float(np.mean([r["a"] for r in fitted])), "seconds": time.perf_counter() - start, "runs": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=100)
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--noise", type=float, default=0.01)
    parser.add_argument("--approaches", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/bootstrap_coverage/coverage.json"))
    args = parser.parse_args(argv)
    design = {"law": {"E": E, "A": A, "B": B, "alpha": ALPHA, "beta": BETA}, "a_true": A_TRUE,
              "budgets": BUDGETS.tolist(), "sizes_per_budget": SIZES, "size_span": [1 / SPAN, SPAN],
              "noise": args.noise, "resamples": args.resamples, "level": 0.95}
    results = [coverage(approach, args.datasets, args.resamples, args.noise, args.seed) for approach in args.approaches]
    for r in results:
        print(f"approach {r['approach']}: the 95% interval of a covers the true {A_TRUE:.4f} in {r['coverage']:.1%} of "
              f"{r['fitted']} data sets (median width {r['median_width']:.3f}, mean a {r['mean_a']:.4f}, {r['seconds']:.0f} s)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"design": design, "results": results}, indent=1))


if __name__ == "__main__":
    main()
