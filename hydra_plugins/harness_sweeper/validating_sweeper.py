"""Hydra's basic sweeper, plus our checks on every point before the first job starts: the config checks (against
the nodes a SLURM launcher will give, not the submitting machine), and for training points the checks that need
the data (a split shorter than a window, a budget smaller than a batch).

It lives in the hydra_plugins namespace because Hydra only instantiates sweepers from there.
"""
from __future__ import annotations

import re
import sys
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from omegaconf import DictConfig, OmegaConf

from harness import data
from harness.config import check_data, validate
from harness.distributed import Machine
from harness.errors import ConfigError


def launcher_machine(launcher: DictConfig) -> Machine | None:
    """What each job of a SLURM launcher gets (its nodes' GPUs, the tasks srun starts); None for the launchers
    whose jobs run on this machine (basic, joblib, submitit_local), where this machine answers."""
    if not str(launcher.get("_target_", "")).endswith("SlurmLauncher"):
        return None
    nodes, tasks = int(launcher.get("nodes") or 1), int(launcher.get("tasks_per_node") or 1)
    gpus = int(launcher.get("gpus_per_node") or 0)
    gres = re.fullmatch(r"gpu(?::[^:,]+)?:(\d+)", str(launcher.get("gres") or ""))
    if not gpus and gres:
        gpus = int(gres.group(1))
    if not gpus and launcher.get("gpus_per_task"):
        gpus = int(launcher.gpus_per_task) * tasks
    return Machine(gpus=gpus, tasks=nodes * tasks)


def launcher_problem(launcher: DictConfig) -> str | None:
    """What the launcher's own settings get wrong before any job starts (joblib's n_jobs=0 would fail inside it)."""
    if str(launcher.get("_target_", "")).endswith("JoblibLauncher") and launcher.get("n_jobs") == 0:
        return "hydra.launcher.n_jobs=0: how many jobs joblib runs at once (a positive number; -1 every core)"
    return None


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(batch)
        problem = launcher_problem(self.config.hydra.launcher)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            sys.exit(2)
        loader = self.hydra_context.config_loader
        machine = launcher_machine(self.config.hydra.launcher)  # SLURM: check against the nodes, not this one
        datasets = {}  # one load per data config: the points of a sweep mostly share one
        for overrides in batch:
            point = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))
            try:
                validate(point, machine)
                if point.task.name == "train":
                    key = OmegaConf.to_yaml(point.data)
                    if key not in datasets:
                        datasets[key] = data.load(point.data)
                    check_data(point, datasets[key])
            except ConfigError as error:
                print(f"error: sweep point {' '.join(overrides)}: {error}", file=sys.stderr)
                sys.exit(2)
