"""The `harness` command as users run it: one record per run, one-line errors, sweeps that survive failures."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from harness import load_results
from tests.conftest import TIMEOUT_S, harness_cmd


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


@pytest.mark.slow
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


# Every check is in tests/test_config.py (in-process); these show the command's behaviour: one line, exit 2, no record.
BAD = [
    (["model.n_head=3"], "model.n_head=3 does not divide model.d_model=32"),
    (["attention=flashy"], "attention='flashy' is not a known attention"),
    (["model.seq_len=4096", "data.val_tokens=1000"], "model.seq_len=4096 is longer than the validation split"),
    (["data.tokens=100"], "less than one batch"),
    (["data=text", "data.paths=[nowhere/*.txt]"], "data.paths: no file matches 'nowhere/*.txt'"),
    (["data=tokens", "data.train_path=missing.bin", "data.vocab_size=50"], "data.train_path='missing.bin': no such token file"),
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

    # What the harness maps on import (a CUDA build of torch maps several GB of libraries) plus 3 GB: enough for
    # a small run, not for a d_model=16384 layer (3 GB of QKV alone).
    probe = "import re, harness.cli; print(re.search(r'VmPeak:\\s+(\\d+) kB', open('/proc/self/status').read())[1])"
    imported = int(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout) * 1024
    cap = imported + 3 * 2**30

    def cap_memory():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    command = [sys.executable, "-m", "harness", "-m", *tiny, "model.d_model=16384,32", "hydra.sweep.dir=sweep"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S, preexec_fn=cap_memory)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").sort_values("model.d_model")
    assert list(df["status"]) == ["ok", "oom"] and "allocate" in df["error"].iloc[1]


@pytest.mark.slow
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
    deadline = time.time() + TIMEOUT_S
    while len(list((tmp_path / "sweep").rglob("record.json"))) < 1 and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next job's training
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list((tmp_path / "sweep").rglob("record.json")))
    assert 1 <= done_before < 4
    rerun = subprocess.run(sweep, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert rerun.returncode == 0, rerun.stderr
    assert (rerun.stdout + rerun.stderr).count("skip: this point finished ok") == done_before
    df = load_results(tmp_path / "sweep")
    assert len(df) == 4 and set(df["status"]) == {"ok"} and df["config_hash"].is_unique
    assert sorted(df["model.d_model"]) == [16, 24, 32, 40]
    assert not list((tmp_path / "sweep").rglob("*.tmp"))


def snapshot(directory: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in directory.rglob("record.json")}


@pytest.mark.parametrize("launcher", ["basic", pytest.param("joblib", marks=pytest.mark.slow)])
def test_growing_a_sweep_runs_only_the_new_point_and_touches_no_other_record(tmp_path, tiny, launcher):
    sweep = ["-m", f"hydra/launcher={launcher}", *tiny, "hydra.sweep.dir=sweep"]
    assert harness_cmd(*sweep, "model.d_model=32,64", cwd=tmp_path).returncode == 0
    before = snapshot(tmp_path / "sweep")
    grown = harness_cmd(*sweep, "model.d_model=16,64,32", cwd=tmp_path)  # a value added in front, the rest reordered
    assert grown.returncode == 0, grown.stderr
    assert (grown.stdout + grown.stderr).count("skip: this point finished ok") == 2
    after = snapshot(tmp_path / "sweep")
    assert all(after[path] == before[path] for path in before)
    df = load_results(tmp_path / "sweep")
    assert sorted(df["model.d_model"]) == [16, 32, 64] and set(df["status"]) == {"ok"} and df["config_hash"].is_unique
    assert all(Path(path).parent.name == digest for path, digest in zip(df["path"], df["config_hash"]))


def test_a_corrupt_record_makes_its_point_run_again(tmp_path, tiny):
    sweep = ["-m", *tiny, "model.d_model=16,32", "hydra.sweep.dir=sweep"]
    assert harness_cmd(*sweep, cwd=tmp_path).returncode == 0
    broken = sorted((tmp_path / "sweep").rglob("record.json"))[0]
    broken.write_text(broken.read_text()[:100])  # as a disk that lost the end of the file would leave it
    again = harness_cmd(*sweep, cwd=tmp_path)
    assert again.returncode == 0 and (again.stdout + again.stderr).count("skip: this point finished ok") == 1
    df = load_results(tmp_path / "sweep")
    assert len(df) == 2 and set(df["status"]) == {"ok"} and json.loads(broken.read_text())["status"] == "ok"


def test_a_bad_data_setting_stops_a_sweep_before_its_first_job(tmp_path, tiny):
    result = harness_cmd("-m", *tiny, "data.tokens=2e4,100", "hydra.sweep.dir=sweep", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: sweep point") and "data.tokens: 100 training tokens is less than one batch" in lines[0]
    assert not list(tmp_path.rglob("record.json"))


def test_each_job_starts_from_the_process_state_whatever_the_job_before_left(tmp_path, tiny):
    # A basic-launcher sweep runs every job in one process: here the state a tf32 job (precision.prepare) and a
    # CPU training job (deterministic algorithms) leave behind, then an fp32 job on a thread count other than the
    # process's (make test runs on one thread).
    import torch
    from hydra import compose, initialize_config_dir

    from harness import cli, precision
    from harness.config import CONF_DIR
    threads = 2 if torch.get_num_threads() == 1 else 1
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*tiny, f"threads={threads}"])
    starting = (torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(), torch.get_num_threads())
    precision.prepare(torch.nn.Linear(2, 2), "tf32")
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    try:
        record = cli.run_point(cfg, tmp_path / "run", sweep_dir=tmp_path)
        assert record["status"] == "ok" and record["precision_info"]["matmul_precision"] == "highest"
        assert record["env"]["torch_threads"] == threads
        assert (torch.get_float32_matmul_precision(), torch.are_deterministic_algorithms_enabled(),
                torch.get_num_threads()) == starting
        assert torch.backends.cudnn.benchmark is False
    finally:
        torch.set_float32_matmul_precision(starting[0])
        torch.use_deterministic_algorithms(starting[1])
        torch.backends.cudnn.benchmark = False


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_an_fp32_job_after_a_tf32_job_in_one_sweep_runs_in_full_fp32(tmp_path, tiny):
    result = harness_cmd("-m", *tiny, "device=cuda", "precision=tf32,fp32", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").set_index("precision.name")
    assert df.loc["tf32", "precision_info.matmul_precision"] == "high"
    assert df.loc["fp32", "precision_info.matmul_precision"] == "highest"


@pytest.mark.slow   # the fast suite sweeps through submitit_local in test_tracking and resumes in the growing-sweep test
def test_the_cluster_path_runs_and_resumes_through_submitit(tmp_path, tiny):
    # submitit's local executor: the SLURM launcher's plugin, job pickling and result collection, on this machine
    sweep = ["-m", "hydra/launcher=submitit_local", *tiny, "hydra.sweep.dir=sweep"]
    first = harness_cmd(*sweep, "model.d_model=16,32", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    before = snapshot(tmp_path / "sweep")
    again = harness_cmd(*sweep, "model.d_model=16,32,48", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    after = snapshot(tmp_path / "sweep")
    assert len(before) == 2 and all(after[path] == before[path] for path in before)
    df = load_results(tmp_path / "sweep")
    assert sorted(df["model.d_model"]) == [16, 32, 48] and set(df["status"]) == {"ok"}


def test_a_slurm_sweep_is_checked_against_the_nodes_it_asks_for_not_this_machine(tmp_path, tiny):
    # 4 GPUs per node: tensor parallelism over 4 ranks cannot split 2 heads, which 2 CPU ranks here could
    point = [*tiny, "parallel=tp", "model.n_head=2"]
    slurm = ["hydra/launcher=submitit_slurm", "hydra.launcher.gpus_per_node=4"]
    result = harness_cmd("-m", *slurm, *point, "task.batch_size=8,16", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 2 and "tensor-parallel degree 4 does not divide model.n_head=2" in result.stderr
    assert not (tmp_path / "sweep" / ".submitit").exists()  # nothing was submitted

    from omegaconf import OmegaConf

    from harness.distributed import Machine
    from hydra_plugins.harness_sweeper.validating_sweeper import launcher_machine
    target = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher_machine(OmegaConf.create({"_target_": target, "gpus_per_node": 4})) == Machine(gpus=4, tasks=1)
    assert launcher_machine(OmegaConf.create({"_target_": target, "gres": "gpu:a100:8", "nodes": 2,
                                              "tasks_per_node": 8})) == Machine(gpus=8, tasks=16)
    assert launcher_machine(OmegaConf.create({"_target_": target, "gpus_per_node": None})) == Machine(gpus=0, tasks=1)
    assert launcher_machine(OmegaConf.create({"_target_": "hydra._internal.core_plugins.basic_launcher.BasicLauncher"})) is None


def test_a_joblib_sweep_of_zero_jobs_is_one_line_before_any_job():
    from omegaconf import OmegaConf

    from hydra_plugins.harness_sweeper.validating_sweeper import launcher_problem
    joblib = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert launcher_problem(OmegaConf.create({"_target_": joblib, "n_jobs": 0})) == (
        "hydra.launcher.n_jobs=0: how many jobs joblib runs at once (a positive number; -1 every core)")
    assert launcher_problem(OmegaConf.create({"_target_": joblib, "n_jobs": -1})) is None


def test_slurm_preset_composes_against_the_submitit_plugin(tmp_path):
    result = harness_cmd("hydra/launcher=submitit_slurm", "--cfg", "hydra", "--package", "hydra.launcher", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "SlurmLauncher" in result.stdout and "timeout_min: 60" in result.stdout
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher  # noqa: F401


# --- the documented happy paths -------------------------------------------------------------------------------

def test_a_compute_budget_sets_the_tokens(tmp_path, tiny):
    tiny = [o for o in tiny if not o.startswith("data.tokens")]
    result = harness_cmd(*tiny, "compute=3e10", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = only_record(tmp_path / "run")
    per_token = record["model_info"]["flops_per_token_causal"]
    assert record["metrics"]["tokens_requested"] == pytest.approx(3e10 / per_token)
    # whole steps of 8 x 32 tokens: the FLOPs spent are the budget to within half a step
    assert abs(record["metrics"]["flops"] - 3e10) <= 0.5 * 8 * 32 * per_token


def test_a_parameter_target_picks_the_shape(tmp_path, tiny):
    tiny = [o for o in tiny if not o.startswith(("model.n_layer", "model.d_model", "model.n_head"))]
    result = harness_cmd(*tiny, "model.params=2e4", "model.head_dim=8", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = only_record(tmp_path / "run")["model_info"]
    assert abs(info["params_non_embedding"] / 2e4 - 1) <= 0.10 and info["head_dim"] == 8


def test_text_files_and_token_files_train(tmp_path, tiny):
    model = [o for o in tiny if not o.startswith("data")]
    (tmp_path / "notes").mkdir()
    for i in range(4):
        (tmp_path / "notes" / f"{i}.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200 + str(i))
    text = harness_cmd(*model, "data=text", "data.paths=[notes/*.txt]", "data.tokens=1e4", "hydra.run.dir=text", cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    record = only_record(tmp_path / "text")
    assert record["data_info"]["files"] == 4 and record["data_info"]["vocab_size"] == 256
    assert record["metrics"]["val_bpb"] == pytest.approx(record["metrics"]["val_loss"] / np.log(2))
    rng = np.random.default_rng(0)
    rng.integers(0, 50, 30_000).astype(np.uint16).tofile(tmp_path / "train.bin")
    rng.integers(0, 50, 5_000).astype(np.uint16).tofile(tmp_path / "val.bin")
    tokens = harness_cmd(*model, "data=tokens", "data.train_path=train.bin", "data.val_path=val.bin", "data.dtype=uint16",
                         "data.vocab_size=50", "data.tokens=1e4", "hydra.run.dir=tokens", cwd=tmp_path)
    assert tokens.returncode == 0, tokens.stderr
    record = only_record(tmp_path / "tokens")
    assert (record["data_info"]["train_tokens"], record["data_info"]["val_tokens"], record["model_info"]["vocab_size"]) == (30_000, 5_000, 50)
    assert record["metrics"]["val_loss"] == pytest.approx(np.log(50), rel=0.05)  # uniform random tokens: log V


def test_saved_weights_decode_in_the_inference_task(tmp_path, tiny):
    trained = harness_cmd(*tiny, "task.save_model=true", "hydra.run.dir=run", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    record = only_record(tmp_path / "run")
    assert record["model_file"] == "model.pt" and (tmp_path / "run" / "model.pt").is_file()
    inference = [o for o in tiny if not o.startswith(("task.", "data.tokens"))]
    decoded = harness_cmd(*inference, "task=inference", "task.checkpoint=run/model.pt", "task.context=16", "task.new_tokens=8",
                          "task.eval_tokens=2048", "task.recompute=false", "hydra.run.dir=decode", cwd=tmp_path)
    assert decoded.returncode == 0, decoded.stderr
    result = only_record(tmp_path / "decode")
    assert result["model_info"]["weights_source"] == "run/model.pt"
    # the same weights on the same validation windows: the training run's final loss
    assert result["metrics"]["val_loss"] == pytest.approx(record["metrics"]["val_loss"], rel=1e-5)
    # another model's weights, or a file that is no torch save: one line each, no record
    wider = [o for o in inference if not o.startswith("model.d_model")] + ["model.d_model=64"]
    for overrides, message in ((wider + ["task.checkpoint=run/model.pt"], "error: task.checkpoint='run/model.pt' holds "
                                "no weights of this model: Error(s) in loading state_dict for GPT: size mismatch for "),
                               (inference + ["task.checkpoint=run/record.json"], "error: task.checkpoint='run/record.json' "
                                "is not a file torch.save wrote (task=train task.save_model=true writes model.pt)")):
        refused = harness_cmd(*overrides, "task=inference", "task.context=16", "task.new_tokens=8", "hydra.run.dir=bad",
                              cwd=tmp_path)
        assert refused.returncode == 2 and refused.stderr.strip().startswith(message), refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1 and not (tmp_path / "bad" / "record.json").exists()


def test_progress_is_a_bar_on_a_terminal_and_lines_otherwise(tmp_path, tiny):
    import fcntl
    import pty
    import struct
    import termios
    tiny = [o for o in tiny if not o.startswith("progress")]
    parent, child = pty.openpty()
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal of 24 x 100 characters
    proc = subprocess.Popen([sys.executable, "-m", "harness", *tiny, "progress=auto", "hydra.run.dir=bar"], cwd=tmp_path,
                            stdin=child, stdout=child, stderr=child, close_fds=True)
    os.close(child)
    chunks = []
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=TIMEOUT_S) == 0
    screen = b"".join(chunks).decode(errors="replace")
    assert "train:" in screen and "tok/s" in screen and "\r" in screen  # tqdm redraws its bar in place
    lines = harness_cmd(*tiny, "progress=lines", "hydra.run.dir=lines", cwd=tmp_path)
    assert lines.returncode == 0 and "train 100.0% 19,968/19,968 tokens" in lines.stdout + lines.stderr
    assert "\r" not in lines.stderr


def test_harness_report_takes_globs_and_a_study(tmp_path):
    results = Path(__file__).resolve().parent.parent / "results"
    result = subprocess.run([sys.executable, "-m", "harness.report", str(results / "inference*"), "--out", str(tmp_path / "both"),
                             "--study", "inference"], capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(tmp_path / "both" / "results.csv")
    assert len(table) == 50 and set(table["model.family"]) == {"gpt", "encdec", "llama"}  # every committed inference sweep
    assert (tmp_path / "both" / "report.md").read_text().startswith("# Report: inference")


def test_the_documented_error_lines_are_what_the_harness_says(tmp_path):
    page = (Path(__file__).resolve().parent.parent / "docs" / "config.md").read_text()
    block = page.split("**Bad input**")[1].split("```text")[1].split("```")[0]
    shown = re.findall(r"\$ \.venv/bin/harness (.*)\n(error: .*)", block)
    assert len(shown) >= 2
    for args, said in shown:
        result = harness_cmd(*args.split(), cwd=tmp_path)
        assert result.returncode == 2 and result.stderr.strip() == said, (args, result.stderr)
