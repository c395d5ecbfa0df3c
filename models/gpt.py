"""The transformer both families use: pre-LayerNorm blocks, GELU MLP, attention from the registry.

causal=True is the decoder-only GPT (next-token prediction); causal=False is the BERT-style encoder
(models/encoder.py: the same blocks without the mask, trained by masked-token prediction). Targets equal to
IGNORE (-100) add nothing to the loss. The model never knows how it is parallelised or timed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models import attention as attention_registry
from models.positions import KINDS as POSITION_KINDS, TABLE_KINDS, Rotary, alibi_bias, alibi_slopes, sinusoidal_table


# Sinusoids have a per-channel RMS of 1/sqrt(2); token embeddings start at std 0.02 (GPT-2). Scaled to the
# embeddings' size, position and token signals start level, as Vaswani et al.'s sqrt(d_model) embedding scaling
# levels them there; unscaled, the positions drown the tokens and training suffers.
SINUSOID_SCALE = 0.02 * 2 ** 0.5
IGNORE = -100  # a target that is not predicted (an unmasked position of a masked-token batch)


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

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_mlp(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))


class KVCache:
    """Keys and values of every layer for `max_len` positions, allocated once: 2 x layers x batch x heads x
    max_len x head_dim elements, the figure harness.flops.kv_cache_bytes computes."""

    def __init__(self, cfg: "GPTConfig", batch: int, max_len: int, dtype: torch.dtype, device: torch.device):
        shape = (cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys and values for one layer; returns all of that layer's keys and values so far."""
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class SelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.head_dim, self.layer = cfg.head_dim, layer
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
        """A decoding step's attention: the newest queries against the cached keys their mask lets them see (built
        on first use: a variant without exact cached decoding still trains)."""
        if self._attend_cached is None:
            self._attend_cached = attention_registry.get_decoder(self.attention, **self.attention_options)
        return self._attend_cached

    def forward(self, x_bnd: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        b, n, _ = x_bnd.shape
        # The fused projection's columns are grouped by head ([q k v] of head 0, then head 1, ...), so a
        # column split across tensor-parallel ranks gives each rank whole heads (Megatron's layout).
        q, k, v = self.qkv(x_bnd).view(b, n, -1, 3, self.head_dim).permute(3, 0, 2, 1, 4)
        start = cache.length if cache is not None else 0
        if self.rotary is not None:
            q, k = self.rotary(q, start), self.rotary(k, start)
        decoding = cache is not None and start > 0
        if cache is not None:
            if decoding and n > 1:
                raise ValueError("a cached forward takes one new token at a time after the prompt")
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


def _init_module(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def init_weights(model: nn.Module, residual_layers: int) -> None:
    """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the projections that write into the residual
    stream scaled by 1/sqrt(2 x the layers that write there), so the stream's variance stays put with depth."""
    model.apply(_init_module)
    for name, p in model.named_parameters():
        if name.endswith(("attn.proj.weight", "cross.proj.weight", "mlp.down.weight")):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * residual_layers))


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
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        init_weights(self, residual_layers=cfg.n_layer)

    def forward(self, idx_bn: torch.Tensor, targets_bn: torch.Tensor | None = None, cache: KVCache | None = None):
        """Logits (and the mean cross-entropy against targets). With a cache: the prompt first, then one token at
        a time, each attending to the cached keys and values of everything before it."""
        n = idx_bn.shape[1]
        if cache is not None and not self.cfg.causal:
            raise ValueError("a KV cache decodes left to right; this model is a bidirectional encoder")
        start = cache.length if cache is not None else 0
        if start + n > self.cfg.seq_len and self.cfg.positions in TABLE_KINDS:
            raise ValueError(f"position {start + n} exceeds the learned table of model.seq_len={self.cfg.seq_len} positions")
        x = self.wte(idx_bn)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(start, start + n, device=idx_bn.device))
        elif self.cfg.positions == "sinusoidal":
            x = x + sinusoid_rows(self.sinusoids, start, start + n).to(x.dtype)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += n
        logits = self.lm_head(self.ln_f(x))
        if targets_bn is None:
            return logits
        return logits, F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets_bn.reshape(-1), ignore_index=IGNORE)

    def param_counts(self) -> dict[str, int]:
        """Exact counts. Non-embedding (Kaplan et al. 2020) excludes the token and position tables and an untied output head."""
        total = sum(p.numel() for p in self.parameters())
        embedding = self.wte.weight.numel()
        if self.wpe is not None:
            embedding += self.wpe.weight.numel()
        if not self.cfg.tie_embeddings:
            embedding += self.lm_head.weight.numel()
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}
