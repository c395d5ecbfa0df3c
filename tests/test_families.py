"""The encoder family: bidirectional blocks, BERT's masking, exact FLOPs, and training through the same runner."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import flops
from models import encoder
from models import gpt
from models.gpt import GPTConfig
from models.spec import IGNORE, token_loss
from tests.conftest import harness_cmd


def test_masking_follows_bert():
    tokens = torch.randint(0, 50, (64, 512), generator=torch.Generator().manual_seed(0))
    inputs, targets = encoder.mask_tokens(tokens, 50, torch.Generator().manual_seed(1))
    chosen = targets != IGNORE
    assert chosen.float().mean().item() == pytest.approx(0.15, abs=0.005)
    assert torch.equal(targets[chosen], tokens[chosen]) and torch.equal(inputs[~chosen], tokens[~chosen])
    masked = (inputs == 50) & chosen
    kept = (inputs == tokens) & chosen
    assert masked.sum() / chosen.sum() == pytest.approx(0.8, abs=0.01)
    # The random 10% keep their token 1 time in 50 by chance: kept = 10% + 10% / 50.
    assert kept.sum() / chosen.sum() == pytest.approx(0.1 + 0.1 / 50, abs=0.01)
    assert (inputs[~masked] < 50).all() and (inputs[masked] == 50).all()  # the [MASK] id only where masked


def test_every_output_sees_the_whole_sequence():
    torch.manual_seed(0)
    model = encoder.SPEC.build(GPTConfig(vocab_size=51, n_layer=2, d_model=32, n_head=4, seq_len=24, positions="alibi", causal=False)).eval()
    idx = torch.randint(0, 50, (2, 24))
    changed = idx.clone()
    changed[:, 20:] = (changed[:, 20:] + 1) % 50
    with torch.no_grad():
        assert not torch.allclose(model(idx)[:, :5], model(changed)[:, :5])  # early positions read later tokens


@pytest.mark.parametrize("seq_len", [16, 64])
def test_encoder_flops_match_the_flop_counter(seq_len):
    cfg = GPTConfig(attention="dense", causal=False, n_layer=2, d_model=64, n_head=4, seq_len=seq_len, vocab_size=257)
    model = encoder.SPEC.build(cfg)
    idx = torch.randint(0, 256, (2, seq_len))
    with FlopCounterMode(display=False) as counter:
        inputs, targets = encoder.mask_tokens(idx, 256, torch.Generator().manual_seed(0))
        loss = token_loss(model(inputs), targets)
        loss.backward()
    per_token = gpt.flops_per_token(cfg)
    assert per_token.causal == per_token.dense  # no mask: every key is needed
    assert per_token.dense == pytest.approx(counter.get_total_flops() / (2 * seq_len), rel=1e-9)


TINY = ["data=markov", "data.train_tokens=2e5", "data.val_tokens=2e4", "model.n_layer=2", "model.d_model=64",
        "model.n_head=2", "model.seq_len=32", "task.batch_size=16", "task.eval_tokens=4096", "progress=off"]


def test_the_encoder_trains_through_the_same_runner_and_its_record_says_so(tmp_path):
    result = harness_cmd("model=encoder", *TINY, "data.tokens=1e5", "task.eval_points=4", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    info = record["model_info"]
    assert (info["family"], info["vocab_size"]) == ("encoder", 17)  # 16 symbols + [MASK]
    assert info["params_encoder"] == info["params_non_embedding"] and info["params_decoder"] == 0
    losses = [point["val_loss"] for point in record["curve"]]
    assert losses[-1] < losses[0] < 2.85  # masked tokens over 16 symbols: uniform is ln 16 = 2.77
    assert record["metrics"]["flops"] == record["metrics"]["flops_dense"]


def test_an_encoder_has_no_kv_cache_to_decode_with(tmp_path):
    # what a family cannot do is an `unsupported` record (its spec says why), so a sweep over families goes on
    result = harness_cmd("model=encoder", "task=inference", *TINY, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: unsupported: task=inference decodes left to right with a KV cache; "
                                     "model.family=encoder is not a decoder")
    assert json.loads((tmp_path / "run" / "record.json").read_text())["status"] == "unsupported"


def test_span_corruption_hides_15_percent_in_spans_the_decoder_writes_back():
    import numpy as np

    from models import encdec
    windows = torch.randint(0, 50, (8, 128), generator=torch.Generator().manual_seed(0))
    packed, targets = encdec.corrupt_spans(windows, 50, np.random.default_rng(0))
    layout = encdec.span_layout(128)
    assert (layout.noise, layout.spans, layout.encoder_len, layout.decoder_len) == (19, 6, 115, 25)
    assert packed.shape == (8, 115 + 25) and targets.shape == (8, 25)
    for row in range(8):
        hidden, current = {}, None
        for token in targets[row].tolist():  # sentinel, its span, next sentinel, ...
            if token >= 50:
                current = hidden.setdefault(token, [])
            else:
                current.append(token)
        rebuilt = [t for token in packed[row, :115].tolist() for t in (hidden[token] if token >= 50 else [token])]
        assert rebuilt == windows[row].tolist()
        assert sorted(hidden) == list(range(50, 56)) and all(hidden.values())
        # the decoder reads the targets shifted right after its start token (50 + 6 sentinels = 56)
        assert packed[row, 115:].tolist() == [56] + targets[row, :-1].tolist()


@pytest.mark.parametrize("seq_len", [40, 128])
def test_encoder_decoder_flops_and_parameter_split_are_exact(seq_len):
    import numpy as np

    from models import encdec
    cfg = GPTConfig(attention="dense", n_layer=2, d_model=64, n_head=4, seq_len=seq_len,
                    vocab_size=encdec.model_vocab(256, seq_len))
    model = encdec.EncoderDecoder(cfg)
    counts = encdec.param_counts(model)
    assert counts["encoder"] + counts["decoder"] == counts["non_embedding"] == encdec.non_embedding_params(cfg)
    packed, targets = encdec.corrupt_spans(torch.randint(0, 256, (2, seq_len)), 256, np.random.default_rng(0))
    with FlopCounterMode(display=False) as counter:
        loss = token_loss(model(packed), targets)
        loss.backward()
    per_token = encdec.flops_per_token(cfg)
    assert per_token.dense == pytest.approx(counter.get_total_flops() / (2 * seq_len), rel=1e-9)
    assert per_token.causal < per_token.dense  # the decoder's self-attention is causal


def test_the_encoder_decoder_trains_and_bad_layouts_are_one_line(tmp_path):
    result = harness_cmd("model=encdec", *TINY, "data.tokens=4e4", "task.eval_points=3", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    info = record["model_info"]
    assert info["family"] == "encdec" and info["params_encoder"] + info["params_decoder"] == info["params_non_embedding"]
    losses = [point["val_loss"] for point in record["curve"]]
    assert losses[-1] < losses[0]
    for override, message in (
            ("attention=performer", "error: model.family=encdec cross-attends queries to a different number of keys: "
                                    "it needs attention=sdpa or dense, got attention=performer"),
            ("parallel=pp", "error: unsupported: model.family=encdec has two stacks the decoder reads across; "
                            "parallel=pp splits one stack into stages (parallel=pp, task=train)"),
            ("task=inference", "error: task.context=224 and task.new_tokens=32 must fit the learned tables of "
                               "model.seq_len=32: 29 encoder and 7 decoder positions; raise model.seq_len or use "
                               "positions=rope|sinusoidal|alibi")):
        result = harness_cmd("model=encdec", *TINY, override, "hydra.run.dir=bad", cwd=tmp_path)
        assert (result.returncode, result.stderr.strip()) == (1 if "unsupported" in message else 2, message)


@pytest.mark.parametrize("positions", ["learned", "sinusoidal", "rope", "alibi"])
def test_encoder_decoder_decoding_with_its_cache_gives_the_full_decoder_logits(positions):
    from models import encdec
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, d_model=32, n_head=4, seq_len=64, vocab_size=encdec.model_vocab(256, 64), positions=positions)
    model = encdec.EncoderDecoder(cfg).eval()
    encoder_in, decoder_in = torch.randint(0, 256, (3, 21)), torch.randint(0, 256, (3, 9))
    cache = encdec.EncDecCache(cfg, batch=3, encoder_len=21, max_len=9, dtype=torch.float32, device=torch.device("cpu"))
    with torch.no_grad():
        memory = model.encode(encoder_in)
        full = model.decode(decoder_in, memory)
        stepwise = [model.decode(decoder_in[:, i:i + 1], memory, cache) for i in range(9)]
    assert torch.allclose(torch.cat(stepwise, dim=1), full, atol=1e-5, rtol=0)
    assert cache.length == 9
    # self-attention keys and values of 9 decoder positions, cross-attention ones of 21 encoder outputs
    assert cache.nbytes() == flops.kv_cache_bytes(n_layer=2, kv_heads=4, head_dim=8, context=21 + 9, batch=3,
                                                  bytes_per_element=4) == 2 * 2 * 4 * 8 * 30 * 3 * 4
