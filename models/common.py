"""What the model families share: the KV cache, a decoding step's attention, GPT-2's initialisation, continuing a
prompt, and the transformer's FLOP accounting."""
from __future__ import annotations

import math

import torch
from torch import nn

from models import attention as attention_registry
from models.spec import FlopsPerToken


class KVCache:
    """Keys and values of every layer for `max_len` positions, allocated once: 2 x layers x batch x heads x
    max_len x head_dim elements, the figure harness.flops.kv_cache_bytes computes (heads: the key-value heads)."""

    def __init__(self, n_layer: int, batch: int, heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device):
        shape = (n_layer, batch, heads, max_len, head_dim)
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
        if self.length > 0 and k.shape[2] > 1:
            raise ValueError("a cached forward takes one new token at a time after the prompt")
        end = self.length + k.shape[2]
        self.k[layer, :, :, self.length:end] = k
        self.v[layer, :, :, self.length:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]



def head_views(packed_bnx: torch.Tensor, parts: int, head_dim: int) -> tuple[torch.Tensor, ...]:
    """A fused projection's output, its columns grouped by head ([q k v] of head 0, then head 1, ...: a column
    split across tensor-parallel ranks gives each rank whole heads, Megatron's layout), as `parts` views of shape
    (batch, heads, n, head_dim). Unbound on the part axis, not permuted to it first: the backward then stacks the
    parts' gradients straight into the projection's layout, one copy; a permute before the unbind costs a second,
    strided one (the H200's profile of eager GPT-2 small's shape shows it at 5% of a step)."""
    b, n, _ = packed_bnx.shape
    return tuple(part.transpose(1, 2) for part in packed_bnx.view(b, n, -1, parts, head_dim).unbind(3))


def decoding_attention(attention: nn.Module):
    """A decoding step's attention: the newest queries against the cached keys their mask lets them see (built on
    first use: a variant without exact cached decoding still trains)."""
    if attention._attend_cached is None:
        attention._attend_cached = attention_registry.get_decoder(attention.attention, **attention.attention_options)
    return attention._attend_cached



def init_module(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def init_weights(model: nn.Module, residual_layers: int, residual_writers: tuple[str, ...]) -> None:
    """GPT-2's initialisation (Radford et al. 2019, sec. 2.3): N(0, 0.02) weights, zero biases, and the projections
    that write into the residual stream (parameters named ending in `residual_writers`) scaled by
    1/sqrt(2 x the layers that write there), so the stream's variance stays put with depth."""
    model.apply(init_module)
    for name, p in model.named_parameters():
        if name.endswith(residual_writers):
            nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * residual_layers))



def decoding(model: nn.Module, prompt_bn: torch.Tensor, cache):
    """Continue the prompt: the first step reads all of it, each later step one new token."""
    return prompt_bn, lambda tokens: model(tokens, cache=cache)



def attention_flops_per_token(n_layer: int, d_model: int, keys_per_query: float) -> float:
    """Forward FLOPs per token of QK^T and AV over all heads: 2 matmuls x 2 FLOPs x keys x d_model per layer."""
    return n_layer * 2 * 2 * keys_per_query * d_model


def training_flops(matmul: float, n_layer: int, d_model: int, seq_len: int, causal: bool,
                   non_embedding_params: int) -> FlopsPerToken:
    """FlopsPerToken of a decoder or encoder stack whose forward matmuls (all but attention's) are `matmul` per token."""
    dense = attention_flops_per_token(n_layer, d_model, seq_len)
    masked = attention_flops_per_token(n_layer, d_model, (seq_len + 1) / 2 if causal else seq_len)
    return FlopsPerToken(dense=3 * (matmul + dense), causal=3 * (matmul + masked), six_n=6.0 * non_embedding_params,
                         attention_dense=3 * dense, attention_causal=3 * masked)
