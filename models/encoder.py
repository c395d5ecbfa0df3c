"""The BERT-style encoder family: the GPT's blocks without the causal mask, trained by masked-token prediction.

Masking follows Devlin et al. (2019): 15% of positions are chosen; of those, 80% become the [MASK] token, 10%
a random token and 10% stay as they are; the loss is over the chosen positions only (the rest are IGNORE).
[MASK] is one token past the data's vocabulary, so the model's vocabulary is one larger.
"""
from __future__ import annotations

import torch

from models import gpt
from models.spec import IGNORE, ModelSpec

MASK_RATE = 0.15


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


def examples(windows_bn: torch.Tensor, data_vocab: int, generator: torch.Generator, rng) -> tuple[torch.Tensor, torch.Tensor]:
    return mask_tokens(windows_bn[:, :-1], data_vocab, generator)


SPEC = ModelSpec(
    name="encoder", loss="masked-token cross-entropy over the 15% masked positions",
    config=lambda m, vocab_size, attention, options: gpt.config(m, vocab_size, attention, options, causal=False),
    build=gpt.GPT, model_vocab=lambda data_vocab, seq_len: data_vocab + 1,   # [MASK]
    examples=examples, flops_per_token=gpt.flops_per_token, param_counts=gpt.param_counts, describe=gpt.describe,
    non_embedding_params=gpt.stack_params, tp_plan=gpt.tp_plan, tp_divides=("n_head",), pipeline_parts=gpt.pipeline_parts,
    kv_cache="task=inference decodes left to right with a KV cache; model.family=encoder is not a decoder",
    positive=gpt.POSITIVE)
