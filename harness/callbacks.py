"""At the end of a sweep, build its report (tables, study analysis, figures) from the records alone."""
from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("harness")


class ReportAfterSweep(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from harness.report import build_report
        sweep_dir = Path(config.hydra.sweep.dir)
        out = build_report([sweep_dir], sweep_dir / "report", study=config.study.name, echo=True)
        log.info("report: %s", out / "report.md")
