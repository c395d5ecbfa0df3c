"""IsoFLOP studies: Chinchilla approaches 1, 2 and 3 with bootstrap intervals and an extrapolation check.

Sweeps: conf/study/isoflop.yaml (and the demo's smaller conf/study/demo.yaml). C is the configured
training-FLOP budget (exact causal count, harness/flops.py), N the non-embedding parameter count, D the
tokens trained. All three approaches use that one C: approach 2 reads D_opt off the tokens trained, and
approach 3's compute-optimal frontier counts FLOPs per token as the runs did (a power law in N fitted to them).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness import plots
from models import families
from harness.analysis import (curves_table, generic_analysis, interval_text, markdown_table, minimum_methods_line,
                              runs_table)
from harness.fit import (LOCAL_BANDWIDTH, RESAMPLE_STARTS, FitError, IsoFlopFit, ParametricFit, a_by_method, fit_envelope,
                         fit_isoflop, fit_parametric, fit_power_law)

RESAMPLES = 1000
MINIMUM_HOW = {
    "local": (f"quadratic in ln N weighted around its lowest loss (a Gaussian kernel of width {LOCAL_BANDWIDTH} in ln N, "
              "recentred on its vertex; one parabola through every size is biased on wide grids, "
              "results/isoflop_bias)"),
    "parabola": "parabola in ln N through every size (Hoffmann et al. 2022)",
    "window": "parabola through the sizes around its lowest loss",
    "akima": "Akima interpolant in ln N (Porian et al. 2024)"}
# Approach 3 refits every resample from the RESAMPLE_STARTS distinct ends of its grid, all resamples stepped together.
RESAMPLES_PARAMETRIC = 1000


def runs_of(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (N, D) point of a budget that finished ok: C (the configured budget; a cooldown branch's is its
    fraction of its run's), params (N), tokens (D), its FLOPs per token, and the validation loss as the mean over the
    point's seeds (one measurement of the point, however many seeds measured it), their standard deviation and count."""
    ok = df[(df["status"] == "ok") & df["compute"].notna()]
    points = pd.DataFrame({"C": ok["compute"].astype(float), "params": ok["model_info.params_non_embedding"].astype(float),
                           "tokens": ok["metrics.tokens"].astype(float), "val_loss": ok["metrics.val_loss"],
                           "flops_per_token": ok["metrics.flops"].astype(float) / ok["metrics.tokens"].astype(float)})
    grouped = points.groupby(["C", "params", "tokens"], sort=False)
    return grouped.agg(val_loss=("val_loss", "mean"), flops_per_token=("flops_per_token", "first"),
                       seed_std=("val_loss", "std"), seeds=("val_loss", "size")).reset_index()


def seed_spread(runs: pd.DataFrame) -> pd.DataFrame:
    """The points of runs_of() measured with more than one seed."""
    several = runs[runs["seeds"] > 1]
    table = several[["C", "params", "tokens", "val_loss", "seed_std", "seeds"]].astype({"params": int, "tokens": int})
    return table.sort_values(["C", "params"]).reset_index(drop=True)


def flops_spent(df: pd.DataFrame) -> dict | None:
    """What the jobs computed against a grid of the same points, each trained as a run of its own (its `metrics.flops`):
    less when points are cooldown branches of longer runs. None when no record counts what it spent."""
    ok = df[df["status"] == "ok"]
    if "metrics.flops_spent" not in ok or ok["metrics.flops_spent"].isna().all():
        return None
    spent, grid = float(ok["metrics.flops_spent"].sum()), float(ok["metrics.flops"].sum())
    branches = int(ok["cooldown.from"].notna().sum()) if "cooldown.from" in ok else 0
    return {"spent": spent, "separate_runs": grid, "ratio": spent / grid, "points": len(ok), "branches": branches}


def flops_per_token_law(runs: pd.DataFrame):
    """FLOPs per token as the runs counted them, as a power law in N (exact per run, smoothed across sizes)."""
    law = fit_power_law(runs["params"], runs["flops_per_token"], irreducible=False)
    return law.predict


# Said of a result whose numbers do not reproduce from one machine to the next (the bits of a flat optimum
# move with the BLAS and the CPU): the report states it, and tests/test_report.py leaves those numbers alone.
NOT_IDENTIFIED = "not identified"


def identification_note(law, runs: pd.DataFrame) -> str:
    """Say so when the runs do not pin the law down."""
    if law.identified:
        return ""
    return (f"\n\n**{NOT_IDENTIFIED.capitalize()}:** {law.unidentified}. These {len(runs)} runs span too little of N and D "
            "for five parameters; the numbers above are where this machine's optimiser stopped on a flat valley and "
            "move with the last bits of the arithmetic. The compute-optimal exponents from approach 2 are the ones "
            "to read; add budgets or sizes (harness study=isoflop) for approach 3.")


def extrapolation(runs: pd.DataFrame, full_isoflop=None) -> dict:
    """Fit on every budget but the largest, predict the largest: the errors of both approaches."""
    largest = runs["C"].max()
    train, held = runs[runs["C"] < largest], runs[runs["C"] == largest]
    result = {"held_out_C": largest}
    try:
        law = fit_parametric(train["params"], train["tokens"], train["val_loss"])
        predicted = law.predict(held["params"], held["tokens"])
        result["approach3"] = {"mean_abs_rel_error": float(np.mean(np.abs(predicted / held["val_loss"] - 1))),
                               "identified": law.identified, "why": law.unidentified}
    except FitError as error:
        result["approach3"] = {"error": str(error)}
    try:
        if full_isoflop is None:
            raise FitError("no IsoFLOP fit of all the budgets to compare with")
        partial = fit_isoflop(train["C"], train["params"], train["val_loss"], train["tokens"])
        measured = full_isoflop.minima.set_index("C").loc[largest, "N_opt"]
        result["approach2"] = {"n_opt_ratio": float(partial.predict(largest) / measured)}
    except (FitError, KeyError) as error:
        result["approach2"] = {"error": str(error)}
    return result


def extrapolation_lines(check: dict) -> list[str]:
    three, two = check["approach3"], check["approach2"]
    if "error" in three:
        line3 = f"- approach 3: {three['error']}"
    else:
        line3 = f"- approach 3, mean |relative error| of the held-out losses: {three['mean_abs_rel_error']:.2%}"
        if not three["identified"]:
            line3 += f" (the fit without that budget is {NOT_IDENTIFIED}: {three['why']})"
    line2 = (f"- approach 2, predicted / measured N_opt at the held-out budget: {two['n_opt_ratio']:.3f}"
             if "n_opt_ratio" in two else f"- approach 2: {two['error']}")
    return [line3, line2]


def family_line(df: pd.DataFrame) -> str:
    """Which architecture family the fits are of (the loss each family reports is a different quantity)."""
    names = sorted(set(df["model_info.family"].dropna())) if "model_info.family" in df else ["gpt"]
    if len(names) > 1:
        return f"Model families: {', '.join(names)}. These runs mix families whose losses differ; fit each family apart."
    return f"Model family: {names[0]} (loss: {families.loss_of(names[0])})."


def inside(value: float, interval) -> bool:
    return interval is not None and interval[0] <= value <= interval[1]


def agreement(fits: dict, runs: pd.DataFrame, law, spread: pd.DataFrame) -> dict:
    """Whether approaches 2 and 3 measure one exponent (each a inside the other's 95% interval), and how far the
    parametric form misses the points, beside how far seeds move them: misses well beyond the seeds' spread are the
    form's, not noise's."""
    iso, par = fits["isoflop"], fits["parametric"]
    log_residuals = np.log(runs["val_loss"]) - np.log(law.predict(runs["params"], runs["tokens"]))
    seed_log_std = float((spread["seed_std"] / spread["val_loss"]).mean()) if not spread.empty else None
    return {"isoflop_a": iso["a"], "isoflop_a_interval": iso["a_interval"], "parametric_a": par["a"],
            "parametric_a_interval": par["a_interval"], "parametric_a_at_budgets": par["a_at_budgets"],
            "each_inside_the_other": bool(inside(iso["a"], par["a_interval"]) and inside(par["a"], iso["a_interval"])),
            "parametric_rms_log_residual": float(np.sqrt(np.mean(log_residuals**2))),
            "parametric_max_abs_log_residual": float(np.abs(log_residuals).max()), "seed_log_std": seed_log_std}


def agreement_section(check: dict) -> str:
    verdict = ("each inside the other's 95% interval" if check["each_inside_the_other"] else
               "**not** each inside the other's 95% interval")
    seeds = (f", against a seed-to-seed spread of {check['seed_log_std']:.2%}" if check["seed_log_std"] is not None
             else "")
    return ("## Do the approaches agree?\n\n"
            f"N_opt ~ C^a: approach 2 a = {interval_text(check['isoflop_a'], check['isoflop_a_interval'])}, approach 3 "
            f"a = {interval_text(check['parametric_a'], check['parametric_a_interval'])} (under C = 6ND; "
            f"{check['parametric_a_at_budgets']:.3f} with C counted as the runs counted it): {verdict}. Approach 3 misses "
            f"the points by {check['parametric_rms_log_residual']:.2%} (root mean square of log L), "
            f"{check['parametric_max_abs_log_residual']:.2%} at most{seeds}.")


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    sections = [family_line(df), *generic_analysis(df, out), learning_rates_section(df)]
    runs = runs_of(df)
    fits: dict = {}
    iso, text = approach_2(df, runs, out, fits)
    sections += text
    sections += approach_1(df, fits)
    law, text = approach_3(runs, out, fits)
    sections += text
    sections += checks(df, runs, iso, law, fits)
    (out / "fits.json").write_text(json.dumps(fits, indent=1, default=float))
    return sections


def approach_2(df: pd.DataFrame, runs: pd.DataFrame, out: Path, fits: dict) -> tuple[IsoFlopFit | None, list[str]]:
    """The IsoFLOP fit, its figures and section (fits["isoflop"])."""
    try:
        iso = fit_isoflop(runs["C"], runs["params"], runs["val_loss"], runs["tokens"], intervals=RESAMPLES)
    except FitError as error:
        return None, [f"## Approach 2: IsoFLOP profiles\n\nNot available from these runs: {error}"]
    iso_ci = iso.intervals
    plots.isoflop_curves(runs, iso, out)
    best = iso.minima[iso.minima["interior"]]
    plots.loss_vs_compute(runs_table(df[df["status"] == "ok"]), out, frontier=(best["C"], best["loss_opt"]))
    plots.optimal_size(iso, out)
    minima = iso.minima[["C", "N_opt", "D_opt", "loss_opt", "interior", "why"]]
    by_method = a_by_method(runs["C"], runs["params"], runs["val_loss"], runs["tokens"])
    fits["isoflop"] = {"a": iso.a, "b": iso.b, "k": iso.k, "a_interval": iso_ci["a"], "b_interval": iso_ci["b"],
                       "resamples_failed": iso_ci["_failed"], "a_by_minimum": by_method,
                       "minima": minima.to_dict(orient="records")}
    return iso, [
        "## Approach 2: IsoFLOP profiles\n\n"
        f"Each budget's minimum from a {MINIMUM_HOW[iso.minimum]}. "
        f"N_opt = {iso.k:.3g} * C^a with a = {interval_text(iso.a, iso_ci['a'])}; D_opt, the tokens the budget's runs "
        f"trained at N_opt, ~ C^b with b = {interval_text(iso.b, iso_ci['b'])} (95% intervals from {RESAMPLES} "
        "bootstrap resamples of each budget's residuals about its fitted quadratic, "
        f"{iso_ci['_failed']} without an interior minimum skipped). Chinchilla: a = 0.49, b = 0.51; Kaplan: a = 0.73. "
        + minimum_methods_line(by_method, iso.minimum) + "\n\n" + markdown_table(minima),
        "![IsoFLOP profiles](isoflop.png)\n\n![N_opt and D_opt vs compute](n_opt_vs_compute.png)",
    ]


def approach_1(df: pd.DataFrame, fits: dict) -> list[str]:
    """The lower envelope of the loss curves and its section (fits["envelope"])."""
    curves = curves_table(df).rename(columns={"params": "N", "val_loss": "loss"})
    try:
        envelope = fit_envelope(curves, intervals=200)
    except FitError as error:
        return [f"## Approach 1: envelope\n\nNot available from these runs: {error}"]
    fits["envelope"] = {"a": envelope.a, "b": envelope.b, "k": envelope.k, "a_interval": envelope.intervals.get("a"),
                        "b_interval": envelope.intervals.get("b")}
    return ["## Approach 1: the lower envelope of the loss curves\n\n"
            f"N_opt ~ C^a with a = {interval_text(envelope.a, envelope.intervals.get('a'))}, D_opt ~ C^b with "
            f"b = {interval_text(envelope.b, envelope.intervals.get('b'))} (200 resamples of whole runs) over "
            f"{len(envelope.envelope)} FLOP values "
            f"({curves['run'].nunique()} runs, {len(curves)} evaluations; an evaluation before a run's "
            "learning rate has decayed sits above what a run of that length reaches, so with few evaluations "
            "per run this is the least reliable of the three approaches)."]


def approach_3(runs: pd.DataFrame, out: Path, fits: dict) -> tuple[ParametricFit | None, list[str]]:
    """The parametric fit, its figures and section (fits["parametric"])."""
    try:
        law = fit_parametric(runs["params"], runs["tokens"], runs["val_loss"], intervals=RESAMPLES_PARAMETRIC,
                             strata=runs["C"])
    except FitError as error:
        return None, [f"## Approach 3: parametric fit\n\nNot available from these runs: {error}"]
    law_ci = law.intervals
    per_token = flops_per_token_law(runs)
    plots.parametric_contours(runs, law, out, flops_per_token=per_token)
    plots.residuals(runs, law, out)
    names = ("E", "A", "B", "alpha", "beta", "a", "b")
    a_here, b_here = law.exponents_at(sorted(runs["C"].unique()), per_token)
    fits["parametric"] = {name: getattr(law, name) for name in names} | {
        f"{name}_interval": law_ci[name] for name in names} | {
        "objective": law.objective, "resamples_failed": law_ci["_failed"], "a_at_budgets": a_here, "b_at_budgets": b_here,
        "identified": law.identified, "why": law.unidentified}
    table = pd.DataFrame({"parameter": names, "fit [95% interval]": [interval_text(getattr(law, n), law_ci[n]) for n in names]})
    return law, [
        "## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta\n\n"
        "Huber loss (delta 1e-3) on log L, summed; L-BFGS from Chinchilla's 4500 starts; 95% intervals from "
        f"{RESAMPLES_PARAMETRIC} bootstrap resamples of each budget's log residuals about the fitted law, each refitted from "
        f"the {RESAMPLE_STARTS} distinct ends of the fit's grid of starts, its optimum first ({law_ci['_failed']} failed). a = beta / (alpha + beta) and b are the exponents under "
        f"C = 6ND; with C counted as these runs counted it, the fitted law's optimum moves as N_opt ~ C^{a_here:.3f}, "
        f"D_opt ~ C^{b_here:.3f} over these budgets. Chinchilla (Epoch's replication): alpha 0.35, beta 0.37, "
        "a = 0.51.\n\n" + markdown_table(table) + identification_note(law, runs),
        "![iso-loss contours](parametric_contours.png)\n\n![residuals](residuals.png)",
    ]


def checks(df: pd.DataFrame, runs: pd.DataFrame, iso: IsoFlopFit | None, law: ParametricFit | None,
           fits: dict) -> list[str]:
    """Whether approaches 2 and 3 agree, the seeds' spread, the FLOPs spent and the extrapolation check."""
    sections = []
    spread = seed_spread(runs)
    if "isoflop" in fits and "parametric" in fits:
        fits["agreement"] = check = agreement(fits, runs, law, spread)
        sections.append(agreement_section(check))
    if not spread.empty:
        fits["seed_spread"] = spread.to_dict(orient="records")
        sections.append("## Seed spread\n\nThe points trained with more than one seed (the fits take each point's mean): "
                        f"a standard deviation of {spread['seed_std'].mean():.4f} nats/token on average, against "
                        f"{runs.groupby('C')['val_loss'].agg(lambda loss: loss.max() - loss.min()).mean():.4f} between "
                        "the best and worst size of a budget.\n\n" + markdown_table(spread))
    spent = flops_spent(df)
    if spent is not None and spent["branches"]:
        fits["flops_spent"] = spent
        sections.append(f"## FLOPs spent\n\n{spent['points']} points, {spent['branches']} of them cooldown branches of "
                        f"warmup-stable-decay runs, cost {spent['spent']:.3g} FLOPs; the same points as separate runs (a "
                        f"grid of cosine runs) cost {spent['separate_runs']:.3g}: {spent['ratio']:.3f}x.")
    if runs["C"].nunique() >= 3:
        fits["extrapolation"] = check = extrapolation(runs, iso)
        lines = extrapolation_lines(check)
        sections.append(f"## Extrapolation check\n\nFitted on every budget but the largest (C = {check['held_out_C']:.3g}), "
                        "then predicted it:\n\n" + "\n".join(lines))
    return sections


def learning_rates_section(df: pd.DataFrame) -> str:
    """How each size's peak learning rate was chosen, from the records' hparams_info."""
    ok = df[df["status"] == "ok"]
    if "hparams_info.lr_in_effect" not in ok:
        return "## Learning rates\n\nThese records predate hparams_info: each run's is its configured `task.lr`."
    rule = ok["hparams_info.lr.rule"] if "hparams_info.lr.rule" in ok else pd.Series("given", index=ok.index)
    table = (ok.assign(d_model=ok["model_info.d_model"], N=ok["model_info.params_non_embedding"],
                       lr=ok["hparams_info.lr_in_effect"], rule=rule.fillna("given"))
             [["d_model", "N", "lr", "rule"]].drop_duplicates().sort_values("N").reset_index(drop=True))
    rules = set(table["rule"])
    if rules == {"law"}:
        first = ok.iloc[0]
        how = (f"each size's peak learning rate is the law lr = c N^-gamma of a learning-rate ladder, "
               f"`{first['hparams_info.lr.path']}` (c = {first['hparams_info.lr.c']:.4g}, gamma = "
               f"{first['hparams_info.lr.gamma']:.4g}): the rate measured best for its size, so the exponents are "
               "those of sizes each trained well (Porian et al. 2024). A law in N rather than muP: muP carries one "
               "width's rate across widths at a fixed depth, and a law measured per size holds whatever the shape; "
               "beyond the ladder's largest size it extrapolates.")
    elif rules == {"given"}:
        how = "each run's peak learning rate was given in its config (`task.lr`)."
    else:
        how = f"rules {', '.join(sorted(rules))} (harness/hparams.py)."
    return f"## Learning rates\n\nHow each size's learning rate was chosen: {how}\n\n" + markdown_table(table)
