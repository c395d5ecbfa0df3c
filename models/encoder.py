"""The BERT-style encoder family: the GPT's blocks without the causal mask, trained by masked-token prediction.

Masking follows Devlin et al. (2019): 15% of positions are chosen; of those, 80% become the [MASK] token, 10%
a random token and 10% stay as they are; the loss is over the chosen positions only (the rest are IGNORE).
[MASK] is one token past the data's vocabulary, so the model's vocabulary is one larger.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from models.gpt import GPT, IGNORE, GPTConfig

MASK_RATE = 0.15


def build(cfg: GPTConfig) -> GPT:
    return GPT(replace(cfg, causal=False))


def model_vocab(data_vocab: int) -> int:
    return data_vocab + 1


def mask_tokens(tokens_bn: torch.Tensor, data_vocab: int, generator: torch.Generator,
                rate: float = MASK_RATE) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for masked-token prediction of tokens on the host; `generator` fixes which positions are chosen."""
    shape = tokens_bn.shape
    chosen = torch.rand(shape, generator=generator) < rate
    action = torch.rand(shape, generator=generator)
    random_tokens = torch.randint(0, data_vocab, shape, generator=generator)
    inputs = tokens_bn.clone()
    inputs[chosen & (action < 0.8)] = data_vocab                      # [MASK]
    swap = chosen & (action >= 0.8) & (action < 0.9)
    inputs[swap] = random_tokens[swap]                                 # a random token; the last 10% stay
    targets = torch.where(chosen, tokens_bn, torch.full_like(tokens_bn, IGNORE))
    return inputs, targets
