"""The `harness` command as users run it: one record per run, one-line errors, sweeps that survive failures."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import load_results
from tests.conftest import harness_cmd


def only_record(directory: Path) -> dict:
    found = list(directory.rglob("record.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())


def test_help_lists_the_config_groups(tmp_path):
    out = harness_cmd("--help", cwd=tmp_path).stdout
    for group in ("task:", "model:", "data:", "attention:", "precision:", "parallel:", "study:"):
        assert group in out


def test_cfg_job_prints_the_resolved_config(tmp_path):
    out = harness_cmd("--cfg", "job", "model.d_model=96", cwd=tmp_path).stdout
    assert "d_model: 96" in out and "name: stdlib" in out


def test_train_writes_one_complete_record(tmp_path, tiny):
    result = harness_cmd(*tiny, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = only_record(tmp_path / "run")
    assert record["status"] == "ok" and len(record["config_hash"]) == 16
    m = record["metrics"]
    # D is rounded to whole optimizer steps of 8 x 32 tokens; the request is kept beside it.
    assert m["tokens_requested"] == 2e4 and abs(m["tokens"] - 2e4) <= 8 * 32 / 2 and m["tokens"] % (8 * 32) == 0
    assert m["val_loss"] > 0 and m["tokens_per_s"] > 0 and m["peak_memory_bytes"] > 0
    assert m["flops"] == pytest.approx(m["tokens"] * record["model_info"]["flops_per_token_causal"])
    assert m["flops_6nd"] == pytest.approx(6 * record["model_info"]["params_non_embedding"] * m["tokens"])
    assert [p["step"] for p in record["curve"]] == [m["steps"] // 2, m["steps"]]
    assert record["data_info"]["entropy_rate"] > 0
    for key in ("harness_version", "torch", "device_name", "cpu_count", "hostname"):
        assert record["env"][key]
    assert record["start_time"] <= record["end_time"]


def test_same_config_same_loss_curve_bit_for_bit(tmp_path, tiny):
    for run in ("a", "b"):
        assert harness_cmd(*tiny, f"hydra.run.dir={run}", cwd=tmp_path).returncode == 0
    a, b = only_record(tmp_path / "a"), only_record(tmp_path / "b")
    assert a["curve"] and [p["val_loss"] for p in a["curve"]] == [p["val_loss"] for p in b["curve"]]
    assert [p["train_loss"] for p in a["curve"]] == [p["train_loss"] for p in b["curve"]]


def test_tokens_past_the_split_wrap_into_epochs(tmp_path, tiny):
    result = harness_cmd(*tiny, "data.train_tokens=5000", "data.tokens=2e4", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert only_record(tmp_path / "run")["metrics"]["epochs"] > 3


BAD = [
    (["model.n_head=3"], "model.n_head=3 does not divide model.d_model=32"),
    (["model.n_head=null", "model.head_dim=12"], "model.head_dim=12 does not divide model.d_model=32"),
    (["model.seq_len=0"], "model.seq_len=0 must be a positive integer"),
    (["data.tokens=-5"], "data.tokens=-5"),
    (["model.d_model=-32"], "model.d_model=-32 must be a positive integer"),
    (["attention=flashy"], "attention='flashy' is not a known attention"),
    (["precision=fp7"], "precision='fp7' is not a known precision"),
    (["parallel=ring"], "parallel='ring' is not a known parallel"),
    (["data=web"], "data='web' is not a known data"),
    (["attention.name=flashy"], "attention.name='flashy'"),
    (["model.seq_len=4096", "data.val_tokens=1000"], "model.seq_len=4096 is longer than the validation split"),
    (["data.tokens=100"], "less than one batch"),
    (["data=text", "data.paths=[nowhere/*.txt]"], "data.paths: no file matches 'nowhere/*.txt'"),
    (["data=tokens", "data.train_path=missing.bin", "data.vocab_size=50"], "data.train_path='missing.bin': no such token file"),
    (["model.params=10"], "model.params=10"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[o[0] for o, _ in BAD])
def test_bad_config_fails_before_any_work_with_one_line(tmp_path, tiny, overrides, message):
    if overrides[0].startswith("data="):  # another data source: drop the markov source's own keys
        tiny = [o for o in tiny if not o.startswith(("data=", "data.train_tokens", "data.val_tokens"))]
    result = harness_cmd(*tiny, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not list(tmp_path.rglob("record.json"))


def test_without_n_head_the_heads_are_head_dim_wide(tmp_path, tiny):
    result = harness_cmd(*tiny, "model.n_head=null", "model.head_dim=8", "data.tokens=2e4", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = only_record(tmp_path / "run")["model_info"]
    assert (info["d_model"], info["n_head"], info["head_dim"]) == (32, 4, 8)


def test_bad_sweep_point_is_caught_before_the_first_job(tmp_path, tiny):
    result = harness_cmd("-m", *tiny, "model.n_head=2,3", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 2 and "model.n_head=3 does not divide" in result.stderr
    assert not list(tmp_path.rglob("record.json"))


def test_failing_points_are_records_and_the_sweep_goes_on(tmp_path, tiny):
    result = harness_cmd("-m", *tiny, "task.lr=1e-3,1e9", "task.grad_clip=0", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").sort_values("task.lr")
    assert list(df["status"]) == ["ok", "diverged"]
    assert "loss became" in df["error"].iloc[1]
    assert (tmp_path / "sweep" / "report" / "results.parquet").exists()


def test_unsupported_device_is_a_record(tmp_path, tiny):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = harness_cmd("-m", *tiny, "device=cpu,cuda", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").sort_values("device")
    assert list(df["status"]) == ["ok", "unsupported"] and "CUDA is not available" in df["error"].iloc[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses RLIMIT_AS to cap memory")
def test_out_of_memory_is_a_record_and_the_sweep_goes_on(tmp_path, tiny):
    import resource

    def cap_memory():  # 3 GB of address space: enough for torch, not for a d_model=16384 layer (3 GB of QKV alone)
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    command = [sys.executable, "-m", "harness", "-m", *tiny, "model.d_model=16384,32", "hydra.sweep.dir=sweep"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300, preexec_fn=cap_memory)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").sort_values("model.d_model")
    assert list(df["status"]) == ["ok", "oom"] and "allocate" in df["error"].iloc[1]


def test_rerun_skips_points_already_ok(tmp_path, tiny):
    sweep = ["-m", *tiny, "model.d_model=16,32", "hydra.sweep.dir=sweep"]
    assert harness_cmd(*sweep, cwd=tmp_path).returncode == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").rglob("record.json")}
    again = harness_cmd(*sweep, cwd=tmp_path)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("skip: this point finished ok") == 2
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "sweep").rglob("record.json")} == before
    forced = harness_cmd(*sweep, "resume=false", cwd=tmp_path)
    assert forced.returncode == 0 and "skip:" not in forced.stdout + forced.stderr


def test_sigkill_mid_sweep_then_rerun_finishes_with_no_duplicates(tmp_path, tiny):
    sweep = [sys.executable, "-m", "harness", "-m", *tiny, "data.tokens=1e5", "model.d_model=16,24,32,40",
             "hydra.sweep.dir=sweep"]
    proc = subprocess.Popen(sweep, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while len(list((tmp_path / "sweep").rglob("record.json"))) < 1 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next job's training
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((tmp_path / "sweep").rglob("record.json")))
    assert 1 <= done_before < 4
    rerun = subprocess.run(sweep, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (rerun.stdout + rerun.stderr).count("skip: this point finished ok") == done_before
    df = load_results(tmp_path / "sweep")
    assert len(df) == 4 and set(df["status"]) == {"ok"} and df["config_hash"].is_unique
    assert sorted(df["model.d_model"]) == [16, 24, 32, 40]
    assert not list((tmp_path / "sweep").rglob("*.tmp"))


def test_joblib_launcher_runs_each_point_in_its_own_process(tmp_path, tiny):
    result = harness_cmd("-m", "hydra/launcher=joblib", *tiny, "model.d_model=16,32", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep")
    assert sorted(df["model.d_model"]) == [16, 32] and set(df["status"]) == {"ok"}


def test_slurm_preset_composes_against_the_submitit_plugin(tmp_path):
    result = harness_cmd("hydra/launcher=submitit_slurm", "--cfg", "hydra", "--package", "hydra.launcher", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SlurmLauncher" in result.stdout and "timeout_min: 60" in result.stdout
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher  # noqa: F401
