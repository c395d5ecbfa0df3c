"""`harness-fit` and `harness-report` end to end on real-sized tables, timed as a user runs them (console scripts,
Python's imports included), with the phase lines they print.

- Epoch AI's 240 Chinchilla points (../shared/data/chinchilla; skipped when absent): the default fit (three laws
  with 1000-resample intervals, the held-out comparison, figures) and --quick;
- a 296-row table with unique tokens: 50 single-epoch runs (10 sizes x 5 token counts) and 246 that repeat data
  (6 unique-token budgets x 2-25 epochs x 10 sizes, and the 6 smallest sizes at 60 epochs) drawn from Muennighoff et al.'s
  fitted law (2023, "Scaling Data-Constrained Language Models": base E 1.87, A 521, B 1488, alpha = beta = 0.353;
  R_D* 15.4, R_N* 5.3) times log-normal noise of 1%;
- `harness-report results/demo` (the committed study: every approach, intervals, held-out comparison, figures).

    taskset -c 0,1 .venv/bin/python -m tests.bench.fit_tables      # about two minutes on 2 cores
Writes results/fit_speed/speed.json and speed.md (or --out).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness.analysis import markdown_table
from harness.fit import DataConstrainedFit, ParametricFit

ROOT = Path(__file__).resolve().parent.parent.parent
CHINCHILLA = ROOT.parent / "shared" / "data" / "chinchilla" / "svg_extracted_data.csv"
BIN = Path(sys.executable).parent
# What the issue measured before this work, on the same 2-core machine (issue 28).
BEFORE = {"epoch": "258 s", "epoch --quick": "", "unique tokens": "killed at 15 min", "report results/demo": "3.5 min"}


def unique_tokens_table(seed: int = 0) -> pd.DataFrame:
    base = ParametricFit(E=1.87, A=521.0, B=1488.0, alpha=0.353, beta=0.353, objective=0.0, n_points=0)
    truth = DataConstrainedFit(base=base, R_D_star=15.4, R_N_star=5.3, objective=0.0, n_points=0)
    sizes = np.geomspace(1e7, 9e9, 10)
    rows = [(n, d, d) for n in sizes for d in np.geomspace(1e9, 1e11, 5)]
    rows += [(n, unique * epochs, unique) for unique in np.geomspace(1e8, 1e10, 6) for epochs in (2, 4, 10, 25)
             for n in sizes]
    rows += [(n, 60e8, 1e8) for n in sizes[:6]]
    N, D, U = map(np.array, zip(*rows))
    loss = truth.predict(N, D, U) * np.exp(np.random.default_rng(seed).normal(0, 0.01, len(N)))
    return pd.DataFrame({"N": N, "D": D, "U": U, "loss": loss})


def epoch_table() -> pd.DataFrame:
    df = pd.read_csv(CHINCHILLA)
    df = df[df["loss"] < df["loss"].nlargest(5).min()]   # Epoch: drop the 5 highest losses
    return pd.DataFrame({"N": df["Model Size"], "D": df["Training FLOP"] / (6 * df["Model Size"]), "loss": df["loss"]})


def timed(command: list[str], cwd: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    phases = [line for line in done.stderr.splitlines() if line.startswith(("fit ", "report "))]
    return {"command": " ".join(Path(c).name if i == 0 else c for i, c in enumerate(command)), "seconds": seconds,
            "phases": phases}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fit_speed")
    args = parser.parse_args(argv)
    runs, fits = {}, {}
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        if CHINCHILLA.exists():
            epoch_table().to_csv(work / "epoch.csv", index=False)
            runs["epoch"] = timed([str(BIN / "harness-fit"), "epoch.csv", "--out", "epoch"], work)
            runs["epoch --quick"] = timed([str(BIN / "harness-fit"), "epoch.csv", "--quick", "--out", "quick"], work)
        else:
            print(f"skipped Epoch's points: {CHINCHILLA} is absent")
        unique_tokens_table().to_csv(work / "unique.csv", index=False)
        runs["unique tokens"] = timed([str(BIN / "harness-fit"), "unique.csv", "--out", "unique"], work)
        fits = json.loads((work / "unique" / "fits.json").read_text())
        runs["report results/demo"] = timed([str(BIN / "harness-report"), str(ROOT / "results" / "demo"), "--out",
                                             str(work / "demo")], work)
    for name, run in runs.items():
        print(f"{name}: {run['seconds']:.1f} s", flush=True)
    constants = {key: {name: [fits[key][name], fits[key][f"{name}_interval"]] for name in ("R_D_star", "R_N_star")}
                 | {"rows": fits[key]["rows"]} for key in ("data_constrained", "data_constrained_two_step")}
    rows_of = {key: fits[key]["rows"] for key in ("parametric", "tied", "kaplan", "data_constrained")}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "speed.json").write_text(json.dumps({"cpus": os.cpu_count(), "runs": runs, "before": BEFORE,
                                                     "unique_tokens_fit": constants, "rows": rows_of}, indent=1))
    table = pd.DataFrame([{"table": name, "command": run["command"], "before": BEFORE[name],
                           "now": f"{run['seconds']:.1f} s"} for name, run in runs.items()])
    fitted = pd.DataFrame([{"fit": key, "rows": value["rows"],
                            **{name: f"{value[name][0]:.4g} [{value[name][1][0]:.4g}, {value[name][1][1]:.4g}]"
                               for name in ("R_D_star", "R_N_star")}} for key, value in constants.items()])
    phases = "\n\n".join(f"`{name}`:\n\n```\n" + "\n".join(run["phases"]) + "\n```" for name, run in runs.items())
    (args.out / "speed.md").write_text(
        "# `harness-fit` and `harness-report` on real-sized tables\n\n" + __doc__.split("\n\n")[1] + "\n\n"
        + f"End to end on {os.cpu_count()} CPUs, Python's imports included.\n\n" + markdown_table(table)
        + "\n\nThe unique-tokens table's repetition constants (truth: R_D* 15.4, R_N* 5.3; 95% intervals from 1000 "
        + f"resamples). The Chinchilla forms were fitted on its single-epoch rows alone ({rows_of}):\n\n"
        + markdown_table(fitted) + "\n\nPhases, as each run printed them:\n\n" + phases + "\n")


if __name__ == "__main__":
    main()
