"""Positional extrapolation: validation loss at 1x, 2x, 4x and 8x the training length, per positional encoding.

Sweep: conf/study/positional_extrapolation.yaml. The loss at each length is averaged over every position of
the longer windows, as Press et al. (2022) evaluate ALiBi.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from harness import plots
from harness.analysis import in_order, markdown_table, text

ORDER = ("learned", "sinusoidal", "rope", "alibi")


def losses(df: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, run in df[df["status"] == "ok"].iterrows():
        train_len = int(run["model_info.seq_len"])
        for multiple in run["task.eval_lengths"]:
            key = f"length_extrapolation.x{float(multiple):g}"
            rows.append({"positions": run["model.positions"], "multiple": float(multiple),
                         "eval_len": int(run[f"{key}.seq_len"]), "train_len": train_len,
                         "val_loss": run.get(f"{key}.val_loss"), "note": text(run.get(f"{key}.unsupported"))})
    return in_order(pd.DataFrame(rows).sort_values("multiple", kind="stable"), "positions", ORDER)


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    ok = df[df["status"] == "ok"]
    if ok.empty or "task.eval_lengths" not in ok.columns:
        return ["No run with task.eval_lengths finished ok."]
    table = losses(df)
    measured = table.dropna(subset=["val_loss"])
    length_extrapolation(measured, out)
    (out / "fits.json").write_text(json.dumps({"losses": table.to_dict(orient="records")}, indent=1, default=float))
    wide = measured.pivot_table(index="positions", columns="multiple", values="val_loss", sort=False)
    wide.columns = [f"loss at {m:g}x" for m in wide.columns]
    base, longest = wide.iloc[:, 0], wide.columns[-1]
    for column in wide.columns[1:]:
        wide[f"{column.removeprefix('loss at ')} - 1x"] = wide[column] - base
    first = ok.iloc[0]
    changes = [f"{p} {wide.loc[p, longest] - base[p]:+.3f}" for p in wide.index if pd.notna(wide.loc[p, longest])]
    missing = [p for p in wide.index if pd.isna(wide.loc[p, longest])]
    finding = (f"Change in validation loss from 1x to {longest.removeprefix('loss at ')} the training length (nats/token): "
               + ", ".join(changes) + (f"; {', '.join(missing)} cannot be evaluated there." if missing else "."))
    return [
        f"Device: {first['env.device_name']}. GPT {int(first['model_info.n_layer'])} layers, d_model "
        f"{int(first['model_info.d_model'])}, trained on {int(first['metrics.tokens']):,} tokens of data={first['data.name']} "
        f"at sequence length {int(first['model_info.seq_len'])}; the same data, initialisation seed and batches for every encoding.",
        "## Validation loss by evaluation length\n\n" + finding + "\n\n" + markdown_table(wide.reset_index(), missing="unsupported"),
        "## Every evaluation\n\n" + markdown_table(table, missing=""),
        "![loss against evaluation length](length_extrapolation.png)",
    ]


def length_extrapolation(table: pd.DataFrame, out_dir: Path, name: str = "length_extrapolation") -> list[Path]:
    """Validation loss against evaluation length (log2 x), one line per positional encoding; the training length marked."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    sns.lineplot(table, x="eval_len", y="val_loss", hue="positions", marker="o", ax=ax, palette="colorblind")
    ax.axvline(table["train_len"].iloc[0], color="grey", linestyle=":", label="training length")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="evaluation length (tokens)", ylabel="validation loss (nats/token)",
           title="Loss beyond the training length")
    ax.legend(fontsize=8)
    return plots.save(fig, out_dir, name)
