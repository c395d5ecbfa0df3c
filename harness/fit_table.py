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
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from harness import curve_table, plots
from harness.analysis import HELD_OUT_RESAMPLES, held_out_tables, interval_text, markdown_table, minimum_methods_line
from harness.fit import (FitError, a_by_method, compare_laws, fit_data_constrained, fit_isoflop,
                         fit_kaplan_nd, fit_parametric, single_epoch)
from harness.progress import Phases
from harness.records import write_atomically
from harness.tables import TableError, load_frame, missing_column

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
    for name in ("D", "C"):
        if name in table and (group is None) and table[name].nunique() == 1:
            raise TableError(f"{path}: column {names[name] or name!r} holds one value ({table[name].iloc[0]:g}) in every "
                             f"row: a law in {name} needs several scales")
    repeats = table.duplicated(keep="first")
    if repeats.any():
        row = int(np.flatnonzero(repeats.to_numpy())[0])
        first = int(np.flatnonzero((table == table.iloc[row]).all(axis=1).to_numpy())[0])
        raise TableError(f"{path}: row {row + 1} repeats row {first + 1} in every column read: a run counted twice "
                         "weighs double in every fit; drop one (or tell them apart, e.g. by a --group column)")
    for name, rows in (table.groupby("group") if group is not None else [(None, table)]):
        if rows["N"].nunique() < 3:
            where = f"group {group} = {name!r}" if name is not None else "the table"
            raise TableError(f"{path}: {where} holds {rows['N'].nunique()} distinct value(s) of column "
                             f"{names['N'] or 'N'!r} ({', '.join(f'{n:g}' for n in sorted(rows['N'].unique()))}): a law "
                             "in N needs at least 3 sizes")
    if "D" not in table:
        table["D"] = table["C"] / (6 * table["N"])
        table.attrs["derived"] = ("D",)
    table.attrs["labels"] = {name: names.get(name) or name for name in COLUMNS if name in table}
    return table


def _parameters(fit, names) -> tuple[dict, str]:
    """A fit's parameters and their intervals: as fits.json entries, and as a markdown table."""
    entries = {name: getattr(fit, name) for name in names} | {f"{name}_interval": fit.intervals.get(name) for name in names}
    table = pd.DataFrame({"parameter": names,
                          "fit [95% interval]": [interval_text(getattr(fit, n), fit.intervals.get(n)) for n in names]})
    return entries, markdown_table(table)


# What each law reports, in the order fit_group fits them: (its key, its title, its parameters).
LAWS = {
    "isoflop": ("Approach 2: IsoFLOP minima", ("a", "b")),
    "parametric": ("Approach 3: E + A/N^alpha + B/D^beta", ("E", "A", "B", "alpha", "beta", "a", "b")),
    "tied": ("Approach 3 with tied exponents: E + A/N^alpha + B/D^alpha", ("E", "A", "B", "alpha", "beta", "a", "b")),
    "kaplan": ("Kaplan et al.'s L(N, D) = [(N_c/N)^(alpha_N/alpha_D) + D_c/D]^alpha_D",
               ("N_c", "D_c", "alpha_N", "alpha_D")),
    "data_constrained": ("Muennighoff et al.'s data-constrained law, joint fit",
                         ("R_D_star", "R_N_star", "E", "A", "B", "alpha", "beta")),
    "data_constrained_two_step": ("Muennighoff et al.'s data-constrained law, two-step fit (the paper's)",
                                  ("R_D_star", "R_N_star", "E", "A", "B", "alpha", "beta")),
    "held_out": ("Held-out prediction at the largest N", ()),
}


def planned(table: pd.DataFrame, quick: bool = False) -> list[str]:
    """The laws fit_group fits to this group's columns, in order (LAWS' keys): approach 2 where two budgets hold
    three runs or more."""
    repeated = "U" in table and not single_epoch(table).all()
    single = table[single_epoch(table)]
    return [key for key, wanted in (
        ("isoflop", "C" in table and (single["C"].value_counts() >= 3).sum() >= 2), ("parametric", True), ("tied", True),
        ("kaplan", True), ("data_constrained", repeated), ("data_constrained_two_step", repeated),
        ("held_out", not quick and table["N"].nunique() >= 3)) if wanted]


def fit_group(table: pd.DataFrame, out: Path, resamples: int, phases: Phases, prefix: str = "", quick: bool = False):
    """Every law the group's columns allow, one at a time: yields (its key, its fits.json entry, its report
    section) as each finishes. With U, the forms without it are fitted on the single-epoch rows (D <= U) alone.
    Figures go to `out`, their names starting with `prefix`."""
    single = table[single_epoch(table)]
    only = (f" Fitted on the {len(single)} single-epoch rows of {len(table)} (D <= U): this form counts every token "
            "as fresh." if len(single) < len(table) else "")
    N, D, loss = (single[c].to_numpy() for c in ("N", "D", "loss"))
    runs = pd.DataFrame({"C": single["C"] if "C" in single else 6 * single["N"] * single["D"], "params": N,
                         "tokens": D, "val_loss": loss})
    labels = table.attrs.get("labels", {})
    intervals = 0 if quick else resamples
    fitted = {}   # {held-out form: its fit of every row}: where the held-out fits start
    for key in planned(table, quick):
        title, names = LAWS[key]
        with phases.phase(f"{prefix}{key}"):
            try:
                entry, section = _fit_law(key, table, single, runs, out, prefix, intervals, names, labels, fitted)
            except FitError as error:
                entry, section = {"error": str(error)}, f"Not available: {error}"
        if key != "held_out" and "error" not in entry:
            rows = len(table) if key.startswith("data_constrained") else len(single)
            entry = {"rows": rows} | entry
            section = f"Fitted on {rows} rows.{only if rows < len(table) else ''}\n\n" + section
        yield key, entry, f"### {title}\n\n{section}"


def _fit_law(key, table, single, runs, out, prefix, intervals, names, labels, fitted) -> tuple[dict, str]:
    N, D, loss = (single[c].to_numpy() for c in ("N", "D", "loss"))
    resampled = f"{intervals} resamples of the log residuals" if intervals else "no resamples (--quick)"
    if key == "isoflop":
        iso = fit_isoflop(single["C"], N, loss, D, intervals=intervals)
        by_method = a_by_method(single["C"], N, loss, D)
        entry = {"a": iso.a, "b": iso.b, "k": iso.k, "a_interval": iso.intervals.get("a"),
                 "b_interval": iso.intervals.get("b"), "minimum": iso.minimum, "a_by_minimum": by_method,
                 "resamples_failed": iso.intervals.get("_failed"),
                 "minima": iso.minima.drop(columns=["curvature"]).to_dict(orient="records")}
        plots.isoflop_curves(runs, iso, out, name=f"{prefix}isoflop", labels=labels)
        plots.optimal_size(iso, out, name=f"{prefix}n_opt_vs_compute", labels=labels)
        return entry, (f"N_opt = {iso.k:.3g} C^a, a = {interval_text(iso.a, iso.intervals.get('a'))}; D_opt ~ C^b, "
                       f"b = {interval_text(iso.b, iso.intervals.get('b'))} ({iso.minimum} minimum per budget, "
                       f"{resampled}). {minimum_methods_line(by_method, iso.minimum)}\n\n"
                       + markdown_table(iso.minima.drop(columns=["curvature"]))
                       + f"\n\n![IsoFLOP profiles]({prefix}isoflop.png)")
    if key in ("parametric", "tied"):
        law = fitted["chinchilla" if key == "parametric" else key] = fit_parametric(
            N, D, loss, tie_exponents=key == "tied", intervals=intervals)
        entries, shown = _parameters(law, names)
        entry = entries | {"objective": law.objective, "resamples_failed": law.intervals.get("_failed"),
                           "identified": law.identified, "why": law.unidentified}
        section = (f"Summed Huber loss (delta 1e-3) of log L from Chinchilla's grid of starts; {resampled}, each "
                   f"refitted from {len(law.resample_starts)} starts." + (f" Not identified: {law.unidentified}."
                                                                 if not law.identified else "") + "\n\n" + shown)
        if key == "parametric":
            plots.parametric_contours(runs, law, out, name=f"{prefix}parametric_contours", labels=labels)
            plots.residuals(runs, law, out, name=f"{prefix}residuals", labels=labels)
            section += f"\n\n![iso-loss contours]({prefix}parametric_contours.png)\n\n![residuals]({prefix}residuals.png)"
        return entry, section
    if key == "kaplan":
        kaplan = fitted["kaplan"] = fit_kaplan_nd(N, D, loss, intervals=intervals)
        entries, shown = _parameters(kaplan, names)
        return (entries | {"objective": kaplan.objective, "identified": kaplan.identified, "why": kaplan.unidentified},
                (f"Not identified: {kaplan.unidentified}.\n\n" if not kaplan.identified else "") + shown)
    if key.startswith("data_constrained"):
        two_step = key.endswith("two_step")
        fit = fit_data_constrained(*(table[c].to_numpy() for c in ("N", "D", "U", "loss")), two_step=two_step,
                                   base=fitted.get("chinchilla"), intervals=intervals)
        entries, shown = _parameters(fit, names)
        how = ("the base law on the single-epoch rows, then R_D* and R_N* on the repeated ones with it fixed"
               if two_step else "the base law on the single-epoch rows, then R_D* and R_N* on every row with it fixed, "
               "then all seven parameters together on every row")
        return entries | {"objective": fit.objective}, f"Fitted {how}; {resampled}.\n\n" + shown
    held_out, ranked, shown = held_out_tables(compare_laws(table, by="N", largest=1, inits=fitted,
                                                           intervals=min(intervals, HELD_OUT_RESAMPLES)))
    verdict = (f"{ranked.iloc[0]['law']} extrapolated best (mean |error| {ranked.iloc[0]['mean_abs_error']:.2%})"
               if len(ranked) else "no form could be fitted")
    with_u = (" With U, the forms without it are fitted and scored on the single-epoch rows."
              if len(single) < len(table) else "")
    return held_out, (f"Each form fitted on the smaller sizes predicts the largest ({table['N'].max():.4g}): "
                      f"{verdict}.{with_u}\n\n{shown}")


def fit_file(path: Path, out: Path, names: dict, group: str | None = None, resamples: int = 1000,
             quick: bool = False) -> dict:
    """Every law the table's columns allow, per group; fits.json and report.md in `out` rewritten as each law
    finishes (an interrupted fit keeps what it finished). Returns the fits, as fits.json holds them."""
    table = read_table(path, names, group)
    out.mkdir(parents=True, exist_ok=True)
    read = [f"{name} <- {names.get(name) or name}" for name in COLUMNS
            if name in table and name not in table.attrs.get("derived", ())]
    head = [f"# Fits of {path.name}", f"{len(table)} rows; columns read: {', '.join(read)}"
            + ("; D = C / 6N (no D column)" if "D" in table.attrs.get("derived", ()) else "") + "."]
    groups = [(None, table)] if group is None else [(name, rows.drop(columns="group"))
                                                    for name, rows in table.groupby("group")]
    for _, rows in groups:
        rows.attrs.update(table.attrs)
    phases = Phases([key for _, rows in groups for key in planned(rows, quick)])
    fits, sections = {}, list(head)
    try:
        for name, rows in groups:
            into = fits if name is None else fits.setdefault(name, {})
            if name is not None:
                sections.append(f"## {group} = {name}")
            for key, entry, section in fit_group(rows, out, resamples, phases, prefix="" if name is None else f"{name}_",
                                                 quick=quick):
                into[key] = entry
                sections.append(section)
                _write(out, fits, sections)
    finally:
        phases.close()
    return fits


def _write(out: Path, fits: dict, sections: list[str]) -> None:
    """fits.json and report.md as they stand, each whole or not at all."""
    write_atomically(out / "fits.json", "w", lambda f: f.write(json.dumps(fits, indent=1, default=float)))
    write_atomically(out / "report.md", "w", lambda f: f.write("\n\n".join(sections) + "\n"))


def summary(fits: dict) -> str:
    """The terminal's table of the fits: law, its parameters with intervals, rows fitted, held-out error."""
    groups = {"": fits} if "held_out" in fits or any(key in LAWS for key in fits) else fits
    rows = []
    for name, entries in groups.items():
        held_out = entries.get("held_out")
        errors = {row["law"]: row.get("mean_abs_error") for row in (held_out if isinstance(held_out, list) else [])}
        held = {"parametric": "chinchilla"}
        for key, entry in entries.items():
            if key == "held_out":
                continue
            shown = (entry["error"][:100] if "error" in entry else
                     ", ".join(f"{p} {interval_text(entry[p], entry.get(f'{p}_interval'))}" for p in LAWS[key][1]))
            error = errors.get(held.get(key, key))
            rows.append({**({"group": name} if name else {}), "law": key, "rows": entry.get("rows", ""),
                         "held-out error": f"{error:.2%}" if isinstance(error, float) and error == error else "",
                         "parameters [95% interval]": shown})
    # Left-aligned, the long parameters column last: a narrow terminal wraps it without shifting the others.
    return pd.DataFrame(rows).to_string(index=False, justify="left", formatters={
        column: (lambda width: lambda v: f"{v:<{width}}")(max(len(column), *(len(str(r[column])) for r in rows)))
        for column in rows[0]}) if rows else "no law was fitted"


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
    parser.add_argument("--quick", action="store_true", help="the point fits alone: no intervals, no held-out "
                        "comparison (with --curves: no intervals)")
    parser.add_argument("--out", type=Path, required=True, help="where fits.json, report.md and the figures go")
    args = parser.parse_args(argv)
    if (args.file is None) == (args.curves is None):
        parser.error("give either a table of runs (FILE) or a table of curves (--curves FILE)")
    if args.resamples is not None and args.resamples < 0:
        parser.error(f"--resamples {args.resamples}: a number of bootstrap resamples, 0 or more (0: no intervals)")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if args.curves is not None:
            out = curve_table.fit_curves_file(
                args.curves, args.out, {name: getattr(args, name) for name in curve_table.CURVE_COLUMNS}, args.group,
                args.fit_runs.split(",") if args.fit_runs else None,
                0 if args.quick else args.resamples if args.resamples is not None else curve_table.CURVE_RESAMPLES,
                args.predict,
                args.optimise)
            print(curve_table.summary(out))
        else:
            fits = fit_file(args.file, args.out, {name: getattr(args, name) for name in COLUMNS}, args.group,
                            args.resamples if args.resamples is not None else 1000, quick=args.quick)
            print(summary(fits))
    except (TableError, FitError) as error:
        sys.exit(f"harness-fit: error: {error}")
    print(f"report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main(sys.argv[1:])
