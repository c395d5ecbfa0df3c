"""The GPT family: pre-LayerNorm blocks, GELU MLP, attention from the registry, and its spec (models/spec.py).

causal=True is the decoder-only GPT (next-token prediction); causal=False is the BERT-style encoder
(models/encoder.py: the same blocks without the mask, trained by masked-token prediction). forward(idx) returns
logits; the harness computes the loss (models.spec.token_loss). The model never knows how it is parallelised or timed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models import attention as attention_registry, mup
from models.common import KVCache, decoding, decoding_attention, head_views, init_weights, training_flops
from models.positions import KINDS as POSITION_KINDS, TABLE_KINDS, Rotary, alibi_bias, alibi_slopes, sinusoidal_table
from models.spec import FlopsPerToken, ModelSpec, embedding_split, next_token_examples


# Sinusoids have a per-channel RMS of 1/sqrt(2); token embeddings start at std 0.02 (GPT-2). Scaled to the
# embeddings' size, position and token signals start level, as Vaswani et al.'s sqrt(d_model) embedding scaling
# levels them there; unscaled, the positions drown the tokens and training suffers.
SINUSOID_SCALE = 0.02 * 2 ** 0.5


def scaled_sinusoids(n_positions: int, d_model: int) -> torch.Tensor:
    return SINUSOID_SCALE * sinusoidal_table(n_positions, d_model)


def sinusoid_rows(table: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Rows [start, end) of a model's sinusoid table, computed past its end when a longer sequence asks
    (sinusoids are defined at every position)."""
    if end > table.shape[0]:
        table = scaled_sinusoids(end, table.shape[1]).to(table.device)
    return table[start:end]


@dataclass
class GPTConfig:
    vocab_size: int = 256
    seq_len: int = 256
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    mlp_ratio: float = 4.0
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    positions: str = "learned"
    attention: str = "sdpa"
    attention_options: dict = field(default_factory=dict)
    causal: bool = True
    logit_scale: float = 1.0    # the logits' multiplier (muP: base_width / d_model; models/mup.py)
    q_scale: float = 1.0        # the queries' multiplier (muP: attention logits ~ 1/d_head)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_mlp(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.head_dim, self.layer, self.q_scale = cfg.head_dim, layer, cfg.q_scale
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.rotary = Rotary(cfg.head_dim) if cfg.positions == "rope" else None
        if cfg.positions == "alibi":  # a per-head bias on the scores: computed by sdpa with an additive mask
            self.register_buffer("alibi_slopes", alibi_slopes(cfg.n_head), persistent=False)
        else:
            self.alibi_slopes = None
        self.causal = cfg.causal
        self.attend = attention_registry.get_attention(cfg.attention, causal=cfg.causal, **cfg.attention_options)
        self.attention, self.attention_options = cfg.attention, cfg.attention_options
        self._attend_cached = None
        self.dropout = nn.Dropout(cfg.dropout)

    @property
    def attend_cached(self):
        return decoding_attention(self)

    def forward(self, x_bnd: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, n, _ = x_bnd.shape
        q, k, v = head_views(self.qkv(x_bnd), 3, self.head_dim)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        start = cache.length if cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        decoding = cache is not None and start > 0
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        if self.alibi_slopes is not None:
            bias = alibi_bias(self.alibi_slopes, n, k.shape[2], causal=self.causal and not decoding, dtype=q.dtype)
            y_bhnd = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            y_bhnd = (self.attend_cached if decoding else self.attend)(q, k, v)
        return self.dropout(self.proj(y_bhnd.transpose(1, 2).reshape(b, n, -1)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = SelfAttention(cfg, layer)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), cache)
        return x + self.mlp(self.ln_mlp(x))


def embed(module: nn.Module, positions: str, idx_bn: torch.Tensor, start: int = 0) -> torch.Tensor:
    """Token embeddings plus the position signal that is added to them (learned table or sinusoids), read off
    `module`'s wte, wpe and sinusoids: the model's own, or a pipeline stage's that holds them."""
    n = idx_bn.shape[1]
    x = module.wte(idx_bn)
    if positions == "learned":
        x = x + module.wpe(torch.arange(start, start + n, device=idx_bn.device))
    elif positions == "sinusoidal":
        x = x + sinusoid_rows(module.sinusoids, start, start + n).to(x.dtype)
    return x


# The MLP's width, as a multiple of d_model.
POSITIVE = (("mlp_ratio", False),)
# The projections that write into the residual stream (GPT-2 scales their initialisation with depth).
RESIDUAL_WRITERS = ("attn.proj.weight", "cross.proj.weight", "mlp.down.weight")


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.positions not in POSITION_KINDS:
            raise ValueError(f"unknown positions {cfg.positions!r}; known: {', '.join(POSITION_KINDS)}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.positions == "learned" else None
        if cfg.positions == "sinusoidal":
            self.register_buffer("sinusoids", scaled_sinusoids(cfg.seq_len, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, layer) for layer in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = mup.mark_readout(nn.Linear(cfg.d_model, cfg.vocab_size, bias=False))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        init_weights(self, residual_layers=cfg.n_layer, residual_writers=RESIDUAL_WRITERS)

    def forward(self, idx_bn: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits. With a cache: the prompt first, then one token at a time, each attending to the cached keys and
        values of everything before it."""
        n = idx_bn.shape[1]
        if cache is not None and not self.cfg.causal:
            raise ValueError("a KV cache decodes left to right; this model is a bidirectional encoder")
        start = cache.length if cache is not None else 0
        if start + n > self.cfg.seq_len and self.cfg.positions in TABLE_KINDS:
            raise ValueError(f"position {start + n} exceeds the learned table of model.seq_len={self.cfg.seq_len} positions")
        x = self.dropout(embed(self, self.cfg.positions, idx_bn, start))
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += n
        logits = self.lm_head(self.ln_f(x))
        return logits * self.cfg.logit_scale if self.cfg.logit_scale != 1.0 else logits


# --- the spec: what the harness knows of the family ------------------------------------------------------------

def config(m: dict, vocab_size: int, attention: str, attention_options: dict, causal: bool = True) -> GPTConfig:
    """The model section (its shape resolved) as a GPTConfig."""
    return GPTConfig(vocab_size=vocab_size, seq_len=int(m["seq_len"]), n_layer=int(m["n_layer"]),
                     d_model=int(m["d_model"]), n_head=int(m["n_head"]), mlp_ratio=float(m["mlp_ratio"]),
                     bias=bool(m["bias"]), dropout=float(m["dropout"]), tie_embeddings=bool(m["tie_embeddings"]),
                     positions=str(m["positions"]), attention=attention, attention_options=attention_options,
                     causal=causal)


def stack_params(cfg: GPTConfig) -> int:
    """One stack of n_layer blocks and a final norm."""
    d, h, bias = cfg.d_model, cfg.d_mlp, int(cfg.bias)
    return cfg.n_layer * (attention_params(cfg) + 2 * d * h + bias * (h + d) + 2 * norm_params(cfg)) + norm_params(cfg)


def attention_params(cfg: GPTConfig) -> int:
    return 4 * cfg.d_model * cfg.d_model + int(cfg.bias) * 4 * cfg.d_model


def norm_params(cfg: GPTConfig) -> int:
    return cfg.d_model * (1 + int(cfg.bias))


# Training FLOPs per token count the matrix multiplies (2 FLOPs per multiply-add) of one forward pass and multiply
# by 3: the backward pass computes the gradient with respect to both the input and the weight of every matmul,
# twice the forward work (Kaplan et al. 2020, sec. 2.1; Hoffmann et al. 2022, app. F). Element-wise work (norms,
# GELU, softmax, bias adds) is left out, as FlopCounterMode does. Attention's QK^T and AV are counted two ways:
# dense, every query against every key as a dense kernel performs them; causal, only the keys the mask lets
# through, (n+1)/2 per query on average for a decoder (PaLM's and Chinchilla's "half"), all n for an encoder.
# An encoder's masked-token head runs over every position, as it is computed, so it counts like the GPT's.
def block_matmul_flops_per_token(cfg: GPTConfig) -> float:
    """Forward FLOPs per token of one block's dense matmuls: QKV, output projection, MLP."""
    d = cfg.d_model
    return 2 * d * 3 * d + 2 * d * d + 2 * 2 * d * cfg.d_mlp


def flops_per_token(cfg: GPTConfig) -> FlopsPerToken:
    matmul = cfg.n_layer * block_matmul_flops_per_token(cfg) + 2 * cfg.d_model * cfg.vocab_size
    return training_flops(matmul, cfg.n_layer, cfg.d_model, cfg.seq_len, cfg.causal, stack_params(cfg))


def param_counts(model: GPT) -> dict[str, int]:
    """Exact counts. Non-embedding (Kaplan et al. 2020) excludes the token and position tables and an untied output head."""
    counts = embedding_split(model, (model.lm_head,))
    side = "decoder" if model.cfg.causal else "encoder"
    return {**counts, side: counts["non_embedding"], ("encoder" if side == "decoder" else "decoder"): 0}


def describe(cfg: GPTConfig) -> dict:
    return {"n_layer": cfg.n_layer, "d_model": cfg.d_model, "n_head": cfg.n_head, "head_dim": cfg.head_dim,
            "d_mlp": cfg.d_mlp, "positions": cfg.positions}


def tp_plan(model: nn.Module) -> dict:
    """Megatron-style TP with sequence parallelism, on the modules by name (torchtitan's plan for Llama):
    column-parallel QKV and MLP-up, row-parallel output and MLP-down, vocabulary-parallel embedding and head,
    sequence parallel on the LayerNorms and the residual stream. The fused QKV's columns are grouped by head, so a
    column split gives each rank whole heads. An encoder-decoder's decoder blocks add cross-attention: its query and
    key-value projections column-parallel (the key-values from the all-gathered encoder output), its output
    projection row-parallel."""
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, SequenceParallel

    plan = {"wte": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1), use_local_output=False),
            "ln_f": SequenceParallel(),
            "lm_head": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate())}
    for table in ("wpe", "wpe_encoder", "wpe_decoder"):
        if getattr(model, table, None) is not None:
            plan[table] = RowwiseParallel(input_layouts=Replicate(), output_layouts=Replicate(), use_local_output=False)
    decoder_blocks = [f"decoder_blocks.{i}" for i in range(len(getattr(model, "decoder_blocks", [])))]
    for block in [f"blocks.{i}" for i in range(len(model.blocks))] + decoder_blocks:
        plan.update({
            f"{block}.ln_attn": SequenceParallel(),
            f"{block}.attn.qkv": ColwiseParallel(input_layouts=Shard(1)),   # all-gather the sequence, local heads out
            f"{block}.attn.proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),  # reduce-scatter
            f"{block}.ln_mlp": SequenceParallel(),
            f"{block}.mlp.up": ColwiseParallel(input_layouts=Shard(1)),
            f"{block}.mlp.down": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        })
    for block in decoder_blocks:
        plan.update({
            f"{block}.ln_cross": SequenceParallel(),
            f"{block}.cross.q": ColwiseParallel(input_layouts=Shard(1)),
            f"{block}.cross.kv": ColwiseParallel(input_layouts=Shard(1)),  # the encoder's output, all-gathered
            f"{block}.cross.proj": RowwiseParallel(output_layouts=Shard(1), use_local_output=False),
        })
    if decoder_blocks:
        plan["ln_encoder"] = SequenceParallel()
    return plan


class Embedding(nn.Module):
    """The first pipeline stage's view of the model's input side: its token and position tables."""

    def __init__(self, model: GPT):
        super().__init__()
        self.positions, self.wte, self.wpe = model.cfg.positions, model.wte, model.wpe
        if self.positions == "sinusoidal":
            self.register_buffer("sinusoids", model.sinusoids, persistent=False)

    def forward(self, idx_bn: torch.Tensor) -> torch.Tensor:
        return embed(self, self.positions, idx_bn)


def pipeline_parts(model: GPT) -> tuple[nn.Module, nn.ModuleList, nn.Module]:
    return Embedding(model), model.blocks, mup.readout(model.ln_f, model.lm_head, scale=model.cfg.logit_scale)


def kv_cache(model: GPT, batch: int, context: int, new_tokens: int, dtype: torch.dtype, device: torch.device) -> KVCache:
    """The cache a generation of `new_tokens` after a prompt of `context` tokens fills."""
    cfg = model.cfg
    return KVCache(cfg.n_layer, batch, cfg.n_head, context + new_tokens, cfg.head_dim, dtype, device)


def cache_shape(cfg: GPTConfig) -> dict:
    return {"n_layer": cfg.n_layer, "kv_heads": cfg.n_head, "head_dim": cfg.head_dim}


def problems(m: dict, task: dict) -> str | None:
    """A generation must fit a learned position table."""
    if task["name"] == "inference" and m["positions"] in TABLE_KINDS and task["context"] + task["new_tokens"] > m["seq_len"]:
        return (f"task.context={task['context']} + task.new_tokens={task['new_tokens']} exceeds the learned position "
                f"table of model.seq_len={m['seq_len']}; raise model.seq_len or use positions=rope|sinusoidal|alibi")
    return None


SPEC = ModelSpec(
    name="gpt", loss="next-token cross-entropy", config=config, build=GPT, model_vocab=lambda data_vocab, seq_len: data_vocab,
    examples=next_token_examples, flops_per_token=flops_per_token, param_counts=param_counts, describe=describe,
    non_embedding_params=stack_params, tp_plan=tp_plan, tp_divides=("n_head",), pipeline_parts=pipeline_parts,
    kv_cache=kv_cache, decoding=decoding, cache_shape=cache_shape, problems=problems, positive=POSITIVE)
