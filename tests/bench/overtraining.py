"""Do the law forms predict over-trained runs 17x larger than any they were fitted on, and does a user who trusts
compare_laws' ranking pick one that does?

The design follows Gadre et al. (2024, "Language models scale reliably with over-training and on downstream tasks"):
five model sizes from 11M to 411M parameters, each trained at 20 to 640 tokens per parameter, are what the user
has; the runs to predict are 1.4B parameters at 640 tokens per parameter and 6.9B (17x the largest fitted) at 20.
Losses come from a known law (Epoch's refit of Chinchilla, alpha close to beta; or Chinchilla's own, alpha 0.34 and
beta 0.28) times (1 + noise x N(0, 1)). The user ranks the forms by compare_laws on their own runs (holding out
their largest size), fits each form on all their runs, and predicts the two large ones; the error is
predicted / true law - 1 (the noise-free value, so the noise of the two runs does not count against a form).
Published numbers are not used here: ../shared/holdout is for independent checks and the project never reads it.

    .venv/bin/python -m tests.bench.overtraining          # a few minutes on 2 cores
Writes results/overtraining/holdout.json and holdout.md (or --out).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis import markdown_table
from harness.fit import LAW_FORMS, FitError, ParametricFit, compare_laws

LAWS = {"Epoch": (1.8172, 482.01, 2085.43, 0.3478, 0.3658), "Chinchilla": (1.69, 406.4, 410.7, 0.34, 0.28)}
SIZES = np.geomspace(1.1e7, 4.11e8, 5)
MULTIPLIERS = (20, 40, 80, 160, 320, 640)
TARGETS = ((1.4e9, 640), (6.9e9, 20))
FORMS = [law for law in LAW_FORMS if law != "data_constrained"]


def truth(law) -> ParametricFit:
    E, A, B, alpha, beta = law
    return ParametricFit(E=E, A=A, B=B, alpha=alpha, beta=beta, objective=0.0, n_points=0)


def fitted_runs(law, noise: float, rng: np.random.Generator) -> pd.DataFrame:
    N, D = (np.array(column, float) for column in zip(*[(n, m * n) for n in SIZES for m in MULTIPLIERS]))
    return pd.DataFrame({"N": N, "D": D, "loss": truth(law).predict(N, D) * (1 + noise * rng.standard_normal(len(N)))})


def protocol(law, noise: float, seed: int) -> dict:
    """The ranking compare_laws gives on the user's runs, and each form's error on the two large runs."""
    runs = fitted_runs(law, noise, np.random.default_rng(seed))
    ranking = compare_laws(runs, by="N", largest=1, intervals=0)
    target_n, target_d = (np.array(column, float) for column in zip(*[(n, m * n) for n, m in TARGETS]))
    exact = truth(law).predict(target_n, target_d)
    errors = {}
    for form in FORMS:
        fit_fn, _ = LAW_FORMS[form]
        try:
            errors[form] = (fit_fn(runs["N"].to_numpy(), runs["D"].to_numpy(), runs["loss"].to_numpy())
                            .predict(target_n, target_d) / exact - 1).tolist()
        except FitError:
            errors[form] = [np.nan, np.nan]
    ranked = ranking[ranking["mean_abs_error"].notna()]
    return {"ranking": ranked["law"].tolist(), "chosen": ranked.iloc[0]["law"], "errors": errors}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.002, 0.005])
    parser.add_argument("--out", type=Path, default=Path("results/overtraining"))
    args = parser.parse_args(argv)
    rows, runs = [], []
    for name, law in LAWS.items():
        for noise in args.noise:
            found = [protocol(law, noise, seed) for seed in range(args.seeds if noise else 1)]
            runs.append({"law": name, "noise": noise, "runs": found})
            row = {"law": name, "noise": noise}
            for form in FORMS:
                row[f"{form} mean abs error"] = float(np.nanmean([np.abs(f["errors"][form]) for f in found]))
            chosen = [np.abs(f["errors"][f["chosen"]]) for f in found]
            row["chosen form mean abs error"] = float(np.mean(chosen))
            row["chosen form max abs error"] = float(np.max(chosen))
            row["chosen"] = ", ".join(f"{form} {sum(f['chosen'] == form for f in found)}" for form in FORMS)
            rows.append(row)
            print(row, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "holdout.json").write_text(json.dumps({"laws": LAWS, "sizes": SIZES.tolist(), "multipliers": MULTIPLIERS,
                                                       "targets": TARGETS, "rows": rows, "runs": runs}, indent=1))
    (args.out / "holdout.md").write_text(
        "# Predicting over-trained runs 17x larger than the fit\n\n" + __doc__.split("\n\n")[1] + "\n\n"
        + f"{args.seeds} noise draws per noisy row; errors on the two large runs, as a fraction of the true loss; "
        "`chosen` counts how often compare_laws ranked each form first.\n\n" + markdown_table(pd.DataFrame(rows)) + "\n")


if __name__ == "__main__":
    main()
