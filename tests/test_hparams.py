"""Learning rates and batch sizes from a fitted law or a published rule (harness/hparams.py), resolved per run."""
import json

import pytest
from omegaconf import OmegaConf

from harness import hparams
from harness.errors import ConfigError
from tests.conftest import TINY, harness_cmd

TASK = {"lr": 2e-3, "batch_size": 16, "warmup_fraction": 0.05, "beta2": 0.95, "lr_law": None}


def task(**changes):
    return OmegaConf.create({**TASK, **changes})


def test_a_law_file_gives_c_n_to_the_minus_gamma(tmp_path):
    law = tmp_path / "fits.json"
    law.write_text(json.dumps({"lr_law": {"c": 0.3, "gamma": 0.4}}))
    chosen = hparams.resolve(task(lr="law", lr_law=str(law)), 1e4, 1e12, 128, 1e6)
    assert chosen.lr == pytest.approx(0.3 * 1e4 ** -0.4) and chosen.batch_size == 16 and chosen.beta2 == 0.95
    assert chosen.info["lr"] == {"rule": "law", "path": str(law), "c": 0.3, "gamma": 0.4, "params": 1e4}


def test_porians_rule_at_its_reference_size_and_deepseeks_in_compute():
    chosen = hparams.resolve(task(lr="porian", batch_size="porian"), 108e6, 1e19, 1024, 2e9)
    assert chosen.lr == pytest.approx(0.0047) and chosen.batch_size == 320   # 327,680 tokens / 1024
    assert chosen.beta2 == 0.99 and chosen.warmup_fraction == pytest.approx(108e6 / 2e9)   # warm-up: N tokens
    eight_x = hparams.resolve(task(lr="porian", batch_size="porian"), 8 * 108e6, 1e20, 1024, 2e10)
    assert eight_x.lr == pytest.approx(0.0047 / 2) and eight_x.batch_size == 1280 and eight_x.beta2 == 0.95
    deepseek = hparams.resolve(task(lr="deepseek", batch_size="deepseek"), 1e9, 1e20, 2048, 1e10)
    assert deepseek.lr == pytest.approx(0.3118 * 1e20 ** -0.125)
    assert deepseek.batch_size == round(0.2920 * 1e20 ** 0.3271 / 2048)
    assert "DeepSeek LLM" in deepseek.info["lr"]["citation"] and deepseek.info["lr"]["compute"] == 1e20


def test_a_sweep_point_trains_with_the_laws_learning_rate_for_its_size(tmp_path):
    (tmp_path / "fits.json").write_text(json.dumps({"lr_law": {"c": 0.5, "gamma": 0.3}}))
    done = harness_cmd(*TINY, "task.lr=law", "task.lr_law=fits.json", "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    n = record["model_info"]["params_non_embedding"]
    assert record["config"]["task"]["lr"] == "law"
    assert record["hparams_info"]["lr_in_effect"] == pytest.approx(0.5 * n ** -0.3)
    assert record["schedule_info"]["peak_lr"] == pytest.approx(0.5 * n ** -0.3)


@pytest.mark.parametrize("overrides, message", [
    (["task.lr=law"], "task.lr=law needs task.lr_law=PATH"),
    (["task.lr=law", "task.lr_law=missing.json"], "task.lr_law=missing.json: no such file"),
    (["task.lr=fast"], "task.lr='fast': a positive number or one of law, porian, deepseek"),
    (["task.batch_size=huge"], "task.batch_size='huge': a positive whole number or one of porian, deepseek"),
    (["task.batch_size=porian", "parallel=ddp"], "task.batch_size=porian is resolved per model size"),
])
def test_a_bad_rule_is_one_line(tmp_path, overrides, message):
    done = harness_cmd(*TINY, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert not (tmp_path / "run" / "record.json").exists()


def test_a_law_file_without_a_law_names_the_file(tmp_path):
    (tmp_path / "fits.json").write_text(json.dumps({"isoflop": {}}))
    with pytest.raises(ConfigError, match="fits.json: no lr_law with c and gamma"):
        hparams.read_lr_law(tmp_path / "fits.json")
