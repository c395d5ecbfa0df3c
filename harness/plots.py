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


class PowersOfTen(matplotlib.ticker.Formatter):
    """Log-axis labels a paper prints: 10^k and m x 10^k outside 0.01-10^4, plain numbers inside, each with the
    fewest significant digits (up to 6) that print every tick exactly and tell the labels apart."""

    def __call__(self, value, pos=None):
        return self.format_ticks([value])[0]

    def format_ticks(self, values):
        for digits in range(1, 7):
            labels = [self._label(v, digits) for v in values]
            exact = all(abs(float(f"{v:.{digits}g}") - v) <= 1e-9 * abs(v) for v in values)
            if exact and len(set(labels)) == len(labels):
                return labels
        return labels

    @staticmethod
    def _label(value: float, digits: int) -> str:
        if value <= 0 or not np.isfinite(value):
            return ""
        if 1e-2 <= value < 1e4:   # rounded to `digits`, printed without an exponent: 1000, 0.05
            return f"{float(f'{value:.{digits}g}'):g}"
        exponent = int(np.floor(np.log10(value) + 1e-9))
        mantissa = float(f"{value / 10.0 ** exponent:.{digits}g}")
        if mantissa >= 10:
            mantissa, exponent = mantissa / 10, exponent + 1
        return (f"$10^{{{exponent}}}$" if mantissa == 1 else
                f"${mantissa:.{digits}g}\\times10^{{{exponent}}}$")


def save(fig, out_dir: Path, name: str, identified: bool = True) -> list[Path]:
    """PNG and SVG, each carrying what it draws (drawn_data); `identified=False` marks a figure drawn from a fit
    that its points do not pin down (its curves move with the last bits of the arithmetic)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    right = max((ax.get_position().x1 for ax in fig.axes), default=0)
    for ax in fig.axes:
        for axis, scale, limits in ((ax.xaxis, ax.get_xscale(), ax.get_xlim()), (ax.yaxis, ax.get_yscale(), ax.get_ylim())):
            formatter = axis.get_major_formatter()
            if scale != "log" and type(formatter) is matplotlib.ticker.ScalarFormatter:
                # a linear axis of large numbers (tokens, tokens/s): short labels times a power of ten, not
                # six-digit labels that run into each other
                formatter.set_useMathText(True)
                formatter.set_powerlimits((-3, 4))
            if scale != "log":
                continue
            span = max(limits) / min(limits)
            if isinstance(axis.get_major_locator(), matplotlib.ticker.FixedLocator):
                pass   # the figure chose its ticks (the values measured): only their labels change
            elif span >= 100:   # decades: one label per decade at most, as a power of ten
                axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, numticks=8))
            elif span >= 3:   # a decade or so: 1-2-5 steps, so the axis still gets several labels
                axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            else:   # a narrow range (one budget's runs): evenly spaced labels, as many digits as tell them apart
                axis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
            axis.set_major_formatter(PowersOfTen())
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        legend = ax.get_legend()
        if legend is not None and ax.get_position().x1 >= right - 1e-3:   # beside the rightmost axes, off the data
            legend.set_loc("upper left")
            legend.set_bbox_to_anchor((1.02, 1.0), transform=ax.transAxes)
        elif legend is not None:   # between two panels there is no room: where it covers the fewest points
            legend.set_loc("best")
    data = json.dumps({"axes": drawn_data(fig), **({} if identified else {"identified": False})}, separators=(",", ":"))
    paths = []
    for ext in ("png", "svg"):
        path = out_dir / f"{name}.{ext}"
        fig.savefig(path, dpi=120, bbox_inches="tight", metadata={**METADATA[ext], DATA_KEY: data})
        paths.append(path)
    plt.close(fig)
    return paths


def label_params(n: float) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}K"


def loss_curves(curves: pd.DataFrame, out_dir: Path, name: str = "loss_curves") -> list[Path]:
    """Validation loss against training FLOPs, one line per run, coloured by model size (log-log)."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    frame = curves.assign(size=curves["params"].map(label_params))
    order = [label_params(n) for n in sorted(curves["params"].unique())]
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
    frame = runs.assign(size=runs["params"].map(label_params))
    order = [label_params(n) for n in sorted(runs["params"].unique())]
    sns.scatterplot(frame, x="flops", y="val_loss", hue="size", hue_order=order, palette="viridis", s=50, ax=ax)
    if frontier is not None:
        ax.plot(frontier[0], frontier[1], color="crimson", marker="*", ms=10, lw=1.2, label="compute-optimal frontier", zorder=4)
    ax.set(xscale="log", xlabel="training FLOPs", ylabel="final validation loss (nats/token)", title="Loss vs compute")
    ax.legend(title="non-embedding params", fontsize=8)
    return save(fig, out_dir, name)


# Axis names for a table's quantities when its columns have no names of their own (labels= gives a user's columns).
AXIS_NAMES = {"N": "non-embedding parameters N", "D": "training tokens D", "C": "training FLOPs C",
              "loss": "final validation loss (nats/token)"}


def axis_name(quantity: str, labels: dict | None) -> str:
    """The axis name of N, D, C or loss: the user's column (labels[quantity], as `harness-fit` read it) or ours."""
    column = (labels or {}).get(quantity)
    return f"{quantity} ({column})" if column and column != quantity else AXIS_NAMES[quantity]


def isoflop_curves(runs: pd.DataFrame, fit, out_dir: Path, name: str = "isoflop", labels: dict | None = None) -> list[Path]:
    """Loss against model size at each compute budget, the fitted parabolas and their minima (with the bootstrap's
    95% interval of each budget's N_opt when the fit has resamples)."""
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
    low, high = minimum_intervals(fit, best["C"])
    if low is not None:
        interval_bars(ax, best["loss_opt"], low, high, axis="x", ecolor="black", elinewidth=1, capsize=3, zorder=5)
    ax.scatter(best["N_opt"], best["loss_opt"], marker="*", s=160, color="black", zorder=6,
               label="fitted minimum" + (" (95% interval)" if low is not None else ""))
    ax.set(xscale="log", xlabel=axis_name("N", labels), ylabel=axis_name("loss", labels), title="IsoFLOP profiles")
    ax.legend(fontsize=8)
    return save(fig, out_dir, name)


def interval_bars(ax, at, low, high, axis: str = "y", **style) -> None:
    """Each interval as a bar from its low end to its high end, at positions `at` (along x for axis="y", along y for
    axis="x"). Drawn from the low end: a percentile interval need not hold its estimate (a few resamples, a skewed
    bootstrap), and offsets about the estimate would then be negative, which matplotlib refuses."""
    low, high = np.asarray(low, dtype=float), np.asarray(high, dtype=float)
    span = [np.zeros(len(low)), high - low]
    if axis == "x":
        ax.errorbar(low, at, xerr=span, fmt="none", **style)
    else:
        ax.errorbar(at, low, yerr=span, fmt="none", **style)


def minimum_intervals(fit, budgets) -> tuple:
    """Each budget's N_opt 2.5th and 97.5th percentiles over the fit's bootstrap resamples ((None, None) without)."""
    if not fit.resampled:
        return None, None
    draws = np.array([[r.minima.set_index("C")["N_opt"].get(c, np.nan) for c in budgets] for r in fit.resampled])
    return tuple(np.nanpercentile(draws, [2.5, 97.5], axis=0))


def optimal_size(fit, out_dir: Path, name: str = "n_opt_vs_compute", labels: dict | None = None) -> list[Path]:
    """N_opt and D_opt against compute with the fitted power laws, N_opt with its bootstrap interval per budget."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    best = fit.minima[fit.minima["interior"]]
    low, high = minimum_intervals(fit, best["C"])
    if low is not None:
        interval_bars(ax, best["C"], low, high, ecolor="C0", elinewidth=1, capsize=3)
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
    ax.set(xscale="log", yscale="log", xlabel=axis_name("C", labels), ylabel="compute-optimal N, D",
           title="Compute-optimal allocation (approach 2)")
    ax.legend(fontsize=8)
    return save(fig, out_dir, name)


def parametric_contours(runs: pd.DataFrame, law, out_dir: Path, name: str = "parametric_contours",
                        flops_per_token=None, labels: dict | None = None) -> list[Path]:
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
           xlabel=axis_name("N", labels), ylabel=axis_name("D", labels), title="Fitted L(N, D): iso-loss contours")
    ax.legend(fontsize=8)
    return save(fig, out_dir, name, identified=law.identified)


def residuals(runs: pd.DataFrame, law, out_dir: Path, name: str = "residuals", labels: dict | None = None) -> list[Path]:
    """Relative residuals of the parametric fit against model size, one colour per budget."""
    sns.set_theme(style="whitegrid")
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    frame = runs.assign(residual=runs["val_loss"] / law.predict(runs["params"], runs["tokens"]) - 1,
                        budget=runs["C"].map(lambda c: f"C = {c:.1e}"))
    by_budget = runs["C"].nunique() <= 12   # a colour per budget where the runs share a few budgets
    order = [f"C = {c:.1e}" for c in sorted(runs["C"].unique())] if by_budget else None
    sns.scatterplot(frame, x="params", y="residual", hue="budget" if by_budget else None, hue_order=order,
                    palette="magma" if by_budget else None, s=45 if by_budget else 14, ax=ax)
    ax.axhline(0, color="grey", lw=1)
    ax.set(xscale="log", xlabel=axis_name("N", labels), ylabel="measured / fitted - 1", title="Residuals (approach 3)")
    if by_budget:
        ax.legend(fontsize=8)
    return save(fig, out_dir, name, identified=law.identified)


def loss_against_lr(ax, points: pd.DataFrame, by: str, label, fit) -> None:
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


def curve_predictions(panels: list[dict], out_dir: Path, name: str = "curve_law", law: str = "",
                      identified: bool = True) -> list[Path]:
    """Per run, its measured loss and a curve law's prediction with its 95% interval, and the learning rate beneath;
    the runs the law was fitted on marked as such, the others as predicted."""
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(4.2 * columns, 4.6 * rows), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 1] * rows})
    for index, panel in enumerate(panels):
        loss_ax, lr_ax = axes[2 * (index // columns), index % columns], axes[2 * (index // columns) + 1, index % columns]
        predicted, low, high = panel["predicted"]
        loss_ax.plot(panel["steps"], panel["loss"], ".", ms=3, color="0.3", label="measured")
        loss_ax.plot(panel["predicted_steps"], predicted, color="C3", lw=1.2, label=f"{law} law")
        loss_ax.fill_between(panel["predicted_steps"], low, high, color="C3", alpha=0.25, lw=0, label="95% interval")
        loss_ax.set_title(f"{panel['run']} ({'fitted' if panel['fitted'] else 'predicted'})", fontsize=9)
        loss_ax.set_ylabel("loss")
        top = np.percentile(panel["loss"], 95) if len(panel["loss"]) else np.max(predicted)
        loss_ax.set_ylim(min(np.min(predicted), np.min(panel["loss"], initial=np.inf)) * 0.99, top * 1.05)
        lr_ax.sharex(loss_ax)
        loss_ax.tick_params(labelbottom=False)
        lr_ax.plot(np.arange(1, len(panel["lr"]) + 1), panel["lr"], color="C0", lw=1)
        lr_ax.set_ylabel("lr")
        lr_ax.set_xlabel("step")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    for index in range(len(panels), rows * columns):
        axes[2 * (index // columns), index % columns].set_visible(False)
        axes[2 * (index // columns) + 1, index % columns].set_visible(False)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    paths = save(fig, out_dir, name, identified)
    plt.close(fig)
    return paths


def curve_laws_by_size(panels: list[dict], out_dir: Path, name: str = "curve_laws", identified: bool = True) -> list[Path]:
    """One panel per model size: each run's measured curve (points) and the law fitted on them all (line and 95%
    band), one colour per schedule shape."""
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.8 * rows + 0.6), squeeze=False, layout="constrained")
    shapes = sorted({curve["shape"] for panel in panels for curve in panel["curves"]})
    colour = {shape: f"C{i % 10}" for i, shape in enumerate(shapes)}
    for ax, panel in zip(axes.flat, panels):
        for curve in panel["curves"]:
            loss, low, high = curve["predicted"]
            ax.plot(curve["steps"], curve["loss"], ".", ms=3, color=colour[curve["shape"]])
            ax.plot(curve["predicted_steps"], loss, lw=1, color=colour[curve["shape"]])
            if low is not None:
                ax.fill_between(curve["predicted_steps"], low, high, color=colour[curve["shape"]], alpha=0.2, lw=0)
        fitted = np.concatenate([curve["predicted"][0] for curve in panel["curves"]])
        ax.set_ylim(fitted.min() * 0.98, fitted.max() * 1.05)   # from the fit's first step on, as the law was fitted
        ax.set_xscale("log")
        ax.set_title(panel["title"], fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("validation loss")
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    handles = [plt.Line2D([], [], color=colour[shape], lw=3, label=shape) for shape in shapes] + [
        plt.Line2D([], [], color="0.3", ls="", marker=".", label="measured"),
        plt.Line2D([], [], color="0.3", lw=1, label="law fitted on them all (95% band)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(shapes)), fontsize=8)
    paths = save(fig, out_dir, name, identified)
    plt.close(fig)
    return paths


def schedules_compared(schedules: dict, final_loss: dict, out_dir: Path, name: str = "optimal_schedule") -> list[Path]:
    """Learning-rate schedules of one length side by side, each labelled with the final loss a law predicts for it."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for index, (label, lr) in enumerate(schedules.items()):
        ax.plot(np.arange(1, len(lr) + 1), lr, color=f"C{index}", lw=1.4, label=f"{label}: final loss {final_loss[label]:.4g}")
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    ax.legend(fontsize=8, loc="center left")
    fig.tight_layout()
    paths = save(fig, out_dir, name)
    plt.close(fig)
    return paths
