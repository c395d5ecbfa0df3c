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
from torch import nn

from models import attention as attention_registry
from models import gpt, mup
from models.common import KVCache, head_views, init_weights
from models.gpt import MLP, RESIDUAL_WRITERS, Block, GPTConfig, SelfAttention, scaled_sinusoids, sinusoid_rows
from models.positions import KINDS as POSITION_KINDS
from models.spec import FlopsPerToken, ModelSpec, embedding_split

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
        self.self_attention = KVCache(cfg.n_layer, batch, cfg.n_head, max_len, cfg.head_dim, dtype, device)
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
        self.head_dim, self.layer, self.q_scale = cfg.head_dim, layer, cfg.q_scale
        self.q = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.kv = nn.Linear(cfg.d_model, 2 * cfg.d_model, bias=cfg.bias)  # [k v] grouped by head
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.attend = attention_registry.get_attention(cfg.attention, causal=False, **cfg.attention_options)

    def forward(self, x_bnd: torch.Tensor, memory_bmd: torch.Tensor, cache: EncDecCache | None = None) -> torch.Tensor:
        b, n, _ = x_bnd.shape
        q = self.q(x_bnd).view(b, n, -1, self.head_dim).transpose(1, 2)
        if self.q_scale != 1.0:
            q = q * self.q_scale
        if cache is not None and cache.cross_ready:
            k, v = cache.cross_k[self.layer], cache.cross_v[self.layer]
        else:
            k, v = head_views(self.kv(memory_bmd), 2, self.head_dim)
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
        self.lm_head = mup.mark_readout(nn.Linear(cfg.d_model, cfg.vocab_size, bias=False))
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        init_weights(self, residual_layers=2 * cfg.n_layer, residual_writers=RESIDUAL_WRITERS)  # both stacks' depth

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
        logits = self.lm_head(self.ln_f(x))
        return logits * self.cfg.logit_scale if self.cfg.logit_scale != 1.0 else logits

    def forward(self, packed_bn: torch.Tensor) -> torch.Tensor:
        """The decoder's logits for packed [encoder | decoder] inputs."""
        split = self.layout.encoder_len
        if packed_bn.shape[1] != split + self.layout.decoder_len:
            raise ValueError(f"packed inputs of {packed_bn.shape[1]} tokens; this model takes {split} encoder + "
                             f"{self.layout.decoder_len} decoder tokens (span corruption of model.seq_len={self.cfg.seq_len})")
        return self.decode(packed_bn[:, split:], self.encode(packed_bn[:, :split]))


# --- the spec ----------------------------------------------------------------------------------------------------

def non_embedding_params(cfg: GPTConfig) -> int:
    """Two stacks; the decoder's blocks add cross-attention (query, key-value and output projections) and a norm."""
    return 2 * gpt.stack_params(cfg) + cfg.n_layer * (gpt.attention_params(cfg) + gpt.norm_params(cfg))


def flops_per_token(cfg: GPTConfig) -> FlopsPerToken:
    """Training FLOPs per token of the window an encoder-decoder is trained on (the GPT's accounting, models/gpt.py):
    the encoder reads encoder_len tokens, the decoder writes decoder_len; each decoder layer also projects the
    encoder's output to keys and values and attends to all of it. Per window, divided by its seq_len tokens."""
    layout = span_layout(cfg.seq_len)
    enc, dec, d, layers = layout.encoder_len, layout.decoder_len, cfg.d_model, cfg.n_layer
    block = gpt.block_matmul_flops_per_token(cfg)
    cross = 2 * d * d + 2 * d * d                                       # cross-attention query and output projections
    encoder = enc * layers * (block + 2 * 2 * enc * d)                  # bidirectional: every key
    cross_kv = enc * layers * 2 * d * 2 * d                             # encoder output -> keys and values, per decoder layer
    decoder_fixed = dec * layers * (block + cross + 2 * 2 * enc * d) + dec * 2 * d * cfg.vocab_size
    self_dense = dec * layers * 2 * 2 * dec * d
    self_causal = dec * layers * 2 * 2 * (dec + 1) / 2 * d
    attention_dense = layers * 2 * 2 * d * (enc * enc + dec * dec + dec * enc)
    attention_causal = attention_dense - self_dense + self_causal
    fixed = encoder + cross_kv + decoder_fixed
    return FlopsPerToken(
        dense=3 * (fixed + self_dense) / cfg.seq_len,
        causal=3 * (fixed + self_causal) / cfg.seq_len,
        six_n=6.0 * non_embedding_params(cfg),
        attention_dense=3 * attention_dense / cfg.seq_len,
        attention_causal=3 * attention_causal / cfg.seq_len,
    )


def param_counts(model: EncoderDecoder) -> dict[str, int]:
    counts = embedding_split(model, (model.lm_head,))
    encoder = sum(p.numel() for p in model.blocks.parameters()) + sum(p.numel() for p in model.ln_encoder.parameters())
    return {**counts, "encoder": encoder, "decoder": counts["non_embedding"] - encoder}


def examples(windows_bn: torch.Tensor, data_vocab: int, generator, rng: np.random.Generator):
    return corrupt_spans(windows_bn[:, :-1], data_vocab, rng)


def kv_cache(model: EncoderDecoder, batch: int, context: int, new_tokens: int, dtype: torch.dtype,
             device: torch.device) -> EncDecCache:
    return EncDecCache(model.cfg, batch, context, new_tokens, dtype, device)


def decoding(model: EncoderDecoder, text_bn: torch.Tensor, cache: EncDecCache | None):
    """Answer span corruption's question "what is hidden here", asked at the end: the encoder reads the text's first
    n - 1 tokens and the first sentinel once, and the decoder writes from its start token."""
    prompt = torch.cat([text_bn[:, :-1], torch.full_like(text_bn[:, :1], model.first_sentinel)], dim=1)
    memory = model.encode(prompt)
    return torch.full_like(prompt[:, :1], model.start_token), lambda tokens: model.decode(tokens, memory, cache)


def problems(m: dict, task: dict) -> str | None:
    """A generation must fit the learned tables of the encoder's and the decoder's positions."""
    if task["name"] != "inference" or m["positions"] != "learned":
        return None
    layout = span_layout(m["seq_len"])
    if task["context"] > layout.encoder_len or task["new_tokens"] > layout.decoder_len:
        return (f"task.context={task['context']} and task.new_tokens={task['new_tokens']} must fit the learned tables "
                f"of model.seq_len={m['seq_len']}: {layout.encoder_len} encoder and {layout.decoder_len} decoder "
                "positions; raise model.seq_len or use positions=rope|sinusoidal|alibi")
    return None


SPEC = ModelSpec(
    name="encdec", loss="cross-entropy of the decoder's sentinels and hidden spans (span corruption, 15% noise)",
    config=gpt.config, build=EncoderDecoder, model_vocab=model_vocab, examples=examples, flops_per_token=flops_per_token,
    param_counts=param_counts, describe=gpt.describe, non_embedding_params=non_embedding_params, tp_plan=gpt.tp_plan,
    tp_divides=("n_head",),
    pipeline_parts="model.family=encdec has two stacks the decoder reads across; parallel=pp splits one stack into stages",
    kv_cache=kv_cache, decoding=decoding, cache_shape=gpt.cache_shape,   # self and cross positions: context + new_tokens
    attentions=("sdpa", "dense"), attentions_why="cross-attends queries to a different number of keys",
    any_length=False, problems=problems, positive=gpt.POSITIVE)
