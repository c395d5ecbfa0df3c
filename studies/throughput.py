"""Training throughput against the device's peak: tokens/s and MFU, eager and compiled, and where each step's time goes.

Sweep: conf/study/throughput.yaml. MFU is read two ways: `mfu` counts the FLOPs the causal mask leaves (the
harness's count, harness/flops.py), `mfu_dense` attention's every query against every key, as PaLM (app. B),
nanoGPT, llm-foundry and torchtitan count it, so it is the one their published figures compare with. The profile
columns come from each run's profile_info (harness/profiling.py): the device's kernel time per step, its shares
by kind, and the host's wall time per step (near the step time while the device's is well below it: the host
limits the step).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from harness import plots
from harness.analysis import markdown_table, text

TARGET = 0.40   # of the data-sheet peak: llm-foundry's 41.8% at 1B on an H100 (counted densely)
KINDS = ("matmul", "attention", "norm", "elementwise/other", "copy", "optimizer", "loss")


def attention_kernel(run: pd.Series) -> str:
    """The kernel the run's attention used: its pinned backend, or for `auto` the attention kernel its profile saw."""
    backend = text(run.get("attention.backend"), "")
    if backend != "auto":
        return f"{run['attention.name']} ({backend})" if backend else run["attention.name"]
    top = run.get("profile_info.top")
    seen = [row["name"] for row in top if row["kind"] == "attention"] if isinstance(top, list) else []
    kernel = "cudnn" if any("cudnn" in name for name in seen) else "flash" if any("flash" in name for name in seen) else "?"
    return f"{run['attention.name']} (auto: {kernel})"


def runs(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & (df["task.name"] == "train")]
    rows = []
    for _, m in ok.iterrows():
        step = m["metrics.step_time_median_s"]
        row = {"attention": attention_kernel(m), "precision": m["precision.name"],
               "compiled": bool(m.get("compile_info.compiled")),
               "batch": int(m["task.batch_size"]), "tokens_per_s": m["metrics.tokens_per_s"],
               "mfu": m["metrics.mfu"], "mfu_dense": m.get("metrics.mfu_dense"),
               "step_ms": 1e3 * step, "step_p10_ms": 1e3 * m["metrics.step_time_p10_s"],
               "step_p90_ms": 1e3 * m["metrics.step_time_p90_s"],
               "compile_s": m.get("compile_info.compile_s"), "graph_breaks": m.get("compile_info.graph_breaks"),
               "peak_memory_gb": m["metrics.peak_memory_bytes"] / 1e9, "val_loss": m["metrics.val_loss"]}
        if pd.notna(m.get("profile_info.time_per_step_ms")):
            row.update({"device_ms": m["profile_info.time_per_step_ms"],
                        "host_wall_ms": m.get("profile_info.host_wall_per_step_ms"),
                        **{f"share_{kind}": m.get(f"profile_info.by_kind.{kind}", 0.0) for kind in KINDS}})
        rows.append(row)
    return (pd.DataFrame(rows).sort_values(["attention", "precision", "compiled"]).reset_index(drop=True)
            if rows else pd.DataFrame())


def where_time_goes(table: pd.DataFrame, out: Path) -> list[Path]:
    """Each run's device time per step, stacked by kind of kernel, beside its measured step time."""
    shares = [f"share_{kind}" for kind in KINDS if f"share_{kind}" in table.columns]
    labels = [f"{r.attention}\n{r.precision}, {'compiled' if r.compiled else 'eager'}" for r in table.itertuples()]
    fig, ax = plt.subplots(figsize=(1.6 * len(table) + 2, 4.2))
    bottom = pd.Series(0.0, index=table.index)
    colors = plt.get_cmap("tab10")
    for i, column in enumerate(shares):
        height = table[column].fillna(0) * table["device_ms"]
        ax.bar(labels, height, bottom=bottom, label=column.removeprefix("share_"), color=colors(i))
        bottom += height
    ax.plot(labels, table["step_ms"], "k_", markersize=30, markeredgewidth=2, label="measured step time")
    ax.set(ylabel="ms per step", title="Where a training step's device time goes (torch.profiler)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return plots.save(fig, out, "throughput")


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    table = runs(df)
    if table.empty:
        return ["No training run finished ok."]
    profiled = table.dropna(subset=["device_ms"]) if "device_ms" in table.columns else table.iloc[0:0]
    if not profiled.empty:
        where_time_goes(profiled, out)
    speedups = []
    for (kernel, precision), pair in table.groupby(["attention", "precision"]):
        by = {bool(r.compiled): r for r in pair.itertuples()}
        if True in by and False in by:
            speedups.append({"attention": kernel, "precision": precision, "eager_tokens_per_s": by[False].tokens_per_s,
                             "compiled_tokens_per_s": by[True].tokens_per_s,
                             "compiled_over_eager": by[True].tokens_per_s / by[False].tokens_per_s})
    best = table.loc[table["mfu"].idxmax()] if table["mfu"].notna().any() else None
    verdicts = [{"mode": "eager" if not compiled else "compiled", "precision": precision,
                 "best_attention": table.loc[part["mfu"].idxmax(), "attention"], "mfu": part["mfu"].max(),
                 "mfu_dense": table.loc[part["mfu"].idxmax(), "mfu_dense"], "target": TARGET,
                 "met": bool(part["mfu"].max() >= TARGET)}
                for (precision, compiled), part in table.groupby(["precision", "compiled"])
                if part["mfu"].notna().any()]
    (out / "fits.json").write_text(json.dumps({"runs": table.to_dict(orient="records"), "best": verdicts,
                                               "compiled_over_eager": speedups}, indent=1, default=float))
    first = df[df["status"] == "ok"].iloc[0]
    peak = (f"{first['metrics.mfu_peak']} ({first['metrics.mfu_peak_flops'] / 1e12:.4g} TFLOP/s)"
            if pd.notna(first.get("metrics.mfu_peak_flops")) else text(first.get("metrics.mfu_peak"), "no peak"))
    sections = [
        f"Device: {first['env.device_name']} ({first['env.device']}), torch {first['env.torch']}. Model: "
        f"{int(first['model_info.n_layer'])} layers, d_model {int(first['model_info.d_model'])}, "
        f"{int(first['model_info.n_head'])} heads, sequences of {int(first['model_info.seq_len'])}, "
        f"{int(first['model_info.params_total']):,} parameters, vocabulary {int(first['model_info.vocab_size']):,}; "
        f"{', '.join(sorted(df.loc[df['status'] == 'ok', 'precision.name'].unique()))}; "
        f"{int(first['metrics.steps'])} steps of {int(first['task.batch_size'])} sequences; step times are medians "
        f"of the steps after the first {int(first['task.timing_warmup_steps'])}, the profiled ones left out. "
        f"MFU against {peak}; mfu counts causal attention's half, mfu_dense all of it (the field's count).",
    ]
    if verdicts:
        sections.append(f"## Best MFU, eager and compiled, by precision (target: {TARGET:.0%})\n\n"
                        + markdown_table(pd.DataFrame(verdicts)))
    if speedups:
        sections.append("## Compiled against eager\n\n" + markdown_table(pd.DataFrame(speedups)))
    sections.append("## Every run\n\ndevice_ms: the kernels' time per profiled step; host_wall_ms: the host's time per "
                    "profiled step (both under the profiler, which slows the host); share_*: the kernels' time by kind "
                    "(harness/profiling.py names the kinds).\n\n" + markdown_table(table))
    if not profiled.empty:
        sections.append("![where a step's device time goes](throughput.png)")
    if best is not None:
        mode = "compiled" if best["compiled"] else "eager"
        sections.append(f"Best: {best['attention']}, {best['precision']}, {mode}: "
                        f"{best['tokens_per_s']:,.0f} tokens/s, MFU {best['mfu']:.1%} ({best['mfu_dense']:.1%} "
                        "counted densely).")
    return sections
