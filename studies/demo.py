"""The demo study: a small IsoFLOP grid and its Chinchilla approach-2 analysis.

Sweep: conf/study/demo.yaml. C is the configured training-FLOP budget (exact causal count,
harness/flops.py), N the non-embedding parameter count.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness import plots
from harness.fit import FitError, fit_isoflop
from harness.report import generic_analysis, markdown_table


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    sections = generic_analysis(df, out)
    ok = df[(df["status"] == "ok") & df["compute"].notna()]
    runs = pd.DataFrame({"C": ok["compute"].astype(float), "params": ok["model_info.params_non_embedding"],
                         "val_loss": ok["metrics.val_loss"]})
    try:
        fit = fit_isoflop(runs["C"], runs["params"], runs["val_loss"])
    except FitError as error:
        sections.append(f"## IsoFLOP fit (approach 2)\n\nNot available from these runs: {error}")
        return sections
    plots.isoflop_curves(runs, fit, out)
    plots.optimal_size(fit, out)
    minima = fit.minima[["C", "N_opt", "D_opt", "loss_opt", "interior", "why"]]
    (out / "fits.json").write_text(json.dumps({"isoflop": {"a": fit.a, "b": fit.b, "k": fit.k,
                                                           "minima": minima.to_dict(orient="records")}}, indent=1, default=float))
    sections += [
        "## IsoFLOP fit (Chinchilla approach 2)\n\n"
        f"N_opt = {fit.k:.3g} * C^{fit.a:.3f},  D_opt = C / (6 N_opt) ~ C^{fit.b:.3f} "
        f"(Chinchilla reports a = 0.49, b = 0.51; Kaplan a = 0.73).\n\n" + markdown_table(minima),
        "![IsoFLOP profiles](isoflop.png)\n\n![N_opt and D_opt vs compute](n_opt_vs_compute.png)",
    ]
    return sections
