"""Longformer attention (Beltagy et al. 2020, arXiv:2004.05150): a sliding window plus global tokens.

Masks are defined once in masks.py. Implementations (`impl`):
  blocked   queries in blocks of `block` rows; each block scores only its window's key span and the global
            keys, so scores, probabilities and gathered keys are O(seq x (block + window + globals)):
            memory linear in the sequence. The global rows (the first `global_tokens` queries) are full
            attention rows, O(globals x seq). Runs anywhere.
  flex      FlexAttention with a block mask built from the same rule; compiled on CUDA. On CPU it runs
            eagerly, unfused (it materialises the full score matrix).
  xformers  xformers' local-attention bias (CUDA only; no global tokens).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from models.attention.masks import allowed, softmax_attention_flops

IMPLS = ("blocked", "flex", "xformers")


def _window_span(window: int, causal: bool) -> tuple[int, int]:
    """Keys a query sees to its left and right inside the window."""
    return (window - 1, 0) if causal else (window // 2, window // 2)


def _masked_softmax(scores: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # In place on the fresh score tensor (its matmul's backward does not need it). A finite fill keeps fully
    # masked rows (padding) finite in backward; exp() of it is exactly 0 elsewhere.
    return torch.softmax(scores.float().masked_fill_(~keep, torch.finfo(torch.float32).min), dim=-1)


def blocked(q, k, v, *, causal: bool, window: int, global_tokens: int = 0, block: int = 128,
            queries_per_group: int = 1024):
    """Groups of query blocks at a time, so every temporary stays a few MB (reused, in cache) at any length."""
    b, h, n, d = q.shape
    left, right = _window_span(window, causal)
    n_blocks = -(-n // block)
    pad_q = n_blocks * block - n
    span = block + left + right
    g = min(global_tokens, n)

    q_blocks = F.pad(q * (1.0 / math.sqrt(d)), (0, 0, 0, pad_q)).view(b, h, n_blocks, block, d)
    k_padded = F.pad(k, (0, 0, left, right + pad_q))
    v_padded = F.pad(v, (0, 0, left, right + pad_q))
    blocks_per_group = max(1, queries_per_group // block)
    # The window rule depends only on i - j = r + left - s, so one (block x span) band serves every block.
    rows, cols = torch.arange(block, device=q.device)[:, None], torch.arange(span, device=q.device)[None, :]
    band = allowed(rows + left, cols, causal=causal, window=window)
    outputs = []
    for first in range(0, n_blocks, blocks_per_group):
        last = min(first + blocks_per_group, n_blocks)
        keys = slice(first * block, last * block + left + right)
        k_spans = k_padded[:, :, keys].unfold(2, span, block).transpose(-1, -2)  # (b, h, blocks, span, d)
        v_spans = v_padded[:, :, keys].unfold(2, span, block).transpose(-1, -2)
        # Absolute indices: query i = t*block + r, key j = t*block - left + s.
        starts = torch.arange(first, last, device=q.device)[:, None, None] * block
        key_j = starts - left + cols[None]
        keep = band & (key_j >= g) & (key_j < n)  # keys left of g belong to the global part; g >= 0
        if last == n_blocks and pad_q:  # padding rows keep one key (themselves): finite, then dropped
            keep[-1, block - pad_q:] |= cols == rows[block - pad_q:] + left
        q_group = q_blocks[:, :, first:last]
        scores = q_group @ k_spans.transpose(-1, -2)
        if g:
            query_i = starts + rows[None]
            scores = torch.cat([q_group @ k[:, :, None, :g].transpose(-1, -2), scores], dim=-1)
            keep = torch.cat([allowed(query_i, torch.arange(g, device=q.device), causal=causal) & (query_i < n), keep], dim=-1)
        probs = _masked_softmax(scores, keep).to(v.dtype)
        out = probs[..., -span:] @ v_spans
        if g:
            out = out + probs[..., :g] @ v[:, :, None, :g]
        outputs.append(out)
    out = torch.cat(outputs, dim=2).reshape(b, h, n_blocks * block, d)[:, :, :n]
    if not g:
        return out
    # Global rows attend to every key (every earlier key when causal): full rows, O(globals x seq).
    index = torch.arange(n, device=q.device)
    keep_rows = allowed(index[:g, None], index[None, :], causal=causal)
    global_out = _masked_softmax((q[:, :, :g] * (1.0 / math.sqrt(d))) @ k.transpose(-1, -2), keep_rows).to(v.dtype) @ v
    return torch.cat([global_out, out[:, :, g:]], dim=2)


def _flex(causal: bool, window: int, global_tokens: int):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    compiled = {}

    def mask_mod(b, h, q_idx, kv_idx):
        return allowed(q_idx, kv_idx, causal=causal, window=window, global_tokens=global_tokens)

    def attn(q, k, v):
        n = q.shape[-2]
        block_mask = create_block_mask(mask_mod, None, None, n, n, device=q.device)
        if q.device.type == "cuda":
            kernel = compiled.setdefault("kernel", torch.compile(flex_attention, dynamic=False))
            return kernel(q, k, v, block_mask=block_mask)
        with warnings.catch_warnings():  # eager on CPU is the documented choice: no fused CPU kernel to compile to
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return flex_attention(q, k, v, block_mask=block_mask)

    return attn


def _xformers(causal: bool, window: int):
    import xformers.ops as xops
    from xformers.ops.fmha.attn_bias import LocalAttentionFromBottomRightMask

    left, right = _window_span(window, causal)
    bias = LocalAttentionFromBottomRightMask(window_left=left, window_right=right)

    def attn(q, k, v):
        return xops.memory_efficient_attention(*(t.transpose(1, 2) for t in (q, k, v)), attn_bias=bias).transpose(1, 2)

    return attn


def build_decoder(window: int = 512, global_tokens: int = 0, impl: str = "blocked", block: int = 128):
    """A cached decoding step (causal): the one new query at position i = t - 1 of the t cached keys sees the causal
    window's keys (i - window, i] and the global ones [0, global_tokens), exactly the mask of masks.allowed, for
    every impl; a query inside the global part sees every earlier key. Gathers those keys, so a step costs
    O(window + globals), not O(t)."""
    _check(window, global_tokens, impl, block)

    def attn(q, k, v):
        if q.shape[-2] != 1:
            raise ValueError("longformer decoding takes one new query at a time")
        t = k.shape[-2]
        first_local = max(global_tokens, t - window)  # [0, globals) + [first_local, t): contiguous when they meet
        keys = torch.cat([k[:, :, :global_tokens], k[:, :, first_local:]], dim=2)
        values = torch.cat([v[:, :, :global_tokens], v[:, :, first_local:]], dim=2)
        return F.scaled_dot_product_attention(q, keys, values)

    return attn


def _check(window: int, global_tokens: int, impl: str, block: int) -> None:
    if impl not in IMPLS:
        raise ValueError(f"unknown longformer impl {impl!r}; known: {', '.join(IMPLS)}")
    if window < 1:
        raise ValueError(f"longformer window={window} must be positive")
    if global_tokens < 0:
        raise ValueError(f"longformer global_tokens={global_tokens} must be >= 0")
    if block < 1:
        raise ValueError(f"longformer block={block} must be positive")


def build(causal: bool, window: int = 512, global_tokens: int = 0, impl: str = "blocked", block: int = 128):
    _check(window, global_tokens, impl, block)
    if impl == "flex":
        return _flex(causal, window, global_tokens)
    if impl == "xformers":
        if global_tokens:
            raise ValueError("longformer impl=xformers has no global tokens; use impl=blocked or flex")
        return _xformers(causal, window)
    return lambda q, k, v: blocked(q, k, v, causal=causal, window=window, global_tokens=global_tokens, block=block)


def unsupported(device: torch.device, dtype: torch.dtype, window: int = 512, global_tokens: int = 0,
              impl: str = "blocked", block: int = 128) -> str | None:
    _check(window, global_tokens, impl, block)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    if impl == "xformers":
        if global_tokens:
            return "xformers local attention has no global tokens"
        from models.attention import xformers_attn
        return xformers_attn.kernel_missing(device, dtype)
    return None


def forward_flops(seq_len: int, head_dim: int, causal: bool, window: int = 512, global_tokens: int = 0,
                  **_options) -> float:
    """Exact softmax attention over the pairs the sliding window and the global tokens let through."""
    return softmax_attention_flops(seq_len, head_dim, causal, window=window, global_tokens=global_tokens)


def materialises_scores(impl: str = "blocked", **_options) -> bool:
    """FlexAttention on CPU runs unfused and keeps the n x n scores."""
    return impl == "flex"
