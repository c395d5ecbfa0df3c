"""Does a law of the whole loss curve predict schedules nobody ran? The multi-power law (Luo et al. 2025) and the
annealing law (Tissue et al. 2024) fitted on the first seed's cosine, constant and WSD curves predict the other
schedules' curves (other cooldown lengths, a 1 - sqrt cooldown, a cosine twice as long); their final losses set
against what was measured and against the spread between seeds.

Sweep: conf/study/schedule_law.yaml (the schedules: conf/study/schedule_law/*.yaml).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness import plots
from harness.analysis import markdown_table, record_curve, schedule_shape
from harness.curve_table import law_entry, mean_held_out
from harness.fit.curves import LAWS, fit_curve_law

FITTED = ("cosine", "constant", "wsd linear 20%")
RESAMPLES = 200
FITS_CURVE_LAWS = True      # harness-report's per-size curve-law section would fit these runs again


def design(run: pd.Series, tokens: float) -> str:
    """The schedule's name as the report shows it: cosine, constant or wsd with its cooldown's shape and share, and
    its tokens when they are not the study's usual `tokens`."""
    name = schedule_shape(run)
    return name if float(run["data.tokens"]) == tokens else f"{name}, {float(run['data.tokens']):.3g} tokens"


def curves_by_design(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run that finished: its design, seed and curve (harness.fit.curves.Curve, the lr exact)."""
    ok = df[df["status"] == "ok"]
    tokens = float(ok["data.tokens"].mode().iloc[0])
    return pd.DataFrame([{"design": design(run, tokens), "seed": int(run["seed"]),
                          "curve": record_curve(run, design(run, tokens))} for _, run in ok.iterrows()])


def final_losses(fits: dict, runs: pd.DataFrame) -> pd.DataFrame:
    """Per design: each law's predicted final loss with its 95% interval, the seeds' measured final losses, their mean
    and standard deviation, and each law's error in units of that standard deviation."""
    rows = []
    for name, group in runs.groupby("design", sort=False):
        curve = group["curve"].iloc[0]
        measured = np.array([c.loss[-1] for c in group["curve"]])
        # a law the curves do not pin down moves with the last bits of the arithmetic, and so do these numbers
        row = {"identified": all(fit.identified for fit in fits.values()), "design": name, "fitted": name in FITTED, "steps": curve.total_steps, "seeds": len(measured),
               "measured_mean": measured.mean(), "seed_std": measured.std(ddof=1) if len(measured) > 1 else np.nan}
        for law, fit in fits.items():
            predicted, low, high = (float(v[0]) for v in fit.predict(curve.lr, [curve.total_steps], interval=0.95))
            row |= {f"{law}": predicted, f"{law}_low": low, f"{law}_high": high,
                    f"{law}_error_in_seed_stds": (predicted - row["measured_mean"]) / row["seed_std"]}
        rows.append(row)
    return pd.DataFrame(rows)


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    runs = curves_by_design(df)
    first_seed = runs[runs["seed"] == runs["seed"].min()]
    fitted = [c for c in first_seed["curve"] if c.run in FITTED]
    if len(fitted) < len(FITTED):
        return [f"The laws are fitted on {', '.join(FITTED)}: some of those runs did not finish ok."]
    others = [c for c in first_seed["curve"] if c.run not in FITTED]
    fits = {law: fit_curve_law(fitted, law, intervals=RESAMPLES) for law in LAWS}
    entries = {law: law_entry(fit, fit.held_out(others)) for law, fit in fits.items()}
    scored = {law: mean_held_out(entry["held_out"]) for law, entry in entries.items()}
    best, other = sorted(LAWS, key=scored.get)
    table = final_losses(fits, runs)
    (out / "fits.json").write_text(json.dumps({"curve_law": entries, "final_losses": table.to_dict(orient="records")},
                                              indent=1, default=float))
    plots.curve_predictions([{"run": c.run, "fitted": c.run in FITTED, "steps": c.steps, "loss": c.loss,
                              "predicted_steps": c.steps, "predicted": fits[best].predict(c.lr, c.steps, interval=0.95),
                              "lr": c.lr} for c in first_seed["curve"]], out, name="schedule_law", law=best,
                            identified=fits[best].identified)
    held = pd.DataFrame([{"design": run, "law": law, **errors} for law in (best, other)
                         for run, errors in entries[law]["held_out"].items()])
    shown = table[["design", "fitted", "steps", "seeds", "measured_mean", "seed_std", best, f"{best}_low", f"{best}_high",
                   f"{best}_error_in_seed_stds", other, f"{other}_error_in_seed_stds"]]
    predicted = table[~table["fitted"]]
    within = int((predicted[f"{best}_error_in_seed_stds"].abs() <= 1).sum())
    parameters = markdown_table(pd.DataFrame([{"law": law, **fit.params} for law, fit in fits.items()]))
    flat = " ".join(f"The {law} law is not identified: {fit.unidentified}." for law, fit in fits.items() if not fit.identified)
    moving = "" if not flat else "(A law here is not identified: these numbers move with the last bits of the arithmetic.) "
    return [
        f"Fitted on seed {int(runs['seed'].min())}'s {', '.join(FITTED)} curves ({fits[best].points} points); "
        f"{RESAMPLES} resamples of blocks of steps for the intervals." + (f" {flat} Its parameters trade off along a "
        "flat valley; what it predicts is what the comparisons below use." if flat else ""),
        "## Parameters\n\n" + (f"{flat}\n\n" if flat else "") + parameters,
        f"## Held out: whole curves\n\n{moving}The {best} law predicts the schedules not fitted with mean relative error "
        f"{scored[best]:.3%}, the {other} law {scored[other]:.3%} ({scored[other] / scored[best]:.2f}x).\n\n"
        + markdown_table(held),
        f"## Final losses: predicted against measured\n\n{moving}The {best} law's predicted final loss is within one seed "
        f"standard deviation of the seeds' mean for {within} of the {len(predicted)} schedules it did not see.\n\n"
        + markdown_table(shown),
        "![measured and predicted curves, seed 0](schedule_law.png)",
    ]
