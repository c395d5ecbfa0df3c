"""Hydra's basic sweeper, plus our config checks on every point before the first job starts.

It lives in the hydra_plugins namespace because Hydra only instantiates sweepers from there.
"""
from __future__ import annotations

import sys
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

from harness.config import ConfigError, validate


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        super().validate_batch_is_legal(batch)
        loader = self.hydra_context.config_loader
        for overrides in batch:
            point = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(overrides))
            try:
                validate(point)
            except ConfigError as error:
                print(f"error: sweep point {' '.join(overrides)}: {error}", file=sys.stderr)
                sys.exit(2)
