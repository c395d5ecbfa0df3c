"""Learning-rate schedules against closed forms, and the schedule a training run records."""
import math

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from harness import cli, schedules
from harness.config import CONF_DIR


def task(**overrides):
    return OmegaConf.create({"lr": 1e-2, "warmup_fraction": 0.1, "min_lr_ratio": 0.1, "schedule": "cosine",
                             "decay_fraction": 0.2, "decay_shape": "sqrt", **overrides})


def hagele_wsd(total: int, warmup: int, fract_decay: float, final: float, shape: str) -> np.ndarray:
    """Hägele et al.'s wsd_schedule (epfml/schedules-and-scaling) after our warm-up, written over all steps at once."""
    steps = np.arange(total, dtype=float)
    n_decay = round(fract_decay * total)
    progress = np.clip((steps - (total - n_decay)) / n_decay, 0, None)
    shape_of = {"linear": 1 - progress, "sqrt": 1 - np.sqrt(progress), "cosine": 0.5 * (1 + np.cos(np.pi * progress))}
    factor = np.where(steps < total - n_decay, 1.0, final + (1 - final) * shape_of[shape])
    return np.where(steps < warmup, (steps + 1) / warmup, factor)


@pytest.mark.parametrize("shape", ["linear", "sqrt", "cosine"])
def test_wsd_holds_the_peak_then_decays_with_its_shape(shape):
    schedule = schedules.from_task(task(schedule="wsd", decay_shape=shape), 200)
    assert (schedule.warmup_steps, schedule.decay_steps, schedule.decay_start) == (20, 40, 160)
    lrs = np.array([schedule.lr(step) for step in range(200)])
    np.testing.assert_allclose(lrs, 1e-2 * hagele_wsd(200, 20, 0.2, 0.1, shape), rtol=1e-12)
    assert lrs[20:161].tolist() == [1e-2] * 141   # stable: exactly the peak until the decay starts
    # a quarter of the way into the decay, each shape's closed form
    expected = {"linear": 0.75, "sqrt": 0.5, "cosine": 0.5 * (1 + math.cos(math.pi / 4))}[shape]
    assert schedule.lr(170) == pytest.approx(1e-2 * (0.1 + 0.9 * expected), rel=1e-12)


def test_a_decay_rounds_to_its_nearest_step_as_hagele_et_al_do_and_never_enters_the_warm_up():
    run = schedules.from_task(task(schedule="wsd"), 33)   # 0.2 x 33 = 6.6 steps of decay: 7, as round() in their code
    assert (run.warmup_steps, run.decay_steps) == (3, 7)
    branch = schedules.cooldowns(schedules.from_task(task(schedule="wsd"), 100), [0.33], 0.2)[0].schedule
    assert (branch.total_steps, branch.warmup_steps, branch.decay_steps) == (33, 10, 7)   # the run's warm-up, its own decay
    squeezed = schedules.from_task(task(schedule="wsd", warmup_fraction=0.5, decay_fraction=0.9), 10)
    assert (squeezed.warmup_steps, squeezed.decay_steps) == (5, 5)


def test_cosine_and_constant_follow_their_closed_forms():
    cosine = schedules.from_task(task(), 100)
    assert [cosine.lr(s) for s in range(10)] == pytest.approx([1e-2 * (s + 1) / 10 for s in range(10)], rel=1e-12)
    assert cosine.lr(55) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5), rel=1e-12)   # halfway through the decay
    assert cosine.lr(99) == pytest.approx(1e-2 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 89 / 90))), rel=1e-12)
    constant = schedules.from_task(task(schedule="constant"), 100)
    assert [constant.lr(s) for s in range(10, 100)] == [1e-2] * 90 and constant.decay_start == 100


def test_a_wsd_run_records_its_schedule_and_each_curve_points_lr(tmp_path, tiny):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*tiny, "task.schedule=wsd", "task.decay_shape=linear", "task.eval_points=5",
                                           "data.tokens=2.56e4"])
    record = cli.run_point(cfg, tmp_path / "run", sweep_dir=tmp_path)
    assert record["status"] == "ok", record["error"]
    info = record["schedule_info"]   # 25600 tokens / (8 x 32) = 100 steps
    assert info == {"name": "wsd", "peak_lr": 2e-3, "total_steps": 100, "warmup_steps": 5, "min_lr_ratio": 0.1,
                    "decay_steps": 20, "decay_shape": "linear", "decay_start": 80}
    # each curve point's lr is the lr of the step that ended there: peak in the stable phase, then the decay's
    assert [p["step"] for p in record["curve"]] == [20, 40, 60, 80, 100]
    assert [p["lr"] for p in record["curve"]] == pytest.approx([2e-3] * 4 + [2e-3 * (0.1 + 0.9 * (1 - 19 / 20))],
                                                               rel=1e-12)
