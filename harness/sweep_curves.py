"""A sweep whose runs at one model size differ in learning-rate schedule: the laws of the whole loss curve
(harness.fit.curves) fitted per size, the final losses they predict for the schedules a size did not run, and those
losses as points of the N-D laws. `harness-report` adds this section to every such sweep.

Per size, each schedule shape's curves are predicted by both laws fitted on the other shapes' (a point fit each);
the law that predicts them better is fitted on every curve of the size, with bootstrap intervals. Its predictions
fill in the grid of shapes and token counts the sweep ran where a size lacks one; where a shape's grid spans three
sizes and three token counts, Chinchilla's approach 3 is fitted on it twice, on the measured points alone and with
the predicted ones (harness.fit.fit_parametric).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness import plots
from harness.analysis import interval_text, markdown_table, record_curve, record_schedule, schedule_shape
from harness.curve_table import law_entry, mean_held_out, predicted
from harness.fit import FitError, fit_curve_law, fit_parametric
from harness.fit.curves import FIT_FROM, LAWS, PARAMETERS
from harness.schedules import Schedule

MIN_POINTS = 6              # points per curve from the fit's first step on (a size's curves are fitted together)
SWEEP_RESAMPLES = 100       # bootstrap resamples behind each size's intervals
POINTS_FILE = "curve_law_points.csv"
HEADING = "## Loss-curve laws per model size"


def sweep_curves(df: pd.DataFrame) -> pd.DataFrame:
    """One row per training run that finished ok with a schedule and a validation curve: family, N, its schedule
    and the schedule's shape (harness.analysis.schedule_shape), steps, tokens D, seed, final validation loss and its
    curve with the exact learning rate."""
    needed = {"schedule_info.name", "curve", "metrics.val_loss", "model_info.params_non_embedding"}
    if not needed <= set(df.columns):
        return pd.DataFrame()
    ok = df[(df["status"] == "ok") & df["schedule_info.name"].notna() & df["metrics.val_loss"].notna()]
    rows = []
    for _, run in ok.iterrows():
        if not any(point.get("val_loss") is not None for point in run["curve"]):
            continue
        shape, steps, seed = schedule_shape(run), int(run["schedule_info.total_steps"]), int(run.get("seed", 0))
        family = run.get("model_info.family")
        rows.append({"family": family if isinstance(family, str) else "gpt",
                     "N": float(run["model_info.params_non_embedding"]), "shape": shape, "steps": steps,
                     "D": float(run["metrics.tokens"]), "seed": seed, "loss": float(run["metrics.val_loss"]),
                     "schedule": record_schedule(run), "curve": record_curve(run, f"{shape}, {steps} steps, seed {seed}")})
    return pd.DataFrame(rows)


def differ_in_schedule(runs: pd.DataFrame) -> bool:
    """Whether the runs at some model size follow schedules of more than one shape."""
    return not runs.empty and bool((runs.groupby(["family", "N"])["shape"].nunique() > 1).any())


def too_sparse(group: pd.DataFrame) -> str:
    """Why a size's curves are too sparse for the laws ("" when they are not): the run with the fewest measured points
    from the fit's first step on, and the task.eval_points that would give every run MIN_POINTS there."""
    first = max(1, int(FIT_FROM * group["steps"].min()))
    counts = np.array([int((c.steps >= first).sum()) for c in group["curve"]])
    worst = int(np.argmin(counts))
    if counts[worst] >= MIN_POINTS:
        return ""
    run = group.iloc[worst]
    needed = int(np.ceil(MIN_POINTS / (1 - first / run["steps"])))
    return (f"run {run['curve'].run!r} records {counts[worst]} validation point(s) from step {first} on, and the curve "
            f"laws need {MIN_POINTS} per run: set task.eval_points to at least {needed}")


def held_out_by_shape(group: pd.DataFrame) -> dict:
    """law -> shape -> mean relative error of that shape's curves predicted by the law fitted on the other shapes
    (NaN where that fit failed)."""
    scored = {law: {} for law in LAWS}
    for shape, part in group.groupby("shape", sort=True):
        others = list(group.loc[group["shape"] != shape, "curve"])
        for law in LAWS:
            try:
                scored[law][shape] = mean_held_out(fit_curve_law(others, law).held_out(list(part["curve"])))
            except FitError:
                scored[law][shape] = float("nan")
    return scored


def stretched(schedule: Schedule, steps: int, peak_lr: float) -> Schedule:
    """A schedule's shape over `steps` steps: its warm-up and cooldown the same shares of the run, its floor the same."""
    share = steps / schedule.total_steps
    return Schedule(schedule.name, peak_lr, steps, max(1, round(schedule.warmup_steps * share)), schedule.min_lr_ratio,
                    max(1, round(schedule.decay_steps * share)) if schedule.decay_steps else 0, schedule.decay_shape)


def not_run(family_runs: pd.DataFrame, group: pd.DataFrame) -> list[tuple[str, float, Schedule]]:
    """The (shape, D) the sweep ran at some size of the family and not at this one, each as this size would run it:
    the shape stretched to D at this size's tokens per step and peak learning rate."""
    tokens_per_step = float((group["D"] / group["steps"]).median())
    peak = float(group["schedule"].map(lambda s: s.peak_lr).median())
    done = set(zip(group["shape"], group["D"]))
    return [(shape, tokens, stretched(part["schedule"].iloc[0], max(2, round(tokens / tokens_per_step)), peak))
            for (shape, tokens), part in family_runs.groupby(["shape", "D"], sort=True) if (shape, tokens) not in done]


def size_fit(family_runs: pd.DataFrame, group: pd.DataFrame) -> dict:
    """One size: both laws scored held out by shape, the better one fitted on every curve with intervals, and its
    final loss for each (shape, D) of the sweep the size did not run."""
    scored = held_out_by_shape(group)
    means = {law: float(np.nanmean(list(errors.values()))) if any(np.isfinite(list(errors.values()))) else np.inf
             for law, errors in scored.items()}
    best = min(LAWS, key=means.get)
    fit = fit_curve_law(list(group["curve"]), best, intervals=SWEEP_RESAMPLES)
    filled = []
    for shape, tokens, schedule in not_run(family_runs, group):
        loss, low, high = (float(v[0]) for v in predicted(fit, schedule.lr_per_step(), [schedule.total_steps]))
        filled.append({"shape": shape, "D": tokens, "steps": schedule.total_steps, "loss": loss, "low": low, "high": high})
    return {"fit": fit, "scored": scored, "means": means, "best": best, "filled": filled}


def grid_points(runs: pd.DataFrame, fits: dict) -> pd.DataFrame:
    """The N-D points per shape: each measured (family, N, shape, D) with the seeds' mean final loss, and each the law
    filled in, with its interval; `source` says which."""
    measured = (runs.groupby(["family", "N", "shape", "D"], as_index=False)["loss"].mean()
                .assign(low=np.nan, high=np.nan, source="measured"))
    filled = [{"family": family, "N": N, **row, "source": "predicted"}
              for (family, N), entry in fits.items() for row in entry["filled"]]
    columns = ["family", "N", "shape", "D", "loss", "low", "high", "source"]
    return pd.concat([measured[columns], pd.DataFrame(filled, columns=columns)], ignore_index=True)


def nd_fits(points: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Chinchilla's approach 3 on each shape's grid, on the measured points and, where the law filled some in, on the
    measured and predicted ones, where the points span three sizes and three token counts; a line for each grid that
    does not."""
    rows, lines = [], []
    for (family, shape), grid in points.groupby(["family", "shape"], sort=True):
        measured = grid[grid["source"] == "measured"]
        for source, chosen in (("measured", measured), ("measured and predicted", grid))[:1 + (len(grid) > len(measured))]:
            sizes, counts = chosen["N"].nunique(), chosen["D"].nunique()
            if sizes < 3 or counts < 3 or len(chosen) < 6:
                lines.append(f"{family}, {shape}, {source}: {sizes} size(s) and {counts} token count(s); "
                             "an N-D law needs 3 of each and 6 points.")
                continue
            try:
                law = fit_parametric(chosen["N"], chosen["D"], chosen["loss"])
            except FitError as error:
                lines.append(f"{family}, {shape}, {source}: {error}")
                continue
            rows.append({"family": family, "schedule": shape, "points": source, "n": len(chosen), "E": law.E,
                         "A": law.A, "alpha": law.alpha, "B": law.B, "beta": law.beta, "a": law.a,
                         "identified": law.identified})
    return pd.DataFrame(rows), lines


def section(df: pd.DataFrame, out: Path) -> str | None:
    """The report's section on the curve laws (None when no size's runs differ in schedule); writes
    curve_laws.json, curve_law_points.csv (N, D, loss: a table harness-fit reads) and curve_laws.png."""
    runs = sweep_curves(df)
    if not differ_in_schedule(runs):
        return None
    lines = [HEADING, (f"Per model size, each schedule shape is predicted by both laws fitted on the size's other "
                       f"shapes; the better one is fitted on all of the size's curves ({SWEEP_RESAMPLES} resamples of "
                       "blocks of steps for the 95% intervals) and predicts the final loss of each schedule and token "
                       "count the sweep ran at another size.")]
    fits, skipped = {}, []
    for (family, N), group in runs.groupby(["family", "N"], sort=True):
        label = f"{family}, N = {N:.4g}"
        if group["shape"].nunique() < 2:
            skipped.append(f"{label}: not applicable: one schedule shape ({group['shape'].iloc[0]}) to fit and none "
                           "to predict.")
            continue
        why = too_sparse(group)
        if why:
            skipped.append(f"{label}: not applicable: {why}.")
            continue
        fits[(family, N)] = size_fit(runs[runs["family"] == family], group)
    lines += skipped
    if not fits:
        return "\n\n".join(lines)
    points = grid_points(runs[runs.set_index(["family", "N"]).index.isin(list(fits))], fits)
    points.to_csv(out / POINTS_FILE, index=False)
    laws, nd_lines = nd_fits(points)
    lines += [_held_out_table(fits), _parameter_table(fits), _filled_table(points)]
    lines.append("\n\n".join(filter(None, [
        f"### As points of the N-D laws\n\n{POINTS_FILE} holds every measured and predicted final loss "
        f"(`harness-fit {POINTS_FILE} --group shape --out DIR` fits it). Chinchilla's approach 3 on each shape's grid:",
        " ".join(nd_lines), markdown_table(laws) if len(laws) else ""])))
    _figure(runs, fits, out)
    lines.append("![measured and fitted curves per model size](curve_laws.png)")
    entries = {f"{family} N={N:.6g}": {"identified": e["fit"].identified, "held_out_by_shape": e["scored"],
                                        "mean_held_out": e["means"], "better": e["best"],
                                        "curve_law": law_entry(e["fit"], {}), "predicted": e["filled"]}
               for (family, N), e in fits.items()}
    (out / "curve_laws.json").write_text(json.dumps(entries | {"nd_fits": laws.to_dict(orient="records")}, indent=1,
                                                    default=float))
    return "\n\n".join(lines)


def _held_out_table(fits: dict) -> str:
    rows = [{"family": family, "N": N, "shape": shape, **{law: e["scored"][law][shape] for law in LAWS}}
            for (family, N), e in fits.items() for shape in e["scored"][LAWS[0]]]
    verdicts = " ".join(f"N = {N:.4g}: the {e['best']} law ({e['means'][e['best']]:.3%} mean relative error)."
                        for (_, N), e in fits.items())
    return ("### Each shape predicted from the others\n\nMean relative error of the predicted curves (from a tenth of "
            f"the shortest run on). Better per size: {verdicts}\n\n" + markdown_table(pd.DataFrame(rows)))


def _parameter_table(fits: dict) -> str:
    rows, flat = [], []
    for (family, N), e in fits.items():
        fit = e["fit"]
        rows.append({"family": family, "N": N, "law": fit.law, "curves": len(fit.runs), "points": fit.points,
                     **{name: interval_text(fit.params[name], fit.intervals.get(name)) for name in PARAMETERS[fit.law]}})
        if not fit.identified:
            flat.append(f"At N = {N:.4g} the {fit.law} law is not identified: {fit.unidentified}.")
    return ("### Parameters per size [95% interval]\n\n" + (" ".join(flat) + "\n\n" if flat else "")
            + markdown_table(pd.DataFrame(rows), missing=""))


def _filled_table(points: pd.DataFrame) -> str:
    filled = points[points["source"] == "predicted"]
    if filled.empty:
        return ("### Schedules a size did not run\n\nEvery size ran every schedule shape at every token count of the "
                "sweep: the law has no gap to fill.")
    return ("### Schedules a size did not run: the final loss the law predicts\n\n"
            + markdown_table(filled.drop(columns="source").rename(columns={"low": "95% low", "high": "95% high"})))


def _figure(runs: pd.DataFrame, fits: dict, out: Path) -> None:
    """Per size, the first seed's measured curves and the fitted law through them."""
    panels = []
    for (family, N), e in fits.items():
        group = runs[(runs["family"] == family) & (runs["N"] == N)]
        first = group[group["seed"] == group["seed"].min()]
        curves = []
        for _, run in first.sort_values(["shape", "steps"]).iterrows():
            curve = run["curve"]
            steps = np.unique(np.linspace(e["fit"].from_step, curve.total_steps, 100).round().astype(int))
            curves.append({"shape": run["shape"], "steps": curve.steps, "loss": curve.loss, "predicted_steps": steps,
                           "predicted": predicted(e["fit"], curve.lr, steps)})
        panels.append({"title": f"{family}, N = {N:.4g} ({e['best']} law)", "curves": curves})
    plots.curve_laws_by_size(panels, out, identified=all(e["fit"].identified for e in fits.values()))
