"""Kaplan-style laws from an N x D grid: L(N) at the largest D and L(D) at the largest N.

Sweep: conf/study/kaplan.yaml. Each law is L = E + A x^-alpha (fit_power_law), with 95% bootstrap intervals
and an extrapolation check: fitted without the largest x, it predicts the loss there.
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
from harness.fit import FitError, fit_power_law

RESAMPLES = 1000


def law_section(x: pd.Series, loss: pd.Series, name: str, fixed: str) -> tuple[str, dict]:
    fit = fit_power_law(x, loss, intervals=RESAMPLES)
    ci = fit.intervals
    held = x == x.max()
    check = fit_power_law(x[~held], loss[~held])
    error = float(abs(check.predict(x[held]).mean() / loss[held].mean() - 1))
    result = {"E": fit.E, "A": fit.A, "alpha": fit.alpha, **{f"{k}_interval": ci[k] for k in ("E", "A", "alpha")},
              "extrapolation_rel_error": error}
    text = (f"L({name}) = E + A {name}^-alpha at {fixed}: E = {fit.E:.4g} [{ci['E'][0]:.4g}, {ci['E'][1]:.4g}], "
            f"alpha = {fit.alpha:.4g} [{ci['alpha'][0]:.4g}, {ci['alpha'][1]:.4g}] "
            f"(Kaplan et al. 2020: alpha_N = 0.076, alpha_D = 0.095 on WebText2 tokens). Fitted without the largest "
            f"{name}, it predicts that point's loss within {error:.2%}.")
    return text, result


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    sections = generic_analysis(df, out)
    ok = df[df["status"] == "ok"]
    runs = pd.DataFrame({"N": ok["model_info.params_non_embedding"].astype(float), "D": ok["metrics.tokens"].astype(float),
                         "loss": ok["metrics.val_loss"]})
    fits = {}
    for name, other in (("N", "D"), ("D", "N")):
        edge = runs[np.isclose(runs[other], runs[other].max(), rtol=0.01)].sort_values(name)
        try:
            text, fits[f"L({name})"] = law_section(edge[name], edge["loss"], name, f"{other} = {runs[other].max():.3g}")
            power_law(edge[name], edge["loss"], fit_power_law(edge[name], edge["loss"]), name, out, f"loss_vs_{name}")
            sections += [f"## L({name})\n\n{text}\n\n" + markdown_table(edge.reset_index(drop=True)),
                         f"![loss vs {name}](loss_vs_{name}.png)"]
        except FitError as error:
            sections.append(f"## L({name})\n\nNot available from these runs: {error}")
    (out / "fits.json").write_text(json.dumps(fits, indent=1, default=float))
    return sections


def power_law(x, loss, fit, name: str, out_dir: Path, file_name: str) -> list[Path]:
    """Loss against one variable with its fitted E + A x^-alpha and the irreducible E."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    grid = np.geomspace(min(x) / 2, max(x) * 4, 100)
    ax.scatter(x, loss, color="C0", zorder=5, label="runs")
    ax.plot(grid, fit.predict(grid), color="C0", lw=1, label=f"{fit.E:.3g} + {fit.A:.3g} {name}^-{fit.alpha:.3f}")
    ax.axhline(fit.E, color="grey", lw=1, ls="--", label=f"E = {fit.E:.3g}")
    ax.set(xscale="log", xlabel=name, ylabel="validation loss (nats/token)", title=f"L({name})")
    ax.legend(fontsize=8)
    return plots.save(fig, out_dir, file_name)
