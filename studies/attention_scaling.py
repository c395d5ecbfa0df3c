"""Attention cost against sequence length: fitted exponents, crossovers against sdpa, log-log figures.

Sweep: conf/study/attention_scaling.yaml. Exponents come from fit_power_law(n, y, irreducible=False) over
n >= FIT_FROM, where fixed per-call overheads no longer dominate.
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
from harness.fit import FitError, fit_power_law

FIT_FROM = 2048
BASELINE = "sdpa"
LINEAR = ("performer", "longformer")


def points(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & (df["task.name"] == "attention")]
    return pd.DataFrame({
        "variant": ok["attention.name"], "mode": ok["task.mode"], "seq_len": ok["task.seq_len"].astype(int),
        "time_s": ok["metrics.time_median_s"], "memory_bytes": ok["metrics.peak_memory_bytes"].astype(float),
        "flops_per_s": ok["metrics.flops_per_s"], "error_fwd": ok["metrics.error_fwd"],
    }).sort_values(["variant", "mode", "seq_len"]).reset_index(drop=True)


def exponents(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for (variant, mode), group in table.groupby(["variant", "mode"]):
        fit_range = group[group["seq_len"] >= FIT_FROM]
        row = {"variant": variant, "mode": mode, "n_from": FIT_FROM, "n_to": int(fit_range["seq_len"].max()) if len(fit_range) else None}
        for column, name in (("time_s", "k_time"), ("memory_bytes", "m_memory")):
            try:
                row[name] = fit_power_law(fit_range["seq_len"], fit_range[column], irreducible=False).alpha * -1
            except FitError:
                row[name] = np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def extrapolation(table: pd.DataFrame) -> pd.DataFrame:
    """Fit time ~ n^k without the longest length, predict it: the relative error per variant and pass."""
    rows = []
    for (variant, mode), group in table.groupby(["variant", "mode"]):
        fit_range = group[group["seq_len"] >= FIT_FROM]
        if len(fit_range) < 4:
            continue
        longest = fit_range["seq_len"].max()
        law = fit_power_law(fit_range["seq_len"][fit_range["seq_len"] < longest],
                            fit_range["time_s"][fit_range["seq_len"] < longest], irreducible=False)
        measured = float(fit_range.loc[fit_range["seq_len"] == longest, "time_s"].iloc[0])
        rows.append({"variant": variant, "mode": mode, "held_out_seq_len": int(longest),
                     "predicted_s": float(law.predict(longest)), "measured_s": measured,
                     "rel_error": float(law.predict(longest) / measured - 1)})
    return pd.DataFrame(rows)


def crossover(lengths, time_linear, time_base) -> float | None:
    """The length from which the linear variant stays faster: log-log interpolation at the last sign change."""
    ratio = np.log(np.asarray(time_linear) / np.asarray(time_base))
    if ratio[-1] >= 0:
        return None
    if ratio[0] < 0 and np.all(ratio < 0):
        return float(lengths[0])
    last = np.where(ratio >= 0)[0][-1]
    x0, x1 = np.log(lengths[last]), np.log(lengths[last + 1])
    return float(np.exp(x0 + (x1 - x0) * ratio[last] / (ratio[last] - ratio[last + 1])))


def crossovers(table: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for mode, group in table.groupby("mode"):
        base = group[group["variant"] == BASELINE].set_index("seq_len")["time_s"]
        for variant in LINEAR:
            mine = group[group["variant"] == variant].set_index("seq_len")["time_s"]
            shared = sorted(set(base.index) & set(mine.index))
            if len(shared) < 2:
                continue
            at = crossover(np.array(shared, float), mine[shared].values, base[shared].values)
            rows.append({"variant": variant, "mode": mode, "versus": BASELINE,
                         "faster_from_seq_len": at, "speedup_at_longest": float(base[shared[-1]] / mine[shared[-1]]),
                         "longest": shared[-1]})
    return pd.DataFrame(rows)


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    table = points(df)
    if table.empty:
        return ["No attention measurements finished ok."]
    fits, cross, check = exponents(table), crossovers(table), extrapolation(table)
    attention_scaling(table, fits, cross, out)
    (out / "fits.json").write_text(json.dumps({"exponents": fits.to_dict(orient="records"),
                                               "crossovers": cross.to_dict(orient="records"),
                                               "extrapolation": check.to_dict(orient="records")}, indent=1, default=float))
    device = df["kernel_info.device_name"].dropna().iloc[0] if "kernel_info.device_name" in df else "unknown"
    wide = table.pivot_table(index="seq_len", columns=["mode", "variant"], values="time_s")
    wide.columns = [f"{mode} {variant} (s)" for mode, variant in wide.columns]
    return [
        f"Device: {device}. Causal attention, batch {int(df['task.batch'].iloc[0])}, {int(df['task.heads'].iloc[0])} heads, "
        f"head_dim {int(df['task.head_dim'].iloc[0])}, {df['task.dtype'].iloc[0]}.",
        "## Fitted exponents (time ~ n^k, memory ~ n^m)\n\n" + markdown_table(fits),
        f"## Where the linear variants overtake {BASELINE}\n\n" + (markdown_table(cross) if not cross.empty else "No overlap."),
        "## Extrapolation check\n\nEach time law fitted without the longest length, then predicting it:\n\n"
        + (markdown_table(check) if not check.empty else "Too few lengths."),
        "## Median time per call\n\n" + markdown_table(wide.reset_index()),
        "![time vs sequence length](attention_time.png)\n\n![memory vs sequence length](attention_memory.png)",
    ]


def attention_scaling(table: pd.DataFrame, fits: pd.DataFrame, crossovers: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Time and memory against sequence length (log-log), one line per variant, a panel per pass; on the time
    panels a dotted line where each linear variant overtakes the baseline."""
    paths = []
    for column, label, exponent, name in (("time_s", "median time per call (s)", "k_time", "attention_time"),
                                          ("memory_bytes", "peak memory (bytes)", "m_memory", "attention_memory")):
        sns.set_theme(style="whitegrid")
        modes = sorted(table["mode"].unique())
        fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 4.2), squeeze=False, sharey=True)
        for ax, mode in zip(axes[0], modes):
            at = table[table["mode"] == mode]
            slopes = fits[fits["mode"] == mode].set_index("variant")[exponent]
            frame = at.assign(variant=at["variant"].map(lambda v: f"{v} (slope {slopes.get(v, float('nan')):.2f})"))
            sns.lineplot(frame, x="seq_len", y=column, hue="variant", marker="o", ax=ax, palette="deep")
            ax.set(xscale="log", yscale="log", xlabel="sequence length n", ylabel=label, title=mode)
            if column == "time_s" and not crossovers.empty:
                for row in crossovers[(crossovers["mode"] == mode) & crossovers["faster_from_seq_len"].notna()].itertuples():
                    ax.axvline(row.faster_from_seq_len, color="grey", ls=":", lw=1)
                    ax.annotate(f"{row.variant} < {row.versus}\nfrom n={row.faster_from_seq_len:.0f}", (row.faster_from_seq_len, 0.02),
                                xycoords=("data", "axes fraction"), fontsize=7, rotation=90, ha="right", va="bottom")
            ax.legend(fontsize=8, title=None)
        paths += plots.save(fig, out_dir, name)
    return paths
