"""What a study's analysis is built from: tables of runs and curves, markdown, and the analysis of a sweep with no
study module (loss against compute, loss curves). Studies and `harness-report` both import it; `harness-report`
imports the studies, never the other way round.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness import plots
from harness.fit.curves import checked_curve
from harness.schedules import Schedule

RUN_COLUMNS = {
    "status": "status", "compute": "budget", "model_info.params_non_embedding": "params", "model_info.n_layer": "n_layer",
    "model_info.d_model": "d_model", "metrics.tokens": "tokens", "metrics.flops": "flops",
    "metrics.val_loss": "val_loss", "metrics.tokens_per_s": "tokens_per_s", "metrics.wall_time_s": "wall_s",
}


def text(value, missing: str = "") -> str:
    """A record's text field as a table cell: `missing` where the record has none (None, or NaN from older pandas)."""
    return missing if value is None or (isinstance(value, float) and value != value) else value


def runs_table(df: pd.DataFrame) -> pd.DataFrame:
    """The columns a reader wants first, renamed short; one row per run."""
    present = {k: v for k, v in RUN_COLUMNS.items() if k in df.columns}
    table = df[list(present)].rename(columns=present).dropna(axis="columns", how="all")
    sort = [c for c in ("budget", "flops", "params") if c in table.columns and table[c].notna().any()]
    return table.sort_values(sort).reset_index(drop=True) if sort else table


def curves_table(df: pd.DataFrame) -> pd.DataFrame:
    """Long table of loss curves: one row per (run, evaluation point)."""
    rows = []
    for run, record in df[df["status"] == "ok"].iterrows():
        for point in record["curve"]:
            rows.append({"run": run, "params": record["model_info.params_non_embedding"], **point})
    return pd.DataFrame(rows)


def per_run(df: pd.DataFrame, key: str, name: str, order, fields, error_column: str = "error") -> pd.DataFrame:
    """One row per run in `order` of its `key` (shown as `name`): fields(run) for a run that finished ok, its
    error for one that did not."""
    rows = [{name: run[key], "status": run["status"],
             **(fields(run) if run["status"] == "ok" else {error_column: run["error"]})} for _, run in df.iterrows()]
    return in_order(pd.DataFrame(rows), name, order)


def in_order(table: pd.DataFrame, key: str, order) -> pd.DataFrame:
    """Rows sorted by where their `key` comes in `order` (a study's own order of modes or strategies)."""
    rank = {name: i for i, name in enumerate(order)}
    return table.sort_values(key, key=lambda column: column.map(rank), kind="stable").reset_index(drop=True)


def versus(table: pd.DataFrame, key: str, reference: str, column: str, how: str = "ratio") -> pd.Series | None:
    """Each ok row's `column` against the reference row's: value / reference, or value - reference."""
    ok = table[table["status"] == "ok"].set_index(key)[column]
    if reference not in ok.index:
        return None
    return table[key].map(ok / ok[reference] if how == "ratio" else ok - ok[reference])


def interval_text(value: float, interval) -> str:
    """A number with its interval, as reports print it: 0.4921 [0.4813, 0.5037] (the number alone without one)."""
    return f"{value:.4g} [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else f"{value:.4g}"


def minimum_methods_range(by_method: dict) -> str:
    """How far approach 2's a moves between the ways to locate a budget's minimum (harness.fit.a_by_method): the
    spread and the methods at either end, e.g. "0.109 (parabola 0.644 to akima 0.7497)"."""
    found = {method: a for method, a in by_method.items() if a == a}
    if len(found) < 2:
        return "none: fewer than two methods fit"
    low, high = min(found, key=found.get), max(found, key=found.get)
    return f"{found[high] - found[low]:.3g} ({low} {found[low]:.4g} to {high} {found[high]:.4g})"


def minimum_methods_line(by_method: dict, used: str) -> str:
    """minimum_methods_range with every method's a, in one line for a report."""
    listed = ", ".join(f"{method} {a:.4g}" + (" (used)" if method == used else "") for method, a in by_method.items()
                       if a == a)
    none = [method for method, a in by_method.items() if a != a]
    return (f"a by each way to locate a budget's minimum: {listed}"
            + (f"; {', '.join(none)}: fewer than 2 interior minima" if none else "")
            + f". It moves {minimum_methods_range(by_method)} between them (results/isoflop_bias measures each "
            "against known truth).")


def markdown_table(table: pd.DataFrame, missing: str | None = None) -> str:
    """The table in Markdown, floats to 4 significant digits; `missing`: what an empty cell (NaN, None) shows
    (filling a float column with text first is deprecated in pandas 3)."""
    def cell(value):
        if missing is not None and pd.api.types.is_scalar(value) and pd.isna(value):
            return missing
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)
    header = "| " + " | ".join(table.columns) + " |"
    rule = "|" + "---|" * len(table.columns)
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def generic_analysis(df: pd.DataFrame, out: Path) -> list[str]:
    ok = df[df["status"] == "ok"]
    if ok.empty or "metrics.val_loss" not in ok.columns:
        return []
    sections = []
    runs = runs_table(ok)
    if {"flops", "params"} <= set(runs.columns):
        plots.loss_vs_compute(runs, out)
        sections.append("## Loss vs compute\n\n![loss vs compute](loss_vs_compute.png)")
    curves = curves_table(df)
    if not curves.empty:
        plots.loss_curves(curves, out)
        sections.append("## Loss curves\n\n![loss curves](loss_curves.png)")
    return sections


# Bootstrap resamples behind each held-out prediction's interval in a report.
HELD_OUT_RESAMPLES = 100


def law_points(df: pd.DataFrame) -> pd.DataFrame:
    """The training runs as points a law is fitted to: N (non-embedding parameters), D (tokens trained), loss, U
    (unique tokens trained, where records carry it) and the model family; one row per (family, N, D). Runs that
    differ only in seed are averaged; of runs at one (N, D) with different learning rates or parametrisations (a
    ladder), the best counts: a law describes each size trained well."""
    needed = ["model_info.params_non_embedding", "metrics.tokens", "metrics.val_loss"]
    if not set(needed) <= set(df.columns):
        return pd.DataFrame(columns=["family", "N", "D", "loss"])
    ok = df[(df["status"] == "ok")].dropna(subset=needed)
    points = pd.DataFrame({"family": ok.get("model_info.family", pd.Series("gpt", index=ok.index)).fillna("gpt"),
                           "N": ok[needed[0]].astype(float), "D": ok[needed[1]].astype(float),
                           "loss": ok[needed[2]].astype(float),
                           "setting": (ok["hparams_info.lr_in_effect"].astype(str) if "hparams_info.lr_in_effect" in ok
                                       else ok.get("task.lr", pd.Series("", index=ok.index)).astype(str))
                           + ok.get("model.parametrization", pd.Series("sp", index=ok.index)).fillna("sp").astype(str)})
    if "metrics.unique_tokens" in ok and ok["metrics.unique_tokens"].notna().all():
        points["U"] = ok["metrics.unique_tokens"].astype(float)
    seeds_averaged = points.groupby(["family", "N", "D", "setting"], as_index=False).mean(numeric_only=True)
    best = seeds_averaged.loc[seeds_averaged.groupby(["family", "N", "D"])["loss"].idxmin()]
    return best.drop(columns="setting").reset_index(drop=True)


def held_out_tables(table: pd.DataFrame) -> tuple[list[dict], pd.DataFrame, str]:
    """harness.fit.compare_laws' table as JSON records, its rows whose form could be fitted (best first), and as
    markdown (whose `why` column says when a fit is not identified)."""
    shown = table.drop(columns=["form", "identified"], errors="ignore").rename(columns=lambda c: c.replace("_", " "))
    return (table.astype(object).where(table.notna(), None).to_dict(orient="records"),
            table[table["mean_abs_error"].notna()], markdown_table(shown.astype(object).where(shown.notna(), "")))


def held_out_section(df: pd.DataFrame, out: Path) -> str:
    """Every law form fitted on all but the largest model size and asked to predict it (harness.fit.compare_laws),
    per model family; the table ranked by held-out error, which form extrapolated best, and held_out.json."""
    from harness.fit import compare_laws
    heading = "## Held-out prediction: which law form extrapolates"
    points = law_points(df)
    if points.empty:
        return f"{heading}\n\nNot applicable: these records hold no training runs with a validation loss."
    lines, found = [heading, ("Each form is fitted on every run but those of the largest model size, then predicts "
                              f"them; error = predicted / measured - 1, interval from {HELD_OUT_RESAMPLES} bootstrap "
                              "resamples of the fit (95%).")], {}
    for family, group in points.groupby("family"):
        sizes, tokens = group["N"].nunique(), group["D"].nunique()
        if sizes < 3 or tokens < 3 or len(group) < 8:
            lines.append(f"**{family}**: no law applies yet ({sizes} model size(s), {tokens} token count(s), "
                         f"{len(group)} points): {_what_to_add(sizes, tokens, len(group))}.")
            continue
        found[family], ranked, shown = held_out_tables(compare_laws(group, by="N", largest=1, intervals=HELD_OUT_RESAMPLES))
        best = (f"{ranked.iloc[0]['law']} ({ranked.iloc[0]['form']}) extrapolated best: mean |error| "
                f"{ranked.iloc[0]['mean_abs_error']:.2%} at N = {group['N'].max():.4g}" if len(ranked) else
                "no form could be fitted")
        lines.append(f"**{family}** ({len(group)} points, fitted on {sizes - 1} sizes): {best}.\n\n" + shown)
    (out / "held_out.json").write_text(json.dumps(found, indent=1, default=float))
    return "\n\n".join(lines)


def _what_to_add(sizes: int, tokens: int, points: int) -> str:
    """What a sweep needs for a law in N and D held out at its largest size: 3 sizes, 3 token counts, 8 points."""
    more = [f"{3 - sizes} more model size(s)" if sizes < 3 else "", f"{3 - tokens} more token count(s)" if tokens < 3
            else ""]
    missing = max(8 - points, 3 - sizes, 3 - tokens)
    if not any(more):
        return f"add {missing} more run(s) at new (N, D) to fit a law in N and D and hold out its largest size"
    return (f"add runs at {' and '.join(filter(None, more))} (at least {missing} more run(s)) to fit a law in N and D "
            "and hold out its largest size")


def record_schedule(run: pd.Series) -> Schedule:
    """A run's learning-rate schedule, exact, from its record's `schedule_info` (harness.schedules)."""
    field = lambda key: run[f"schedule_info.{key}"]
    shape = field("decay_shape")
    return Schedule(str(field("name")), float(field("peak_lr")), int(field("total_steps")), int(field("warmup_steps")),
                    float(field("min_lr_ratio")), int(field("decay_steps") or 0), shape if isinstance(shape, str) else None)


def schedule_shape(run: pd.Series) -> str:
    """A run's schedule apart from its length: cosine, constant, or wsd with its cooldown's shape and share of the run."""
    name = str(run["schedule_info.name"])
    if name != "wsd":
        return name
    share = int(run["schedule_info.decay_steps"]) / int(run["schedule_info.total_steps"])
    return f"{name} {run['schedule_info.decay_shape']} {share:.0%}"


def record_curve(run: pd.Series, name: str, loss: str = "val_loss"):
    """A run's loss curve (its record's `curve`) with the learning rate of every step, exact (record_schedule); a
    cooldown branch's curve holds the run's points before it branched."""
    points = [p for p in run["curve"] if p.get(loss) is not None]
    return checked_curve(name, record_schedule(run).lr_per_step(), [p["step"] for p in points], [p[loss] for p in points])
