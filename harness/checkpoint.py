"""Full training state, saved atomically beside the record and restored: a killed run continues from its last
checkpoint and ends where an uninterrupted run ends (on a CPU, bit for bit).

Only this module writes training state. A checkpoint holds whatever the training loop hands it (the model, the
optimizer, the gradient scaler, the step, the data order, every random generator the run draws from, the batch
already made for the next step, the curve so far) and the config hash of the run it belongs to; one file,
checkpoint.pt, the last one kept.

A run on several ranks saves each rank's own part (its shard of a sharded model and optimizer, its generators) in
checkpoint.rank<R>.step<S>.pt, and rank 0 then writes checkpoint.pt naming the step and the world size, once every
rank's part is on disk: a kill before that leaves the previous step's parts and manifest in place. It resumes on the
same layout only (the config hash fixes the strategy; the world size is checked), every rank or none.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

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


def save_state(directory: str | Path, config_hash: str, state) -> None:
    """A training state (an object with `sharded` and state_dict(): harness.tasks.state.TrainingState) saved: one
    file, or on several ranks each rank's part and rank 0's manifest."""
    (save_sharded if state.sharded else save)(directory, config_hash, state.state_dict())


def restore_state(directory: str | Path, config_hash: str, state) -> bool:
    """The last checkpoint of this config in `directory` loaded into `state` (its load_state_dict); False when there
    is none to load."""
    saved = (load_sharded if state.sharded else load)(directory, config_hash)
    if saved is None:
        return False
    state.load_state_dict(saved)
    return True


def remove(directory: str | Path) -> None:
    path(directory).unlink(missing_ok=True)
    for part in Path(directory).glob("checkpoint.rank*.pt"):
        part.unlink(missing_ok=True)


def _part(directory: Path, rank: int, step: int) -> Path:
    return directory / f"checkpoint.rank{rank}.step{step}.pt"


def save_sharded(directory: str | Path, config_hash: str, state: dict) -> Path:
    """Every rank calls this with its own `state` (with "step"): each part written, then the manifest, then the
    parts of earlier steps removed."""
    directory, rank, world = Path(directory), dist.get_rank(), dist.get_world_size()
    step = state["step"]
    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    records.write_atomically(_part(directory, rank, step), "wb", lambda f: torch.save(state, f))
    dist.barrier()
    if rank == 0:
        manifest = {"config_hash": config_hash, "sharded": True, "world": world, "step": step}
        records.write_atomically(path(directory), "wb", lambda f: torch.save(manifest, f))
    dist.barrier()
    for part in directory.glob(f"checkpoint.rank{rank}.step*.pt"):
        if part != _part(directory, rank, step):
            part.unlink(missing_ok=True)
    return path(directory)


def load_sharded(directory: str | Path, config_hash: str) -> dict | None:
    """This rank's part of the run's last sharded checkpoint; None on every rank unless every rank has its part."""
    directory, rank, world = Path(directory), dist.get_rank(), dist.get_world_size()
    manifest = load(directory, config_hash)
    state = None
    if manifest is not None and manifest.get("sharded") and manifest.get("world") == world:
        try:
            state = torch.load(_part(directory, rank, manifest["step"]), map_location="cpu", weights_only=False)
        except Exception as error:  # a missing or unreadable part: no rank resumes
            log.warning("ignoring checkpoint %s: rank %d's part: %s", path(directory), rank, error)
    elif manifest is not None:
        log.warning("ignoring checkpoint %s: it was written by %s ranks, this run has %d", path(directory),
                    manifest.get("world", "one of"), world)
    everyone = torch.tensor([state is not None], dtype=torch.int32)
    dist.all_reduce(everyone, op=dist.ReduceOp.MIN)
    return state if bool(everyone.item()) else None


def _local(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to_local() if hasattr(tensor, "device_mesh") else tensor


def _optimizer(optimizer):
    return getattr(optimizer, "optim", optimizer)   # ZeroRedundancyOptimizer: the optimizer of this rank's partition


def rank_state(model: torch.nn.Module, optimizer) -> dict:
    """This rank's model and optimizer as it holds them: a DTensor (FSDP, TP) as its local shard, the optimizer's
    state per parameter in its groups' order, the state of this rank's partition only under ZeRO."""
    opt = _optimizer(optimizer)
    params = [p for group in opt.param_groups for p in group["params"]]
    return {"model": {name: _local(t).detach().clone() for name, t in model.state_dict().items()},
            "optimizer": [{key: (_local(value).detach().clone(), hasattr(value, "device_mesh")) if torch.is_tensor(value)
                           else (value, False) for key, value in opt.state[p].items()} for p in params]}


def restore_rank_state(model: torch.nn.Module, optimizer, state: dict) -> None:
    """Put rank_state()'s tensors back in place, on the same layout."""
    from torch.distributed.tensor import DTensor
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            _local(tensor).copy_(state["model"][name])
    opt = _optimizer(optimizer)
    params = [p for group in opt.param_groups for p in group["params"]]
    for p, saved in zip(params, state["optimizer"], strict=True):
        opt.state[p] = {key: DTensor.from_local(value.to(_local(p).device), p.device_mesh, p.placements, shape=p.shape,
                                                stride=p.stride()) if sharded else _on(value, p.device)
                        for key, (value, sharded) in saved.items()}


def _on(value, device: torch.device):
    """A plain state tensor beside its parameter; a 0-d one (Adam's step count) stays where Adam keeps it."""
    return value.to(device) if torch.is_tensor(value) and value.dim() else value
