"""Cooldown branches: one wsd run gives a converged point at each branch, each a record of its own, and a branch
ends exactly where a run trained on that schedule alone ends."""
import os
import signal
import subprocess
import sys
import time

import pytest

from harness import load_results, records
from tests.conftest import TIMEOUT_S, harness_cmd, kill_when

# 400 steps of 8 x 32 tokens; branches at 100 and 200 steps leave the run at steps 80 and 160.
TRUNK = ["data.tokens=1.024e5", "task.eval_points=4", "task.schedule=wsd", "task.cooldowns=[0.25,0.5]"]


def test_each_branch_is_a_record_that_ends_where_its_schedule_run_alone_ends(tmp_path, tiny):
    result = harness_cmd(*tiny, *TRUNK, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "run").sort_values("metrics.tokens")
    trunk = df.iloc[-1]
    assert list(df["metrics.tokens"]) == [25600, 51200, 102400] and list(df["status"]) == ["ok"] * 3
    assert list(df["cooldown.fraction"].iloc[:2]) == [0.25, 0.5] and list(df["cooldown.start_step"].iloc[:2]) == [80, 160]
    assert (df["cooldown.from"].iloc[:2] == trunk["config_hash"]).all()
    per_token = trunk["model_info.flops_per_token_causal"]
    assert list(df["metrics.flops"]) == [tokens * per_token for tokens in (25600, 51200, 102400)]
    # what each job computed: a branch from where it left the run (20 and 40 steps), the run all of its own
    assert list(df["metrics.flops_spent"]) == [20 * 256 * per_token, 40 * 256 * per_token, 102400 * per_token]
    assert not list((tmp_path / "run").rglob(records.CHECKPOINT_NAME))   # removed once every record is ok

    # The same schedule trained alone: 100 steps, 20 of warm-up (the run's), 20 of decay from step 80.
    alone = harness_cmd(*tiny, "data.tokens=2.56e4", "task.eval_points=4", "task.schedule=wsd",
                        "task.warmup_fraction=0.2", "hydra.run.dir=alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    single = records.read_record(tmp_path / "alone" / records.RECORD_NAME)
    branch = records.read_record(df["path"].iloc[0])
    assert branch["schedule_info"] == single["schedule_info"]
    assert branch["metrics"]["val_loss"] == single["metrics"]["val_loss"]   # bit for bit
    last = ("step", "tokens", "flops", "val_loss", "lr")   # train_loss averages since each run's previous evaluation
    assert [branch["curve"][-1][k] for k in last] == [single["curve"][-1][k] for k in last]


# 0: the run trains again from step 0, past the recorded branch's start (slow: 50 resumes the same way)
@pytest.mark.parametrize("every", [50, pytest.param(0, marks=pytest.mark.slow)])
def test_a_killed_branch_continues_from_where_it_left_the_run(tmp_path, tiny, every):
    run = [*tiny, *TRUNK, f"task.checkpoint_every={every}"]
    whole = harness_cmd(*run, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    job = subprocess.Popen([sys.executable, "-m", "harness", *run, "hydra.run.dir=killed"], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT_S
    for line in job.stdout:   # the run has ended and its second branch has begun
        if "cooldown-0.5 from step 160" in line or time.monotonic() > deadline:
            break
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert not (tmp_path / "killed" / records.RECORD_NAME).exists(), "the run finished before the kill"

    again = harness_cmd(*run, "hydra.run.dir=killed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "cooldown-0.25 from" not in again.stderr + again.stdout   # recorded before the kill: not trained again
    first, resumed = (load_results(tmp_path / name).sort_values("metrics.tokens") for name in ("whole", "killed"))
    assert list(resumed["metrics.val_loss"]) == list(first["metrics.val_loss"])   # bit for bit, all three
    if every:
        assert resumed["metrics.resumed_from_step"].iloc[-1] == 350   # the run's last checkpoint, not step 0
    assert not list((tmp_path / "killed").rglob(records.CHECKPOINT_NAME))   # none left behind, a skipped branch's too


@pytest.mark.slow   # ranks resuming their parts: test_checkpoint's killed multi-rank run, in the fast suite
def test_a_killed_multi_rank_run_trains_its_unrecorded_branches_on_its_ranks(tmp_path, tiny):
    # Two gloo ranks: the run saves each branch's start as every rank's part, and rank 0 records each branch.
    run = [*tiny, *TRUNK, "parallel=ddp"]
    whole = harness_cmd(*run, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    # killed once the first branch is recorded: the second is training
    kill_when(*run, "hydra.run.dir=killed", cwd=tmp_path, ready=lambda: any((tmp_path / "killed").glob("*/record.json")))
    assert not (tmp_path / "killed" / records.RECORD_NAME).exists(), "the run finished before the kill"

    again = harness_cmd(*run, "hydra.run.dir=killed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first, resumed = (load_results(tmp_path / name).sort_values("metrics.tokens") for name in ("whole", "killed"))
    assert list(resumed["cooldown.fraction"].iloc[:2]) == [0.25, 0.5] and list(resumed["status"]) == ["ok"] * 3
    assert list(resumed["metrics.val_loss"]) == list(first["metrics.val_loss"])   # bit for bit, all three
    assert (resumed["parallel_info.world_size"] == 2).all()
    assert not list((tmp_path / "killed").rglob("checkpoint*"))


def test_a_budgeted_runs_branches_take_their_fraction_of_its_budget():
    from harness import schedules
    from harness.records import cooldown_config
    trunk = schedules.Schedule("wsd", 1e-3, 400, 20, 0.1, 80, "sqrt")
    branch = schedules.cooldowns(trunk, [0.25], 0.2)[0]
    run = {"compute": 6.4e11, "data": {"tokens": 1e6}, "task": {"cooldowns": [0.25]}}
    branched, _ = cooldown_config(run, branch, 256)
    assert branched["compute"] == 1.6e11 and branched["data"]["tokens"] == 100 * 256   # an IsoFLOP point at C/4
    assert cooldown_config({**run, "compute": None}, branch, 256)[0]["compute"] is None


def test_the_study_sets_each_difference_beside_the_pooled_seed_spread():
    import pandas as pd

    from studies import wsd_vs_cosine
    rows = [{"status": "ok", "task.schedule": schedule, "model_info.params_non_embedding": 100, "metrics.tokens": 1000,
             "metrics.val_loss": loss, "metrics.flops_spent": spent}
            for schedule, losses, spent in (("cosine", (2.0, 2.2), 10.0), ("wsd", (1.9, 2.0), 4.0)) for loss in losses]
    table = wsd_vs_cosine.points(pd.DataFrame(rows))
    assert table.set_index("design")["flops_spent"].to_dict() == {"cosine": 20.0, "wsd": 8.0}
    compared = wsd_vs_cosine.comparison(table).iloc[0]
    # sample standard deviations 0.02**0.5 and 0.005**0.5, pooled: ((0.02 + 0.005) / 2)**0.5
    assert compared["difference"] == pytest.approx(1.95 - 2.1)
    assert compared["seed_std"] == pytest.approx(0.0125**0.5)
    assert compared["difference_in_seed_stds"] == pytest.approx(-0.15 / 0.0125**0.5)
