"""task=inference and length extrapolation: the KV cache against recomputation and its formula, bad input."""
import json
import math

import pytest

from harness import flops
from models import encdec
from tests.conftest import harness_cmd

TINY = ["data=markov", "data.train_tokens=2e5", "data.val_tokens=2e4", "model.n_layer=2", "model.d_model=32",
        "model.n_head=2", "progress=off"]


def run(tmp_path, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = harness_cmd(*TINY, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "run" / "record.json").read_text())


def test_cached_decoding_matches_recomputation_and_the_cache_matches_its_formula(tmp_path):
    # d_model 128: every Linear fits NF4's blocks, so nf4 < int8 < fp32
    record = run(tmp_path, "task=inference", "model.d_model=128", "model.positions=rope", "model.seq_len=64", "task.context=200",
                 "task.new_tokens=9", "task.batch_size=3", "task.repeats=1", "task.eval_tokens=2048",
                 "task.compare_weights=[bf16,int8,nf4]", "task.train_tokens=1e5", f"+data.cache_dir={tmp_path}/cache")
    m, w = record["metrics"], record["weights"]
    assert m["cache_matches_recompute"] is True
    formula = flops.kv_cache_bytes(n_layer=2, kv_heads=2, head_dim=64, context=209, batch=3, bytes_per_element=4)
    assert formula == 2 * 2 * 2 * 64 * 209 * 3 * 4 == m["kv_cache_bytes_formula"] == m["kv_cache_bytes"]
    assert m["cache_exceeds_weights_at_context"] == pytest.approx(m["weights_bytes"] / (formula / 209))
    assert w["bf16"]["weights_bytes"] == m["weights_bytes"] / 2
    assert w["nf4"]["weights_bytes"] < w["int8"]["weights_bytes"] < m["weights_bytes"]
    # Trained first (task.train_tokens), so the loss is well below uniform over 16 symbols, and bf16 moves it a little.
    assert m["val_loss"] < 0.95 * 2.7726
    assert 0 < abs(w["bf16"]["val_loss_change"]) < 0.05
    assert "trained here" in record["model_info"]["weights_source"]
    assert list((tmp_path / "cache" / "models").glob("*/model.pt"))


def test_an_encoder_decoder_decodes_with_cached_cross_attention_and_the_cache_matches_its_formula(tmp_path):
    record = run(tmp_path, "task=inference", "model=encdec", "model.positions=rope", "model.seq_len=64", "task.context=150",
                 "task.new_tokens=12", "task.batch_size=2", "task.repeats=1", "task.eval_tokens=2048")
    m, info = record["metrics"], record["model_info"]
    assert info["family"] == "encdec" and info["params_encoder"] + info["params_decoder"] == info["params_non_embedding"]
    assert m["cache_matches_recompute"] is True
    # 150 encoder outputs (cross-attention) + 12 decoder positions (self-attention), per decoder layer
    formula = flops.kv_cache_bytes(n_layer=2, kv_heads=2, head_dim=16, context=162, batch=2, bytes_per_element=4)
    assert formula == m["kv_cache_bytes_formula"] == m["kv_cache_bytes"]
    # random weights: near uniform over the 16 symbols, the sentinels and the start token
    assert m["val_loss"] == pytest.approx(math.log(encdec.model_vocab(16, 64)), abs=0.1)


@pytest.mark.parametrize("override,message", [
    (["task.context=60", "task.new_tokens=8", "model.seq_len=64"],
     "error: task.context=60 + task.new_tokens=8 exceeds the learned position table of model.seq_len=64; "
     "raise model.seq_len or use positions=rope|sinusoidal|alibi"),
    (["parallel=ddp"], "error: task=inference runs on one device, got parallel=ddp"),
    (["task.weights=int4"], "error: task.weights='int4'; known: fp32, bf16, int8, nf4"),
    (["model.family=mamba"], "error: model.family='mamba'; known: gpt, encoder, encdec"),
])
def test_bad_inference_requests_are_one_line(tmp_path, override, message):
    result = harness_cmd(*TINY, "task=inference", *override, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == message


def test_length_extrapolation_evaluates_past_the_training_length_where_the_encoding_allows(tmp_path):
    common = ["data.tokens=2e4", "model.seq_len=32", "task.batch_size=8", "task.eval_points=1", "task.eval_tokens=2048",
              "task.eval_lengths=[1,2,4]"]
    sinusoidal = run(tmp_path / "s", *common, "model.positions=sinusoidal")["length_extrapolation"]
    assert [sinusoidal[k]["seq_len"] for k in ("x1", "x2", "x4")] == [32, 64, 128]
    assert all(sinusoidal[k]["val_loss"] > 0 for k in ("x1", "x2", "x4"))
    record = run(tmp_path / "l", *common)
    learned = record["length_extrapolation"]
    assert learned["x1"]["val_loss"] == pytest.approx(record["metrics"]["val_loss"], rel=1e-6)  # the same windows
    assert learned["x2"]["val_loss"] is None and "stop at model.seq_len=32" in learned["x2"]["unsupported"]
