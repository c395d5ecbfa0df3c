"""The T5-style encoder-decoder family, trained by span corruption (Raffel et al. 2020).

A window of seq_len tokens loses 15% of its tokens in spans of mean length 3. The encoder reads the window with
each span replaced by a sentinel; the decoder writes, after a start token, each sentinel followed by the tokens
it hid. Both stacks use the GPT's blocks (the encoder's without the causal mask); each decoder block adds
cross-attention to the encoder's output. Sentinels and the start token come after the data's vocabulary.

Inputs are packed into one tensor, [encoder tokens | decoder tokens], split at `encoder_len`, so data-parallel
layouts slice one batch tensor as for the other families; the targets are the decoder's.

Decoding (task=inference) encodes the prompt once and writes with an EncDecCache: the decoder's self-attention
keys and values grow by one position per token; each decoder layer's cross-attention keys and values of the
encoder's output are projected once, at the first step.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models import attention as attention_registry
from models.gpt import IGNORE, MLP, Block, GPTConfig, KVCache, SelfAttention, init_weights, scaled_sinusoids, sinusoid_rows
from models.positions import KINDS as POSITION_KINDS

NOISE_DENSITY = 0.15
MEAN_SPAN = 3.0


@dataclass(frozen=True)
class SpanLayout:
    """The fixed lengths span corruption gives a window of seq_len tokens."""
    seq_len: int
    noise: int
    spans: int

    @property
    def encoder_len(self) -> int:
        return self.seq_len - self.noise + self.spans

    @property
    def decoder_len(self) -> int:
        return self.noise + self.spans


def span_layout(seq_len: int) -> SpanLayout:
    noise = max(1, min(seq_len - 1, round(seq_len * NOISE_DENSITY)))
    return SpanLayout(seq_len, noise, max(1, round(noise / MEAN_SPAN)))


def model_vocab(data_vocab: int, seq_len: int) -> int:
    return data_vocab + span_layout(seq_len).spans + 1  # sentinels, then the decoder's start token


def _partition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """`total` split into `parts` positive lengths, uniformly at random (T5's _random_segmentation)."""
    cuts = np.sort(rng.choice(np.arange(1, total), size=parts - 1, replace=False)) if parts > 1 else np.array([], int)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def corrupt_spans(windows_bn: torch.Tensor, data_vocab: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed inputs [encoder | decoder], decoder targets) for windows of seq_len tokens on the host."""
    batch, seq_len = windows_bn.shape
    layout = span_layout(seq_len)
    start_token = data_vocab + layout.spans
    tokens = windows_bn.numpy()
    encoder_in = np.empty((batch, layout.encoder_len), dtype=np.int64)
    targets = np.empty((batch, layout.decoder_len), dtype=np.int64)
    for row in range(batch):
        noise = _partition(layout.noise, layout.spans, rng)
        keep = _partition(seq_len - layout.noise, layout.spans, rng)
        enc, tgt, position = [], [], 0
        for span, (kept, hidden) in enumerate(zip(keep, noise)):
            enc.extend(tokens[row, position:position + kept])
            position += kept
            enc.append(data_vocab + span)
            tgt.append(data_vocab + span)
            tgt.extend(tokens[row, position:position + hidden])
            position += hidden
        encoder_in[row], targets[row] = enc, tgt
    decoder_in = np.concatenate([np.full((batch, 1), start_token), targets[:, :-1]], axis=1)
    return torch.from_numpy(np.concatenate([encoder_in, decoder_in], axis=1)), torch.from_numpy(targets)


class EncDecCache:
    """What decoding keeps between tokens: the decoder's self-attention keys and values (a KVCache of `max_len`
    positions) and every decoder layer's cross-attention keys and values of the `encoder_len` encoder outputs.
    Both are 2 x layers x batch x heads x positions x head_dim elements, so the whole cache is
    harness.flops.kv_cache_bytes with context = encoder_len + max_len."""

    def __init__(self, cfg: GPTConfig, batch: int, encoder_len: int, max_len: int, dtype: torch.dtype,
                 device: torch.device):
        self.self_attention = KVCache(cfg, batch, max_len, dtype, device)
        shape = (cfg.n_layer, batch, cfg.n_head, encoder_len, cfg.head_dim)
        self.cross_k = torch.zeros(shape, dtype=dtype, device=device)
        self.cross_v = torch.zeros(shape, dtype=dtype, device=device)
        self.cross_ready = False

    @property
    def length(self) -> int:
        return self.self_attention.length

    def nbytes(self) -> int:
        return self.self_attention.nbytes() + 2 * self.cross_k.numel() * self.cross_k.element_size()


class CrossAttention(nn.Module):
    """Decoder queries against the encoder's keys and values (no mask)."""

    def __init__(self, cfg: GPTConfig, layer: int = 0):
        super().__init__()
        self.head_dim, self.layer = cfg.head_dim, layer
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)  # [k v] grouped by head
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.attend = attention_registry.get_attention(cfg.attention, causal=False, **cfg.attention_options)

    def forward(self, x_bnd: torch.Tensor, memory_bmd: torch.Tensor, cache: EncDecCache | None = None) -> torch.Tensor:
        b, n, _ = x_bnd.shape
        q = self.q(x_bnd).view(b, n, -1, self.head_dim).transpose(1, 2)
        if cache is not None and cache.cross_ready:
            k, v = cache.cross_k[self.layer], cache.cross_v[self.layer]
        else:
            m = memory_bmd.shape[1]
            k, v = self.kv(memory_bmd).view(b, m, -1, 2, self.head_dim).permute(3, 0, 2, 1, 4)
            if cache is not None:
                cache.cross_k[self.layer], cache.cross_v[self.layer] = k, v
        return self.proj(self.attend(q, k, v).transpose(1, 2).reshape(b, n, -1))


class DecoderBlock(nn.Module):
    def __init__(self, cfg: GPTConfig, layer: int):
        super().__init__()
        self.ln_attn = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.attn = SelfAttention(replace(cfg, causal=True), layer)
        self.ln_cross = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.cross = CrossAttention(cfg, layer)
        self.ln_mlp = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, cache: EncDecCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_attn(x), cache.self_attention if cache is not None else None)
        x = x + self.cross(self.ln_cross(x), memory, cache)
        return x + self.mlp(self.ln_mlp(x))


class EncoderDecoder(nn.Module):
    """n_layer encoder blocks and n_layer decoder blocks of width d_model, one shared (tied) token table."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.positions not in POSITION_KINDS:
            raise ValueError(f"unknown positions {cfg.positions!r}; known: {', '.join(POSITION_KINDS)}")
        self.cfg, self.layout = cfg, span_layout(cfg.seq_len)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        lengths = (self.layout.encoder_len, self.layout.decoder_len)
        if cfg.positions == "learned":
            self.wpe_encoder, self.wpe_decoder = (nn.Embedding(n, cfg.d_model) for n in lengths)
        if cfg.positions == "sinusoidal":
            self.register_buffer("sinusoids", scaled_sinusoids(max(lengths), cfg.d_model), persistent=False)
        self.blocks = nn.ModuleList(Block(replace(cfg, causal=False), layer) for layer in range(cfg.n_layer))
        self.ln_encoder = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.decoder_blocks = nn.ModuleList(DecoderBlock(cfg, layer) for layer in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        init_weights(self, residual_layers=2 * cfg.n_layer)  # both stacks' depth

    @property
    def start_token(self) -> int:
        return self.cfg.vocab_size - 1

    @property
    def first_sentinel(self) -> int:
        return self.cfg.vocab_size - 1 - self.layout.spans

    def _embed(self, idx_bn: torch.Tensor, side: str, start: int = 0) -> torch.Tensor:
        x = self.wte(idx_bn)
        end = start + idx_bn.shape[1]
        if self.cfg.positions == "learned":
            table = self.wpe_encoder if side == "encoder" else self.wpe_decoder
            if end > table.num_embeddings:
                raise ValueError(f"{side} position {end} exceeds its learned table of {table.num_embeddings} positions "
                                 f"(span corruption of model.seq_len={self.cfg.seq_len}); use positions=rope|sinusoidal|alibi")
            x = x + table(torch.arange(start, end, device=idx_bn.device))
        elif self.cfg.positions == "sinusoidal":
            x = x + sinusoid_rows(self.sinusoids, start, end).to(x.dtype)
        return x

    def encode(self, idx_bn: torch.Tensor) -> torch.Tensor:
        memory = self._embed(idx_bn, "encoder")
        for block in self.blocks:
            memory = block(memory)
        return self.ln_encoder(memory)

    def decode(self, idx_bn: torch.Tensor, memory_bmd: torch.Tensor, cache: EncDecCache | None = None) -> torch.Tensor:
        """Decoder logits. With a cache: the start token first, then one token at a time."""
        x = self._embed(idx_bn, "decoder", cache.length if cache is not None else 0)
        for block in self.decoder_blocks:
            x = block(x, memory_bmd, cache)
        if cache is not None:
            cache.self_attention.length += idx_bn.shape[1]
            cache.cross_ready = True
        return self.lm_head(self.ln_f(x))

    def forward(self, packed_bn: torch.Tensor, targets_bn: torch.Tensor | None = None):
        split = self.layout.encoder_len
        if packed_bn.shape[1] != split + self.layout.decoder_len:
            raise ValueError(f"packed inputs of {packed_bn.shape[1]} tokens; this model takes {split} encoder + "
                             f"{self.layout.decoder_len} decoder tokens (span corruption of model.seq_len={self.cfg.seq_len})")
        logits = self.decode(packed_bn[:, split:], self.encode(packed_bn[:, :split]))
        if targets_bn is None:
            return logits
        return logits, F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets_bn.reshape(-1), ignore_index=IGNORE)

    def param_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        embedding = self.wte.weight.numel() + (0 if self.cfg.tie_embeddings else self.lm_head.weight.numel())
        if self.cfg.positions == "learned":
            embedding += self.wpe_encoder.weight.numel() + self.wpe_decoder.weight.numel()
        encoder = sum(p.numel() for p in self.blocks.parameters()) + sum(p.numel() for p in self.ln_encoder.parameters())
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding,
                "encoder": encoder, "decoder": total - embedding - encoder}
