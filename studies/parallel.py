"""Parallel strategies side by side: throughput, per-rank memory measured against the ZeRO model, final loss.

Sweep: conf/study/parallel.yaml. Every strategy trains the same global batch from the same initialisation,
so the final losses agree to rounding; what differs is the speed and what each rank holds.
The ZeRO model and the byte widths are documented in harness/parallel.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from harness import plots
from harness.analysis import in_order, markdown_table, per_run, versus
from harness.parallel import STRATEGIES

REFERENCE = "single"
COMPONENTS = (("param_bytes_in_step", "predicted_param_bytes", "params"),
              ("grad_bytes", "predicted_grad_bytes", "grads"),
              ("optimizer_bytes", "predicted_optimizer_bytes", "optimizer"))


def strategies(df: pd.DataFrame) -> pd.DataFrame:
    def fields(run: pd.Series) -> dict:
        ranks = run["parallel_info.per_rank"]
        return {"world": int(run["parallel_info.world_size"]),
                "dp x tp x pp": f"{int(run['parallel_info.dp'])}x{int(run['parallel_info.tp'])}x{int(run['parallel_info.pp'])}",
                "zero_stage": int(run["parallel_info.zero_stage"]),
                "tokens_per_s": run["metrics.tokens_per_s"], "tokens_per_s_per_rank": run["metrics.tokens_per_s_per_rank"],
                "step_ms": run["metrics.step_time_median_s"] * 1e3,
                "peak_mb_max_rank": max(r["peak_memory_bytes"] for r in ranks) / 1e6,
                "model_state_mb_rank0": sum(ranks[0][c] for c, _, _ in COMPONENTS) / 1e6,
                "val_loss": run["metrics.val_loss"]}

    table = per_run(df, "parallel.name", "strategy", STRATEGIES, fields)
    if (table["status"] == "ok").any():
        table["speed_vs_single"] = versus(table, "strategy", REFERENCE, "tokens_per_s")
        relative = versus(table, "strategy", REFERENCE, "val_loss")
        table["loss_vs_single"] = relative - 1 if relative is not None else None
    return table


def memory(df: pd.DataFrame) -> pd.DataFrame:
    """Per rank and component: bytes held (parameters mid-step, gradients, optimizer state) against the ZeRO model."""
    rows = []
    for _, run in df[df["status"] == "ok"].iterrows():
        for r in run["parallel_info.per_rank"]:
            for measured, predicted, name in COMPONENTS:
                rows.append({"strategy": run["parallel.name"], "rank": r["rank"], "component": name,
                             "measured_mb": r[measured] / 1e6, "predicted_mb": r[predicted] / 1e6,
                             "measured_vs_predicted": r[measured] / r[predicted] if r[predicted] else None})
    table = pd.DataFrame(rows)
    return in_order(table.sort_values("rank", kind="stable"), "strategy", STRATEGIES) if not table.empty else table


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return ["No strategy finished ok."]
    table, held = strategies(df), memory(df)
    curves = pd.DataFrame([{"strategy": run["parallel.name"], **point} for _, run in ok.iterrows() for point in run["curve"]])
    parallel_comparison(table[table["status"] == "ok"], held, curves, out)
    (out / "fits.json").write_text(json.dumps({"strategies": table.to_dict(orient="records"),
                                               "memory_per_rank": held.to_dict(orient="records")}, indent=1, default=float))
    first = ok.iloc[0]
    backend = ok["parallel_info.backend"].dropna()
    rest = ok[ok["parallel.name"] != "single"]
    widths = {k: int((rest if not rest.empty else ok)[f"parallel_info.bytes_per_param.{k}"].iloc[0])
              for k in ("param", "grad", "optimizer")}
    wide = held.pivot_table(index=["strategy", "rank"], columns="component",
                            values=["measured_mb", "predicted_mb"], sort=False)
    wide.columns = [f"{component} {kind.removesuffix('_mb')} (MB)" for kind, component in wide.columns]
    wide = wide[[f"{c} {k} (MB)" for _, _, c in COMPONENTS for k in ("measured", "predicted")]].reset_index()
    return [
        f"Device: {first['env.device_name']} ({first['env.device']}), backend {backend.iloc[0] if len(backend) else '-'}. "
        f"Model: {int(first['model_info.n_layer'])} layers, d_model {int(first['model_info.d_model'])}, "
        f"{int(first['model_info.params_total']):,} parameters; global batch {int(first['task.batch_size'])} x "
        f"{int(first['model_info.seq_len'])} tokens, {int(first['metrics.steps'])} steps.",
        "## Strategies\n\ntokens_per_s counts the global batch per second of the slowest rank's step; loss_vs_single is "
        "the relative difference of the final validation loss. The losses differ by rounding alone: with "
        "task.grad_clip=0 DDP, ZeRO-1 and FSDP agree bit for bit, and every strategy matches single within 1e-5 "
        "over six steps (tests/test_parallel.py); the gradient norm summed in another order (over shards, stages "
        "or ranks) moves the clipping factor by ~1e-7, and a run's loss spikes amplify that.\n\n"
        + markdown_table(table, missing=""),
        "## Memory per rank: measured against the ZeRO model\n\n"
        f"Bytes per parameter in effect: {widths['param']} (parameters), {widths['grad']} (gradients), {widths['optimizer']} "
        "(AdamW's two moments). Parameters are measured mid-step (after forward: FSDP has gathered what it gathers); "
        "the model's Psi is the rank's model-parallel share (tp, pp and fsdp_tp hold part of the model before any "
        "data-parallel sharding). See harness/parallel.py for the model.\n\n" + markdown_table(wide),
        "![throughput, memory per rank and loss per strategy](parallel.png)",
    ]


def parallel_comparison(strategies: pd.DataFrame, memory: pd.DataFrame, curves: pd.DataFrame, out_dir: Path,
                        name: str = "parallel") -> list[Path]:
    """Tokens/s per strategy; rank 0's model-state bytes measured (bars) against the ZeRO model (markers); losses."""
    sns.set_theme(style="whitegrid")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    order = list(strategies["strategy"])
    sns.barplot(strategies, x="strategy", y="tokens_per_s", hue="strategy", order=order, palette="colorblind",
                legend=False, ax=axes[0])
    axes[0].set(xlabel="", ylabel="tokens/s (global batch)", title="Throughput")
    axes[0].tick_params(axis="x", rotation=45)
    rank0 = memory[memory["rank"] == 0]
    sns.barplot(rank0, x="strategy", y="measured_mb", hue="component", order=order, ax=axes[1], palette="muted")
    for i, component in enumerate(rank0["component"].unique()):  # the model's prediction on each bar
        part = rank0[rank0["component"] == component].set_index("strategy").reindex(order)
        offsets = [j + (i - 1) * 0.8 / 3 for j in range(len(order))]
        axes[1].scatter(offsets, part["predicted_mb"], color="black", marker="_", s=200, zorder=3,
                        label="ZeRO model" if i == 0 else None)
    axes[1].set(xlabel="", ylabel="MB on rank 0", title="Model states per rank: measured vs ZeRO model")
    axes[1].tick_params(axis="x", rotation=45)
    axes[1].legend(fontsize=8)
    sns.lineplot(curves, x="tokens", y="val_loss", hue="strategy", hue_order=order, palette="colorblind",
                 marker="o", markersize=3, ax=axes[2])
    axes[2].set(xlabel="training tokens", ylabel="validation loss (nats/token)", title="Loss curves (overlap)")
    fig.tight_layout()
    return plots.save(fig, out_dir, name)
