"""Seaborn figures, one function per kind; each writes PNG and SVG, byte-for-byte reproducible."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

# Fixed SVG ids and no timestamps in the files: the same records give the same bytes.
matplotlib.rcParams["svg.hashsalt"] = "scaling-harness"
METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}


def save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=120, bbox_inches="tight", metadata=METADATA[ext])
        paths.append(path)
    plt.close(fig)
    return paths


def _label_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def loss_curves(curves: pd.DataFrame, out_dir: Path, name: str = "loss_curves") -> list[Path]:
    """Validation loss against training FLOPs, one line per run, coloured by model size (log-log)."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    frame = curves.assign(size=curves["params"].map(_label_params))
    order = [_label_params(n) for n in sorted(curves["params"].unique())]
    sns.lineplot(frame, x="flops", y="val_loss", hue="size", hue_order=order, units="run", estimator=None,
                 palette="viridis", ax=ax, marker="o", markersize=3)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="validation loss (nats/token)",
           title="Loss curves")
    ax.legend(title="non-embedding params", fontsize=8)
    return save(fig, out_dir, name)


def loss_vs_compute(runs: pd.DataFrame, out_dir: Path, name: str = "loss_vs_compute") -> list[Path]:
    """Final validation loss against compute, one marker colour per model size."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    frame = runs.assign(size=runs["params"].map(_label_params))
    order = [_label_params(n) for n in sorted(runs["params"].unique())]
    sns.scatterplot(frame, x="flops", y="val_loss", hue="size", hue_order=order, palette="viridis", s=50, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs", ylabel="final validation loss (nats/token)",
           title="Loss vs compute")
    ax.legend(title="non-embedding params", fontsize=8)
    return save(fig, out_dir, name)
