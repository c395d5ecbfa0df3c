"""Resumable runs: a run killed mid-training continues from its last checkpoint and ends as an uninterrupted run."""

import pytest
import torch

from harness import checkpoint, records
from tests.conftest import harness_cmd, kill_when

# 400 steps of 8 x 32 tokens over a 5e4-token split: the run wraps into a third epoch, so the data order's
# state crosses epoch boundaries after the resume; dropout draws from torch's generator at every step.
LONG = ["data.train_tokens=5e4", "data.tokens=1.024e5", "task.eval_points=4", "task.checkpoint_every=50",
        "model.dropout=0.1"]


@pytest.mark.parametrize("family", ["gpt", "encdec", pytest.param("llama", marks=pytest.mark.slow)])
# encdec: span corruption draws from the examples' generator
def test_a_killed_run_continues_from_its_checkpoint_and_ends_bit_for_bit(tmp_path, tiny, family):
    tiny = [f"model={family}", *tiny]
    whole = harness_cmd(*tiny, *LONG, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    saved = checkpoint.path(tmp_path / "killed")
    kill_when(*tiny, *LONG, "hydra.run.dir=killed", cwd=tmp_path, ready=saved.exists)
    assert saved.exists() and not (tmp_path / "killed" / records.RECORD_NAME).exists(), "killed before its first save"
    step = torch.load(saved, weights_only=False)["step"]

    again = harness_cmd(*tiny, *LONG, "hydra.run.dir=killed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first = records.read_record(tmp_path / "whole" / records.RECORD_NAME)
    resumed = records.read_record(tmp_path / "killed" / records.RECORD_NAME)
    assert 0 < resumed["metrics"]["resumed_from_step"] == step < 400
    assert resumed["curve"] == first["curve"]   # every point: train and validation losses, bit for bit
    assert resumed["metrics"]["val_loss"] == first["metrics"]["val_loss"]
    assert not saved.exists() and not checkpoint.path(tmp_path / "whole").exists()   # removed once the run is ok


MULTI_RANK = ["data=markov", "data.train_tokens=3e4", "data.val_tokens=2e4", "data.tokens=1.024e5", "model.n_layer=2",
              "model.d_model=32", "model.n_head=2", "model.seq_len=32", "task.batch_size=8", "task.eval_points=4",
              "task.eval_tokens=2048", "task.checkpoint_every=50", "progress=off"]


@pytest.mark.parametrize("strategy", ["ddp", *[pytest.param(s, marks=pytest.mark.slow)
                                               for s in ("zero1", "fsdp_zero2", "fsdp_zero3", "tp", "pp")]])
def test_a_killed_multi_rank_run_continues_from_every_ranks_part_bit_for_bit(tmp_path, strategy):
    # Two gloo ranks, each saving its own part (a shard under FSDP and TP, its partition's optimizer under ZeRO,
    # its pipeline stage), the whole process group killed once a checkpoint is complete.
    run = [*MULTI_RANK, f"parallel={strategy}"]
    whole = harness_cmd(*run, "hydra.run.dir=whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    manifest = checkpoint.path(tmp_path / "killed")
    kill_when(*run, "hydra.run.dir=killed", cwd=tmp_path, ready=manifest.exists)
    assert manifest.exists() and not (tmp_path / "killed" / records.RECORD_NAME).exists(), "killed before its first save"
    step = torch.load(manifest, weights_only=False)["step"]

    again = harness_cmd(*run, "hydra.run.dir=killed", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    first = records.read_record(tmp_path / "whole" / records.RECORD_NAME)
    resumed = records.read_record(tmp_path / "killed" / records.RECORD_NAME)
    assert 0 < resumed["metrics"]["resumed_from_step"] == step < 400
    assert resumed["curve"] == first["curve"] and resumed["metrics"]["val_loss"] == first["metrics"]["val_loss"]
    assert not list((tmp_path / "killed").glob("checkpoint*")) and not list((tmp_path / "whole").glob("checkpoint*"))


def test_a_checkpoint_of_another_config_or_unreadable_is_not_resumed(tmp_path):
    checkpoint.save(tmp_path, "abc", {"step": 7})
    assert checkpoint.load(tmp_path, "abc")["step"] == 7
    assert checkpoint.load(tmp_path, "other") is None
    checkpoint.path(tmp_path).write_bytes(b"not a checkpoint")
    assert checkpoint.load(tmp_path, "abc") is None


def test_keep_checkpoints_keeps_the_last_one(tmp_path, tiny):
    result = harness_cmd(*tiny, "task.checkpoint_every=20", "task.keep_checkpoints=true", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    kept = torch.load(checkpoint.path(tmp_path / "run"), weights_only=False)
    assert kept["step"] == 60 and len(kept["curve"]) == 1   # 2e4 tokens = 78 steps: saved at 20, 40, 60
