"""`harness-fit --curves FILE --out DIR`: laws of the whole loss curve (harness.fit.curves) fitted to anyone's curves.

The table holds one row per run and step: columns run, step, lr and loss (other names through --run, --step, --lr and
--loss). A run's learning rate at every step is linear between its rows' (step, lr) pairs (held at the first row's
before it); a row with an empty loss only gives the schedule. With --fit-runs A,B,C both laws (the multi-power law and
the annealing law) are fitted on those runs and predict every other run, and the better one held out is named; without
it, they are fitted on every run. --group COL fits each group on its own. Writes fits.json (under `curve_law`, inside
each group's entry when grouped), report.md and a figure per group: each run's measured and predicted curve with its
95% interval, and its schedule beneath.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness import plots, schedules
from harness.analysis import interval_text, markdown_table, record_curve
from harness.records import load_results
from harness.fit.curves import (FIT_POINTS, FORMULAS, LAWS, PARAMETERS, PREDICTED_POINTS, Curve, checked_curve,
                                 fit_curve_law, optimal_schedule, thinned)
from harness.fit.points import FitError
from harness.tables import TableError, load_frame, missing_column

CURVE_COLUMNS = ("run", "step", "lr", "loss")
# --predict NAME:KEY=VALUE,...: a schedule of harness.schedules (cosine, constant, wsd), its settings by these names
SCHEDULE_KEYS = {"steps": "total_steps", "peak": "peak_lr", "warmup": "warmup_steps", "floor": "min_lr_ratio",
                 "decay": "decay_fraction", "shape": "decay_shape"}
CURVE_RESAMPLES = 200
DRAWN_POINTS = 200          # steps a predicted curve and its interval are drawn at


def run_label(run: pd.Series) -> str:
    """A harness run's name in a curve fit: its schedule, steps and seed (wsd: its cooldown's shape and steps)."""
    name = str(run["schedule_info.name"])
    if name == "wsd":
        name += f"-{run['schedule_info.decay_shape']}{int(run['schedule_info.decay_steps'])}"
    return f"{name}-{int(run['schedule_info.total_steps'])}-seed{int(run['seed'])}"


def records_curves(directory: Path) -> dict[None, list[Curve]]:
    """The training runs recorded under a sweep directory, each a curve of its validation loss with its exact
    learning rate (harness.analysis.record_curve), named by run_label."""
    df = load_results(directory)
    ok = df[df["status"] == "ok"] if "status" in df else df
    if "schedule_info.name" not in ok or ok.empty:
        raise TableError(f"{directory}: no training run finished ok there (records with a schedule and a loss curve)")
    labels = [run_label(run) for _, run in ok.iterrows()]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise TableError(f"{directory}: several runs share schedule, steps and seed ({', '.join(repeated)}): fit each "
                         "configuration from a directory of its own")
    return {None: [record_curve(run, label) for label, (_, run) in zip(labels, ok.iterrows())]}


def read_curves(path: Path, names: dict[str, str | None], group: str | None = None) -> dict[str | None, list[Curve]]:
    """The table's runs as curves, per group (the key None without --group); every bad value one line naming its
    column and row. A directory: the harness runs recorded there (records_curves)."""
    if path.is_dir():
        if group is not None:
            raise TableError(f"{path}: --group applies to a table; a directory of records is fitted as one group")
        return records_curves(path)
    raw = load_frame(path)
    table = pd.DataFrame(index=raw.index)
    for name in CURVE_COLUMNS:
        column = names.get(name) or name
        if column not in raw.columns:
            raise missing_column(path, column, name, raw)
        if name == "run":
            table[name] = raw[column].astype(str)
            continue
        values = pd.to_numeric(raw[column], errors="coerce")
        given = raw[column].notna()
        bad = given & ~np.isfinite(values) if name == "loss" else ~np.isfinite(values)
        bad |= {"step": values < 1, "lr": values < 0, "loss": given & (values <= 0)}[name]
        if name == "step":
            bad |= values != values.round()
        if bad.any():
            row = int(np.flatnonzero(bad.to_numpy())[0])
            value = raw[column].iloc[row]
            wanted = {"step": "a whole number of steps, at least 1", "lr": "a non-negative finite learning rate",
                      "loss": "a positive finite loss (or empty)"}[name]
            shown = repr(value) if isinstance(value, str) else value
            raise TableError(f"{path}: column {column!r} row {row + 1}: {shown} is not {wanted}")
        table[name] = values
    if group is not None:
        if group not in raw.columns:
            raise missing_column(path, group, "--group", raw)
        table["group"] = raw[group].astype(str)
    repeated = table.duplicated(["run", "step"] + (["group"] if group else []))
    if repeated.any():
        row = int(np.flatnonzero(repeated.to_numpy())[0])
        raise TableError(f"{path}: row {row + 1} repeats run {table['run'].iloc[row]!r} at step {int(table['step'].iloc[row])}")
    groups = table.groupby("group", sort=True) if group else [(None, table)]
    return {name: [_curve(run, rows) for run, rows in part.groupby("run", sort=False)] for name, part in groups}


def _curve(run: str, rows: pd.DataFrame) -> Curve:
    rows = rows.sort_values("step")
    steps = rows["step"].to_numpy(dtype=int)
    lr = np.interp(np.arange(1, steps.max() + 1), steps, rows["lr"].to_numpy(dtype=float))
    measured = rows[rows["loss"].notna()]
    return checked_curve(run, lr, measured["step"].to_numpy(dtype=int), measured["loss"].to_numpy(dtype=float))


def schedule_from_spec(spec: str, fitted: list[Curve]) -> schedules.Schedule:
    """`cosine:steps=75000`, `wsd:steps=25000,decay=0.1,shape=sqrt`, `constant:steps=10000`: the schedule, its peak
    and warm-up those of the first fitted run unless given, its floor 0.1 of the peak for cosine and 0 for wsd."""
    name, _, settings = spec.partition(":")
    if name not in schedules.SCHEDULES:
        raise TableError(f"--predict {spec!r}: {name!r} is not a schedule ({', '.join(schedules.SCHEDULES)})")
    given = {}
    for item in filter(None, settings.split(",")):
        key, sep, value = item.partition("=")
        if not sep or key not in SCHEDULE_KEYS:
            raise TableError(f"--predict {spec!r}: {item!r} is not KEY=VALUE with KEY one of {', '.join(SCHEDULE_KEYS)}")
        given[SCHEDULE_KEYS[key]] = value
    if "total_steps" not in given:
        raise TableError(f"--predict {spec!r}: say how long it runs (steps=N)")
    try:
        first = fitted[0].lr
        total = int(given["total_steps"])
        warmup = int(given.get("warmup_steps", int(np.argmax(first)) + 1))
        decay = round(total * float(given.get("decay_fraction", 0.2))) if name == "wsd" else 0
        schedule = schedules.Schedule(name, float(given.get("peak_lr", first.max())), total, warmup,
                                      float(given.get("min_lr_ratio", 0.1 if name == "cosine" else 0.0)), decay,
                                      given.get("decay_shape", "linear") if name == "wsd" else None)
    except ValueError as error:
        raise TableError(f"--predict {spec!r}: {error}") from None
    if total < 1 or not 0 < warmup <= total or (name == "wsd" and not 0 < decay <= total - warmup):
        raise TableError(f"--predict {spec!r}: needs steps >= 1, 0 < warmup <= steps and a decay after the warm-up")
    if schedule.decay_shape is not None and schedule.decay_shape not in schedules.DECAY_SHAPES:
        raise TableError(f"--predict {spec!r}: shape {schedule.decay_shape!r} is not one of {', '.join(schedules.DECAY_SHAPES)}")
    return schedule


def predicted(fit, lr, steps) -> tuple:
    """(loss, low, high) at `steps`: the fit's 95% interval, or None for both ends when it was fitted without one."""
    if fit.resampled is None:
        return fit.predict(lr, steps), None, None
    return fit.predict(lr, steps, interval=0.95)


def predictions(fit, asked: list[tuple[str, schedules.Schedule]]) -> list[dict]:
    """The final loss of each schedule asked for, with its 95% interval."""
    rows = []
    for spec, schedule in asked:
        loss, low, high = predicted(fit, schedule.lr_per_step(), [schedule.total_steps])
        rows.append({"schedule": spec, "law": fit.law, "final_loss": float(loss[0]),
                     "low": None if low is None else float(low[0]), "high": None if high is None else float(high[0])})
    return rows


def optimised(fit, steps: int, fitted: list[Curve], out: Path, prefix: str) -> tuple[dict, str]:
    """The schedule of `steps` the law says ends lowest (peak and warm-up the first fitted run's), against a cosine to
    0.1 of the peak and a WSD with a 20% linear cooldown to zero: its fits.json entry and report section."""
    first = fitted[0].lr
    peak, warmup = float(first.max()), int(np.argmax(first)) + 1
    if not warmup < steps:
        raise TableError(f"--optimise {steps}: the schedule must be longer than the fitted runs' warm-up ({warmup} steps)")
    compared = {"optimised": optimal_schedule(fit, steps, warmup, peak),
                **{name: np.array(schedule_from_spec(f"{name}:steps={steps}", fitted).lr_per_step()) for name in ("cosine", "wsd")}}
    final = {name: float(fit.predict(lr, [steps])[0]) for name, lr in compared.items()}
    entry = {"steps": steps, "peak_lr": peak, "warmup_steps": warmup, "final_loss": final,
             "gain_over_cosine": final["cosine"] - final["optimised"], "gain_over_wsd": final["wsd"] - final["optimised"],
             "lr": compared["optimised"][np.linspace(0, steps - 1, 101).round().astype(int)].tolist()}
    plots.schedules_compared(compared, final, out, name=f"{prefix}optimal_schedule")
    section = (f"### The schedule the {fit.law} law favours for {steps} steps\n\nPredicted final loss {final['optimised']:.4g}, "
               f"{entry['gain_over_cosine']:.4g} below a cosine to 0.1 of the peak ({final['cosine']:.4g}) and "
               f"{entry['gain_over_wsd']:.4g} below WSD with a 20% linear cooldown ({final['wsd']:.4g}); peak {peak:.3g} "
               f"and {warmup} warm-up steps as the first fitted run's (Luo et al. 2025's optimisation: the learning rate "
               f"never rising, linear between 64 knots).\n\n![schedules]({prefix}optimal_schedule.png)")
    return entry, section


def law_entry(fit, held_out: dict) -> dict:
    return {"law": fit.law, "formula": FORMULAS[fit.law], "parameters": fit.params,
            "intervals": {k: list(v) for k, v in fit.intervals.items() if k != "_failed"},
            "resamples_failed": fit.intervals.get("_failed"), "objective": fit.objective, "fit_runs": fit.runs,
            "points": fit.points, "resample": fit.resample, "identified": fit.identified, "why": fit.unidentified,
            "held_out": held_out}


def mean_held_out(held_out: dict) -> float:
    return float(np.mean([e["mean_rel_error"] for e in held_out.values()])) if held_out else float("nan")


def fit_curve_group(curves: list[Curve], fit_runs: list[str] | None, resamples: int, out: Path,
                    prefix: str = "", predict: list[str] = (), optimise: int | None = None) -> tuple[dict, list[str]]:
    """Both laws fitted on fit_runs (every run with a loss when None), each predicting the others: the group's
    `curve_law` entry (the better law held out, the other under `compared`) and its report sections."""
    runs = [c.run for c in curves]
    chosen = fit_runs or [c.run for c in curves if len(c.steps)]
    missing = [run for run in chosen if run not in runs]
    if missing:
        raise FitError(f"--fit-runs names {', '.join(map(repr, missing))}, not a run of the table (runs: {', '.join(runs)})")
    fitted = [c for c in curves if c.run in chosen]
    others = [c for c in curves if c.run not in chosen]
    asked = [schedule_from_spec(spec, fitted) for spec in predict]   # a bad one says so before any fitting
    entries, fits = {}, {}
    for law in LAWS:
        fits[law] = fit_curve_law(fitted, law, intervals=resamples)
        entries[law] = law_entry(fits[law], fits[law].held_out(others))
    scored = {law: mean_held_out(entry["held_out"]) for law, entry in entries.items()}
    if all(np.isfinite(list(scored.values()))):
        best, other = sorted(LAWS, key=scored.get)
        verdict = (f"The {best} law predicts the held-out runs better: mean relative error {scored[best]:.3%} against "
                   f"{scored[other]:.3%} for the {other} law ({scored[other] / scored[best]:.2f}x).")
    else:
        best, other = sorted(LAWS, key=lambda law: entries[law]["objective"])
        verdict = "No run is held out (pass --fit-runs to name the runs to fit): the laws are compared by their fit alone."
    entry = {**entries[best], "compared": {other: entries[other]}, "verdict": verdict}
    if predict:
        entry["predictions"] = predictions(fits[best], list(zip(predict, asked)))
    sections = [f"Fitted on {', '.join(chosen)} ({fits[best].points} points, at most {FIT_POINTS} per run); "
                + (f"{resamples} resamples of blocks of steps for the intervals. " if resamples else "no intervals. ")
                + verdict]
    for law in (best, other):
        table = pd.DataFrame({"parameter": PARAMETERS[law],
                              "fit [95% interval]": [interval_text(fits[law].params[n], fits[law].intervals.get(n))
                                                     for n in PARAMETERS[law]]})
        why = "" if fits[law].identified else f"Not identified: {fits[law].unidentified}.\n\n"
        sections.append(f"### The {law} law: L = {FORMULAS[law]}\n\n{why}" + markdown_table(table))
    if others:
        rows = [{"run": run, "law": law, **errors} for law in (best, other) for run, errors in entries[law]["held_out"].items()]
        sections.append("### Held-out runs: relative error of the predicted curve\n\n" + markdown_table(pd.DataFrame(rows)))
    if predict:
        shown = pd.DataFrame(entry["predictions"]).rename(columns={"final_loss": "final loss", "low": "95% low",
                                                                     "high": "95% high"})
        sections.append("### Schedules not run: the final loss the law predicts\n\n" + markdown_table(shown, missing=""))
    if optimise:
        entry["optimised_schedule"], section = optimised(fits[best], optimise, fitted, out, prefix)
        sections.append(section)
    panels = [_panel(fits[best], curve, curve.run in chosen) for curve in curves]
    plots.curve_predictions(panels, out, name=f"{prefix}curve_law", law=best, identified=fits[best].identified)
    sections.append(f"![measured and predicted curves]({prefix}curve_law.png)")
    return entry, sections


def _panel(fit, curve: Curve, fitted: bool) -> dict:
    """A run's measured curve, the law's prediction with its interval at up to DRAWN_POINTS steps, and its schedule."""
    steps = np.unique(np.linspace(1, curve.total_steps, DRAWN_POINTS).round().astype(int))
    loss, low, high = predicted(fit, curve.lr, steps)
    shown = thinned(curve, PREDICTED_POINTS)
    return {"run": curve.run, "fitted": fitted, "steps": shown.steps, "loss": shown.loss, "predicted_steps": steps,
            "predicted": (loss, loss if low is None else low, loss if high is None else high), "lr": curve.lr}


def fit_curves_file(path: Path, out: Path, names: dict, group: str | None = None, fit_runs: list[str] | None = None,
                    resamples: int = CURVE_RESAMPLES, predict: list[str] = (), optimise: int | None = None) -> Path:
    grouped = read_curves(path, names, group)
    out.mkdir(parents=True, exist_ok=True)
    read = ", ".join(f"{name} <- {names.get(name) or name}" for name in CURVE_COLUMNS)
    sections = [f"# Loss-curve laws of {path.name}",
                "Each run's validation curve from its record, its learning rate from its schedule." if path.is_dir() else
                f"Columns read: {read}. Each run's learning rate is linear between its rows' (step, lr) pairs."]
    fits = {}
    for name, curves in grouped.items():
        entry, found = fit_curve_group(curves, fit_runs, resamples, out, prefix=f"{name}_" if name is not None else "",
                                       predict=predict, optimise=optimise)
        if name is None:
            fits["curve_law"] = entry
            sections += found
        else:
            fits[name] = {"curve_law": entry}
            sections += [f"## {group} = {name}", *found]
    (out / "fits.json").write_text(json.dumps(fits, indent=1, default=float))
    (out / "report.md").write_text("\n\n".join(sections) + "\n")
    return out


def summary(out: Path) -> str:
    """What the terminal shows at the end: per group, the verdict and each prediction asked for."""
    fits = json.loads((out / "fits.json").read_text())
    entries = [("", fits["curve_law"])] if "curve_law" in fits else [(f"{g}: ", e["curve_law"]) for g, e in fits.items()]
    lines = []
    for group, entry in entries:
        lines.append(f"{group}{entry['verdict']}")
        for row in entry.get("predictions", []):
            interval = f" [{row['low']:.4g}, {row['high']:.4g}]" if row["low"] is not None else ""
            lines.append(f"  {row['schedule']}: final loss {row['final_loss']:.4g}{interval} ({row['law']} law)")
        if "optimised_schedule" in entry:
            o = entry["optimised_schedule"]
            lines.append(f"  optimised schedule of {o['steps']} steps: final loss {o['final_loss']['optimised']:.4g}, "
                         f"{o['gain_over_cosine']:.4g} below cosine, {o['gain_over_wsd']:.4g} below WSD")
    return "\n".join(lines)
