"""The LLaMA family (Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models"), and its spec.

Pre-RMSNorm blocks (Zhang & Sennrich 2019), a SwiGLU MLP (Shazeer 2020) of ffn_hidden channels (by default 8/3
d_model rounded up to a multiple of `multiple_of`, as Meta's reference code sizes it), grouped-query attention
(Ainslie et al. 2023: n_kv_head key-value heads, each shared by n_head / n_kv_head query heads; n_kv_head = n_head is
multi-head, 1 is multi-query), rotary positions (Su et al. 2021), no biases, untied embeddings by default. The KV
cache holds the n_kv_head heads only: that is what grouped-query attention saves.

Module names follow the GPT's where the harness looks for them by name (wte, blocks, lm_head); the projections are
Meta's (wq, wk, wv, wo; w1 gate, w3 up, w2 down).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models import attention as attention_registry
from models import mup
from models.common import KVCache, decoding, decoding_attention, init_weights, training_flops
from models.positions import Rotary
from models.spec import FlopsPerToken, ModelSpec, embedding_split, next_token_examples


@dataclass
class LlamaConfig:
    vocab_size: int = 256
    seq_len: int = 256
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    n_kv_head: int | None = None    # None: n_head
    ffn_hidden: int | None = None   # None: 8/3 d_model rounded up to a multiple of multiple_of
    multiple_of: int = 32
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False
    dropout: float = 0.0
    attention: str = "sdpa"
    attention_options: dict = field(default_factory=dict)
    logit_scale: float = 1.0    # the logits' multiplier (muP: base_width / d_model; models/mup.py)
    q_scale: float = 1.0        # the queries' multiplier (muP: attention logits ~ 1/d_head)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def hidden(self) -> int:
        if self.ffn_hidden:
            return self.ffn_hidden
        return self.multiple_of * math.ceil(int(8 * self.d_model / 3) / self.multiple_of)


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.head_dim, self.layer, self.q_scale = cfg.head_dim, layer, cfg.q_scale
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.d_model, cfg.kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=False)
        self.rotary = Rotary(cfg.head_dim, base=cfg.rope_theta)
        self.attend = attention_registry.get_attention(cfg.attention, causal=True, **cfg.attention_options)
        self.attention, self.attention_options = cfg.attention, cfg.attention_options
        self._attend_cached = None
        self.fold_groups = attention_registry.decodes_every_key(cfg.attention)
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def attend_cached(self):
        return decoding_attention(self)

    def forward(self, x_bnd: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, n, _ = x_bnd.shape
        # heads from the projections' widths: under tensor parallelism each rank holds whole query and key-value heads
        q = self.wq(x_bnd).view(b, n, -1, self.head_dim).transpose(1, 2)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        k = self.wk(x_bnd).view(b, n, -1, self.head_dim).transpose(1, 2)
        v = self.wv(x_bnd).view(b, n, -1, self.head_dim).transpose(1, 2)
        start = cache.length if cache is not None else 0
        q, k = self.rotary(q, start), self.rotary(k, start)
        decoding = cache is not None and start > 0
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        kv_heads = k.shape[1]
        groups = q.shape[1] // kv_heads   # each key-value head serves `groups` consecutive query heads
        if decoding and groups > 1 and self.fold_groups:
            # the new token's query heads of a group attend as rows of one block over their shared head's cached
            # keys: the cache is read as it is, never copied per query head (what grouped-query attention saves)
            y_bhnd = self.attend_cached(q.reshape(b, kv_heads, groups * n, -1), k, v).reshape(b, -1, n, self.head_dim)
        else:
            if groups > 1:
                k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            y_bhnd = (self.attend_cached if decoding else self.attend)(q, k, v)
        return self.dropout(self.wo(y_bhnd.transpose(1, 2).reshape(b, n, -1)))


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.w3 = nn.Linear(cfg.d_model, cfg.hidden, bias=False)
        self.w2 = nn.Linear(cfg.hidden, cfg.d_model, bias=False)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.attention_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = FeedForward(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.attention_norm(x), cache)
        return x + self.mlp(self.ffn_norm(x))


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = mup.mark_readout(nn.Linear(cfg.d_model, cfg.vocab_size, bias=False))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        init_weights(self, residual_layers=cfg.n_layer, residual_writers=("attn.wo.weight", "mlp.w2.weight"))

    def forward(self, idx_bn: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = self.dropout(self.wte(idx_bn))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += idx_bn.shape[1]
        logits = self.lm_head(self.norm(x))
        return logits * self.cfg.logit_scale if self.cfg.logit_scale != 1.0 else logits


# --- the spec ----------------------------------------------------------------------------------------------------

def config(m: dict, vocab_size: int, attention: str, attention_options: dict) -> LlamaConfig:
    return LlamaConfig(vocab_size=vocab_size, seq_len=int(m["seq_len"]), n_layer=int(m["n_layer"]),
                       d_model=int(m["d_model"]), n_head=int(m["n_head"]), n_kv_head=m.get("n_kv_head"),
                       ffn_hidden=m.get("ffn_hidden"), multiple_of=int(m.get("multiple_of", 32)),
                       norm_eps=float(m.get("norm_eps", 1e-5)), rope_theta=float(m.get("rope_theta", 10000.0)),
                       tie_embeddings=bool(m.get("tie_embeddings", False)), dropout=float(m.get("dropout", 0.0)),
                       attention=attention, attention_options=attention_options)


def non_embedding_params(cfg: LlamaConfig) -> int:
    """Per block: query and output projections (d x n_head head_dim each), key and value (d x n_kv_head head_dim
    each), the three SwiGLU matrices and two RMSNorm weights; then the final norm."""
    d, heads = cfg.d_model, cfg.n_head * cfg.head_dim
    block = 2 * d * heads + 2 * d * cfg.kv_heads * cfg.head_dim + 3 * d * cfg.hidden + 2 * d
    return cfg.n_layer * block + d


def flops_per_token(cfg: LlamaConfig) -> FlopsPerToken:
    """The GPT's accounting (models/gpt.py): every matmul, 3x forward for training, attention two ways; key and
    value projections are n_kv_head heads wide, and each query head attends over its group's keys."""
    d, heads, kv = cfg.d_model, cfg.n_head * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    block = 2 * d * heads + 2 * 2 * d * kv + 2 * heads * d + 2 * 3 * d * cfg.hidden
    matmul = cfg.n_layer * block + 2 * d * cfg.vocab_size
    return training_flops(matmul, cfg.n_layer, heads, cfg.seq_len, True, non_embedding_params(cfg))


def param_counts(model: Llama) -> dict[str, int]:
    counts = embedding_split(model, (model.lm_head,))
    return {**counts, "encoder": 0, "decoder": counts["non_embedding"]}


def describe(cfg: LlamaConfig) -> dict:
    return {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_head": cfg.n_head, "n_kv_head": cfg.kv_heads,
            "head_dim": cfg.head_dim, "d_mlp": cfg.hidden, "positions": "rope"}


def tp_plan(model: Llama) -> dict:
    """torchtitan's Llama plan: query, key and value projections and the SwiGLU gate and up column-parallel (each
    rank holds whole query heads and the key-value heads they read), output and down projections row-parallel,
    vocabulary-parallel embedding and head, sequence parallel on the RMSNorms and the residual stream."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    plan = {"wte": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False),
            "norm": SequenceParallel(),
            "lm_head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())}
    for i in range(len(model.blocks)):
        block = f"blocks.{i}"
        plan.update({f"{block}.attention_norm": SequenceParallel(), f"{block}.ffn_norm": SequenceParallel(),
                     f"{block}.attn.wo": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
                     f"{block}.mlp.w2": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
                     **{f"{block}.{name}": ColwiseParallel(input_layouts=Shard(1))
                        for name in ("attn.wq", "attn.wk", "attn.wv", "mlp.w1", "mlp.w3")}})
    return plan


def pipeline_parts(model: Llama) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
    return model.wte, model.blocks, mup.readout(model.norm, model.lm_head, scale=model.cfg.logit_scale)


def kv_cache(model: Llama, batch: int, context: int, new_tokens: int, dtype: torch.dtype, device: torch.device) -> KVCache:
    cfg = model.cfg
    return KVCache(cfg.n_layer, batch, cfg.kv_heads, context + new_tokens, cfg.head_dim, dtype, device)


def cache_shape(cfg: LlamaConfig) -> dict:
    return {"n_layer": cfg.n_layer, "kv_heads": cfg.kv_heads, "head_dim": cfg.head_dim}


def problems(m: dict, task: dict) -> str | None:
    n_head, n_kv_head = int(m["n_head"]), m.get("n_kv_head")
    if n_kv_head is not None and n_head % int(n_kv_head):
        return f"model.n_kv_head={n_kv_head} does not divide model.n_head={n_head}: each key-value head serves a whole group"
    if (int(m["d_model"]) // n_head) % 2:
        return f"model=llama's rotary positions need an even head size, got d_model/n_head={int(m['d_model']) // n_head}"
    return None


SPEC = ModelSpec(
    name="llama", loss="next-token cross-entropy", config=config, build=Llama,
    model_vocab=lambda data_vocab, seq_len: data_vocab, examples=next_token_examples, flops_per_token=flops_per_token,
    param_counts=param_counts, describe=describe, non_embedding_params=non_embedding_params, tp_plan=tp_plan,
    tp_divides=("n_head", "n_kv_head"), pipeline_parts=pipeline_parts, kv_cache=kv_cache, decoding=decoding,
    cache_shape=cache_shape, problems=problems,
    positive=(("ffn_hidden", True), ("multiple_of", True), ("n_kv_head", True)))
