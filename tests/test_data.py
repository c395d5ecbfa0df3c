"""Data sources: deterministic splits, epochs, token files, and the Markov source's exact entropy rate."""
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from harness import data


def cfg(**kw):
    return OmegaConf.create(kw)


def test_stdlib_corpus_is_real_python_split_by_file_and_cached(tmp_path):
    first = data.load(cfg(name="stdlib", val_fraction=0.05, cache_dir=str(tmp_path)))
    again = data.load(cfg(name="stdlib", val_fraction=0.05, cache_dir=str(tmp_path)))
    assert first.vocab_size == 256 and first.bytes_per_token == 1.0
    assert len(first.train) > 1_000_000 and len(first.val) > 10_000
    assert 0.01 < len(first.val) / (len(first.train) + len(first.val)) < 0.15
    assert b"def " in bytes(first.train[:200_000]) and b"import " in bytes(first.val[:200_000])
    np.testing.assert_array_equal(first.val, again.val)
    assert len(list(tmp_path.glob("stdlib-*"))) == 2


def test_text_files_split_by_file(tmp_path):
    for i in range(40):
        (tmp_path / f"f{i:02d}.txt").write_text(f"file {i} " * 50)
    d = data.load(cfg(name="text", paths=[str(tmp_path / "*.txt")], val_fraction=0.2))
    assert len(d.train) + len(d.val) == sum(len(f"file {i} " * 50) for i in range(40))
    assert len(d.val) > 0 and len(d.train) > len(d.val)


def test_text_reports_a_glob_with_no_match(tmp_path):
    with pytest.raises(data.DataError, match="no file matches"):
        data.load(cfg(name="text", paths=[str(tmp_path / "missing*.txt")], val_fraction=0.1))


@pytest.mark.parametrize("dtype", ["uint16", "uint32"])
def test_token_files_are_memory_mapped(tmp_path, dtype):
    tokens = np.arange(10_000, dtype=dtype) % 5000
    tokens.tofile(tmp_path / "train.bin")
    d = data.load(cfg(name="tokens", train_path=str(tmp_path / "train.bin"), val_path=None, val_fraction=0.1,
                      dtype=dtype, vocab_size=5000))
    assert isinstance(d.train, np.memmap) and d.vocab_size == 5000
    np.testing.assert_array_equal(np.concatenate([d.train, d.val]), tokens)


def test_token_ids_beyond_the_vocab_are_refused(tmp_path):
    np.arange(300, dtype=np.uint16).tofile(tmp_path / "t.bin")
    with pytest.raises(data.DataError, match="vocab_size=256 but the train tokens hold id"):
        data.load(cfg(name="tokens", train_path=str(tmp_path / "t.bin"), val_path=None, val_fraction=0.1,
                      dtype="uint16", vocab_size=256))


def test_markov_entropy_rate_of_a_two_state_chain_is_the_closed_form():
    # P = [[1-p, p], [q, 1-q]]: stationary (q, p)/(p+q), rate = (q H(p) + p H(q)) / (p + q).
    p, q = 0.1, 0.3
    h = lambda x: -(x * math.log(x) + (1 - x) * math.log(1 - x))  # noqa: E731
    transitions = np.array([[1 - p, p], [q, 1 - q]])
    assert data.markov_entropy_rate(transitions, 2) == pytest.approx((q * h(p) + p * h(q)) / (p + q), rel=1e-9)


def test_markov_samples_have_the_stated_entropy_rate():
    transitions = data.markov_chain(vocab_size=4, order=2, concentration=0.5, seed=3)
    rate = data.markov_entropy_rate(transitions, 4)
    tokens = data.markov_sample(transitions, 4, 2, 400_000, seed=4).astype(np.int64)
    context = tokens[:-2] * 4 + tokens[1:-1]
    # Cross-entropy of the samples under the true chain estimates the rate (chain boundaries are negligible).
    empirical = -np.log(transitions[context, tokens[2:]]).mean()
    assert empirical == pytest.approx(rate, rel=0.01)


def test_an_order_0_source_at_gpt2s_vocabulary_draws_its_unigram():
    # Order 0: one Dirichlet draw over 50,304 tokens, every token independent; the rate is that draw's entropy.
    transitions = data.markov_chain(vocab_size=50304, order=0, concentration=0.3, seed=5)
    probabilities = transitions[0]
    entropy = -(probabilities[probabilities > 0] * np.log(probabilities[probabilities > 0])).sum()
    assert data.markov_entropy_rate(transitions, 50304) == pytest.approx(entropy, rel=1e-12)
    tokens = data.markov_sample(transitions, 50304, 0, 2_000_000, seed=6)
    assert tokens.dtype == np.uint16 and len(tokens) == 2_000_000
    assert -np.log(probabilities[tokens.astype(np.int64)]).mean() == pytest.approx(entropy, rel=0.005)
    frequent = np.argsort(probabilities)[-20:]   # each of the 20 likeliest tokens drawn in its proportion
    counts = np.bincount(tokens.astype(np.int64), minlength=50304)[frequent]
    expected = probabilities[frequent] * len(tokens)
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_batches_wrap_into_epochs_with_a_fresh_order():
    tokens = np.arange(1001, dtype=np.uint16)
    batches = data.Batches(tokens, seq_len=10, batch_size=25, seed=0)
    first_epoch = np.concatenate([batches.next() for _ in range(4)])
    assert batches.epoch == 0
    second = batches.next()
    assert batches.epoch == 1
    starts = sorted(first_epoch[:, 0])
    assert starts == list(range(0, 1000, 10))  # every window once per epoch
    np.testing.assert_array_equal(first_epoch[:, 1:], first_epoch[:, :-1] + 1)
    assert second.shape == (25, 11)
