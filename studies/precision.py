"""Precision modes side by side: throughput, memory and final loss per mode, and weight-only quantized evaluation.

Sweep: conf/study/precision.yaml. Every mode trains the same model on the same batches from the same
initialisation, so the loss differences are the precision's own.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from harness import plots
from harness.analysis import markdown_table, per_run, text, versus

REFERENCE = "fp32"
ORDER = ("fp32", "tf32", "bf16", "fp16", "bf16_pure", "fp8")


def model_state_bytes(rank: dict) -> int:
    """Parameters + gradients + optimizer state: what the precision mode changes (peak memory on a CPU is mostly
    the process itself)."""
    return rank["param_bytes"] + rank["grad_bytes"] + rank["optimizer_bytes"]


def modes(df: pd.DataFrame) -> pd.DataFrame:
    """One row per precision mode: what was in effect, its speed and memory, and its loss against fp32's."""
    def fields(run: pd.Series) -> dict:
        return {"param_dtype": run["precision_info.param_dtype"],
                "autocast": text(run["precision_info.autocast_dtype"], "-"),
                "tokens_per_s": run["metrics.tokens_per_s"],
                "model_state_mb": model_state_bytes(run["parallel_info.per_rank"][0]) / 1e6,
                "peak_memory_mb": run["metrics.peak_memory_bytes"] / 1e6,
                "val_loss": run["metrics.val_loss"], "skipped_steps": run["precision_info.skipped_steps"],
                "note": text(run.get("precision_info.slow_here"))}

    table = per_run(df, "precision.name", "mode", ORDER, fields, error_column="note")
    if (table["status"] == "ok").any():
        table["speed_vs_fp32"] = versus(table, "mode", REFERENCE, "tokens_per_s")
        table["loss_change"] = versus(table, "mode", REFERENCE, "val_loss", how="difference")
    return table


def quantized(df: pd.DataFrame) -> pd.DataFrame:
    """Weight-only quantized copies of the fp32-trained model: bytes and validation-loss change."""
    ok = df[(df["status"] == "ok") & (df["precision.name"] == REFERENCE)]
    if ok.empty or "quantized.full_bytes" not in ok.columns:
        return pd.DataFrame()
    run = ok.iloc[0]
    rows = [{"weights": "fp32", "model_mb": run["quantized.full_bytes"] / 1e6, "size_vs_fp32": 1.0,
             "val_loss": run["metrics.val_loss"], "loss_change": 0.0}]
    for method in ("int8", "nf4"):
        if f"quantized.{method}.model_bytes" in run and pd.notna(run[f"quantized.{method}.model_bytes"]):
            rows.append({"weights": method, "model_mb": run[f"quantized.{method}.model_bytes"] / 1e6,
                         "size_vs_fp32": run[f"quantized.{method}.model_bytes"] / run["quantized.full_bytes"],
                         "val_loss": run[f"quantized.{method}.val_loss"],
                         "loss_change": run[f"quantized.{method}.val_loss_change"]})
        else:  # not measured here: why (torchao absent, or its error)
            why = next((run[f"quantized.{method}.{key}"] for key in ("unsupported", "error")
                        if pd.notna(run.get(f"quantized.{method}.{key}"))), None)
            if why is not None:
                rows.append({"weights": method, "model_mb": None, "size_vs_fp32": None, "val_loss": None,
                             "loss_change": why})
    return pd.DataFrame(rows)


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    table = modes(df)
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return ["No precision mode finished ok."]
    curves = pd.DataFrame([{"mode": run["precision.name"], **point} for _, run in ok.iterrows() for point in run["curve"]])
    precision_comparison(table[table["status"] == "ok"], curves, out)
    q = quantized(df)
    (out / "fits.json").write_text(json.dumps({"modes": table.to_dict(orient="records"),
                                               "quantized": q.to_dict(orient="records")}, indent=1, default=float))
    device = ok["env.device_name"].iloc[0]
    first = ok.iloc[0]
    sections = [
        f"Device: {device} ({first['env.device']}). Model: {int(first['model_info.n_layer'])} layers, d_model "
        f"{int(first['model_info.d_model'])}, {int(first['model_info.params_total']):,} parameters; "
        f"{int(first['metrics.tokens']):,} tokens at batch {int(first['task.batch_size'])} x {int(first['model_info.seq_len'])}.",
        "## Modes\n\nspeed_vs_fp32 and loss_change are against the fp32 run (same data, same initialisation).\n\n"
        + markdown_table(table, missing=""),
    ]
    if not q.empty:
        sections.append("## Weight-only quantized evaluation (the fp32 model)\n\nmodel_mb counts every parameter and "
                        "buffer; the output head tied to the embedding stays in full precision.\n\n" + markdown_table(q, missing=""))
    sections.append("![speed, memory and loss per precision mode](precision.png)")
    return sections


def precision_comparison(modes: pd.DataFrame, curves: pd.DataFrame, out_dir: Path, name: str = "precision") -> list[Path]:
    """Bars of tokens/s and model-state memory per precision mode, and their validation-loss curves overlaid."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    order = list(modes["mode"])
    palette = dict(zip(order, sns.color_palette("colorblind", len(order))))
    sns.barplot(modes, x="mode", y="tokens_per_s", hue="mode", order=order, palette=palette, legend=False, ax=axes[0])
    axes[0].set(xlabel="", ylabel="tokens/s", title="Training throughput")
    sns.barplot(modes, x="mode", y="model_state_mb", hue="mode", order=order, palette=palette, legend=False, ax=axes[1])
    axes[1].set(xlabel="", ylabel="MB", title="Parameters + gradients + optimizer state")
    sns.lineplot(curves, x="tokens", y="val_loss", hue="mode", hue_order=order, palette=palette, marker="o",
                 markersize=3, ax=axes[2])
    axes[2].set(xlabel="training tokens", ylabel="validation loss (nats/token)", title="Loss curves")
    fig.tight_layout()
    return plots.save(fig, out_dir, name)
