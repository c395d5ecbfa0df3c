"""`harness-fit FILE.csv|FILE.parquet --out DIR`: scaling laws fitted to anyone's results, not only the harness's.

Reads a table with one row per run: N (parameters), D (training tokens), C (training FLOPs), loss, and optionally U
(unique tokens) and a group column (each group is fitted on its own), under those names or the ones given by
--N/--D/--C/--loss/--U/--group. It fits every law the columns allow (approach 2 when C holds several budgets;
approach 3, its tied-exponent form and Kaplan's L(N, D) when N and D are known, D taken as C / 6N when only C is;
the data-constrained law when U is given and some run repeated data), with bootstrap intervals, compares the forms
held out at the largest N, and writes fits.json, report.md and the figures (PNG and SVG) as `harness-report` does.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness import curve_table, plots
from harness.analysis import held_out_tables, interval_text, markdown_table
from harness.tables import TableError, load_frame, missing_column
from harness.fit import (RESAMPLE_STARTS, FitError, compare_laws, fit_data_constrained, fit_isoflop, fit_kaplan_nd,
                         fit_parametric)

COLUMNS = ("N", "D", "C", "loss", "U")


def read_table(path: Path, names: dict[str, str | None], group: str | None) -> pd.DataFrame:
    """The table's columns under the harness's names (N, D, C, loss, U and group), checked: every value a positive
    finite number, and N, plus C or D, present."""
    raw = load_frame(path)
    table = pd.DataFrame(index=raw.index)
    for name, column in names.items():
        explicit = column is not None
        column = column or name
        if column not in raw.columns:
            if explicit or name in ("N", "loss"):
                raise missing_column(path, column, name, raw)
            continue
        values = pd.to_numeric(raw[column], errors="coerce")
        bad = ~(np.isfinite(values) & (values > 0))
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = raw[column].iloc[row]
            shown = repr(value) if isinstance(value, str) else value
            raise TableError(f"{path}: column {column!r} row {row + 1}: {shown} is not a positive finite number")
        table[name] = values.astype(float)
    if "D" not in table and "C" not in table:
        raise TableError(f"{path}: neither a D (tokens) nor a C (FLOPs) column: a law in N alone cannot be told from "
                         "the training length")
    if group is not None:
        if group not in raw.columns:
            raise missing_column(path, group, "--group", raw)
        table["group"] = raw[group].astype(str)
    for name in ("N", "D", "C"):
        if name in table and (group is None) and table[name].nunique() == 1:
            raise TableError(f"{path}: column {names[name] or name!r} holds one value ({table[name].iloc[0]:g}) in every "
                             f"row: a law in {name} needs several scales")
    if "D" not in table:
        table["D"] = table["C"] / (6 * table["N"])
        table.attrs["derived"] = ("D",)
    return table


def _parameters(fit, names) -> tuple[dict, str]:
    """A fit's parameters and their intervals: as fits.json entries, and as a markdown table."""
    entries = {name: getattr(fit, name) for name in names} | {f"{name}_interval": fit.intervals[name] for name in names}
    table = pd.DataFrame({"parameter": names, "fit [95% interval]": [interval_text(getattr(fit, n), fit.intervals[n]) for n in names]})
    return entries, markdown_table(table)


def fit_group(table: pd.DataFrame, out: Path, resamples: int, prefix: str = "") -> tuple[dict, list[str]]:
    """Every law the group's columns allow: (its fits.json entries, its report sections). Figures go to `out`,
    their names starting with `prefix`."""
    fits, sections = {}, []
    N, D, loss = (table[c].to_numpy() for c in ("N", "D", "loss"))
    runs = pd.DataFrame({"C": table["C"] if "C" in table else 6 * table["N"] * table["D"], "params": N, "tokens": D,
                         "val_loss": loss})
    if "C" in table and table["C"].nunique() >= 2:
        try:
            iso = fit_isoflop(table["C"], N, loss, D, intervals=resamples)
            fits["isoflop"] = {"a": iso.a, "b": iso.b, "k": iso.k, "a_interval": iso.intervals["a"],
                               "b_interval": iso.intervals["b"], "minimum": iso.minimum,
                               "resamples_failed": iso.intervals["_failed"],
                               "minima": iso.minima.drop(columns=["curvature"]).to_dict(orient="records")}
            plots.isoflop_curves(runs, iso, out, name=f"{prefix}isoflop")
            plots.optimal_size(iso, out, name=f"{prefix}n_opt_vs_compute")
            sections.append(f"### Approach 2: IsoFLOP minima\n\nN_opt = {iso.k:.3g} C^a, a = {interval_text(iso.a, iso.intervals['a'])}; "
                            f"D_opt ~ C^b, b = {interval_text(iso.b, iso.intervals['b'])} ({iso.minimum} minimum per budget, "
                            f"{resamples} resamples).\n\n" + markdown_table(iso.minima.drop(columns=["curvature"]))
                            + f"\n\n![IsoFLOP profiles]({prefix}isoflop.png)")
        except FitError as error:
            fits["isoflop"] = {"error": str(error)}
            sections.append(f"### Approach 2: IsoFLOP minima\n\nNot available: {error}")
    for key, title, fit_fn in (("parametric", "Approach 3: E + A/N^alpha + B/D^beta", fit_parametric),
                               ("tied", "Approach 3 with tied exponents: E + A/N^alpha + B/D^alpha",
                                functools.partial(fit_parametric, tie_exponents=True))):
        try:
            law = fit_fn(N, D, loss, intervals=resamples)
        except FitError as error:
            fits[key] = {"error": str(error)}
            sections.append(f"### {title}\n\nNot available: {error}")
            continue
        entries, shown = _parameters(law, ("E", "A", "B", "alpha", "beta", "a", "b"))
        fits[key] = entries | {"objective": law.objective, "resamples_failed": law.intervals["_failed"],
                               "identified": law.identified, "why": law.unidentified}
        sections.append(f"### {title}\n\nSummed Huber loss (delta 1e-3) of log L from Chinchilla's grid of starts; "
                        f"{resamples} resamples of the log residuals, each refitted from {RESAMPLE_STARTS} starts."
                        + (f" Not identified: {law.unidentified}." if not law.identified else "") + "\n\n" + shown)
        if key == "parametric":
            plots.parametric_contours(runs, law, out, name=f"{prefix}parametric_contours")
            plots.residuals(runs, law, out, name=f"{prefix}residuals")
            sections.append(f"![iso-loss contours]({prefix}parametric_contours.png)\n\n![residuals]({prefix}residuals.png)")
    try:
        kaplan = fit_kaplan_nd(N, D, loss, intervals=resamples)
        entries, shown = _parameters(kaplan, ("N_c", "D_c", "alpha_N", "alpha_D"))
        fits["kaplan"] = entries | {"objective": kaplan.objective, "identified": kaplan.identified,
                                    "why": kaplan.unidentified}
        sections.append("### Kaplan et al.'s L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D\n\n"
                        + (f"Not identified: {kaplan.unidentified}.\n\n" if not kaplan.identified else "") + shown)
    except FitError as error:
        fits["kaplan"] = {"error": str(error)}
    if "U" in table and (table["D"] > table["U"]).any():
        try:
            constrained = fit_data_constrained(N, D, table["U"].to_numpy(), loss, intervals=min(resamples, 100))
            entries, shown = _parameters(constrained, ("R_D_star", "R_N_star", "E", "A", "B", "alpha", "beta"))
            fits["data_constrained"] = entries
            sections.append("### Muennighoff et al.'s data-constrained law\n\n" + shown)
        except FitError as error:
            fits["data_constrained"] = {"error": str(error)}
            sections.append(f"### Muennighoff et al.'s data-constrained law\n\nNot available: {error}")
    if table["N"].nunique() >= 3:
        fits["held_out"], ranked, shown = held_out_tables(compare_laws(table, by="N", largest=1,
                                                                         intervals=min(resamples, 100)))
        verdict = (f"{ranked.iloc[0]['law']} extrapolated best (mean |error| {ranked.iloc[0]['mean_abs_error']:.2%})"
                   if len(ranked) else "no form could be fitted")
        sections.append(f"### Held-out prediction at the largest N ({table['N'].max():.4g})\n\nEach form fitted on the "
                        f"smaller sizes predicts the largest: {verdict}.\n\n" + shown)
    return fits, sections


def fit_file(path: Path, out: Path, names: dict, group: str | None = None, resamples: int = 1000) -> Path:
    table = read_table(path, names, group)
    out.mkdir(parents=True, exist_ok=True)
    read = [f"{name} <- {names.get(name) or name}" for name in COLUMNS if name in table and name not in table.attrs.get("derived", ())]
    sections = [f"# Fits of {path.name}", f"{len(table)} rows; columns read: {', '.join(read)}"
                + ("; D = C / 6N (no D column)" if "D" in table.attrs.get("derived", ()) else "") + "."]
    if group is None:
        fits, found = fit_group(table, out, resamples)
        sections += found
    else:
        fits = {}
        for name, rows in table.groupby("group"):
            fits[name], found = fit_group(rows.drop(columns="group"), out, resamples, prefix=f"{name}_")
            sections += [f"## {group} = {name}", *found]
    (out / "fits.json").write_text(json.dumps(fits, indent=1, default=float))
    (out / "report.md").write_text("\n\n".join(sections) + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="harness-fit", description=__doc__.splitlines()[0],
                                     epilog=curve_table.__doc__.split("\n\n")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path, nargs="?", help="a .csv or .parquet table, one row per run")
    parser.add_argument("--curves", type=Path, metavar="FILE", help="fit the laws of the whole loss curve to this table "
                        "of training curves (one row per run and step: run, step, lr, loss; see below), or to the "
                        "training runs recorded under this sweep directory (named SCHEDULE-STEPS-seedN)")
    for name in COLUMNS:
        parser.add_argument(f"--{name}", metavar="COL", help=f"the column holding {name} (default: {name})")
    for name in ("run", "step", "lr"):
        parser.add_argument(f"--{name}", metavar="COL", help=f"with --curves: the column holding the {name} (default: {name})")
    parser.add_argument("--fit-runs", metavar="A,B,C", help="with --curves: fit these runs and predict every other one")
    parser.add_argument("--predict", metavar="SCHEDULE", action="append", default=[],
                        help="with --curves: the final loss, with its interval, of a schedule not run, e.g. "
                        "cosine:steps=75000 or wsd:steps=25000,decay=0.1,shape=sqrt (keys: "
                        f"{', '.join(curve_table.SCHEDULE_KEYS)}; peak and warm-up default to the first fitted run's); repeatable")
    parser.add_argument("--optimise", metavar="STEPS", type=int, help="with --curves: the schedule of STEPS steps the "
                        "better law says ends lowest, against cosine and WSD")
    parser.add_argument("--group", metavar="COL", help="fit each value of this column on its own")
    parser.add_argument("--resamples", type=int, help="bootstrap resamples per fit (default 1000; with --curves "
                        f"{curve_table.CURVE_RESAMPLES}, of blocks of steps)")
    parser.add_argument("--out", type=Path, required=True, help="where fits.json, report.md and the figures go")
    args = parser.parse_args(argv)
    if (args.file is None) == (args.curves is None):
        parser.error("give either a table of runs (FILE) or a table of curves (--curves FILE)")
    try:
        if args.curves is not None:
            out = curve_table.fit_curves_file(
                args.curves, args.out, {name: getattr(args, name) for name in curve_table.CURVE_COLUMNS}, args.group,
                args.fit_runs.split(",") if args.fit_runs else None,
                args.resamples if args.resamples is not None else curve_table.CURVE_RESAMPLES, args.predict,
                args.optimise)
        else:
            out = fit_file(args.file, args.out, {name: getattr(args, name) for name in COLUMNS}, args.group,
                           args.resamples if args.resamples is not None else 1000)
    except (TableError, FitError) as error:
        sys.exit(f"harness-fit: error: {error}")
    if args.curves is not None:
        print(curve_table.summary(out))
    print(f"report: {out / 'report.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
