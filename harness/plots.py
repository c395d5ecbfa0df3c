"""Seaborn figures, one function per kind; each writes PNG and SVG, byte-for-byte reproducible."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib
import matplotlib.ticker
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection, PolyCollection, QuadMesh  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

# Fixed SVG ids and no timestamps in the files: the same records give the same bytes on one machine.
matplotlib.rcParams["svg.hashsalt"] = "scaling-harness"
METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
# Each figure carries what it draws (drawn_data) under this metadata key: the SVG's <dc:description>, a PNG text chunk.
DATA_KEY = "Description"


def _summary(values: np.ndarray) -> list | None:
    """(min, max, mean, std) of the finite values, 12 significant digits; None when there are none."""
    finite = values[np.isfinite(values)]
    if not finite.size:
        return None
    return [float(f"{v:.12g}") for v in (finite.min(), finite.max(), finite.mean(), finite.std())]


def drawn_data(fig) -> list[list[dict]]:
    """The numbers each axes draws, artist by artist: lines and the vertices of polygons and contours (x, y columns),
    scatter offsets, bar rectangles, mesh values. Per artist its kind, point count and a summary of each column.

    Pixels move with fonts and library versions and coordinates with the last bits of a fit, so a rebuilt figure
    is checked against the committed one through these numbers (tests/test_report.py), not byte for byte."""
    axes = []
    for ax in fig.axes:
        artists = []
        for line in ax.lines:
            artists.append(("line", np.asarray(line.get_xydata(), dtype=float).reshape(-1, 2)))
        for collection in ax.collections:
            offsets = np.asarray(collection.get_offsets(), dtype=float).reshape(-1, 2)
            vertices = [np.asarray(path.vertices, dtype=float) for path in collection.get_paths()]
            values = collection.get_array()
            if isinstance(collection, PathCollection):  # scatter: every marker shares one path
                artists.append(("scatter", offsets))
            elif values is not None and isinstance(collection, QuadMesh):
                artists.append(("mesh", np.asarray(values, dtype=float).reshape(-1, 1)))
            elif vertices:  # named by base class: matplotlib 3.10 made fill_between's a PolyCollection subclass
                kind = "polygons" if isinstance(collection, PolyCollection) else type(collection).__name__
                artists.append((kind, np.concatenate(vertices).reshape(-1, 2)))
        rectangles = [p for p in ax.patches if type(p).__name__ == "Rectangle"]
        if rectangles:
            artists.append(("bars", np.array([[r.get_x(), r.get_y(), r.get_width(), r.get_height()] for r in rectangles])))
        axes.append([{"kind": kind, "n": len(data), "columns": [_summary(column) for column in data.T]}
                     for kind, data in artists])
    return axes


def save(fig, out_dir: Path, name: str, identified: bool = True) -> list[Path]:
    """PNG and SVG, each carrying what it draws (drawn_data); `identified=False` marks a figure drawn from a fit
    that its points do not pin down (its curves move with the last bits of the arithmetic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for ax in fig.axes:
        for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
            if scale == "log":  # label 1-2-5 steps: a decade's worth of data still gets several labels
                axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
                axis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:.3g}"))
                axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    data = json.dumps({"axes": drawn_data(fig), **({} if identified else {"identified": False})}, separators=(",", ":"))
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=120, bbox_inches="tight", metadata={**METADATA[ext], DATA_KEY: data})
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
    ax.set(xscale="log", xlabel="training FLOPs", ylabel="validation loss (nats/token)", title="Loss curves")
    ax.legend(title="non-embedding params", fontsize=8)
    return save(fig, out_dir, name)


def loss_vs_compute(runs: pd.DataFrame, out_dir: Path, name: str = "loss_vs_compute", frontier=None) -> list[Path]:
    """Final validation loss against compute, one marker colour per model size; `frontier` (C, loss) draws the
    compute-optimal frontier through it."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    frame = runs.assign(size=runs["params"].map(_label_params))
    order = [_label_params(n) for n in sorted(runs["params"].unique())]
    sns.scatterplot(frame, x="flops", y="val_loss", hue="size", hue_order=order, palette="viridis", s=50, ax=ax)
    if frontier is not None:
        ax.plot(frontier[0], frontier[1], color="crimson", marker="*", ms=10, lw=1.2, label="compute-optimal frontier", zorder=4)
    ax.set(xscale="log", xlabel="training FLOPs", ylabel="final validation loss (nats/token)", title="Loss vs compute")
    ax.legend(title="non-embedding params", fontsize=8)
    return save(fig, out_dir, name)


def isoflop_curves(runs: pd.DataFrame, fit, out_dir: Path, name: str = "isoflop") -> list[Path]:
    """Loss against model size at each compute budget, the fitted parabolas and their minima."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    budgets = sorted(runs["C"].unique())
    palette = dict(zip(budgets, sns.color_palette("magma", len(budgets) + 1)))
    for budget in budgets:
        at = runs[runs["C"] == budget]
        ax.scatter(at["params"], at["val_loss"], color=palette[budget], s=30, label=f"C = {budget:.1e}")
        if float(budget) in fit.parabolas:
            grid = np.linspace(np.log(at["params"].min()), np.log(at["params"].max()), 100)
            ax.plot(np.exp(grid), np.polyval(fit.parabolas[float(budget)], grid), color=palette[budget], lw=1)
    best = fit.minima[fit.minima["interior"]]
    ax.scatter(best["N_opt"], best["loss_opt"], marker="*", s=160, color="black", zorder=5, label="fitted minimum")
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="final validation loss (nats/token)",
           title="IsoFLOP profiles")
    ax.legend(fontsize=8)
    return save(fig, out_dir, name)


def optimal_size(fit, out_dir: Path, name: str = "n_opt_vs_compute") -> list[Path]:
    """N_opt and D_opt against compute with the fitted power laws."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    best = fit.minima[fit.minima["interior"]]
    grid = np.geomspace(best["C"].min() / 2, best["C"].max() * 2, 50)
    ax.scatter(best["C"], best["N_opt"], color="C0", label="N_opt (parameters)")
    ax.plot(grid, fit.predict(grid), color="C0", lw=1, label=f"N_opt ~ C^{fit.a:.2f}")
    ax.scatter(best["C"], best["D_opt"], color="C1", label="D_opt (tokens trained at N_opt)")
    d_line = np.exp(np.polyval(np.polyfit(np.log(best["C"]), np.log(best["D_opt"]), 1), np.log(grid)))
    ax.plot(grid, d_line, color="C1", lw=1, label=f"D_opt ~ C^{fit.b:.2f}")
    if fit.intervals:  # the band the bootstrap's 95% interval of the exponent spans, pivoting on the geometric mean
        pivot = np.exp(np.log(best["C"]).mean())
        low, high = fit.intervals["a"]
        ax.fill_between(grid, fit.predict(pivot) * (grid / pivot) ** low, fit.predict(pivot) * (grid / pivot) ** high,
                        color="C0", alpha=0.15, lw=0, label=f"a in [{low:.2f}, {high:.2f}] (95%)")
    # References through the same pivot: Chinchilla a = 0.50 (approach 2: 0.49), Kaplan a = 0.73.
    pivot = np.exp(np.log(best["C"]).mean())
    for slope, style, label in ((0.49, "--", "Chinchilla a = 0.49"), (0.73, ":", "Kaplan a = 0.73")):
        ax.plot(grid, fit.predict(pivot) * (grid / pivot) ** slope, color="grey", ls=style, lw=1, label=label)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs C", ylabel="compute-optimal N, D",
           title="Compute-optimal allocation (approach 2)")
    ax.legend(fontsize=8)
    return save(fig, out_dir, name)


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
        paths += save(fig, out_dir, name)
    return paths


def parametric_contours(runs: pd.DataFrame, law, out_dir: Path, name: str = "parametric_contours",
                        flops_per_token=None) -> list[Path]:
    """Iso-loss contours of the fitted L(N, D) in the N-D plane, the compute-optimal line (C counted with
    `flops_per_token`, 6N when None), and the runs."""
    sns.set_theme(style="white")
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    n_grid = np.geomspace(runs["params"].min() / 3, runs["params"].max() * 3, 200)
    d_grid = np.geomspace(runs["tokens"].min() / 3, runs["tokens"].max() * 3, 200)
    nn, dd = np.meshgrid(n_grid, d_grid)
    contours = ax.contour(nn, dd, law.predict(nn, dd), levels=12, cmap="viridis", linewidths=0.8)
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    compute = np.geomspace(6 * n_grid[0] * d_grid[0], 6 * n_grid[-1] * d_grid[-1], 100)
    n_opt, d_opt = law.compute_optimal(compute, flops_per_token)
    ax.plot(n_opt, d_opt, color="crimson", lw=1.5, label="compute-optimal")
    ax.scatter(runs["params"], runs["tokens"], c="black", s=14, zorder=5, label="runs")
    ax.set(xscale="log", yscale="log", xlim=(n_grid[0], n_grid[-1]), ylim=(d_grid[0], d_grid[-1]),
           xlabel="non-embedding parameters N", ylabel="training tokens D", title="Fitted L(N, D): iso-loss contours")
    ax.legend(fontsize=8, loc="lower right")
    return save(fig, out_dir, name, identified=law.identified)


def residuals(runs: pd.DataFrame, law, out_dir: Path, name: str = "residuals") -> list[Path]:
    """Relative residuals of the parametric fit against model size, one colour per budget."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    frame = runs.assign(residual=runs["val_loss"] / law.predict(runs["params"], runs["tokens"]) - 1,
                        budget=runs["C"].map(lambda c: f"C = {c:.1e}"))
    by_budget = runs["C"].nunique() <= 12   # a colour per budget where the runs share a few budgets
    sns.scatterplot(frame, x="params", y="residual", hue="budget" if by_budget else None,
                    palette="magma" if by_budget else None, s=45 if by_budget else 14, ax=ax)
    ax.axhline(0, color="grey", lw=1)
    ax.set(xscale="log", xlabel="non-embedding parameters N", ylabel="measured / fitted - 1", title="Residuals (approach 3)")
    if by_budget:
        ax.legend(fontsize=8)
    return save(fig, out_dir, name, identified=law.identified)


def power_law(x, loss, fit, name: str, out_dir: Path, file_name: str) -> list[Path]:
    """Loss against one variable with its fitted E + A x^-alpha and the irreducible E."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    grid = np.geomspace(min(x) / 2, max(x) * 4, 100)
    ax.scatter(x, loss, color="C0", zorder=5, label="runs")
    ax.plot(grid, fit.predict(grid), color="C0", lw=1, label=f"{fit.E:.3g} + {fit.A:.3g} {name}^-{fit.alpha:.3f}")
    ax.axhline(fit.E, color="grey", lw=1, ls="--", label=f"E = {fit.E:.3g}")
    ax.set(xscale="log", xlabel=name, ylabel="validation loss (nats/token)", title=f"L({name})")
    ax.legend(fontsize=8)
    return save(fig, out_dir, file_name)


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
    return save(fig, out_dir, name)


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
    return save(fig, out_dir, name)


def inference_costs(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Decode time per token with and without the KV cache, and prefill time, against context (log-log); and the
    cache's measured memory against its formula, with the weights' bytes for scale."""
    sns.set_theme(style="whitegrid")
    paths = []
    keys = [key for key in ("kv_heads", "batch") if key in table.columns]   # a sweep over key-value heads: a line each

    def lines():
        for values, group in table.groupby(keys):
            named = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
            yield (f"{named['kv_heads']} kv heads, " if "kv_heads" in named else "") + f"batch {named['batch']}", group

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for (name, group), colour in zip(lines(), sns.color_palette("colorblind")):
        ax.plot(group["context"], group["decode_ms_per_token"], "o-", color=colour, label=f"decode, KV cache ({name})")
        ax.plot(group["context"], group["decode_ms_per_token_recompute"], "s--", color=colour, label=f"decode, recompute ({name})")
        ax.plot(group["context"], group["prefill_s"] * 1e3, "^:", color=colour, alpha=0.7, label=f"prefill, whole prompt ({name})")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="milliseconds", title="Latency against context")
    ax.legend(fontsize=7)
    paths += save(fig, out_dir, "inference_latency")

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for (name, group), colour in zip(lines(), sns.color_palette("colorblind")):
        ax.plot(group["context"], group["kv_cache_formula_mb"], "-", color=colour, label=f"formula ({name})")
        ax.plot(group["context"], group["kv_cache_mb"], "o", color=colour, label=f"measured ({name})")
    ax.axhline(table["weights_mb"].max(), color="black", linestyle="--", label="weights")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="MB", title="KV cache memory against context")
    ax.legend(fontsize=7)
    paths += save(fig, out_dir, "inference_memory")
    return paths


def kv_heads_costs(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The KV cache's measured bytes and decode speed with the cache against context, one line per attention kind
    (multi-head, grouped-query, multi-query), one marker per batch; each model's weights for scale."""
    sns.set_theme(style="whitegrid")
    fig, (memory, speed) = plt.subplots(1, 2, figsize=(11, 4.4))
    kinds = list(dict.fromkeys(table["attention"]))
    for kind, colour in zip(kinds, sns.color_palette("colorblind")):
        for (batch, group), marker in zip(table[table["attention"] == kind].groupby("batch"), "os^D"):
            memory.plot(group["context"], group["kv_cache_mb"], marker + "-", color=colour, label=f"{kind}, batch {batch}")
            speed.plot(group["context"], group["decode_tokens_per_s"], marker + "-", color=colour, label=f"{kind}, batch {batch}")
        memory.axhline(table.loc[table["attention"] == kind, "weights_mb"].iloc[0], color=colour, linestyle=":", alpha=0.8)
    memory.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="MB",
               title="KV cache (measured); dotted: each model's weights")
    speed.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="tokens / s", title="Decode with the KV cache")
    memory.legend(fontsize=7)
    return save(fig, out_dir, "inference_kv_heads")


def compile_speedups(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Median step time per family, eager beside compiled."""
    sns.set_theme(style="whitegrid")
    long = table.melt(id_vars="family", value_vars=["eager_step_ms", "compiled_step_ms"], var_name="mode",
                      value_name="step_ms").replace({"eager_step_ms": "eager", "compiled_step_ms": "compiled"})
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    sns.barplot(long, x="family", y="step_ms", hue="mode", ax=ax, palette="colorblind")
    ax.set(xlabel="", ylabel="median step time (ms)", title="torch.compile against eager")
    return save(fig, out_dir, "compile_speedups")


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
    return save(fig, out_dir, name)


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
        ax.set(xlabel="tokens D", ylabel="validation loss (nats/token)", title=f"N = {_label_params(size)}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out_dir, name)


def _loss_against_lr(ax, points: pd.DataFrame, by: str, label, fit) -> None:
    """Loss against peak learning rate (columns lr, loss, N and `by`), one curve per value of `by` (label(value) in
    the legend), and each curve's optimum in `fit` (a LrLawFit over N) starred on its fitted quadratic."""
    values = sorted(points[by].unique())
    palette = dict(zip(values, sns.color_palette("viridis", len(values))))
    for value in values:
        rows = points[points[by] == value].sort_values("lr")
        ax.plot(rows["lr"], rows["loss"], "o-", color=palette[value], ms=4, lw=1, label=label(value))
    if fit is not None:
        for row in fit.optima[fit.optima["interior"]].itertuples():
            value = points.loc[points["N"] == row.N, by].iloc[0]
            ax.scatter([row.lr_opt], [np.polyval(fit.curves[float(row.N)], np.log(row.lr_opt))], marker="*", s=120,
                       zorder=6, color=palette[value], edgecolor="black", linewidths=0.5)
    ax.set(xscale="log", xlabel="peak learning rate", ylabel="validation loss (nats/token)")
    ax.legend(fontsize=8)


def lr_ladder(points: pd.DataFrame, fit, out_dir: Path, name: str = "lr_ladder") -> list[Path]:
    """Left: loss against peak learning rate (columns N, lr, loss), one curve per model size, each size's fitted
    optimum starred; right: the optima with their 95% intervals against N and the law lr_opt = c N^-gamma (a
    LrLawFit)."""
    sns.set_theme(style="whitegrid")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.0, 4.2))
    _loss_against_lr(left, points, "N", lambda n: f"N = {_label_params(n)}", fit)
    left.set(title="Loss against learning rate (stars: fitted optima)")
    optima = fit.optima[fit.optima["interior"]]
    right.errorbar(optima["N"], optima["lr_opt"], yerr=[optima["lr_opt"] - optima["low"], optima["high"] - optima["lr_opt"]],
                   fmt="o", color="black", capsize=3, label="optimum, 95% interval")
    grid = np.geomspace(optima["N"].min() / 2, optima["N"].max() * 2, 50)
    right.plot(grid, fit.predict(grid), color="crimson", lw=1.5, label=f"{fit.c:.3g} N^-{fit.gamma:.3f}")
    right.set(xscale="log", yscale="log", xlabel="non-embedding parameters N", ylabel="optimal learning rate",
              title="lr_opt = c N^-gamma")
    right.legend(fontsize=8)
    fig.tight_layout()
    return save(fig, out_dir, name)


def mup_transfer(points: pd.DataFrame, fits: dict, out_dir: Path, name: str = "mup_transfer") -> list[Path]:
    """Loss against peak learning rate, one curve per width, sp and muP side by side (Yang et al. 2022, fig. 1);
    each width's fitted optimum starred. `points`: parametrization, width, base_width, N, lr, loss; `fits`:
    parametrisation -> its LrLawFit over the widths' N."""
    sns.set_theme(style="whitegrid")
    panels = [p for p in ("sp", "mup") if p in set(points["parametrization"])]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), sharey=True, squeeze=False)
    for ax, parametrization in zip(axes[0], panels):
        mine = points[points["parametrization"] == parametrization]
        _loss_against_lr(ax, mine, "width", lambda width: f"width {width}", fits.get(parametrization))
        bases = ", ".join(str(int(b)) for b in sorted(mine["base_width"].dropna().unique()))
        ax.set(title="standard parametrisation" if parametrization == "sp" else f"muP (base width {bases})")
    fig.tight_layout()
    return save(fig, out_dir, name)
