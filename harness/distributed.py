"""Ranks: how many, starting them, and joining them into one process group.

A multi-rank job starts its own ranks with torch.distributed's elastic launcher (what `torchrun` runs), each
rank calling `entry(*args)` in a fresh process. Under SLURM with several tasks (submitit's `tasks_per_node`)
the ranks already exist: each task runs the job itself and only rank 0 writes the record.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from harness.errors import Diverged, Unsupported, first_line, is_out_of_memory


def too_many_ranks(world: int, device_type: str) -> str | None:
    """One rank per GPU. On a CPU every rank is a process sharing the cores, so any number can run (slowly)."""
    if device_type == "cuda" and world > torch.cuda.device_count():
        return f"parallel.world_size={world} but this machine has {torch.cuda.device_count()} GPU(s)"
    return None


@dataclass(frozen=True)
class Machine:
    """What a job's allocation offers, as far as `device=auto` and `parallel.world_size=auto` need to know: its GPUs
    and the tasks SLURM starts for it (1: none; the job starts its own ranks)."""
    gpus: int
    tasks: int = 1


def this_machine() -> Machine:
    slurm = slurm_ranks()
    return Machine(gpus=torch.cuda.device_count() if torch.cuda.is_available() else 0,
                   tasks=slurm["world_size"] if slurm else 1)


def device_type(setting: str, machine: Machine | None = None) -> str:
    """The device type `device=` means on `machine` (default: this one): auto is cuda where there are GPUs."""
    if setting == "auto":
        return "cuda" if (machine or this_machine()).gpus else "cpu"
    return torch.device(setting).type


def world_size(setting, device_type: str, machine: Machine | None = None) -> int:
    """`auto`: the tasks SLURM started, else every GPU, or 2 ranks on a CPU (enough to show every strategy's
    mechanism), on `machine` (default: this one)."""
    if setting in (None, "auto"):
        machine = machine or this_machine()
        if machine.tasks > 1:
            return machine.tasks
        return max(1, machine.gpus) if device_type == "cuda" else 2
    return int(setting)


def backend(setting, device_type: str) -> str:
    if setting in (None, "auto"):
        return "nccl" if device_type == "cuda" else "gloo"
    return str(setting)


def slurm_ranks() -> dict | None:
    """The ranks SLURM started (srun with several tasks), or None when this is not such a job."""
    tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if tasks <= 1 or "SLURM_PROCID" not in os.environ:
        return None
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "localhost"
    return {"rank": int(os.environ["SLURM_PROCID"]), "world_size": tasks,
            "local_rank": int(os.environ.get("SLURM_LOCALID", "0")),
            "master_addr": first_host(nodes), "master_port": rendezvous_port(os.environ.get("SLURM_JOB_ID", "0"),
                                                                             os.environ.get("SLURM_STEP_ID", "0"))}


def rendezvous_port(job_id: str, step_id: str) -> int:
    """A port in [20000, 40000) for one job step's ranks to meet at: the steps of one allocation (srun after srun,
    or side by side) share the job id, so the step id is part of it."""
    digest = hashlib.sha256(f"{job_id}.{step_id}".encode()).digest()
    return 20000 + int.from_bytes(digest[:4], "little") % 20000


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `gpu[03-05,07],cpu1` -> `gpu03`."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10)
        if out.returncode == 0 and out.stdout.split():
            return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    prefix, ranges = match.group(1), match.group(2)
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0]


def is_secondary_slurm_rank() -> bool:
    ranks = slurm_ranks()
    return ranks is not None and ranks["rank"] != 0


class RankFailed(RuntimeError):
    """A rank failed in a way that is not a result (a crash, not OOM/unsupported/diverged)."""


_ERRORS = {"Unsupported": Unsupported, "NotImplementedError": Unsupported, "Diverged": Diverged,
           "OutOfMemoryError": torch.OutOfMemoryError}


def launch(entry, args: tuple, world: int, device_type: str, *, backend_name: str = "auto", timeout_s: float = 600) -> list:
    """Run entry(*args) on `world` ranks; returns every rank's return value, rank 0 first.

    A rank that raises records its error to a file before dying, so the first failure comes back here as the
    same exception type (Unsupported, Diverged, out of memory) with its message, not as a launcher traceback.
    """
    ranks = slurm_ranks()
    if ranks is not None:
        os.environ.update(RANK=str(ranks["rank"]), WORLD_SIZE=str(ranks["world_size"]),
                          LOCAL_RANK=str(ranks["local_rank"]), MASTER_ADDR=ranks["master_addr"],
                          MASTER_PORT=str(ranks["master_port"]))
        return [run_rank(entry, args, device_type, backend_name, timeout_s, None)]

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=world, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.1)
    with tempfile.TemporaryDirectory(prefix="harness-ranks-") as error_dir:
        try:
            results = elastic_launch(config, run_rank)(entry, args, device_type, backend_name, timeout_s, error_dir)
        except ChildFailedError as failure:
            raise _first_error(Path(error_dir), failure) from None
    return [results[rank] for rank in sorted(results)]


def run_rank(entry, args: tuple, device_type: str, backend_name: str, timeout_s: float, error_dir: str | None):
    """One rank: join the group, run the entry, leave the group; a failure is written down, then re-raised."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend(backend_name, device_type), timeout=dt.timedelta(seconds=timeout_s))
    try:
        return entry(*args)
    except BaseException as error:
        if error_dir is not None:
            kind = type(error).__name__
            if kind not in _ERRORS and is_out_of_memory(error):
                kind = "OutOfMemoryError"
            message = first_line(error)
            Path(error_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps({"kind": kind, "message": message}))
        raise
    finally:
        dist.destroy_process_group()


def _first_error(error_dir: Path, failure) -> BaseException:
    """The first rank's own error; a rank that died of another's failure (a broken collective) comes later."""
    written = sorted(error_dir.glob("rank*.json"), key=lambda p: int(p.stem.removeprefix("rank")))
    reports = [json.loads(p.read_text()) for p in written]
    for report in reports:  # a result-kind error (unsupported, OOM, diverged) beats the connection errors it caused
        if report["kind"] in _ERRORS:
            return _ERRORS[report["kind"]](report["message"])
    if reports:
        return RankFailed(f"{reports[0]['kind']}: {reports[0]['message']}")
    first = min(failure.failures) if failure.failures else None
    detail = failure.failures[first].message if first is not None else str(failure)
    return RankFailed(f"rank {first} died: {detail or 'no message (killed by a signal?)'}")
