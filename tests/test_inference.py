"""task=inference and length extrapolation: the KV cache against recomputation and its formula, bad input."""
import json
import math

import pytest
import torch

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
                 "task.new_tokens=9", "task.batch_size=3", "task.eval_tokens=2048",
                 "task.compare_weights=[bf16,int8,nf4]", "task.train_tokens=1e5", f"+data.cache_dir={tmp_path}/cache")
    m, w = record["metrics"], record["weights"]
    assert m["cache_matches_recompute"] is True and m["cache_logits_error"] < 1e-5
    formula = flops.kv_cache_bytes(n_layer=2, kv_heads=2, head_dim=64, context=209, batch=3, bytes_per_element=4)
    assert formula == 2 * 2 * 2 * 64 * 209 * 3 * 4 == m["kv_cache_bytes_formula"] == m["kv_cache_bytes"]
    assert m["cache_exceeds_weights_at_context"] == pytest.approx(m["weights_bytes"] / (formula / 209))
    rotary = 2 * 32 * 4  # each layer's fp32 rotary frequencies (head_dim / 2 of them) stay fp32 in a bf16 copy
    assert w["bf16"]["weights_bytes"] - rotary == (m["weights_bytes"] - rotary) / 2
    assert w["nf4"]["weights_bytes"] < w["int8"]["weights_bytes"] < m["weights_bytes"]
    # Trained first (task.train_tokens), so the loss is well below uniform over 16 symbols, and bf16 moves it a little.
    assert m["val_loss"] < 0.95 * 2.7726
    assert 0 < abs(w["bf16"]["val_loss_change"]) < 0.05
    assert "trained here" in record["model_info"]["weights_source"]
    assert list((tmp_path / "cache" / "models").glob("*/model.pt"))


def test_an_encoder_decoder_decodes_with_cached_cross_attention_and_the_cache_matches_its_formula(tmp_path):
    record = run(tmp_path, "task=inference", "model=encdec", "model.positions=rope", "model.seq_len=64", "task.context=150",
                 "task.new_tokens=12", "task.batch_size=2", "task.eval_tokens=2048")
    m, info = record["metrics"], record["model_info"]
    assert info["family"] == "encdec" and info["params_encoder"] + info["params_decoder"] == info["params_non_embedding"]
    assert m["cache_matches_recompute"] is True
    # 150 encoder outputs (cross-attention) + 12 decoder positions (self-attention), per decoder layer
    formula = flops.kv_cache_bytes(n_layer=2, kv_heads=2, head_dim=16, context=162, batch=2, bytes_per_element=4)
    assert formula == m["kv_cache_bytes_formula"] == m["kv_cache_bytes"]
    # random weights: near uniform over the 16 symbols, the sentinels and the start token
    assert m["val_loss"] == pytest.approx(math.log(encdec.model_vocab(16, 64)), abs=0.1)


@pytest.mark.parametrize("override,message", [  # every inference check: tests/test_config.py
    (["task.context=60", "task.new_tokens=8", "model.seq_len=64"],
     "error: task.context=60 + task.new_tokens=8 exceeds the learned position table of model.seq_len=64; "
     "raise model.seq_len or use positions=rope|sinusoidal|alibi"),
    (["attention=performer"], "error: task=inference with attention=performer: FAVOR+'s key stabiliser spans the whole "
                              "sequence, so decoding from a KV cache cannot give the full forward's outputs; use dense, "
                              "sdpa, xformers, flash_attn or longformer"),
])
def test_bad_inference_requests_are_one_line(tmp_path, override, message):
    result = harness_cmd(*TINY, "task=inference", *override, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == message


@pytest.mark.slow
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


ATTENTIONS = [("sdpa", {}), ("dense", {}), ("sdpa", {"backend": "math"}),
              ("longformer", {"window": 16, "global_tokens": 0, "block": 8}),
              ("longformer", {"window": 7, "global_tokens": 3, "block": 8}),
              ("longformer", {"window": 16, "global_tokens": 3, "impl": "flex"})]


@pytest.mark.parametrize("positions", ["learned", "rope", "sinusoidal"])
@pytest.mark.parametrize("name,options", ATTENTIONS, ids=[f"{n}{o}" for n, o in ATTENTIONS])
def test_cached_decoding_gives_the_full_forwards_logits(name, options, positions):
    # A sliding window (and its global tokens) limits which cached keys a new token sees; the prompt (20) is longer
    # than the window, so the oldest keys must drop out, exactly as in the full forward.
    from harness.tasks.inference import cached_logits_error
    from models.gpt import GPT, SPEC, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=64, seq_len=64, n_layer=2, d_model=32, n_head=2, positions=positions,
                          attention=name, attention_options=options)).eval()
    prompt = torch.randint(0, 64, (2, 20), generator=torch.Generator().manual_seed(1))
    assert cached_logits_error(model, SPEC, prompt, 30) < 1e-5


def test_the_kv_cache_is_measured_at_the_allocator_so_a_leak_shows(monkeypatch):
    # What a cached generation still holds at its end is the cache as allocated: the formula. A cache that keeps a
    # copy of every step's keys and values (a leak) holds more, and the measurement shows it.
    from harness.tasks.inference import generation_memory
    from models.common import KVCache
    from models.gpt import GPT, SPEC, GPTConfig
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=64, seq_len=64, n_layer=2, d_model=32, n_head=2, positions="rope")
    model, prompt = GPT(cfg).eval(), torch.randint(0, 64, (3, 20))
    formula = flops.kv_cache_bytes(n_layer=2, kv_heads=2, head_dim=16, context=30, batch=3, bytes_per_element=4)
    memory = generation_memory(model, SPEC, prompt, 10)
    assert memory.held == formula and memory.peak >= formula
    append = KVCache.append

    def leaky_append(self, layer, k, v):
        self.__dict__.setdefault("kept", []).append((k.clone(), v.clone()))
        return append(self, layer, k, v)

    monkeypatch.setattr(KVCache, "append", leaky_append)
    leaked = generation_memory(model, SPEC, prompt, 10)
    # every position that went through the model (the prompt's 20 and 9 decoded; the last token is never fed back)
    # kept a second time
    assert leaked.held == formula + flops.kv_cache_bytes(n_layer=2, kv_heads=2, head_dim=16, context=29, batch=3,
                                                          bytes_per_element=4)
