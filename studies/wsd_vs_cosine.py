"""Is a cooldown branch a real point? Each (N, D) trained as its own cosine run and as a cooldown branch of one
warmup-stable-decay run per size (Hägele et al. 2024), over several seeds: the difference beside the seeds' spread,
and the FLOPs each design spent.

Sweep: conf/study/wsd_vs_cosine.yaml (the designs: conf/study/wsd_vs_cosine/*.yaml).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from harness import plots
from harness.analysis import markdown_table


def points(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (design, N, D): the seeds' mean validation loss, their standard deviation and count, and the
    FLOPs the design's jobs spent on that point (a wsd run's own FLOPs count at its full length)."""
    ok = df[df["status"] == "ok"].assign(
        design=lambda d: np.where(d["task.schedule"] == "cosine", "cosine", "wsd"),
        params=lambda d: d["model_info.params_non_embedding"], tokens=lambda d: d["metrics.tokens"])
    grouped = ok.groupby(["design", "params", "tokens"])
    return pd.DataFrame({
        "val_loss": grouped["metrics.val_loss"].mean(), "seed_std": grouped["metrics.val_loss"].std(ddof=1),
        "seeds": grouped["metrics.val_loss"].count(), "flops_spent": grouped["metrics.flops_spent"].sum(),
    }).reset_index()


def comparison(table: pd.DataFrame) -> pd.DataFrame:
    """Per (N, D): wsd - cosine, beside the seeds' spread (the two designs' standard deviations pooled)."""
    wide = table.pivot_table(index=["params", "tokens"], columns="design", values=["val_loss", "seed_std"], dropna=False)
    out = pd.DataFrame({"cosine": wide["val_loss"]["cosine"], "wsd": wide["val_loss"]["wsd"]})
    out["difference"] = out["wsd"] - out["cosine"]
    out["seed_std"] = np.sqrt((wide["seed_std"]["cosine"] ** 2 + wide["seed_std"]["wsd"] ** 2) / 2)
    out["difference_in_seed_stds"] = out["difference"] / out["seed_std"]
    return out.reset_index()


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    table = points(df)
    if set(table["design"]) != {"cosine", "wsd"}:
        return ["Both designs need runs that finished ok: the cosine grid and the wsd runs with cooldowns."]
    compared = comparison(table).dropna(subset=["difference"])
    spent = table.groupby("design")["flops_spent"].sum()
    schedule_comparison(table, out)
    within = int((compared["difference"].abs() <= compared["seed_std"]).sum())
    fits = {"points": table.to_dict(orient="records"), "comparison": compared.to_dict(orient="records"),
            "flops_spent": spent.to_dict(), "flops_ratio_wsd_to_cosine": spent["wsd"] / spent["cosine"],
            "within_one_seed_std": within, "compared_points": len(compared)}
    (out / "fits.json").write_text(json.dumps(fits, indent=1, default=float))
    first = df[df["status"] == "ok"].iloc[0]
    seeds = int(table["seeds"].min())
    return [
        f"Device: {first['env.device_name']}. GPT with {int(first['model_info.n_layer'])} layers, data={first['data.name']}, "
        f"{seeds} seeds per point; wsd: {first['task.decay_shape']}-shaped decay over the last "
        f"{float(first['task.decay_fraction']):g} of each branch (Hägele et al. 2024).",
        f"## Cooldown branch against cosine\n\nwsd - cosine validation loss (nats/token) is within one seed standard "
        f"deviation at {within} of {len(compared)} (N, D) points; mean difference {compared['difference'].mean():+.4f}, "
        f"mean seed standard deviation {compared['seed_std'].mean():.4f}.\n\n" + markdown_table(compared),
        f"## FLOPs spent\n\nThe wsd runs with their branches spent {spent['wsd']:.3g} FLOPs against {spent['cosine']:.3g} for "
        f"the grid of separate cosine runs: {spent['wsd'] / spent['cosine']:.3f}x.\n\n" + markdown_table(table),
        "![validation loss against tokens per design](wsd_vs_cosine.png)",
    ]


def schedule_comparison(points: pd.DataFrame, out_dir: Path, name: str = "wsd_vs_cosine") -> list[Path]:
    """Validation loss against tokens for each schedule design, one panel per model size; bars: the seeds' spread."""
    sns.set_theme(style="whitegrid")
    sizes = sorted(points["params"].unique())
    fig, axes = plt.subplots(1, len(sizes), figsize=(4.6 * len(sizes), 4.0), squeeze=False)
    for ax, size in zip(axes[0], sizes):
        for design, rows in points[points["params"] == size].groupby("design", sort=True):
            rows = rows.sort_values("tokens")
            ax.errorbar(rows["tokens"], rows["val_loss"], yerr=rows["seed_std"], marker="o", capsize=3, label=design)
        ax.set_xscale("log")
        ax.set(xlabel="tokens D", ylabel="validation loss (nats/token)", title=f"N = {plots.label_params(size)}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return plots.save(fig, out_dir, name)
