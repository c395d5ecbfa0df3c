"""Architecture families side by side: an IsoFLOP fit (Chinchilla approach 2) per family on the same corpus.

Sweep: conf/study/families.yaml. Each family's loss is its own objective (next-token for gpt, masked-token
for encoder), so the losses are not compared across families; the compute-optimal exponents a (N_opt ~ C^a)
and b (D_opt ~ C^b) are.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from harness import plots
from models import families
from harness.fit import FitError, a_by_method, fit_isoflop
from harness.analysis import interval_text, markdown_table, minimum_methods_range
from studies.isoflop import RESAMPLES, runs_of


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    ok = df[df["status"] == "ok"]
    if ok.empty:
        return ["No run finished ok."]
    rows, fits = [], {}
    for family, runs in ok.groupby("model_info.family"):
        table = runs_of(runs)
        row = {"family": family, "loss": families.loss_of(family), "runs": len(table)}
        try:
            fit = fit_isoflop(table["C"], table["params"], table["val_loss"], table["tokens"], intervals=RESAMPLES)
            used = fit.minima[fit.minima["interior"]]
            row.update(a=interval_text(fit.a, fit.intervals["a"]), b=interval_text(fit.b, fit.intervals["b"]),
                       budgets_fitted=f"{len(used)} of {len(fit.minima)}",
                       a_between_methods=minimum_methods_range(a_by_method(table["C"], table["params"], table["val_loss"],
                                                             table["tokens"])),
                       N_opt=", ".join(f"{n:.3g}" for n in used["N_opt"]),
                       left_out="; ".join(f"C={r.C:.3g}: {r.why}" for r in fit.minima.itertuples() if not r.interior))
            fits[family] = {"a": fit.a, "b": fit.b, "k": fit.k, "intervals": {k: v for k, v in fit.intervals.items()
                                                                              if not k.startswith("_")}}
            plots.isoflop_curves(table, fit, out, name=f"isoflop_{family}")
        except FitError as error:
            row.update(a=f"no fit: {error}", b="")
        rows.append(row)
    (out / "fits.json").write_text(json.dumps(fits, indent=1, default=float))
    figures = "\n\n".join(f"![IsoFLOP profiles, {family}](isoflop_{family}.png)" for family in fits)
    return [
        f"Device: {ok['env.device_name'].iloc[0]}. Data: {ok['data.name'].iloc[0]}; the same budgets and widths "
        "for every family.",
        "## Compute-optimal exponents per family\n\nN_opt ~ C^a and D_opt ~ C^b (D_opt: the tokens trained at N_opt) from "
        "each family's IsoFLOP minima (a quadratic weighted around each budget's lowest loss; 95% intervals from "
        f"{RESAMPLES} bootstrap resamples of each budget's residuals); `a between methods`: how far a moves between "
        "the four ways to locate a budget's minimum (results/isoflop_bias measures each against known truth). "
        "Chinchilla (decoder): a = 0.49, b = 0.51.\n\n"
        + markdown_table(pd.DataFrame(rows)),
        "These are CPU-sized budgets (5e10-4.5e11 FLOPs, one-layer models of 1e3-1e5 parameters), so the "
        "intervals are wide; the exponents say how each family's optimum moves, not what it does at scale. The "
        "encoder and the encoder-decoder learn from the 15% of tokens that are masked or hidden, so their losses "
        "are noisier than the decoder's. A family without a fit had too few budgets with an interior minimum over "
        "the widths tried: widen the grid (`model.d_model=...`, more budgets) on a faster machine.",
        figures,
    ]

