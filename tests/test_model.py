"""The GPT's structural promises: causality, positions, tying, determinism."""
import math

import pytest
import torch

from models.gpt import GPT, GPTConfig
from models.positions import Rotary, sinusoidal_table


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope"])
@pytest.mark.parametrize("attention", ["dense", "sdpa"])
def test_outputs_never_depend_on_future_tokens(positions, attention):
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, d_model=32, n_head=4, seq_len=24, positions=positions, attention=attention)).eval()
    idx = torch.randint(0, 256, (2, 24))
    changed = idx.clone()
    changed[:, 12:] = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_dense_and_sdpa_models_agree():
    cfg = dict(n_layer=2, d_model=32, n_head=4, seq_len=16)
    torch.manual_seed(1)
    dense = GPT(GPTConfig(attention="dense", **cfg))
    sdpa = GPT(GPTConfig(attention="sdpa", **cfg))
    sdpa.load_state_dict(dense.state_dict())
    idx = torch.randint(0, 256, (3, 16))
    torch.testing.assert_close(dense(idx), sdpa(idx), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    rotary = Rotary(8)
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 10, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 10, 8)
    scores = rotary(q.contiguous()) @ rotary(k.contiguous()).transpose(-1, -2)
    # Same vector at every position: score(i, j) is a function of i - j alone.
    assert torch.allclose(scores[0, 0, 5, 2], scores[0, 0, 7, 4], atol=1e-5)
    assert torch.allclose(scores[0, 0, 9, 3], scores[0, 0, 6, 0], atol=1e-5)
    assert not torch.allclose(scores[0, 0, 5, 2], scores[0, 0, 5, 3], atol=1e-3)


def test_sinusoidal_table_matches_the_paper():
    table = sinusoidal_table(50, 16)
    pos, i = 37, 3
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(pos / 10000 ** (2 * i / 16)), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(pos / 10000 ** (2 * i / 16)), abs=1e-6)


def test_tied_and_untied_embeddings():
    tied = GPT(GPTConfig(n_layer=1, d_model=32, n_head=2, tie_embeddings=True))
    untied = GPT(GPTConfig(n_layer=1, d_model=32, n_head=2, tie_embeddings=False))
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.param_counts()["total"] - tied.param_counts()["total"] == 256 * 32
    assert untied.param_counts()["non_embedding"] == tied.param_counts()["non_embedding"]


def test_initial_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, d_model=64, n_head=4, seq_len=32))
    idx, targets = torch.randint(0, 256, (2, 4, 32))
    _, loss = model(idx, targets)
    assert loss.item() == pytest.approx(math.log(256), rel=0.02)
