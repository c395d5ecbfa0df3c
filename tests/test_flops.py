"""The FLOP formulas against PyTorch's own counter, and the parameter formulas against numel()."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import flops
from models.gpt import GPT, GPTConfig
from models.sizing import non_embedding_params, shape_for_params

SHAPES = [
    dict(n_layer=1, d_model=32, n_head=2, seq_len=16, vocab_size=256),
    dict(n_layer=2, d_model=64, n_head=4, seq_len=64, vocab_size=256),
    dict(n_layer=3, d_model=96, n_head=3, seq_len=128, vocab_size=1000, mlp_ratio=2.0),
    dict(n_layer=2, d_model=128, n_head=8, seq_len=256, vocab_size=512, tie_embeddings=False, bias=False),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s['n_layer']}d{s['d_model']}n{s['seq_len']}")
def test_dense_count_matches_flop_counter(shape):
    cfg = GPTConfig(attention="dense", **shape)
    model = GPT(cfg)
    batch = 2
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))
    with FlopCounterMode(display=False) as counter:
        _, loss = model(idx, idx)
        loss.backward()
    measured_per_token = counter.get_total_flops() / (batch * cfg.seq_len)
    predicted = flops.training_flops_per_token(cfg, non_embedding_params(cfg))
    assert predicted.dense == pytest.approx(measured_per_token, rel=0.02)


def test_causal_count_is_the_keys_a_causal_mask_lets_through():
    cfg = GPTConfig(n_layer=2, d_model=64, n_head=4, seq_len=100)
    per_token = flops.training_flops_per_token(cfg, non_embedding_params(cfg))
    # Query i sees i+1 keys: sum over i of (i+1) = n(n+1)/2, against n^2 for the dense kernel.
    assert per_token.attention_causal / per_token.attention_dense == pytest.approx(101 / 200)
    assert per_token.dense - per_token.causal == pytest.approx(per_token.attention_dense - per_token.attention_causal)
    assert per_token.six_n == 6 * non_embedding_params(cfg)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s['n_layer']}d{s['d_model']}")
def test_closed_form_param_count_is_exact(shape):
    model = GPT(GPTConfig(**shape))
    counts = model.param_counts()
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["non_embedding"] == non_embedding_params(model.cfg)


@pytest.mark.parametrize("target", [2e4, 1e5, 3e6, 2.5e7])
def test_shape_for_params_lands_within_ten_percent(target):
    n_layer, d_model, n_head = shape_for_params(target, aspect_ratio=32, head_dim=16)
    n = non_embedding_params(GPTConfig(n_layer=n_layer, d_model=d_model, n_head=n_head))
    assert abs(n / target - 1) <= 0.10
    assert d_model == 16 * n_head


def test_shape_for_params_rejects_impossible_targets():
    with pytest.raises(ValueError, match="model.params=10"):
        shape_for_params(10, head_dim=32)


def test_peak_table_knows_gpus_and_not_cpus():
    assert flops.peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert flops.peak_flops("AMD EPYC 7B13", "fp32") is None
