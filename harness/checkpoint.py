"""Full training state, saved atomically beside the record and restored: a killed run continues from its last
checkpoint and ends where an uninterrupted run ends (on a CPU, bit for bit).

Only this module writes training state. A checkpoint holds whatever the training loop hands it (the model, the
optimizer, the gradient scaler, the step, the data order, every random generator the run draws from, the batch
already made for the next step, the curve so far) and the config hash of the run it belongs to; one file,
checkpoint.pt, the last one kept.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from harness import records

log = logging.getLogger("harness")


def path(directory: str | Path) -> Path:
    return Path(directory) / records.CHECKPOINT_NAME


def save(directory: str | Path, config_hash: str, state: dict) -> Path:
    """Write `state` as the run's checkpoint (whole or absent: records' atomic write)."""
    return records.write_atomically(path(directory), "wb", lambda f: torch.save({"config_hash": config_hash, **state}, f))


def load(directory: str | Path, config_hash: str) -> dict | None:
    """The run's last checkpoint, or None when there is none, it cannot be read, or it is another config's."""
    found = path(directory)
    if not found.exists():
        return None
    try:
        # The file is our own, written by save(); it holds numpy generator states, not only tensors.
        state = torch.load(found, map_location="cpu", weights_only=False)
    except Exception as error:  # a file we cannot read is no checkpoint: the run starts again from step 0
        log.warning("ignoring unreadable checkpoint %s: %s", found, error)
        return None
    if state.get("config_hash") != config_hash:
        log.warning("ignoring checkpoint %s: it belongs to config %s, this run is %s", found,
                    state.get("config_hash"), config_hash)
        return None
    return state


def remove(directory: str | Path) -> None:
    path(directory).unlink(missing_ok=True)
