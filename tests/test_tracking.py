"""Trackers (logger=mlflow, tensorboard, wandb): a sweep's records read back with each package's own reader."""
import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY, harness_cmd
from harness import report, tracking
from harness.config import validate
from harness.errors import ConfigError
from harness.records import RECORD_NAME, read_record

MISSING = [name for name in ("mlflow", "tensorboard", "wandb") if importlib.util.find_spec(name) is None]
needs_trackers = pytest.mark.skipif(bool(MISSING), reason=f"the tracking extra is not installed ({', '.join(MISSING)}): "
                                                          "pip install -e '.[tracking]'")
# one pytest-xdist worker runs the module, so its sweep fixture runs once (it ran on both: 24 s twice)
pytestmark = pytest.mark.xdist_group("tracking_sweep")
ALL = "logger=[mlflow,tensorboard,wandb]"
WIDTHS = "model.d_model=16,24"


def _records(sweep: Path) -> dict:
    """{record file: record} for the sweep's points."""
    return {path: read_record(path) for path in sorted(sweep.glob(f"*/{RECORD_NAME}"))}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Two points logged to all three trackers at once through the SLURM launcher's plugin on this machine
    (submitit_local): each job a process of its own, both at once, sharing the SQLite store."""
    cwd = tmp_path_factory.mktemp("tracked")
    if MISSING:
        pytest.skip(f"the tracking extra is not installed ({', '.join(MISSING)})")
    done = harness_cmd("-m", *TINY, WIDTHS, ALL, "hydra/launcher=submitit_local", "hydra.sweep.dir=sweep", cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "failed" not in done.stderr, done.stderr[-3000:]
    return cwd / "sweep"


def _mlflow_runs(sweep: Path, uri: str | None = None) -> tuple[dict, int]:
    """({model.d_model: (run, {metric: [(step, value)]})}, how many runs) from the sweep's store."""
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri or f"sqlite:///{sweep / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(sweep.name)
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.params["model.d_model"]: (run, {key: [(m.step, m.value) for m in client.get_metric_history(
        run.info.run_id, key)] for key in ("val_loss", "train_loss", "lr")}) for run in runs}, len(runs)


@needs_trackers
def test_mlflow_store_holds_one_run_per_point_with_its_curve(sweep):
    runs, count = _mlflow_runs(sweep)
    assert count == 2 and sorted(runs) == ["16", "24"]
    for path, record in _records(sweep).items():
        run, history = runs[str(record["config"]["model"]["d_model"])]
        assert run.info.status == "FINISHED" and run.data.tags["status"] == "ok"
        assert run.data.tags["record_path"] == str(path.resolve())
        assert run.info.run_name == f"sweep/{record['config_hash']}"
        assert run.data.params["task.lr"] == str(record["config"]["task"]["lr"])
        for key in ("val_loss", "train_loss", "lr"):
            assert sorted(history[key]) == [(p["step"], p[key]) for p in record["curve"]]
        assert run.data.metrics["metrics.val_loss"] == record["metrics"]["val_loss"]
        assert run.data.metrics["model_info.params_non_embedding"] == record["model_info"]["params_non_embedding"]


@needs_trackers
def test_tensorboard_events_beside_each_record_hold_the_curve(sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    for path, record in _records(sweep).items():
        events = EventAccumulator(str(path.parent))
        events.Reload()
        for key in ("val_loss", "train_loss", "lr", "tokens"):
            scalars = [(e.step, e.value) for e in events.Scalars(key)]
            assert [s for s, _ in scalars] == [p["step"] for p in record["curve"]]
            assert [v for _, v in scalars] == pytest.approx([p[key] for p in record["curve"]], rel=1e-6)  # float32
        assert events.Scalars("metrics.val_loss")[0].value == pytest.approx(record["metrics"]["val_loss"], rel=1e-6)


@needs_trackers
def test_wandb_offline_runs_hold_the_record(sweep):
    from tests.wandb_offline import read_run
    runs = {read_run(d)["run"]["name"]: read_run(d) for d in (sweep / "wandb").glob("offline-run-*")}
    assert len(runs) == 2
    for path, record in _records(sweep).items():
        run = runs[f"sweep/{record['config_hash']}"]
        assert run["run"]["group"] == "sweep" and run["run"]["job_type"] == "train" and run["run"]["project"] == "sweep"
        config = {k: v for k, v in run["config"].items() if k != "_wandb"}
        assert config == record["config"]
        summary = run["summary"]
        assert summary["status"] == "ok" and summary["record_path"] == str(path.resolve())
        for key, value in record["metrics"].items():
            if value is not None:
                assert summary[f"metrics.{key}"] == value, key
        assert [(h["_step"], h["val_loss"]) for h in run["history"]] == [(p["step"], p["val_loss"]) for p in record["curve"]]


@needs_trackers
def test_pushing_records_again_adds_nothing_and_a_copy_keeps_the_run_names(sweep, tmp_path, capsys):
    """harness-report --to on the sweep logged live: no new runs, no metric twice; on a copy of its records alone
    (as `make publish` makes, no multirun.yaml) into a fresh store: the same run names."""
    report.main([str(sweep), "--to", "mlflow,tensorboard", "--to", "wandb"])
    assert "2 records logged to mlflow, tensorboard, wandb" in capsys.readouterr().out
    runs, count = _mlflow_runs(sweep)
    assert count == 2
    for path, record in _records(sweep).items():
        assert len(runs[str(record["config"]["model"]["d_model"])][1]["val_loss"]) == len(record["curve"])
        assert len(list(path.parent.glob("events.out.tfevents.*"))) == 1
    assert len(list((sweep / "wandb").glob("offline-run-*"))) == 2

    copy = tmp_path / "sweep"
    for path in _records(sweep):
        (copy / path.parent.name).mkdir(parents=True)
        shutil.copy(path, copy / path.parent.name)
    report.main([str(copy), "--to", "mlflow"])
    live, _ = _mlflow_runs(sweep)
    copied, count = _mlflow_runs(copy)
    assert count == 2
    assert {k: r.info.run_name for k, (r, _) in copied.items()} == {k: r.info.run_name for k, (r, _) in live.items()}


@needs_trackers
def test_a_point_run_again_logs_into_its_run(sweep, tmp_path):
    """A point whose record changes (a run stopped, then resumed to the end, with `progress`, which is not part of
    its hash, set otherwise) logs into the run it logged before: one MLflow run with each curve point and each
    unchanged final value once and its first parameters (MLflow refuses to change one), one TensorBoard event
    file, one W&B run ID."""
    from mlflow import MlflowClient
    from tests.wandb_offline import read_run
    path, record = next(iter(_records(sweep).items()))
    root = tmp_path / "sweep"
    (root / path.parent.name).mkdir(parents=True)
    (root / "multirun.yaml").write_text("{}")
    stopped = {**record, "status": "failed", "error": "killed", "curve": record["curve"][:1],
               "end_time": record["start_time"], "config": {**record["config"], "progress": "lines"}}
    client = MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    for version, status in ((stopped, "FAILED"), (record, "FINISHED")):
        record_file = root / path.parent.name / RECORD_NAME
        record_file.write_text(json.dumps(version))
        tracking.log_record({"mlflow": {}, "tensorboard": {}, "wandb": {"mode": "offline"}}, record_file, root)
        (run,) = client.search_runs([client.get_experiment_by_name("sweep").experiment_id])
        assert run.info.status == status and run.data.tags["status"] == version["status"]
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_loss")) == [
        (p["step"], p["val_loss"]) for p in record["curve"]]
    assert len(client.get_metric_history(run.info.run_id, "metrics.val_loss")) == 1
    assert run.data.params["progress"] == "lines"
    assert len(list((root / path.parent.name).glob("events.out.tfevents.*"))) == 1
    runs = [read_run(d) for d in sorted((root / "wandb").glob("offline-run-*"))]
    assert len(runs) == 2 and len({r["run"]["id"] for r in runs}) == 1   # one run, synced twice by `wandb sync`
    assert {r["summary"]["status"] for r in runs} == {"failed", "ok"}


@needs_trackers
def test_a_failing_store_warns_once_and_costs_nothing(tmp_path):
    """An MLflow store that raises on every call: both points still finish ok, the sweep exits 0, one warning."""
    done = harness_cmd("-m", *TINY, WIDTHS, "logger=mlflow", "logger.mlflow.tracking_uri=broken://store",
                       "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    records = _records(tmp_path / "sweep")
    assert len(records) == 2 and all(r["status"] == "ok" for r in records.values())
    log = done.stdout + done.stderr
    warnings = [line for line in log.splitlines() if "logger=mlflow failed" in line]
    assert len(warnings) == 1 and "the record is unaffected" in warnings[0], log[-3000:]


def _config(*overrides: str):
    from hydra import compose, initialize_config_dir
    from harness.config import CONF_DIR
    with initialize_config_dir(version_base=None, config_dir=str(CONF_DIR)):
        return compose("config", overrides=list(overrides))


def test_a_tracker_that_is_not_installed_is_one_line_before_any_work(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)   # what `import wandb` meets where it is not installed
    with pytest.raises(ConfigError, match=r"logger=wandb needs the wandb package .*pip install -e '\.\[tracking\]'"):
        validate(_config(*TINY, "logger=[tensorboard,wandb]"))
    validate(_config(*TINY))   # no logger: nothing to import


def test_an_unknown_logger_is_one_line(tmp_path):
    done = harness_cmd(*TINY, "logger=[mlflow,neptune]", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: logger='neptune' is not a known logger; choose from: mlflow, none, tensorboard, wandb"]


def test_run_keys_follow_the_sweep_directory_and_the_point(tmp_path):
    """A point's key is its sweep directory's name and its path there (config hash, then a cooldown branch's);
    the nearest multirun.yaml marks the sweep, else the directory given is the root."""
    record = {"status": "ok", "config": {"study": {"name": "none"}, "model": {"d_model": 16}}, "config_hash": "abc"}
    sweep = tmp_path / "multirun" / "demo"
    branch = sweep / "abc" / "def" / RECORD_NAME
    branch.parent.mkdir(parents=True)
    branch.write_text(json.dumps(record))
    (sweep / "multirun.yaml").write_text("{}")
    for given in (tmp_path, tmp_path / "multirun", sweep, branch):
        root = tracking.sweep_root(branch, given)
        assert root == sweep.resolve()
        assert tracking.tracked_run(branch, root).key == "demo/abc/def"
    (sweep / "multirun.yaml").unlink()   # a copy of a sweep's records: the directory given is the root
    assert tracking.tracked_run(branch, tracking.sweep_root(branch, sweep)).key == "demo/abc/def"
    run = tracking.tracked_run(branch, sweep)
    assert run.experiment == "demo" and run.params() == {"study.name": "none", "model.d_model": 16}
    studied = tracking.tracked_run(branch, sweep, {**record, "config": {"study": {"name": "isoflop"}}})
    assert studied.experiment == "isoflop" and studied.run_id != run.run_id


def test_report_to_names_a_bad_tracker_or_option_in_one_line(tmp_path):
    with pytest.raises(SystemExit, match=r"^error: logger='neptune' is not a known tracker; choose from: mlflow, tensorboard, wandb$"):
        report.main([str(tmp_path), "--to", "neptune"])
    if not MISSING:
        with pytest.raises(SystemExit, match=r"^error: --option 'mlflow.uri=x': expected TRACKER.KEY=VALUE .* known: "
                                             r"mlflow.tracking_uri, mlflow.experiment$"):
            report.main([str(tmp_path), "--to", "mlflow", "--option", "mlflow.uri=x"])
        with pytest.raises(SystemExit, match=r"^error: no records under"):
            report.main([str(tmp_path), "--to", "mlflow"])
