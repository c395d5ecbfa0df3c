"""`harness`: the Hydra app. One job = validate -> run the task -> write one record.

Statuses: ok, failed, oom, unsupported, diverged. A failing point never stops a sweep;
a bad config in a single run stops it before any work with one line on stderr.
"""
from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from harness import checkpoint, distributed, measure, records, tracking
from harness.config import CONF_DIR, check_group_overrides, validate
from harness.errors import ConfigError, Diverged, Unsupported, first_line, is_out_of_memory

log = logging.getLogger("harness")


def _task_runner(name: str):
    from harness.tasks import attention, inference, train
    return {"train": train.run, "attention": lambda cfg, *_: attention.run(cfg),
            "inference": lambda cfg, *_: inference.run(cfg, train.trained_weights)}[name]


def run_job(cfg: DictConfig) -> dict | None:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    return run_point(cfg, Path(hydra_cfg.runtime.output_dir), Path(hydra_cfg.sweep.dir) if multirun else None)


def run_point(cfg: DictConfig, out_dir: Path, sweep_dir: Path | None = None) -> dict | None:
    """One point: its record in out_dir. In a sweep (sweep_dir given), a point whose record is already `ok` is
    skipped, and a failure becomes the record instead of stopping the sweep."""
    multirun = sweep_dir is not None
    root = sweep_dir if multirun else out_dir   # what trackers key the point's run by, and where their stores go
    config = OmegaConf.to_container(cfg, resolve=True)
    digest = records.config_hash(config)
    records.remove_stale_temporaries(out_dir)
    if multirun and cfg.resume:
        done = records.find_ok_record(sweep_dir, digest)
        if done is not None:
            log.info("skip: this point finished ok before (%s)", done)
            return None

    record = {"config": config, "config_hash": digest, "task": cfg.task.name, "status": "ok", "error": None,
              "start_time": measure.now_iso()}
    try:
        validate(cfg)
        with measure.job_state(int(cfg.seed), None if cfg.get("threads", "auto") == "auto" else int(cfg.threads)):
            record["env"] = measure.environment(measure.resolve_device(cfg.device))   # as the job runs: its threads
            record.update(_task_runner(cfg.task.name)(cfg, out_dir, functools.partial(_write_branch, cfg, root)))
    except ConfigError as error:
        if not multirun:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
        record.update(status="failed", error=str(error))
    except Diverged as error:
        record.update(status="diverged", error=str(error))
    except (Unsupported, NotImplementedError) as error:  # NotImplementedError: a kernel with no path for these inputs
        record.update(status="unsupported", error=first_line(error))
    except Exception as error:  # any other failure is a record too, with the traceback in the job log
        if is_out_of_memory(error):
            record.update(status="oom", error=f"{type(error).__name__}: {first_line(error)}")
        else:
            log.error("run failed:\n%s", traceback.format_exc())
            record.update(status="failed", error=f"{type(error).__name__}: {error}")
    if cfg.task.name == "train" and cfg.parallel.name != "single" and distributed.is_secondary_slurm_rank():
        return None  # under SLURM every task runs this job; rank 0 writes the record with every rank's figures
    model_state = record.pop("model_state", None)
    record["end_time"] = measure.now_iso()
    record.setdefault("env", measure.environment(measure.resolve_device(cfg.device)))   # a job stopped before it ran
    if model_state is not None:
        record["model_file"] = records.write_model(out_dir, model_state).name
    path = records.write_record(out_dir, record)
    if record["status"] == "ok" and not cfg.task.get("keep_checkpoints"):
        checkpoint.remove(out_dir)
    _summarise(record, path)
    tracking.log_record(cfg.get("logger"), path, root)
    if record["status"] != "ok" and not multirun:
        print(f"error: {record['status']}: {record['error']}", file=sys.stderr)
        sys.exit(1)
    return record


def _write_branch(cfg: DictConfig, root: Path, directory: Path, config: dict, digest: str, result: dict) -> None:
    """A cooldown branch's record, in its own directory below the run's; its checkpoint goes once it is written."""
    record = {"config": config, "config_hash": digest, "task": cfg.task.name, "status": "ok", "error": None,
              **result, "end_time": measure.now_iso(), "env": measure.environment(measure.resolve_device(cfg.device))}
    path = records.write_record(directory, record)
    _summarise(record, path)
    tracking.log_record(cfg.get("logger"), path, root)
    if not cfg.task.get("keep_checkpoints"):
        checkpoint.remove(directory)


def _summarise(record: dict, path: Path) -> None:
    m = record.get("metrics", {})
    if record["status"] == "ok" and "decode_tokens_per_s" in m:
        log.info("ok: prefill %.3g s, decode %.0f tokens/s with the cache (%.3gx recompute), KV cache %.3g MB -> %s",
                 m["prefill_s"], m["decode_tokens_per_s"], m["cache_speedup"] or float("nan"), m["kv_cache_bytes"] / 1e6, path)
    elif record["status"] == "ok" and "val_loss" in m:
        log.info("ok: val_loss %.4f nats/token, %.0f tokens/s, %.1fs -> %s", m["val_loss"], m["tokens_per_s"], m["wall_time_s"], path)
    elif record["status"] == "ok":
        log.info("ok: %.3g s median, %.3g FLOP/s, %.3g MB peak -> %s", m["time_median_s"], m["flops_per_s"],
                 m["peak_memory_bytes"] / 1e6, path)
    else:
        log.warning("%s: %s -> %s", record["status"], record["error"], path)


@hydra.main(version_base=None, config_path=str(CONF_DIR), config_name="config")
def app(cfg: DictConfig) -> None:
    run_job(cfg)


def main() -> None:
    # A custom model's class (model._target_) is imported from the user's code: the directory harness runs in, as
    # `python -m` would, in this process and in the launcher's workers and ranks it starts.
    sys.path.insert(0, os.getcwd())
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))
    try:
        check_group_overrides(sys.argv[1:])
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    app()
