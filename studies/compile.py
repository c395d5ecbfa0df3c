"""torch.compile beside eager, per family: compile time, step-time speed-up, and what compiling changed in the loss.

Sweep: conf/study/compile.yaml. Both runs of a family train the same model on the same batches from the same
initialisation, so the loss difference is the compiled kernels' rounding (fused, reordered arithmetic).
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from harness import plots
from harness.analysis import markdown_table, text


def families(df: pd.DataFrame) -> pd.DataFrame:
    """One row per family: eager and compiled step times, the speed-up, compile time, loss difference."""
    rows = []
    for family, runs in df.groupby("model_info.family", sort=False):
        by = {bool(run["compile"]): run for _, run in runs.iterrows()}
        eager, compiled = by.get(False), by.get(True)
        row = {"family": family}
        if eager is None or compiled is None or eager["status"] != "ok" or compiled["status"] != "ok":
            row["note"] = "; ".join(f"{'compiled' if key else 'eager'}: {run['status']} {text(run['error'])}"
                                    for key, run in by.items() if run["status"] != "ok") or "missing a run"
            rows.append(row)
            continue
        row.update({"compiled": bool(compiled.get("compile_info.compiled")), "blocks": compiled.get("compile_info.units"),
                    "compile_s": compiled.get("compile_info.compile_s"),
                    "eager_step_ms": 1e3 * eager["metrics.step_time_median_s"],
                    "compiled_step_ms": 1e3 * compiled["metrics.step_time_median_s"],
                    "speedup": eager["metrics.step_time_median_s"] / compiled["metrics.step_time_median_s"],
                    "graph_breaks": compiled.get("compile_info.graph_breaks"),
                    "val_loss_eager": eager["metrics.val_loss"],
                    "val_loss_change": compiled["metrics.val_loss"] - eager["metrics.val_loss"],
                    "note": text(compiled.get("compile_info.fallback"))})
        rows.append(row)
    return pd.DataFrame(rows)


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    table = families(df)
    if table.empty or "speedup" not in table.columns:
        return ["No family has both an eager and a compiled run that finished ok."]
    measured = table.dropna(subset=["speedup"])
    compile_speedups(measured, out)
    (out / "fits.json").write_text(json.dumps({
        row["family"]: {k: row[k] for k in ("compiled", "compile_s", "eager_step_ms", "compiled_step_ms", "speedup",
                                             "graph_breaks", "val_loss_change")}
        for row in measured.to_dict(orient="records")}, indent=1, default=float))
    first = df[df["status"] == "ok"].iloc[0]
    return [
        f"Device: {first['env.device_name']} ({first['env.device']}), torch {first['env.torch']}, "
        f"{int(first['parallel_info.per_rank'][0]['torch_threads'])} threads. Each family's model: "
        f"{int(first['model_info.n_layer'])} layers, d_model {int(first['model_info.d_model'])}, sequences of "
        f"{int(first['model_info.seq_len'])}, batch {int(first['task.batch_size'])}; "
        f"{int(first['metrics.steps'])} steps, step times are medians after the first {int(first['task.timing_warmup_steps'])}.",
        "## Compiled against eager\n\ncompile_s: the first compiled step's time beyond the median step (tracing and "
        "code generation of the blocks; evaluation compiles its own graph later, not counted; the points run one after "
        "another in one process, so a family whose blocks are another's class, as the encoder's are the GPT's, "
        "reuses their compiled code and compiles little, and Inductor's on-disk cache makes a rerun's compile "
        "shorter still); speedup: eager median "
        "step time over compiled; graph_breaks: where dynamo handed code back to Python; val_loss_change: compiled "
        "final validation loss minus eager (the same batches and initialisation: rounding, grown along training; one "
        "compiled step's logits and gradients agree with eager's within 1e-5 for every family, tests/test_compile.py)."
        "\n\n"
        + markdown_table(table),
        "![step time, eager and compiled](compile_speedups.png)",
    ]


def compile_speedups(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Median step time per family, eager beside compiled."""
    sns.set_theme(style="whitegrid")
    long = table.melt(id_vars="family", value_vars=["eager_step_ms", "compiled_step_ms"], var_name="mode",
                      value_name="step_ms").replace({"eager_step_ms": "eager", "compiled_step_ms": "compiled"})
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sns.barplot(long, x="family", y="step_ms", hue="mode", ax=ax, palette="colorblind")
    ax.set(xlabel="", ylabel="median step time (ms)", title="torch.compile against eager")
    return plots.save(fig, out_dir, "compile_speedups")
