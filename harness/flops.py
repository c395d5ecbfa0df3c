"""Every FLOP formula and device peak rate in the harness lives here.

Training FLOPs per token count the matrix multiplies (2 FLOPs per multiply-add) of
one forward pass and multiply by 3: the backward pass computes the gradient with
respect to both the input and the weight of every matmul, twice the forward work
(Kaplan et al. 2020, sec. 2.1; Hoffmann et al. 2022, app. F). Element-wise work
(norms, GELU, softmax, bias adds) is left out, as FlopCounterMode does. A fused
attention kernel that recomputes the scores in backward does more arithmetic than
this; that recomputation is hardware work, not model work, and is not counted.

Attention's score (QK^T) and value (AV) products are counted two ways:
  dense:  every query against every key, as a dense kernel performs them;
  causal: only the keys a causal mask lets through, (n+1)/2 per query on average,
          which is the "half" in PaLM's and Chinchilla's accounting.
"""
from __future__ import annotations

from dataclasses import dataclass

from models.gpt import GPTConfig


@dataclass(frozen=True)
class FlopsPerToken:
    dense: float       # training FLOPs per token, attention as a dense kernel performs it
    causal: float      # training FLOPs per token, attention as a causal mask needs it
    six_n: float       # the 6N approximation (Kaplan), N = non-embedding parameters
    attention_dense: float
    attention_causal: float


def forward_matmul_flops_per_token(cfg: GPTConfig) -> float:
    """Forward FLOPs per token for the dense (non-attention) matmuls: QKV, output projection, MLP, logits."""
    d = cfg.d_model
    per_layer = 2 * d * 3 * d + 2 * d * d + 2 * 2 * d * cfg.d_mlp
    return cfg.n_layer * per_layer + 2 * d * cfg.vocab_size


def forward_attention_flops_per_token(cfg: GPTConfig, *, causal: bool) -> float:
    """Forward FLOPs per token of QK^T and AV over all heads: 2 matmuls x 2 FLOPs x keys x d_model per layer."""
    n = cfg.seq_len
    keys_per_query = (n + 1) / 2 if causal else n
    return cfg.n_layer * 2 * 2 * keys_per_query * cfg.d_model


def training_flops_per_token(cfg: GPTConfig, non_embedding_params: int) -> FlopsPerToken:
    matmul = forward_matmul_flops_per_token(cfg)
    attn_dense = forward_attention_flops_per_token(cfg, causal=False)
    attn_causal = forward_attention_flops_per_token(cfg, causal=True)
    return FlopsPerToken(
        dense=3 * (matmul + attn_dense),
        causal=3 * (matmul + attn_causal),
        six_n=6.0 * non_embedding_params,
        attention_dense=3 * attn_dense,
        attention_causal=3 * attn_causal,
    )


# Dense (no sparsity) peak rates in FLOP/s from the vendors' data sheets, by the
# compute dtype a precision mode runs its matmuls in. SXM parts where there are two.
PEAK_FLOPS = {
    "H200": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12},
    "H100": {"fp32": 67e12, "tf32": 494.7e12, "bf16": 989.4e12, "fp16": 989.4e12, "fp8": 1978.9e12},
    "A100": {"fp32": 19.5e12, "tf32": 156e12, "bf16": 312e12, "fp16": 312e12},
    "L40S": {"fp32": 91.6e12, "tf32": 183e12, "bf16": 362e12, "fp16": 362e12, "fp8": 733e12},
    "A10G": {"fp32": 31.2e12, "tf32": 62.5e12, "bf16": 125e12, "fp16": 125e12},
    "V100": {"fp32": 15.7e12, "fp16": 125e12},
    "T4": {"fp32": 8.1e12, "fp16": 65e12},
}


def peak_flops(device_name: str, compute_dtype: str) -> float | None:
    """The data-sheet peak for a device name as torch reports it, or None when unknown (every CPU)."""
    for key, rates in PEAK_FLOPS.items():
        if key.lower() in device_name.lower():
            return rates.get(compute_dtype)
    return None
