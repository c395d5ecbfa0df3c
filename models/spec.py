"""A model family as the harness sees it: one ModelSpec, defined beside the family's model code.

Everything the engine needs to know of a family asks its spec: how to build it from the config, its exact training
FLOPs per token, its parameter split, the (inputs, targets) it learns from, how tensor and pipeline parallelism lay
it out (or why they cannot), and how it decodes with a KV cache (or why it cannot). Config checks, sizing, FLOP
counts, parallel layouts and the tasks call these; none of them names a family. This follows torchtitan's per-model
spec (build, FLOPs, parallel plan), with the config group's `family` key naming the module: family X is
`models/X.py`'s SPEC, so adding a family touches its module (model and spec) and its `conf/model/X.yaml`.

A capability a family lacks is a sentence instead of a function: the reason a run that asks for it is recorded
`unsupported`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # a target that is not predicted (an unmasked position of a masked-token batch)


def token_loss(logits_bnv: torch.Tensor, targets_bn: torch.Tensor, predicted: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the predicted targets (IGNORE adds nothing), in fp32 whatever the logits' dtype.
    `predicted`: the summed cross-entropy over this count instead (a micro-batch's share of its whole batch's mean,
    right also when masked objectives predict more targets in one micro-batch than in another)."""
    logits, targets = logits_bnv.float().reshape(-1, logits_bnv.shape[-1]), targets_bn.reshape(-1)
    if predicted is None:
        return F.cross_entropy(logits, targets, ignore_index=IGNORE)
    return F.cross_entropy(logits, targets, ignore_index=IGNORE, reduction="sum") / predicted


def next_token_examples(windows_bn: torch.Tensor, data_vocab: int, generator: torch.Generator,
                        rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A causal decoder's objective: every token predicts the next."""
    return windows_bn[:, :-1], windows_bn[:, 1:]


def embedding_split(model: nn.Module, output_heads: tuple[nn.Module, ...] = ()) -> dict[str, int]:
    """Counts by numel, each tensor once (a tied weight counts once). Embedding parameters are the weights of every
    nn.Embedding and of the output heads named (an untied unembedding): Kaplan et al.'s (2020) non-embedding count
    leaves out token and position tables and the unembedding. A module the harness has never seen names none, so
    its untied output layer counts as non-embedding."""
    params = {id(p): p for p in model.parameters()}
    embedding = {id(m.weight): m.weight for m in [*model.modules(), *output_heads]
                 if isinstance(m, nn.Embedding) or any(m is head for head in output_heads)}
    total = sum(p.numel() for p in params.values())
    tables = sum(p.numel() for p in embedding.values())
    return {"total": total, "embedding": tables, "non_embedding": total - tables}


@dataclass(frozen=True)
class FlopsPerToken:
    dense: float       # training FLOPs per token, attention as a dense kernel performs it
    causal: float      # training FLOPs per token, attention as a causal mask needs it
    six_n: float       # the 6N approximation (Kaplan), N = non-embedding parameters
    attention_dense: float | None = None    # None where attention is not separable (a measured count)
    attention_causal: float | None = None


def measured_flops_per_token(model: torch.nn.Module, seq_len: int, non_embedding_params: int) -> FlopsPerToken:
    """Training FLOPs per token as PyTorch's FlopCounterMode counts one forward, the cross-entropy and one backward
    of `model` (built on the meta device: no memory, no arithmetic) over one window of seq_len tokens. The counter
    counts matmuls, convolutions and attention kernels, as the closed forms do; attention under a causal mask
    counts as the dense kernel performs it, so `causal` equals `dense` here."""
    from torch.utils.flop_counter import FlopCounterMode

    idx = torch.zeros((1, seq_len), dtype=torch.long, device="meta")
    with FlopCounterMode(display=False) as counter:
        logits = model(idx)
        token_loss(logits, torch.zeros(logits.shape[:-1], dtype=torch.long, device="meta")).backward()
    per_token = counter.get_total_flops() / seq_len
    return FlopsPerToken(dense=per_token, causal=per_token, six_n=6.0 * non_embedding_params)



def no_problems(model: dict, task: dict) -> str | None:
    return None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    loss: str                                   # what the family's loss is (losses of different objectives differ)
    config: Callable[..., Any]                  # (model section with its shape resolved, vocab_size, attention, options) -> config
    build: Callable[[Any], nn.Module]
    model_vocab: Callable[[int, int], int]      # (data vocabulary, seq_len) -> the model's vocabulary
    examples: Callable                          # (windows_bn of seq_len + 1 tokens, data_vocab, generator, rng) -> (x, y)
    flops_per_token: Callable[[Any], FlopsPerToken]
    param_counts: Callable[[nn.Module], dict]   # total, embedding, non_embedding, encoder, decoder
    describe: Callable[[Any], dict]             # config -> the record's model_info shape fields
    non_embedding_params: Callable[[Any], int] | str = "no closed-form parameter count"  # for sizing by model.params
    tp_plan: Callable[[nn.Module], dict] | str = "no tensor-parallel plan"
    tp_divides: tuple[str, ...] = ()            # describe() fields a tensor-parallel degree must divide
    pipeline_parts: Callable[[nn.Module], tuple] | str = "no pipeline split"  # model -> (embed, blocks, head)
    kv_cache: Callable | str = "no KV cache"     # (model, batch, context, new_tokens, dtype, device) -> cache
    decoding: Callable | None = None            # (model, prompt, cache) -> (first sequence, step(tokens) -> logits)
    cache_shape: Callable[[Any], dict] | None = None  # config -> n_layer, kv_heads, head_dim of the cache formula
    problems: Callable[[dict, dict], str | None] = no_problems  # (model section resolved, task) -> what is impossible
    attentions: tuple[str, ...] | None = None   # the attention variants it can use (None: any)
    attentions_why: str = ""
    any_length: bool = True                     # reads windows of any length (task.eval_lengths)
    flops_counted: str = "closed form"          # how flops_per_token was obtained (recorded)
    mup: bool | str = True                      # its config takes muP's logit_scale and q_scale (models/mup.py)
    arguments: tuple[str, ...] | None = ()      # model-section keys it takes beyond its config group's (None: any)
    positive: tuple[tuple[str, bool], ...] = ()  # its knobs that must be positive when given, and whether whole numbers

    def unsupported(self, capability: str) -> str | None:
        """Why this family cannot do `capability` (tp, pp, kv_cache, sizing, mup), or None when it can."""
        value = {"tp": self.tp_plan, "pp": self.pipeline_parts, "kv_cache": self.kv_cache,
                 "sizing": self.non_embedding_params, "mup": self.mup}[capability]
        return value if isinstance(value, str) else None


class Examples:
    """Turns token windows of seq_len + 1 on the host into a family's (inputs, targets), drawing from its own
    generators (masking, span corruption) so a checkpoint can keep and restore them."""

    EVAL_SEED = 1234  # evaluation draws the same examples every time, so its losses compare along a run

    def __init__(self, spec: ModelSpec, data_vocab: int, seed: int):
        self.make, self.data_vocab = spec.examples, data_vocab
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = np.random.default_rng(seed)

    def __call__(self, windows_bn: torch.Tensor, generator: torch.Generator | None = None,
                 rng: np.random.Generator | None = None):
        return self.make(windows_bn, self.data_vocab, generator or self.generator, rng or self.rng)

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "rng": self.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.rng.bit_generator.state = state["rng"]

    def for_evaluation(self, chunk_index: int):
        """The same examples from the same validation chunk at every evaluation."""
        generator = torch.Generator().manual_seed(self.EVAL_SEED + chunk_index)
        rng = np.random.default_rng(self.EVAL_SEED + chunk_index)
        return lambda windows_bn: self(windows_bn, generator, rng)
