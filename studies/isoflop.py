"""IsoFLOP studies: Chinchilla approaches 1, 2 and 3 with bootstrap intervals and an extrapolation check.

Sweeps: conf/study/isoflop.yaml (and the demo's smaller conf/study/demo.yaml). C is the configured
training-FLOP budget (exact causal count, harness/flops.py), N the non-embedding parameter count, D the
tokens trained.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from harness import families, plots
from harness.fit import FitError, fit_envelope, fit_isoflop, fit_parametric
from harness.report import curves_table, generic_analysis, markdown_table, runs_table

RESAMPLES = 1000


def runs_of(df: pd.DataFrame) -> pd.DataFrame:
    ok = df[(df["status"] == "ok") & df["compute"].notna()]
    return pd.DataFrame({"C": ok["compute"].astype(float), "params": ok["model_info.params_non_embedding"].astype(float),
                         "tokens": ok["metrics.tokens"].astype(float), "val_loss": ok["metrics.val_loss"]}).reset_index(drop=True)


def with_interval(value: float, interval) -> str:
    return f"{value:.4g} [{interval[0]:.4g}, {interval[1]:.4g}]" if interval else f"{value:.4g}"


def degenerate_note(law, runs: pd.DataFrame) -> str:
    """Say so when the runs do not pin the irreducible loss down (E driven to zero)."""
    if law.E > 1e-3 * runs["val_loss"].min():
        return ""
    return (f"\n\nE went to {law.E:.2g}: these {len(runs)} runs span too little of N and D to separate the irreducible "
            "loss from the power terms, so the five parameters trade off against each other. The compute-optimal "
            "exponents from approach 2 are the ones to read; add budgets or sizes (harness study=isoflop) for approach 3.")


def extrapolation(runs: pd.DataFrame, full_isoflop=None) -> dict:
    """Fit on every budget but the largest, predict the largest: the errors of both approaches."""
    largest = runs["C"].max()
    train, held = runs[runs["C"] < largest], runs[runs["C"] == largest]
    result = {"held_out_C": largest}
    try:
        law = fit_parametric(train["params"], train["tokens"], train["val_loss"])
        predicted = law.predict(held["params"], held["tokens"])
        result["approach3_mean_abs_rel_error"] = float(np.mean(np.abs(predicted / held["val_loss"] - 1)))
    except FitError as error:
        result["approach3"] = str(error)
    try:
        if full_isoflop is None:
            raise FitError("no IsoFLOP fit of all the budgets to compare with")
        partial = fit_isoflop(train["C"], train["params"], train["val_loss"])
        measured = full_isoflop.minima.set_index("C").loc[largest, "N_opt"]
        result["approach2_n_opt_ratio"] = float(partial.predict(largest) / measured)
    except (FitError, KeyError) as error:
        result["approach2"] = str(error)
    return result


def family_line(df: pd.DataFrame) -> str:
    """Which architecture family the fits are of (the loss each family reports is a different quantity)."""
    names = sorted(set(df["model_info.family"].dropna())) if "model_info.family" in df else ["gpt"]
    if len(names) > 1:
        return f"Model families: {', '.join(names)}. These runs mix families whose losses differ; fit each family apart."
    return f"Model family: {names[0]} (loss: {families.LOSS.get(names[0], 'its training loss')})."


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    sections = [family_line(df), *generic_analysis(df, out)]
    runs = runs_of(df)
    fits: dict = {}
    iso = None
    try:
        iso = fit_isoflop(runs["C"], runs["params"], runs["val_loss"], intervals=RESAMPLES)
        iso_ci = iso.intervals
        plots.isoflop_curves(runs, iso, out)
        best = iso.minima[iso.minima["interior"]]
        plots.loss_vs_compute(runs_table(df[df["status"] == "ok"]), out, frontier=(best["C"], best["loss_opt"]))
        plots.optimal_size(iso, out)
        minima = iso.minima[["C", "N_opt", "D_opt", "loss_opt", "interior", "why"]]
        fits["isoflop"] = {"a": iso.a, "b": iso.b, "k": iso.k, "a_interval": iso_ci["a"], "b_interval": iso_ci["b"],
                           "resamples_failed": iso_ci["_failed"], "minima": minima.to_dict(orient="records")}
        sections += [
            "## Approach 2: IsoFLOP profiles\n\n"
            f"N_opt = {iso.k:.3g} * C^a with a = {with_interval(iso.a, iso_ci['a'])}; D_opt = C / (6 N_opt) ~ C^b with "
            f"b = {with_interval(iso.b, iso_ci['b'])} (95% bootstrap intervals over runs, {RESAMPLES} resamples, "
            f"{iso_ci['_failed']} without an interior minimum skipped). Chinchilla: a = 0.49, b = 0.51; Kaplan: a = 0.73.\n\n"
            + markdown_table(minima),
            "![IsoFLOP profiles](isoflop.png)\n\n![N_opt and D_opt vs compute](n_opt_vs_compute.png)",
        ]
    except FitError as error:
        sections.append(f"## Approach 2: IsoFLOP profiles\n\nNot available from these runs: {error}")
    curves = curves_table(df).rename(columns={"params": "N", "val_loss": "loss"})
    try:
        envelope = fit_envelope(curves, intervals=200)
        fits["envelope"] = {"a": envelope.a, "b": envelope.b, "k": envelope.k, "a_interval": envelope.intervals.get("a"),
                            "b_interval": envelope.intervals.get("b")}
        sections.append("## Approach 1: the lower envelope of the loss curves\n\n"
                        f"N_opt ~ C^a with a = {with_interval(envelope.a, envelope.intervals.get('a'))}, D_opt ~ C^b with "
                        f"b = {with_interval(envelope.b, envelope.intervals.get('b'))} (200 resamples of whole runs) over "
                        f"{len(envelope.envelope)} FLOP values "
                        f"({curves['run'].nunique()} runs, {len(curves)} evaluations; with few evaluations per run and a "
                        "cosine schedule, intermediate points sit above what a shorter run would reach).")
    except FitError as error:
        sections.append(f"## Approach 1: envelope\n\nNot available from these runs: {error}")
    try:
        law = fit_parametric(runs["params"], runs["tokens"], runs["val_loss"], intervals=RESAMPLES)
        law_ci = law.intervals
        plots.parametric_contours(runs, law, out)
        plots.residuals(runs, law, out)
        names = ("E", "A", "B", "alpha", "beta", "a", "b")
        fits["parametric"] = {name: getattr(law, name) for name in names} | {
            f"{name}_interval": law_ci[name] for name in names} | {"objective": law.objective}
        table = pd.DataFrame({"parameter": names, "fit [95% interval]": [with_interval(getattr(law, n), law_ci[n]) for n in names]})
        sections += [
            "## Approach 3: L(N, D) = E + A / N^alpha + B / D^beta\n\n"
            "Huber loss (delta 1e-3) on log L, summed; L-BFGS from Chinchilla's 4500 starts; intervals from "
            f"{RESAMPLES} bootstrap resamples of the runs. Chinchilla (Epoch's replication): alpha 0.35, beta 0.37, "
            "a = beta / (alpha + beta) = 0.51.\n\n" + markdown_table(table) + degenerate_note(law, runs),
            "![iso-loss contours](parametric_contours.png)\n\n![residuals](residuals.png)",
        ]
    except FitError as error:
        sections.append(f"## Approach 3: parametric fit\n\nNot available from these runs: {error}")
    if runs["C"].nunique() >= 3:
        fits["extrapolation"] = check = extrapolation(runs, iso)
        lines = [f"- approach 3, mean |relative error| of the held-out losses: {check['approach3_mean_abs_rel_error']:.2%}"
                 if "approach3_mean_abs_rel_error" in check else f"- approach 3: {check.get('approach3')}",
                 f"- approach 2, predicted / measured N_opt at the held-out budget: {check['approach2_n_opt_ratio']:.3f}"
                 if "approach2_n_opt_ratio" in check else f"- approach 2: {check.get('approach2')}"]
        sections.append(f"## Extrapolation check\n\nFitted on every budget but the largest (C = {check['held_out_C']:.3g}), "
                        "then predicted it:\n\n" + "\n".join(lines))
    (out / "fits.json").write_text(json.dumps(fits, indent=1, default=float))
    return sections
