"""Decoder-only GPT: pre-LayerNorm blocks, GELU MLP, attention from the registry.

The model never knows how it is parallelised or timed; it only builds the network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from models import attention as attention_registry
from models.positions import KINDS as POSITION_KINDS, Rotary, sinusoidal_table


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

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def d_mlp(self) -> int:
        return int(round(self.mlp_ratio * self.d_model))


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head = cfg.n_head
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.rotary = Rotary(cfg.head_dim) if cfg.positions == "rope" else None
        self.attend = attention_registry.get_attention(cfg.attention, causal=True, **cfg.attention_options)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x_bnd: torch.Tensor) -> torch.Tensor:
        b, n, d = x_bnd.shape
        q, k, v = self.qkv(x_bnd).view(b, n, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        if self.rotary is not None:
            q, k = self.rotary(q), self.rotary(k)
        y_bhnd = self.attend(q, k, v)
        return self.dropout(self.proj(y_bhnd.transpose(1, 2).reshape(b, n, d)))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.up = nn.Linear(cfg.d_model, cfg.d_mlp, bias=cfg.bias)
        self.down = nn.Linear(cfg.d_mlp, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x))
        return x + self.mlp(self.ln_mlp(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.positions not in POSITION_KINDS:
            raise ValueError(f"unknown positions {cfg.positions!r}; known: {', '.join(POSITION_KINDS)}")
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model) if cfg.positions == "learned" else None
        if cfg.positions == "sinusoidal":
            self.register_buffer("sinusoids", sinusoidal_table(cfg.seq_len, cfg.d_model), persistent=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer) so the residual stream's variance stays put.
        for name, p in self.named_parameters():
            if name.endswith(("attn.proj.weight", "mlp.down.weight")):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, idx_bn: torch.Tensor, targets_bn: torch.Tensor | None = None):
        n = idx_bn.shape[1]
        if n > self.cfg.seq_len and self.cfg.positions != "rope":
            raise ValueError(f"sequence of {n} tokens exceeds model.seq_len={self.cfg.seq_len} ({self.cfg.positions} positions)")
        x = self.wte(idx_bn)
        if self.wpe is not None:
            x = x + self.wpe(torch.arange(n, device=idx_bn.device))
        elif self.cfg.positions == "sinusoidal":
            x = x + self.sinusoids[:n].to(x.dtype)
        x = self.dropout(x)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        if targets_bn is None:
            return logits
        return logits, F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets_bn.reshape(-1))

    def param_counts(self) -> dict[str, int]:
        """Exact counts. Non-embedding (Kaplan et al. 2020) excludes the token and position tables and an untied output head."""
        total = sum(p.numel() for p in self.parameters())
        embedding = self.wte.weight.numel()
        if self.wpe is not None:
            embedding += self.wpe.weight.numel()
        if not self.cfg.tie_embeddings:
            embedding += self.lm_head.weight.numel()
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding}
