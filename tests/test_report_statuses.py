"""Every study's report from any mix of statuses: all runs unsupported (a GPU study on a machine without its extra),
or a few ok among unsupported and failed ones. Each kind of run that did not finish ok is one line of the report,
never a traceback."""
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from harness import records
from harness.config import CONF_DIR
from harness.report import build_report

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted(p.stem for p in (ROOT / "studies").glob("*.py") if p.stem != "__init__")
COMMITTED = [s for s in STUDIES if (ROOT / "results" / s).is_dir() and any((ROOT / "results" / s).rglob("record.json"))]
REFUSALS = ["precision=fp8 needs torchao, not installed here (pip install -e '.[quant]')",
            "attention=xformers: xformers is not installed (No module named 'xformers')"]


def not_ok(record: dict, status: str, error: str) -> dict:
    """The record a job writes when it stops before measuring anything: config, status, error, environment."""
    return {key: record[key] for key in ("config", "config_hash", "task", "start_time", "end_time", "env") if key in record} | {
        "status": status, "error": error}


def failed_section(report: str) -> list[str]:
    section = report.split("## Runs that did not finish ok\n\n")[1].split("\n\n")[0]
    return section.splitlines()[2:]


@pytest.mark.parametrize("study", STUDIES)
def test_a_study_whose_every_run_was_unsupported_reports_one_line_per_reason(study, tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[f"study={study}"])
    from omegaconf import OmegaConf
    config = OmegaConf.to_container(cfg, resolve=False)
    config.pop("hydra", None)
    for i in range(5):
        point = {**config, "seed": i}
        record = {"config": point, "config_hash": records.config_hash(point), "task": point["task"]["name"],
                  "start_time": "2026-12-04T00:00:00+00:00", "end_time": "2026-12-04T00:00:01+00:00",
                  "env": {"device": "cuda", "device_name": "NVIDIA H200"}}
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "record.json").write_text(json.dumps(not_ok(record, "unsupported", REFUSALS[i % 2])))
    report = (build_report(tmp_path, tmp_path / "report", study=study) / "report.md").read_text()
    lines = failed_section(report)
    assert len(lines) == 2, lines
    assert {line.split(" | ")[1] for line in lines} == {"3", "2"}   # runs per reason
    assert all(any(reason in line for line in lines) for reason in REFUSALS)


@pytest.mark.parametrize("study", COMMITTED)
def test_a_study_with_a_few_runs_ok_among_unsupported_and_failed_ones_reports(study, tmp_path):
    """The committed records, all but two turned unsupported or out of memory (the statuses a GPU without an extra,
    or a point too large for it, leave)."""
    paths = sorted((ROOT / "results" / study).rglob("record.json"))
    kinds, not_ok_runs = set(), 0
    for i, path in enumerate(paths):
        target = tmp_path / path.relative_to(ROOT / "results" / study)
        target.parent.mkdir(parents=True, exist_ok=True)
        record = json.loads(path.read_text())
        if i >= 2:
            record = not_ok(record, "unsupported" if i % 2 else "oom", REFUSALS[i % 2])
        if record["status"] != "ok":
            kinds.add((record["status"], record["error"]))
            not_ok_runs += 1
        target.write_text(json.dumps(record))
    report = (build_report(tmp_path, tmp_path / "report", study=study) / "report.md").read_text()
    lines = failed_section(report)
    assert len(lines) == len(kinds) and sum(int(line.split(" | ")[1]) for line in lines) == not_ok_runs
