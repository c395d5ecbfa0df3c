"""muP's learning-rate transfer: the optimal learning rate per width under the standard parametrisation (sp) and
under muP (Yang et al. 2022, "Tensor Programs V", fig. 1).

Sweep: conf/study/mup_transfer.yaml (sp and mup x widths 64-512 x a factor-2 grid of learning rates). Per
parametrisation and width, the optimum of loss in log lr (the local quadratic of harness.fit, 95% bootstrap
intervals) and how far it moves across the 8x range of widths, in grid steps (factors of 2).
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


def transfer_points(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[df["status"] == "ok"]
    return pd.DataFrame({"parametrization": ok["model.parametrization"], "width": ok["model_info.d_model"].astype(int),
                         "base_width": ok["model.base_width"],
                         "N": ok["model_info.params_non_embedding"].astype(float),
                         "lr": ok["hparams_info.lr_in_effect"].astype(float),
                         "loss": ok["metrics.val_loss"].astype(float)}).reset_index(drop=True)


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    sections = generic_analysis(df, out)
    points = transfer_points(df)
    fits, laws, rows, lines = {}, {}, [], []
    for name in ("sp", "mup"):
        mine = points[points["parametrization"] == name]
        try:
            fit = fit_lr_law(mine["N"], mine["lr"], mine["loss"], intervals=RESAMPLES)
        except FitError as error:
            lines.append(f"- {name}: no optimum per width from these runs: {error}")
            continue
        laws[name] = fit
        optima = fit.optima.merge(mine.groupby("N", as_index=False)["width"].first(), on="N").sort_values("width")
        inside = optima[optima["interior"]]
        steps = float(np.log2(inside["lr_opt"].max() / inside["lr_opt"].min())) if len(inside) > 1 else float("nan")
        fits[name] = {"lr_opt": {str(int(r.width)): r.lr_opt for r in inside.itertuples()},
                      "lr_opt_interval": {str(int(r.width)): [r.low, r.high] for r in inside.itertuples()},
                      "spread_in_grid_steps": steps, "gamma_in_N": fit.gamma, "gamma_interval": fit.intervals["gamma"],
                      "not_interior": {str(int(r.width)): r.why for r in optima[~optima["interior"]].itertuples()}}
        rows += [{"parametrization": name, "width": int(r.width), "lr_opt": r.lr_opt, "low": r.low, "high": r.high,
                  "interior": r.interior, "why": r.why} for r in optima.itertuples()]
        lines.append(f"- {name}: the optimum moves by a factor {2 ** steps:.2f} ({steps:.2f} grid steps) from width "
                     f"{inside['width'].min()} to {inside['width'].max()}; as a law in N, lr_opt ~ N^-gamma with gamma = "
                     f"{fit.gamma:.3f} [{fit.intervals['gamma'][0]:.3f}, {fit.intervals['gamma'][1]:.3f}]")
    (out / "fits.json").write_text(json.dumps(fits, indent=1, default=float))
    mup_transfer(points, laws, out)
    verdict = ""
    if {"sp", "mup"} <= fits.keys():
        held = fits["mup"]["spread_in_grid_steps"] <= 1
        verdict = (f"\n\nExpected (Yang et al. 2022, fig. 1): under muP the optimum moves by at most one grid step across "
                   f"the widths, by more under sp. Measured: muP {fits['mup']['spread_in_grid_steps']:.2f} steps "
                   f"({'within' if held else '**not** within'} one), sp {fits['sp']['spread_in_grid_steps']:.2f}.")
    return sections + [
        "## Learning-rate transfer across width\n\nPer parametrisation and width, the optimum of validation loss in log "
        f"lr (a quadratic weighted around the lowest loss; 95% intervals from {RESAMPLES} resamples of the residuals).\n\n"
        + "\n".join(lines) + verdict + "\n\n" + markdown_table(pd.DataFrame(rows)),
        "![loss against learning rate per width, sp and muP](mup_transfer.png)",
    ]


def mup_transfer(points: pd.DataFrame, fits: dict, out_dir: Path, name: str = "mup_transfer") -> list[Path]:
    """Loss against peak learning rate, one curve per width, sp and muP side by side (Yang et al. 2022, fig. 1);
    each width's fitted optimum starred. `points`: parametrization, width, base_width, N, lr, loss; `fits`:
    parametrisation -> its LrLawFit over the widths' N."""
    sns.set_theme(style="whitegrid")
    panels = [p for p in ("sp", "mup") if p in set(points["parametrization"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, parametrization in zip(axes[0], panels):
        mine = points[points["parametrization"] == parametrization]
        plots.loss_against_lr(ax, mine, "width", lambda width: f"width {width}", fits.get(parametrization))
        bases = ", ".join(str(int(b)) for b in sorted(mine["base_width"].dropna().unique()))
        ax.set(title="standard parametrisation" if parametrization == "sp" else f"muP (base width {bases})")
    fig.tight_layout()
    return plots.save(fig, out_dir, name)
