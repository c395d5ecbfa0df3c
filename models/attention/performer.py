"""Performer attention: FAVOR+ (Choromanski et al. 2021, "Rethinking Attention with Performers", arXiv:2009.14794).

softmax(q.k / sqrt(d)) is approximated by phi(q).phi(k) with positive random features
    phi(x) = exp(w_r . x' - |x'|^2 / 2),  x' = x / d^(1/4),  r = 1..m,
whose rows w_r are orthogonal within blocks of d and have chi(d)-distributed lengths (sec. 2.4, "ORF").
The 1/sqrt(m) factor cancels between numerator and denominator. As in the reference code
(google-research/performer, and performer-pytorch), the exponent is stabilised by subtracting the maximum of
w_r . x' (per query row; per head for keys, since a key constant must be shared by every key), and each
feature gets `eps` added: google-research uses 1e-6, performer-pytorch 1e-4 (our default). When q and k are
large the estimator's variance grows like exp(|q'|^2 + |k'|^2) and most features underflow; the floor then
shrinks the estimate toward uniform attention instead of letting a handful of features decide it.

Causal mode walks the sequence in chunks carrying the prefix sums S = sum phi(k)^T v (features x head_dim)
and z = sum phi(k); within a chunk it uses the chunk's own masked (chunk x chunk) feature products.
Memory is linear in the sequence: the features (seq x features) plus one chunk's work at a time.
All arithmetic runs in float32 and the result is cast back to the input dtype.
"""
from __future__ import annotations

import math

import torch


def default_num_features(head_dim: int) -> int:
    return max(1, int(round(head_dim * math.log(head_dim))))


def orthogonal_gaussian(num_features: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """(num_features, dim): stacked orthogonal blocks, each row rescaled to the length of a Gaussian vector."""
    blocks = []
    for _ in range(-(-num_features // dim)):
        q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
        blocks.append(q.T)
    lengths = torch.randn(num_features, dim, generator=generator).norm(dim=1)
    return torch.cat(blocks)[:num_features] * lengths[:, None]


def _projections(x_bhnd: torch.Tensor, projection_md: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """w_r . x' for every row and feature, and |x'|^2 / 2 per row."""
    scaled = x_bhnd * x_bhnd.shape[-1] ** -0.25
    return scaled @ projection_md.T, 0.5 * scaled.square().sum(-1, keepdim=True)


def _positive(projected: torch.Tensor, offset: torch.Tensor, eps: float) -> torch.Tensor:
    """exp(projected - offset) + eps; in place on the chunk when no gradient is needed (one pass in cache)."""
    if torch.is_grad_enabled() and projected.requires_grad:
        features = torch.exp(projected - offset)
        return features + eps if eps else features
    features = projected.sub_(offset).exp_()
    return features.add_(eps) if eps else features


def _key_peak(k: torch.Tensor, projection_md: torch.Tensor, chunk: int) -> torch.Tensor:
    """max over every key and feature of w_r . k' (per head), one cache-sized chunk at a time."""
    with torch.no_grad():
        peaks = [_projections(k[:, :, s:s + chunk], projection_md)[0].amax(dim=(-1, -2), keepdim=True)
                 for s in range(0, k.shape[-2], chunk)]
    return torch.stack(peaks).amax(dim=0)


def _key_features(k_rows, projection_md, peak, eps):
    projected, half_norm = _projections(k_rows, projection_md)
    return _positive(projected, half_norm + peak, eps)


def _query_features(q_rows, projection_md, eps):
    projected, half_norm = _projections(q_rows, projection_md)
    return _positive(projected, half_norm + projected.amax(dim=-1, keepdim=True).detach(), eps)


def _with_ones(v: torch.Tensor) -> torch.Tensor:
    """[v, 1]: one matmul with phi(q) then yields the numerator and the normaliser together."""
    return torch.cat([v, v.new_ones(*v.shape[:-1], 1)], dim=-1)


def linear_attention(q, k, v, projection_md, eps: float, chunk: int):
    """Non-causal: context = sum_j phi(k_j)^T [v_j, 1], then out_i = phi(q_i) context, numerator / normaliser.

    Features are made one chunk of rows at a time (projection, exp and matmul on a cache-sized block). The keys'
    stabiliser is their running maximum, as online softmax keeps it: when a chunk raises it, the context summed
    so far is rescaled by exp(old - new), so the keys are projected once. With phi = e + eps, the eps terms are
    applied to the small context instead of every feature:
    sum_j (e_j + eps)^T [v_j, 1] = sum_j e_j^T [v_j, 1] + eps * sum_j [v_j, 1], and likewise for the queries.
    """
    v_ones = _with_ones(v)
    context, peak = None, None
    for start in range(0, k.shape[-2], chunk):
        rows = slice(start, start + chunk)
        projected, half_norm = _projections(k[:, :, rows], projection_md)
        chunk_peak = projected.detach().amax(dim=(-1, -2), keepdim=True)
        if peak is None:
            peak = chunk_peak
        else:
            new_peak = torch.maximum(peak, chunk_peak)
            context = context * torch.exp(peak - new_peak)
            peak = new_peak
        part = _positive(projected, half_norm + peak, 0.0).transpose(-1, -2) @ v_ones[:, :, rows]
        context = part if context is None else context + part
    context = context + eps * v_ones.sum(dim=-2, keepdim=True)  # (b, h, 1, d+1), broadcast over the features
    context_sum = eps * context.sum(dim=-2, keepdim=True)
    outputs = []
    for start in range(0, q.shape[-2], chunk):
        projected, half_norm = _projections(q[:, :, start:start + chunk], projection_md)
        q_exp = _positive(projected, half_norm + projected.amax(dim=-1, keepdim=True).detach(), 0.0)
        both = q_exp @ context + context_sum
        outputs.append(both[..., :-1] / both[..., -1:].clamp_min(torch.finfo(both.dtype).tiny))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-2)


def causal_linear_attention(q, k, v, projection_md, eps: float, chunk: int):
    """Causal: carry S = sum phi(k)^T [v, 1] over earlier chunks; inside a chunk, its masked feature products."""
    b, h, n, _ = q.shape
    peak = _key_peak(k, projection_md, chunk)
    v_ones = _with_ones(v)
    state = q.new_zeros(b, h, projection_md.shape[0], v_ones.shape[-1])
    outputs = []
    for start in range(0, n, chunk):
        rows = slice(start, start + chunk)
        q_feat = _query_features(q[:, :, rows], projection_md, eps)
        k_feat = _key_features(k[:, :, rows], projection_md, peak, eps)
        within = (q_feat @ k_feat.transpose(-1, -2)).tril()
        both = q_feat @ state + within @ v_ones[:, :, rows]
        outputs.append(both[..., :-1] / both[..., -1:].clamp_min(torch.finfo(both.dtype).tiny))
        state = state + k_feat.transpose(-1, -2) @ v_ones[:, :, rows]
    return torch.cat(outputs, dim=-2)


# The keys' stabiliser is their maximum over the whole sequence, and eps is added after it: row i's output depends
# on keys after i (slightly), so a decoder that sees only the keys so far cannot reproduce the full forward.
NO_CACHED_DECODING = ("FAVOR+'s key stabiliser spans the whole sequence, so decoding from a KV cache cannot give the "
                      "full forward's outputs; use dense, sdpa, xformers, flash_attn or longformer")

# Rows per block when not given: measured best on 2 CPU cores at n = 4096 with 256 features (causal, non-causal).
DEFAULT_CHUNK = {True: 256, False: 512}


def _check(num_features: int | None = None, redraw_interval: int = 0, chunk_size: int | None = None,
           eps: float = 1e-4, seed: int = 0) -> None:
    if num_features is not None and num_features < 1:
        raise ValueError(f"performer num_features={num_features} must be positive")
    if redraw_interval < 0:
        raise ValueError(f"performer redraw_interval={redraw_interval} must be >= 0 (0: never redraw)")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"performer chunk_size={chunk_size} must be positive")
    if eps < 0:
        raise ValueError(f"performer eps={eps} must be >= 0")


class Performer:
    """Holds the random projection (redrawn every `redraw_interval` training calls when > 0)."""

    def __init__(self, causal: bool, num_features: int | None = None, redraw_interval: int = 0,
                 chunk_size: int | None = None, eps: float = 1e-4, seed: int = 0):
        _check(num_features, redraw_interval, chunk_size, eps)
        chunk_size = chunk_size or DEFAULT_CHUNK[causal]
        self.causal, self.num_features, self.redraw_interval, self.chunk = causal, num_features, redraw_interval, chunk_size
        self.eps = eps
        self.generator = torch.Generator().manual_seed(seed)
        self.projection: torch.Tensor | None = None
        self.calls = 0

    def _projection(self, head_dim: int, device: torch.device, training: bool) -> torch.Tensor:
        redraw = training and self.redraw_interval > 0 and self.calls % self.redraw_interval == 0
        if self.projection is None or self.projection.shape[1] != head_dim or redraw:
            m = self.num_features or default_num_features(head_dim)
            self.projection = orthogonal_gaussian(m, head_dim, self.generator)
        if training:
            self.calls += 1
        return self.projection.to(device)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        training = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        projection = self._projection(q.shape[-1], q.device, training)
        q32, k32, v32 = q.float(), k.float(), v.float()
        attend = causal_linear_attention if self.causal else linear_attention
        out = attend(q32, k32, v32, projection, self.eps, self.chunk)
        return out.to(q.dtype)


build = Performer


def unsupported(device: torch.device, dtype: torch.dtype, **options) -> str | None:
    _check(**options)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "CUDA is not available"
    return None


# FAVOR+'s forward FLOPs per (batch, head) with m features, counted by matmul (2 per multiply-add): the feature
# maps 2 x (2 n m d) for q and k, then non-causal phi(k)^T [v, 1] and phi(q) times that context, 2 x (2 n m (d+1));
# causal adds per chunk of c rows phi(q) phi(k)^T and its product with [v, 1], 2 n c m + 2 n c (d+1). Its backward
# is autograd's: 2 x the forward.
FLOP_CONVENTION = "autograd"


def forward_flops(seq_len: int, head_dim: int, causal: bool, num_features: int | None = None,
                  chunk_size: int | None = None, **_options) -> float:
    n, d = seq_len, head_dim
    m = num_features or default_num_features(d)
    forward = 2 * (2 * n * m * d) + 2 * (2 * n * m * (d + 1))
    if causal:
        c = min(chunk_size or DEFAULT_CHUNK[True], n)
        forward += 2 * n * c * m + 2 * n * c * (d + 1)
    return float(forward)
