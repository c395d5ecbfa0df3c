"""The architecture families: how each is built, its vocabulary, and the (inputs, targets) it learns from.

  gpt      decoder-only, causal; predicts every next token
  encoder  BERT-style bidirectional encoder; predicts the 15% masked tokens (models/encoder.py)
  encdec   T5-style encoder-decoder; writes the spans corruption hid (models/encdec.py)
"""
from __future__ import annotations

import numpy as np
import torch

from harness import flops
from models import encdec, encoder
from models.gpt import GPT, GPTConfig
from models.sizing import non_embedding_params

FAMILIES = ("gpt", "encoder", "encdec")
# What each family's loss is: the losses of different families are different quantities.
LOSS = {"gpt": "next-token cross-entropy", "encoder": "masked-token cross-entropy over the 15% masked positions",
        "encdec": "cross-entropy of the decoder's sentinels and hidden spans (span corruption, 15% noise)"}
EVAL_MASK_SEED = 1234  # evaluation masks the same positions every time, so its losses compare along a run


def causal(family: str) -> bool:
    return family == "gpt"


def model_vocab(family: str, data_vocab: int, seq_len: int) -> int:
    if family == "encoder":
        return encoder.model_vocab(data_vocab)
    if family == "encdec":
        return encdec.model_vocab(data_vocab, seq_len)
    return data_vocab


def build(family: str, cfg: GPTConfig) -> torch.nn.Module:
    if family == "encoder":
        return encoder.build(cfg)
    if family == "encdec":
        return encdec.EncoderDecoder(cfg)
    return GPT(cfg)


def flops_per_token(family: str, cfg: GPTConfig) -> flops.FlopsPerToken:
    """Exact training FLOPs per token of the data (harness/flops.py)."""
    if family == "encdec":
        return flops.encdec_training_flops_per_token(cfg, non_embedding_params(cfg, "encdec"))
    return flops.training_flops_per_token(cfg, non_embedding_params(cfg))


class Examples:
    """Turns token windows of seq_len + 1 on the host into (inputs, targets) for the family's objective."""

    def __init__(self, family: str, data_vocab: int, seed: int):
        self.family, self.data_vocab = family, data_vocab
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def __call__(self, windows_bn: torch.Tensor, generator: torch.Generator | None = None,
                 rng: np.random.Generator | None = None):
        if self.family == "encoder":
            return encoder.mask_tokens(windows_bn[:, :-1], self.data_vocab, generator or self.generator)
        if self.family == "encdec":
            return encdec.corrupt_spans(windows_bn[:, :-1], self.data_vocab, rng or self.rng)
        return windows_bn[:, :-1], windows_bn[:, 1:]

    def state(self) -> dict:
        """The generators the training examples draw from (masking, span corruption), for a checkpoint."""
        return {"generator": self.generator.get_state(), "rng": self.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]

    def for_evaluation(self, chunk_index: int):
        """The same examples from the same validation chunk at every evaluation."""
        generator = torch.Generator().manual_seed(EVAL_MASK_SEED + chunk_index)
        rng = np.random.default_rng(EVAL_MASK_SEED + chunk_index)
        return lambda windows_bn: self(windows_bn, generator, rng)
