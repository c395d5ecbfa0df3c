"""`harness-report DIR [DIR...]`: records -> tidy tables -> the study's analysis -> figures and report.md.
`harness-report DIR --to mlflow,tensorboard,wandb`: the records into trackers instead (harness.tracking).

It reads records only; it never re-runs anything.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import pkgutil
import sys
from pathlib import Path

import pandas as pd

from harness.analysis import generic_analysis, held_out_section, markdown_table, runs_table
from harness import sweep_curves, tracking
from harness.config import CONF_DIR
from harness.progress import Phases
from harness.records import load_results, write_atomically

log = logging.getLogger("harness")

def _write_tables(df: pd.DataFrame, out: Path, root: Path) -> None:
    """results.parquet and results.csv, one row per run, record paths relative to `root` (the first input)."""
    flat = df.assign(path=df["path"].map(lambda p: os.path.relpath(p, root)))
    flat = flat.assign(curve=flat["curve"].map(json.dumps)) if "curve" in flat.columns else flat
    flat = flat.drop(columns=[c for c in flat.columns if flat[c].map(lambda v: isinstance(v, (list, dict))).any()])
    for column in flat.columns:  # a key set to a number in one run and a word in another (world_size 1 / auto)
        kinds = {type(v) for v in flat[column] if v is not None and not (isinstance(v, float) and v != v)}
        if len(kinds) > 1 and str in kinds:
            flat[column] = flat[column].map(lambda v: None if v is None else str(v))
    flat.to_parquet(out / "results.parquet", index=False)
    flat.to_csv(out / "results.csv", index=False)


def not_ok_table(df: pd.DataFrame, root: Path, shown: int = 3) -> pd.DataFrame:
    """One line per kind of run that did not finish ok (its status and error), with how many and where the first
    few records are (relative to `root`, so a committed report reads anywhere)."""
    failed = df[df["status"] != "ok"]
    rows = []
    for (status, error), part in failed.groupby(["status", failed["error"].fillna("")], sort=False):
        paths = sorted(os.path.relpath(p, root) for p in part["path"])
        rows.append({"status": status, "runs": len(part), "error": error,
                     "records": ", ".join(paths[:shown]) + (f" and {len(paths) - shown} more" if len(paths) > shown else "")})
    return pd.DataFrame(rows)


def _study_of(df: pd.DataFrame, study: str | None) -> str:
    if study:
        return study
    names = sorted(set(df.get("study.name", pd.Series(dtype=str)).dropna()) - {"none"})
    return names[0] if len(names) == 1 else "none"


def build_report(paths, out: Path, study: str | None = None, echo: bool = False) -> Path:
    """report.md, its tables and figures in `out`; report.md rewritten as each phase (the study's analysis, the
    curve laws, the held-out comparison) finishes, so an interrupted report keeps what it finished."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    df = load_results(paths)
    if df.empty:
        raise SystemExit(f"error: no records under {', '.join(map(str, paths))}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    study = _study_of(df, study)
    root = Path(paths[0]) if Path(paths[0]).is_dir() else Path(".")
    analysis = f"analysis ({study if study != 'none' else 'generic'})"
    phases = Phases(["tables", analysis, "curve laws", "held-out prediction"], label="report")
    with phases.phase("tables"):
        _write_tables(df, out, root)
        table = runs_table(df)
    module = None
    # A sweep with no study is named after its directory (a first sweep's report is not "Report: none").
    title = study if study != "none" else root.resolve().name
    sections = [f"# Report: {title}", f"{len(df)} runs ({', '.join(f'{n} {s}' for s, n in df['status'].value_counts().items())}).",
                "## Runs\n\n" + markdown_table(table)]
    failed = not_ok_table(df, root)
    if not failed.empty:
        sections.append("## Runs that did not finish ok\n\n" + markdown_table(failed))
    write = lambda: write_atomically(out / "report.md", "w", lambda f: f.write("\n\n".join(sections) + "\n"))
    write()
    with phases.phase(analysis):
        if not (df["status"] == "ok").any():   # a study's analysis reads measurements; there are none
            sections.append("No run finished ok: nothing to analyse (the runs that did not finish ok say why).")
        elif study != "none" and importlib.util.find_spec(f"studies.{study}") is not None:
            module = importlib.import_module(f"studies.{study}")
            sections += module.analyse(df, out)
        else:
            sections += generic_analysis(df, out)
    write()
    with phases.phase("curve laws"):
        curve_laws = None if getattr(module, "FITS_CURVE_LAWS", False) else sweep_curves.section(df, out)
    if curve_laws:   # None: no size's runs differ in schedule, or the study fits the laws its own way
        sections.append(curve_laws)
        write()
    with phases.phase("held-out prediction"):
        sections.append(held_out_section(df, out))
    write()
    phases.close()
    if echo:
        print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        for section in sections[3:]:
            text = [line for line in section.splitlines() if not line.startswith("![")]
            if any(line.strip() and not line.startswith("#") for line in text):
                print("\n".join(text).strip() + "\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="harness-report", description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", help="run or sweep directories (searched recursively), globs or record files")
    parser.add_argument("--out", help="where to write the report (default: FIRST_DIR/report)")
    parser.add_argument("--study", help="analysis to run (default: the study named in the records)")
    parser.add_argument("--to", action="append", metavar="TRACKER",
                        help=f"log the records to trackers ({', '.join(tracking.PACKAGES)}; comma-separated or "
                             "repeated) instead of building the report; runs are named as the sweep's logger names "
                             "them, so pushing again adds nothing")
    parser.add_argument("--option", action="append", default=[], metavar="TRACKER.KEY=VALUE",
                        help="a tracker setting from conf/logger/, e.g. mlflow.tracking_uri=sqlite:///runs.db")
    args = parser.parse_args(argv)
    import studies
    known = sorted(module.name for module in pkgutil.iter_modules(studies.__path__))
    if args.study not in (None, "none", *known):
        parser.error(f"--study {args.study}: no module studies/{args.study}.py (known: {', '.join(known)})")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.to:
        _push(args.dirs, [name for entry in args.to for name in entry.split(",") if name], args.option)
        return
    out = Path(args.out) if args.out else Path(args.dirs[0]) / "report"
    build_report(args.dirs, out, study=args.study, echo=True)
    print(f"report: {out / 'report.md'}")


def _push(dirs: list[str], names: list[str], options: list[str]) -> None:
    from omegaconf import OmegaConf
    for problem in filter(None, map(tracking.unsupported, names)):
        sys.exit(f"error: {problem}")
    settings = {name: OmegaConf.to_container(OmegaConf.load(CONF_DIR / "logger" / f"{name}.yaml"), resolve=True) or {}
                for name in names}
    for option in options:
        key, sep, value = option.partition("=")
        name, _, setting = key.partition(".")
        if not sep or name not in settings or setting not in settings[name]:
            known = ", ".join(f"{n}.{k}" for n in settings for k in settings[n]) or "none"
            sys.exit(f"error: --option {option!r}: expected TRACKER.KEY=VALUE with a tracker given to --to; known: {known}")
        settings[name][setting] = value
    count = tracking.push(dirs, settings)
    if not count:
        sys.exit(f"error: no records under {', '.join(dirs)}")
    print(f"{count} records logged to {', '.join(names)}")


if __name__ == "__main__":
    main(sys.argv[1:])
