"""What a study's analysis is built from: tables of runs and curves, markdown, and the analysis of a sweep with no
study module (loss against compute, loss curves). Studies and `harness-report` both import it; `harness-report`
imports the studies, never the other way round.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from harness import plots

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


def markdown_table(table: pd.DataFrame) -> str:
    def cell(value):
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
