"""The GPT's structural promises: causality, positions, tying, determinism."""
import math

import pytest
import torch

from models.common import KVCache, head_views
from models.gpt import GPT, GPTConfig, param_counts
from models.spec import token_loss
from models.positions import Rotary, alibi_bias, alibi_slopes, sinusoidal_table


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "alibi"])
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
    assert param_counts(untied)["total"] - param_counts(tied)["total"] == 256 * 32
    assert param_counts(untied)["non_embedding"] == param_counts(tied)["non_embedding"]


def test_initial_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, d_model=64, n_head=4, seq_len=32))
    idx, targets = torch.randint(0, 256, (2, 4, 32))
    loss = token_loss(model(idx), targets)
    assert loss.item() == pytest.approx(math.log(256), rel=0.02)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "alibi"])
def test_decoding_with_the_kv_cache_gives_the_full_forward_logits(positions):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, seq_len=24, n_layer=2, d_model=32, n_head=4, positions=positions)
    model = GPT(cfg).eval()
    idx = torch.randint(0, 50, (2, 21))
    cache = KVCache(cfg.n_layer, 2, cfg.n_head, 24, cfg.head_dim, torch.float32, torch.device("cpu"))
    with torch.no_grad():
        full = model(idx)
        stepwise = [model(idx[:, :13], cache=cache)] + [model(idx[:, i:i + 1], cache=cache) for i in range(13, 21)]
    torch.testing.assert_close(torch.cat(stepwise, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 21
    assert cache.nbytes() == 2 * 2 * 4 * 8 * 24 * 2 * 4  # k and v x layers x heads x head_dim x positions x batch x fp32


def test_alibi_matches_the_papers_slopes_and_a_float64_reference():
    # Press et al. 2022: 8 heads get 1/2, 1/4, ..., 1/256; 6 heads take 4 from 2^-2k and 2 more from the 8-head set.
    assert alibi_slopes(8).tolist() == [2.0 ** -k for k in range(1, 9)]
    assert alibi_slopes(6).tolist() == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3]
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, seq_len=16, n_layer=1, d_model=32, n_head=4, positions="alibi")
    attn = GPT(cfg).blocks[0].attn.eval()
    x = torch.randn(2, 11, 32)
    q, k, v = attn.qkv(x).view(2, 11, 4, 3, 8).permute(3, 0, 2, 1, 4).double()
    i, j = torch.arange(11)[:, None], torch.arange(11)[None, :]
    scores = q @ k.transpose(-1, -2) / 8 ** 0.5 - alibi_slopes(4).double()[:, None, None] * (i - j)
    reference = attn.proj(torch.softmax(scores.masked_fill(j > i, float("-inf")), -1).matmul(v)
                          .transpose(1, 2).reshape(2, 11, 32).float())
    with torch.no_grad():
        torch.testing.assert_close(attn(x), reference, rtol=1e-5, atol=1e-6)
    # 4 heads: slopes 1/4, 1/16, ...; one decoding query at the last of 5 positions, head 0
    assert alibi_bias(alibi_slopes(4), 1, 5, causal=False)[0, 0].tolist() == [-1.0, -0.75, -0.5, -0.25, 0.0]


def test_a_learned_table_refuses_positions_past_it_and_the_others_extend():
    for positions, ok in (("learned", False), ("sinusoidal", True), ("rope", True), ("alibi", True)):
        model = GPT(GPTConfig(vocab_size=50, seq_len=8, n_layer=1, d_model=16, n_head=2, positions=positions))
        if ok:
            assert model(torch.zeros(1, 20, dtype=torch.long)).shape == (1, 20, 50)
        else:
            with pytest.raises(ValueError, match="exceeds the learned table of model.seq_len=8"):
                model(torch.zeros(1, 20, dtype=torch.long))


def test_head_views_read_each_heads_columns_and_their_backward_copies_once():
    from torch.profiler import ProfilerActivity, profile

    b, n, heads, head_dim = 2, 5, 4, 8
    packed = torch.randn(b, n, heads * 3 * head_dim, dtype=torch.float64, requires_grad=True)
    q, k, v = head_views(packed, 3, head_dim)
    for part, view in enumerate((q, k, v)):   # head h's [q k v] are columns h*3*hd .. (h+1)*3*hd, in that order
        for h in range(heads):
            start = (3 * h + part) * head_dim
            assert torch.equal(view[:, h], packed[:, :, start:start + head_dim])
    grads = [torch.randn(q.shape, dtype=torch.float64) for _ in range(3)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.autograd.backward((q, k, v), grads)
    copies = {e.key: e.count for e in prof.key_averages() if e.key in ("aten::copy_", "aten::clone", "aten::stack")}
    assert copies == {"aten::stack": 1}, copies   # a permute before the unbind adds a strided clone
    for part, grad in enumerate(grads):
        for h in range(heads):
            start = (3 * h + part) * head_dim
            assert torch.equal(packed.grad[:, :, start:start + head_dim], grad[:, h])
