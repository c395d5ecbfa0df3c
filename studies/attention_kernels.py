"""The exact attention kernels at one shape, each against the device's measured matrix-product rate.

Sweep: conf/study/attention_kernels.yaml. FLOPs are the ones the computation needs (harness/flops.py: 4bhn^2d
forward, halved when causal, backward 2.5x forward); `fraction_of_matmul` divides the achieved rate by a square
matrix product's in the same dtype on the same device (harness/measure.py), measured in the same process.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness.analysis import markdown_table

TARGET = 0.5  # the best exact kernel should reach half the device's matrix-product rate


def kernel_name(row: pd.Series) -> str:
    pinned = row.get("kernel_info.option_backend") if row["kernel_info.variant"] == "sdpa" else row.get("kernel_info.option_op")
    return f"{row['kernel_info.variant']} ({pinned})" if isinstance(pinned, str) and pinned else row["kernel_info.variant"]


def kernels(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & (df["task.name"] == "attention")]
    return pd.DataFrame({
        "kernel": ok.apply(kernel_name, axis=1), "causal": ok["task.causal"].astype(bool),
        "time_ms": 1e3 * ok["metrics.time_median_s"], "tflops_per_s": ok["metrics.flops_per_s"] / 1e12,
        "matmul_tflops_per_s": ok["metrics.matmul_flops_per_s"] / 1e12,
        "fraction_of_matmul": ok["metrics.fraction_of_matmul"], "peak_memory_mb": ok["metrics.peak_memory_bytes"] / 1e6,
        "error_fwd": ok["metrics.error_fwd"],
    }).sort_values(["causal", "time_ms"]).reset_index(drop=True)


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    table = kernels(df)
    if table.empty:
        return ["No kernel ran here (the runs that did not finish ok say why)."]
    best = table.loc[table.groupby("causal")["fraction_of_matmul"].idxmax()]
    verdicts = [{"causal": bool(row.causal), "best": row.kernel, "fraction_of_matmul": row.fraction_of_matmul,
                 "target": TARGET, "met": bool(row.fraction_of_matmul >= TARGET)} for row in best.itertuples()]
    (out / "kernels.json").write_text(json.dumps({"kernels": table.to_dict(orient="records"), "best": verdicts},
                                                 indent=1, default=float))
    first = df[df["status"] == "ok"].iloc[0]
    return [
        f"Device: {first['kernel_info.device_name']}. {first['task.dtype']}, batch {int(first['task.batch'])}, "
        f"{int(first['task.heads'])} heads of {int(first['task.head_dim'])}, n = {int(first['task.seq_len'])}, "
        f"{first['task.mode']}; the device's {first['task.dtype']} matrix product ran at "
        f"{first['metrics.matmul_flops_per_s'] / 1e12:.4g} TFLOP/s.",
        f"## Best exact kernel against the matrix-product rate (target: at least {TARGET:.0%})\n\n"
        + markdown_table(pd.DataFrame(verdicts)),
        "## Every kernel\n\n" + markdown_table(table),
    ]
