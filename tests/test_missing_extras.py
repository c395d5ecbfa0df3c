"""A study whose optional extra is missing still measures everything else: only the entries that need torchao
say why they were not measured, the config check refuses nothing that could run, and the report says it in a line.
(The first GPU run had no torchao: the precision study stopped at its config check and every inference point was
an unsupported record.)"""
import json

import pytest
from hydra import compose, initialize_config_dir

from harness import quantize
from harness.cli import run_point
from harness.config import CONF_DIR, validate
from harness.report import build_report

ABSENT = "weight-only quantization needs torchao, not installed here (pip install -e '.[quant]')"
TINY = ["data=markov", "data.train_tokens=2e5", "data.val_tokens=2e4", "model.n_layer=2", "model.d_model=32",
        "model.n_head=2", "model.seq_len=64", "progress=off", "device=cpu"]


@pytest.fixture
def no_torchao(monkeypatch):
    monkeypatch.setattr(quantize, "torchao_problem", lambda: ABSENT)


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=[*TINY, *overrides])


def test_training_with_quantized_evaluation_runs_and_says_which_copies_it_could_not_make(no_torchao, tmp_path):
    cfg = composed("data.tokens=8192", "task.batch_size=4", "task.eval_tokens=1024", "task.eval_quantized=[int8,nf4]",
                   "study=precision")
    validate(cfg)
    record = run_point(cfg, tmp_path / "run")
    assert record["status"] == "ok" and record["metrics"]["val_loss"] > 0
    assert record["quantized"]["int8"] == record["quantized"]["nf4"] == {"unsupported": ABSENT}
    report = (build_report(tmp_path, tmp_path / "report", study="precision") / "report.md").read_text()
    assert f"| int8 |  |  |  | {ABSENT} |" in report


def test_an_unknown_quantization_is_still_refused_by_the_config_check():
    from harness.errors import ConfigError
    with pytest.raises(ConfigError, match="task.eval_quantized: unknown quantization 'int4'; known: int8, nf4"):
        validate(composed("task.eval_quantized=[int4]"))


def test_inference_measures_every_weight_precision_it_can_and_names_the_ones_it_cannot(no_torchao, tmp_path):
    cfg = composed("task=inference", "model.positions=rope", "task.context=32", "task.new_tokens=4",
                   "task.batch_size=2", "task.eval_tokens=1024", "task.compare_weights=[bf16,int8,nf4]", "study=inference")
    validate(cfg)
    record = run_point(cfg, tmp_path / "run")
    assert record["status"] == "ok" and record["metrics"]["decode_tokens_per_s"] > 0
    assert record["weights"]["bf16"]["decode_tokens_per_s"] > 0
    assert record["weights"]["int8"] == record["weights"]["nf4"] == {"unsupported": ABSENT}
    report = (build_report(tmp_path, tmp_path / "report", study="inference") / "report.md").read_text()
    assert f"Weights int8 not measured here: {ABSENT}" in report and f"Weights nf4 not measured here: {ABSENT}" in report
    assert "| bf16 |" in report
    # a point whose own weights need torchao measures nothing: one unsupported record, one line of the report
    with pytest.raises(SystemExit):
        run_point(composed("task=inference", "task.weights=int8", "model.positions=rope"), tmp_path / "int8")
    assert json.loads((tmp_path / "int8" / "record.json").read_text())["error"] == f"task.weights=int8: {ABSENT}"
