"""Trackers: each record also lands in MLflow, TensorBoard or Weights & Biases (`logger=...`, or afterwards
`harness-report DIR --to ...`).

A tracker is fed from the record file once it is written, so the JSON record stays the source of truth and a
tracker can never cost a run: one that fails (a locked store, a full disk, a package error) warns once per process
and the job, its record and its exit status go on as if it were not there.

One tracker run per record, keyed by the record's place: its sweep directory's name and the path below it (the
point's config hash, then a cooldown branch's), e.g. `demo/3f2a9c0d1e2b4a5c`. The key, not the job number, names
the run, so a sweep resumed (whose jobs are numbered anew), a point run again, or records pushed twice log into the
run they logged before instead of a new one; the same records copied elsewhere (`make publish`) keep their keys.

Names are the tidy table's (harness.records.load_results): parameters are the flattened config (`model.d_model`),
step metrics the curve's keys (`val_loss`, `train_loss`, `lr`, `tokens`, `flops`, at the curve's step), and the
record's other sections are final values (`metrics.val_loss`, `model_info.n_params`, ...).
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
from datetime import datetime
from pathlib import Path
from typing import Iterable

from harness.errors import first_line
from harness.records import RECORD_NAME, flatten, read_record, record_paths

log = logging.getLogger("harness")

PACKAGES = {"mlflow": "mlflow", "tensorboard": "tensorboard", "wandb": "wandb"}
SWEEP_MARKER = "multirun.yaml"   # Hydra writes it in every sweep directory
MLFLOW_BATCH = {"metrics": 1000, "params": 100, "tags": 100}   # MLflow's limits on one log_batch call
MLFLOW_PARAM_LENGTH = 6000   # MLflow's limit on a parameter's value
WANDB_MARKER = "harness.json"   # in a W&B run directory: the digest of the record it was made from


def unsupported(name: str) -> str | None:
    """Why logger=name cannot run here, or None."""
    if name not in PACKAGES:
        return f"logger={name!r} is not a known tracker; choose from: {', '.join(PACKAGES)}"
    try:
        importlib.import_module(PACKAGES[name])
    except Exception as error:   # not installed, or installed but broken
        return (f"logger={name} needs the {PACKAGES[name]} package ({first_line(error)}); "
                f"install the tracking extra: pip install -e '.[tracking]'")
    return None


@dataclasses.dataclass(frozen=True)
class TrackedRun:
    """What every tracker logs for one record."""
    key: str            # unique per record: "<sweep dir name>/<config hash>[/<branch hash>]"
    experiment: str     # the study, or the sweep (or run) directory's name
    group: str          # the sweep (or run) directory's name
    record: dict
    path: Path          # the record file
    root: Path          # the sweep (or run) directory

    @property
    def run_id(self) -> str:
        """A stable ID for trackers that take one (W&B: letters and digits)."""
        return hashlib.sha256(f"{self.experiment}\0{self.key}".encode()).hexdigest()[:24]

    @property
    def digest(self) -> str:
        """Changes when the record does: a tracker that logged this digest before has nothing new to log."""
        return hashlib.sha256(json.dumps(self.record, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @property
    def ok(self) -> bool:
        return self.record["status"] == "ok"

    def params(self) -> dict:
        """The resolved config, flattened as load_results' columns."""
        return flatten(self.record["config"])

    @functools.cached_property
    def steps(self) -> list[tuple[int, dict]]:
        """Every curve point: (step, {name: value}) for its numeric keys."""
        return [(int(point["step"]), {k: float(v) for k, v in point.items() if k != "step" and _is_number(v)})
                for point in self.record.get("curve") or []]

    @property
    def last_step(self) -> int:
        """Where the final values are logged: the curve's last step (0 without a curve)."""
        return self.steps[-1][0] if self.steps else 0

    @functools.cached_property
    def summary(self) -> dict:
        """The record's sections other than config and curve, flattened (numbers and words; lists left out)."""
        return {k: v for section, value in self.record.items() if isinstance(value, dict) and section != "config"
                for k, v in flatten(value, section).items() if v is not None and not isinstance(v, list)}

    def final_metrics(self) -> dict:
        return {k: float(v) for k, v in self.summary.items() if _is_number(v)}

    def tags(self) -> dict:
        """Words that describe the run: status, error, where its record is, and the summary's non-numbers."""
        words = {k: str(v) for k, v in self.summary.items() if not _is_number(v)}
        return {**words, "status": self.record["status"], "error": self.record.get("error") or "",
                "task": str(self.record.get("task")), "config_hash": str(self.record.get("config_hash")),
                "record_path": str(self.path.resolve()), "harness.key": self.key}

    def time_ms(self, which: str) -> int | None:
        """The record's start_time or end_time in ms since the epoch (a point stopped before it started has none)."""
        stamp = self.record.get(which)
        return int(datetime.fromisoformat(stamp).timestamp() * 1000) if stamp else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def sweep_root(record_file: Path, given: Path) -> Path:
    """The directory a record's run is keyed from: the nearest sweep directory above it (Hydra's multirun.yaml),
    else the directory given (a copy of a sweep's records, such as results/<study>, or a single run's directory)."""
    for parent in record_file.resolve().parents:
        if (parent / SWEEP_MARKER).is_file():
            return parent
    return given.resolve() if given.is_dir() else record_file.resolve().parent


def tracked_run(record_file: Path, root: Path, record: dict | None = None) -> TrackedRun:
    record = read_record(record_file) if record is None else record
    below = record_file.resolve().parent.relative_to(root.resolve())
    key = "/".join([root.resolve().name, *below.parts])
    study = (record["config"].get("study") or {}).get("name")
    return TrackedRun(key=key, experiment=study if study and study != "none" else root.resolve().name,
                      group=root.resolve().name, record=record, path=record_file, root=root)


_warned: set[str] = set()


def log_record(settings, record_file: Path, root: Path) -> None:
    """Log one record to each tracker in settings (the config's `logger` node: {name: options}). Never raises."""
    names = list(settings or {})
    if not names:
        return
    try:
        run = tracked_run(record_file, root)
    except Exception as error:   # a record we cannot read back is the job's business, not the tracker's
        _warn("logger", record_file, error)
        return
    for name in names:
        try:
            WRITERS[name](run, dict(settings[name] or {}))
        except Exception as error:
            _warn(name, record_file, error)


def _warn(name: str, record_file: Path, error: BaseException) -> None:
    if name in _warned:
        log.debug("logger=%s failed again for %s: %s", name, record_file, first_line(error))
        return
    _warned.add(name)
    log.warning("warning: logger=%s failed (%s: %s); the record is unaffected: %s (this warning is shown once)",
                name, type(error).__name__, first_line(error), record_file)


def push(paths: Iterable[str | Path], settings: dict) -> int:
    """`harness-report DIR --to ...`: log every record under paths; returns how many were read."""
    count = 0
    for given in [Path(p) for p in paths]:
        for record_file in record_paths(given):
            if record_file.name != RECORD_NAME:
                continue
            log_record(settings, record_file, sweep_root(record_file, given))
            count += 1
    return count


# --- MLflow -----------------------------------------------------------------------------------------------------

def _mlflow_uri(run: TrackedRun, options: dict) -> str:
    return options.get("tracking_uri") or f"sqlite:///{(run.root / 'mlflow.db').resolve()}"


@contextlib.contextmanager
def _store_lock(uri: str):
    """One writer at a time on a local SQLite store: the joblib launcher's jobs share one file, and two processes
    creating its tables, or one experiment, at once fail."""
    if not uri.startswith("sqlite:///"):
        yield
        return
    import fcntl
    lock_file = Path(uri[len("sqlite:///"):] + ".lock")
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _chunks(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def log_mlflow(run: TrackedRun, options: dict) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param, RunTag

    uri = _mlflow_uri(run, options)
    with _store_lock(uri):
        client = MlflowClient(tracking_uri=uri)
        name = options.get("experiment") or run.experiment
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            artifacts = None if options.get("tracking_uri") else str((run.root / "mlartifacts").resolve())
            experiment_id = client.create_experiment(name, artifact_location=artifacts)
        else:
            experiment_id = experiment.experiment_id
        found = client.search_runs([experiment_id], filter_string=f"tags.`harness.key` = '{run.key}'", max_results=1)
        if found and found[0].data.tags.get("harness.digest") == run.digest:
            return
        if found:
            run_id, logged_params, latest = found[0].info.run_id, found[0].data.params, found[0].data.metrics
        else:
            run_id = client.create_run(experiment_id, start_time=run.time_ms("start_time") or run.time_ms("end_time"),
                                       tags={"harness.key": run.key}, run_name=run.key).info.run_id
            logged_params, latest = {}, {}
        stamp = run.time_ms("end_time") or 0
        # Parameters cannot change once logged; a point run again has the same config (its key holds the hash)
        params = [Param(k, str(v)[:MLFLOW_PARAM_LENGTH]) for k, v in run.params().items() if k not in logged_params]
        logged = {key: {m.step for m in client.get_metric_history(run_id, key)} if found else set()
                  for key in {k for _, values in run.steps for k in values}}
        metrics = [Metric(key, value, stamp, step) for step, values in run.steps for key, value in values.items()
                   if step not in logged[key]]
        metrics += [Metric(k, v, stamp, run.last_step) for k, v in run.final_metrics().items() if latest.get(k) != v]
        for chunk in _chunks(params, MLFLOW_BATCH["params"]):
            client.log_batch(run_id, params=chunk)
        for chunk in _chunks(metrics, MLFLOW_BATCH["metrics"]):
            client.log_batch(run_id, metrics=chunk)
        tags = [RunTag(k, v[:MLFLOW_PARAM_LENGTH]) for k, v in {**run.tags(), "harness.digest": run.digest}.items()]
        for chunk in _chunks(tags, MLFLOW_BATCH["tags"]):   # the digest goes last: logged means wholly logged
            client.log_batch(run_id, tags=chunk)
        client.set_terminated(run_id, "FINISHED" if run.ok else "FAILED", end_time=run.time_ms("end_time"))


# --- TensorBoard ------------------------------------------------------------------------------------------------

TENSORBOARD_PREFIX = "events.out.tfevents."


def log_tensorboard(run: TrackedRun, options: dict) -> None:
    """Event files beside the record, written afresh each time (a temporary directory, then moved in), so logging
    a record again replaces its events instead of adding to them."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    directory = run.path.parent
    staging = directory / ".tensorboard.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    wall = (run.time_ms("end_time") or 0) / 1000
    writer = SummaryWriter(log_dir=str(staging))
    try:
        for step, values in run.steps:
            for key, value in values.items():
                writer.add_scalar(key, value, step, walltime=wall)
        finals = run.final_metrics()
        for key, value in finals.items():
            writer.add_scalar(key, value, run.last_step, walltime=wall)
        table = "\n".join(f"| {k} | {v} |" for k, v in run.tags().items())
        writer.add_text("record", f"| key | value |\n|---|---|\n{table}", 0, walltime=wall)
        config = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in run.params().items()}
        for summary in hparams(config, {k: v for k, v in finals.items() if k.startswith("metrics.")}):
            writer.file_writer.add_summary(summary, walltime=wall)
    finally:
        writer.close()
    for old in directory.glob(f"{TENSORBOARD_PREFIX}*"):
        old.unlink()
    for new in staging.glob(f"{TENSORBOARD_PREFIX}*"):
        os.replace(new, directory / new.name)
    shutil.rmtree(staging, ignore_errors=True)


# --- Weights & Biases -------------------------------------------------------------------------------------------

def _wandb_logged(run: TrackedRun, base: Path) -> bool:
    for marker in base.glob(f"wandb/*-{run.run_id}/{WANDB_MARKER}"):
        with contextlib.suppress(OSError, ValueError):
            if json.loads(marker.read_text()).get("digest") == run.digest:
                return True
    return False


def log_wandb(run: TrackedRun, options: dict) -> None:
    """One W&B run per record, offline unless logger.wandb.mode says otherwise, under <sweep dir>/wandb/; its
    ID is stable, so `wandb sync` of a point logged twice (run again after a failure) updates one run."""
    import wandb

    base = run.root.resolve()
    if _wandb_logged(run, base):
        return
    mode = options.get("mode") or "offline"
    settings = wandb.Settings(silent=True, console="off", disable_git=True, save_code=False,
                              x_disable_stats=True, x_disable_meta=True)
    tracker = wandb.init(mode=mode, dir=str(base), project=options.get("project") or run.experiment,
                         entity=options.get("entity"), group=run.group, job_type=str(run.record.get("task")),
                         name=run.key, id=run.run_id, resume="allow", config=run.record["config"],
                         settings=settings, reinit="create_new")
    run_dir = Path(tracker.dir).parent
    try:
        for step, values in run.steps:
            tracker.log(values, step=step)
        tags = run.tags()
        tracker.summary.update({**run.summary, **{k: tags[k] for k in ("status", "error", "record_path", "config_hash")}})
    finally:
        tracker.finish(exit_code=0 if run.ok else 1)
    if mode != "disabled":   # written last: a run cut short is logged again next time
        (run_dir / WANDB_MARKER).write_text(json.dumps({"digest": run.digest, "key": run.key}))


WRITERS = {"mlflow": log_mlflow, "tensorboard": log_tensorboard, "wandb": log_wandb}
