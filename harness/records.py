"""Records: where a point's record lives, one JSON file per run written atomically, and the tidy table built from them.

Only this module writes or reads record files. A record is complete or absent: it is written to a temporary file
in the same directory and renamed into place. In a sweep, a point's directory is named by its config hash
(`SWEEP_DIR/<config_hash>/`, the `harness_point` resolver in conf/config.yaml), so adding, removing or
reordering sweep values re-runs only the new points and never touches another point's record.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Iterable

import pandas as pd
from omegaconf import DictConfig, OmegaConf

RECORD_NAME = "record.json"
MODEL_NAME = "model.pt"
CHECKPOINT_NAME = "checkpoint.pt"   # harness.checkpoint's training state, removed when the run ends ok
WRITTEN = (RECORD_NAME, MODEL_NAME, CHECKPOINT_NAME)  # the files a job writes atomically
STATUSES = ("ok", "failed", "oom", "unsupported", "diverged")
# Keys that change where or how a run reports, not what it computes.
NON_SEMANTIC_KEYS = ("resume", "progress", "logger", "profile")

log = logging.getLogger(__name__)


def config_hash(config: dict) -> str:
    semantic = {k: v for k, v in config.items() if k not in NON_SEMANTIC_KEYS}
    canonical = json.dumps(semantic, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def point_dir_name(*, _root_: DictConfig) -> str:
    """A sweep point's directory: the hash of its config (everything but Hydra's own settings), the hash its record
    carries. Registered as the `harness_point` resolver, which hydra.sweep.subdir names."""
    task = OmegaConf.masked_copy(_root_, [key for key in _root_ if key != "hydra"])
    return config_hash(OmegaConf.to_container(task, resolve=True))


OmegaConf.register_new_resolver("harness_point", point_dir_name, replace=True)


def write_atomically(target: Path, mode: str, write) -> Path:
    """write(file) into a temporary file beside target, fsync, rename: the file is whole or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def write_record(directory: str | Path, record: dict) -> Path:
    if record.get("status") not in STATUSES:
        raise ValueError(f"record status {record.get('status')!r}; known: {', '.join(STATUSES)}")
    return write_atomically(Path(directory) / RECORD_NAME, "w",
                             lambda f: json.dump(record, f, indent=1, default=_json_default, allow_nan=True))


def write_model(directory: str | Path, state_dict: dict) -> Path:
    """The trained weights beside the record (model.pt, torch.save), written atomically as the record is."""
    import torch
    return write_atomically(Path(directory) / MODEL_NAME, "wb", lambda f: torch.save(state_dict, f))


def _json_default(value):
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def remove_stale_temporaries(directory: str | Path) -> None:
    """A process killed mid-write leaves a temporary file, never a partial record or model: clear them."""
    for name in WRITTEN:
        for tmp in Path(directory).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def read_record(path: str | Path) -> dict:
    with open(path) as f:
        record = json.load(f)
    if not isinstance(record, dict) or record.get("status") not in STATUSES or "config" not in record:
        raise ValueError("not a harness record (no valid status/config)")
    return record


def record_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    """Record files under run/sweep directories (searched recursively), globs, or record files themselves."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: list[Path] = []
    for entry in paths:
        matches = [Path(m) for m in sorted(glob.glob(str(entry), recursive=True))] or [Path(entry)]
        for match in matches:
            if match.is_dir():
                found += sorted(match.rglob(RECORD_NAME))
            elif match.is_file():
                found.append(match)
            else:
                log.warning("no such run, sweep directory or record: %s", match)
    return sorted(set(found))


def find_ok_record(sweep_dir: str | Path, digest: str) -> Path | None:
    """The record in a sweep directory that finished `ok` for this config hash, if any: in the point's own
    directory, or in a numbered one (sweeps written before points were named by their hash). An unreadable or
    corrupt record is no record: its point runs again and the new record replaces it."""
    sweep_dir = Path(sweep_dir)
    numbered = sorted(p / RECORD_NAME for p in sweep_dir.glob("*") if p.name.isdigit()) if sweep_dir.is_dir() else []
    for path in [sweep_dir / digest / RECORD_NAME, *numbered]:
        try:
            record = read_record(path)
        except (OSError, ValueError):
            continue
        if record.get("config_hash") == digest and record["status"] == "ok":
            return path
    return None


def flatten(value: dict, prefix: str = "") -> dict:
    """Nested sections as one level, their keys joined by dots: the tidy table's column names (`model.d_model`)."""
    flat = {}
    for key, inner in value.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(flatten(inner, name) if isinstance(inner, dict) else {name: inner})
    return flat


def record_row(record: dict, path: Path) -> dict:
    row = {"path": str(path), "status": record["status"], "error": record.get("error"),
           "config_hash": record.get("config_hash"), **flatten(record["config"])}
    for section, value in record.items():
        if section != "config" and isinstance(value, dict):
            row.update(flatten(value, section))
    row["curve"] = record.get("curve", [])
    return row


def load_results(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """One row per run: `status`, config keys (`model.d_model`), `metrics.*`, `env.*`, and the loss `curve`.

    A corrupt or truncated record file is reported by path and skipped.
    """
    rows = []
    for path in record_paths(paths):
        try:
            rows.append(record_row(read_record(path), path))
        except (OSError, ValueError) as error:
            log.warning("skipping corrupt record %s: %s", path, error)
    return pd.DataFrame(rows)


def cooldown_config(config: dict, branch, tokens_per_step: int) -> tuple[dict, str]:
    """A cooldown branch's config (`branch`: a harness.schedules.Cooldown) and its config hash: the run's config,
    with the branch's tokens, no cooldowns of its own, and a `cooldown` section naming the run it branched from and
    where. A run with a compute budget gives its branches the same fraction of it, so a sweep of sizes at one budget
    with cooldowns at budget ratios gives IsoFLOP slices: every branch belongs to a budget as a run of its own would."""
    budget = config["compute"] * branch.fraction if config.get("compute") is not None else None
    branched = {**config, "compute": budget, "data": {**config["data"], "tokens": branch.schedule.total_steps * tokens_per_step},
                "task": {**config["task"], "cooldowns": []},
                "cooldown": {"fraction": branch.fraction, "from": config_hash(config),
                             "start_step": branch.start, "steps": branch.schedule.total_steps}}
    return branched, config_hash(branched)
