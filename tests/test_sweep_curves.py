"""The report's curve-law section (harness.sweep_curves) on a sweep of known laws: each size's law found, a schedule
a size did not run filled in at its true final loss, the filled grid fitted as N-D points; and the one-line
answers when it does not apply."""
import json

import pandas as pd
import pytest

from harness import sweep_curves
from harness.fit.curves import CurveLawFit
from harness.records import load_results
from harness.report import build_report
from harness.schedules import Schedule

SIZES = (1e6, 4e6, 1.6e7)
# the largest size takes batches twice as large: a schedule it did not run is another size's stretched to its steps
TOKENS_PER_STEP = {1e6: 1000, 4e6: 1000, 1.6e7: 2000}
TOKENS = (2e5, 4e5, 8e5)
PEAK = 3e-4


def truth(N: float) -> CurveLawFit:
    """A multi-power law per size (Luo et al. 2025's shape at 25M), its floor falling with N as Chinchilla's does."""
    params = dict(L0=1.8 + 400 / N ** 0.34, A=0.525, alpha=0.508, B=363.8, C=2.066, beta=0.583, gamma=0.641)
    return CurveLawFit("multi_power", params, 0.0, [], 0, 0.999)


def schedule(name: str, steps: int) -> Schedule:
    return Schedule(name, PEAK, steps, max(1, steps // 20), 0.1 if name == "cosine" else 0.0,
                    round(steps * 0.2) if name == "wsd" else 0, "linear" if name == "wsd" else None)


def record(N: float, name: str, tokens: float, eval_points: int = 32, seed: int = 0) -> dict:
    s = schedule(name, int(tokens / TOKENS_PER_STEP[N]))
    steps = sorted({max(1, round(s.total_steps * (i + 1) / eval_points)) for i in range(eval_points)})
    loss = truth(N).predict(s.lr_per_step(), steps)
    return {"status": "ok", "config": {"seed": seed, "study": {"name": "none"}},
            "model_info": {"params_non_embedding": N, "family": "gpt"},
            "metrics": {"tokens": tokens, "val_loss": float(loss[-1])}, "schedule_info": s.info(),
            "curve": [{"step": step, "tokens": step * TOKENS_PER_STEP[N], "flops": 6 * N * step * TOKENS_PER_STEP[N],
                       "val_loss": float(value)} for step, value in zip(steps, loss)]}


def sweep(directory, missing=(), sizes=SIZES, **kw) -> pd.DataFrame:
    """A sweep's records written under `directory` (cosine and wsd at every size and token count but `missing`),
    read back as harness-report reads them."""
    for index, (N, name, D) in enumerate((N, name, D) for N in sizes for name in ("cosine", "wsd") for D in TOKENS):
        if (N, name, D) not in missing:
            (directory / str(index)).mkdir(parents=True)
            (directory / str(index) / "record.json").write_text(json.dumps(record(N, name, D, **kw)))
    return load_results(directory)


def test_a_schedule_a_size_did_not_run_is_filled_in_at_its_true_final_loss(tmp_path):
    gap = (SIZES[-1], "cosine", TOKENS[-1])
    text = sweep_curves.section(sweep(tmp_path / "runs", missing=[gap]), tmp_path)
    fits = json.loads((tmp_path / "curve_laws.json").read_text())
    # curves drawn from the multi-power law: it predicts each shape from the other, the annealing law cannot
    assert all(entry["better"] == "multi_power" for key, entry in fits.items() if key != "nd_fits")
    assert all(entry["mean_held_out"]["multi_power"] < 1e-3 for key, entry in fits.items() if key != "nd_fits")
    points = pd.read_csv(tmp_path / sweep_curves.POINTS_FILE)
    filled = points[points["source"] == "predicted"]
    assert len(filled) == 1 and (filled["N"].iloc[0], filled["shape"].iloc[0], filled["D"].iloc[0]) == gap
    steps = int(gap[2] / TOKENS_PER_STEP[gap[0]])
    exact = truth(gap[0]).predict(schedule("cosine", steps).lr_per_step(), [steps])
    assert filled["loss"].iloc[0] == pytest.approx(exact[0], rel=1e-3)
    assert filled["low"].iloc[0] <= filled["loss"].iloc[0] <= filled["high"].iloc[0]
    nd = {(row["schedule"], row["points"]): row["n"] for row in fits["nd_fits"]}
    assert nd == {("cosine", "measured"): 8, ("cosine", "measured and predicted"): 9,
                  ("wsd linear 20%", "measured"): 9}
    assert "Schedules a size did not run" in text and (tmp_path / "curve_laws.png").exists()


def test_too_few_points_per_curve_is_one_line_naming_the_setting(tmp_path):
    text = sweep_curves.section(sweep(tmp_path / "runs", eval_points=4), tmp_path)
    lines = [line for line in text.splitlines() if "not applicable" in line]
    assert len(lines) == len(SIZES)
    assert all("set task.eval_points to at least" in line for line in lines)
    assert not (tmp_path / "curve_laws.json").exists()


def test_a_sweep_of_one_schedule_shape_has_no_curve_law_section(tmp_path):
    cosine = sweep(tmp_path / "runs")
    cosine = cosine[cosine["schedule_info.name"] == "cosine"]
    assert sweep_curves.section(cosine, tmp_path) is None


def test_the_report_of_a_sweep_that_differs_in_schedule_holds_the_section(tmp_path):
    sweep(tmp_path / "runs", sizes=SIZES[:2], eval_points=4)    # two sizes: no N-D law is held out, so it is quick
    build_report([tmp_path / "runs"], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert sweep_curves.HEADING in text and "set task.eval_points to at least" in text
