"""Learning-rate ladders: per model size the optimal peak learning rate, and lr_opt = c N^-gamma across sizes.

Sweep: conf/study/lr_ladder.yaml (widths x a factor-2 grid of learning rates, each to one compute budget). Porian et
al. (2024) show that tuning the learning rate per size moves the compute-optimal exponent from Kaplan's toward
Chinchilla's; this study measures the per-size optima the harness's other studies then use
(task.lr=law task.lr_law=results/lr_ladder/report/fits.json).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from harness import plots
from harness.analysis import generic_analysis, markdown_table
from harness.fit import FitError, fit_lr_law

RESAMPLES = 1000


def ladder_points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per finished run: N (non-embedding parameters), d_model, lr (the peak learning rate in effect), loss."""
    ok = df[df["status"] == "ok"]
    lr = ok["hparams_info.lr_in_effect"] if "hparams_info.lr_in_effect" in ok else ok["task.lr"]
    return pd.DataFrame({"N": ok["model_info.params_non_embedding"].astype(float), "d_model": ok["model_info.d_model"],
                         "lr": lr.astype(float), "loss": ok["metrics.val_loss"].astype(float)}).reset_index(drop=True)


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    sections = generic_analysis(df, out)
    points = ladder_points(df)
    try:
        fit = fit_lr_law(points["N"], points["lr"], points["loss"], intervals=RESAMPLES)
    except FitError as error:
        return sections + [f"## Learning-rate law\n\nNot available from these runs: {error}"]
    lr_ladder(points, fit, out)
    optima = fit.optima.merge(points.groupby("N", as_index=False)["d_model"].first(), on="N")
    (out / "fits.json").write_text(json.dumps({"lr_law": {
        "c": fit.c, "gamma": fit.gamma, "c_interval": fit.intervals["c"], "gamma_interval": fit.intervals["gamma"],
        "resamples": RESAMPLES, "resamples_failed": fit.intervals["_failed"],
        "optima": optima.to_dict(orient="records")}}, indent=1, default=float))
    c_low, c_high = fit.intervals["c"]
    g_low, g_high = fit.intervals["gamma"]
    grid = sorted(points["lr"].unique())
    return sections + [
        "## Learning-rate law\n\n"
        f"Per size, the optimum of validation loss in log lr from a quadratic weighted around the lowest loss (the "
        f"local minimum approach 2 uses), over {len(grid)} learning rates from {grid[0]:g} to {grid[-1]:g}; 95% "
        f"intervals from {RESAMPLES} resamples of each size's residuals. Across sizes: lr_opt = c N^-gamma with "
        f"c = {fit.c:.4g} [{c_low:.4g}, {c_high:.4g}], gamma = {fit.gamma:.4f} [{g_low:.4f}, {g_high:.4f}]. "
        "For comparison (fitted on 5M-900M parameters, far above these): Porian et al. 2024, lr ~ N^-1/3.\n\n"
        + markdown_table(optima[["d_model", "N", "lr_opt", "low", "high", "interior", "why"]])
        + "\n\nUse it: `harness task.lr=law task.lr_law=results/lr_ladder/report/fits.json ...` gives each run "
          "c N^-gamma for its N (the record's hparams_info keeps the rule and the learning rate in effect).",
        "![loss against learning rate per size, and the law](lr_ladder.png)",
    ]


def lr_ladder(points: pd.DataFrame, fit, out_dir: Path, name: str = "lr_ladder") -> list[Path]:
    """Left: loss against peak learning rate (columns N, lr, loss), one curve per model size, each size's fitted
    optimum starred; right: the optima with their 95% intervals against N and the law lr_opt = c N^-gamma (a
    LrLawFit)."""
    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    plots.loss_against_lr(left, points, "N", lambda n: f"N = {plots.label_params(n)}", fit)
    left.set(title="Loss against learning rate (stars: fitted optima)")
    optima = fit.optima[fit.optima["interior"]]
    right.plot(optima["N"], optima["lr_opt"], "o", color="black", label="optimum, 95% interval")
    plots.interval_bars(right, optima["N"], optima["low"], optima["high"], ecolor="black", capsize=3)
    grid = np.geomspace(optima["N"].min() / 2, optima["N"].max() * 2, 50)
    right.plot(grid, fit.predict(grid), color="crimson", lw=1.5, label=f"{fit.c:.3g} N^-{fit.gamma:.3f}")
    right.set(xscale="log", yscale="log", xlabel="non-embedding parameters N", ylabel="optimal learning rate",
              title="lr_opt = c N^-gamma")
    right.legend(fontsize=8)
    fig.tight_layout()
    return plots.save(fig, out_dir, name)
