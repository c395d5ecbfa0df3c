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
  causal: only the keys the model's mask lets through: (n+1)/2 per query on average for a causal
          decoder, which is the "half" in PaLM's and Chinchilla's accounting; all n for an encoder.
An encoder's masked-token head runs over every position, as it is computed, so it counts like the GPT's.
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


def block_matmul_flops_per_token(cfg: GPTConfig) -> float:
    """Forward FLOPs per token of one block's dense matmuls: QKV, output projection, MLP."""
    d = cfg.d_model
    return 2 * d * 3 * d + 2 * d * d + 2 * 2 * d * cfg.d_mlp


def forward_matmul_flops_per_token(cfg: GPTConfig) -> float:
    """Forward FLOPs per token for the dense (non-attention) matmuls: every block's, and the logits."""
    return cfg.n_layer * block_matmul_flops_per_token(cfg) + 2 * cfg.d_model * cfg.vocab_size


def forward_attention_flops_per_token(cfg: GPTConfig, *, causal: bool) -> float:
    """Forward FLOPs per token of QK^T and AV over all heads: 2 matmuls x 2 FLOPs x keys x d_model per layer."""
    n = cfg.seq_len
    keys_per_query = (n + 1) / 2 if causal else n
    return cfg.n_layer * 2 * 2 * keys_per_query * cfg.d_model


def training_flops_per_token(cfg: GPTConfig, non_embedding_params: int) -> FlopsPerToken:
    matmul = forward_matmul_flops_per_token(cfg)
    attn_dense = forward_attention_flops_per_token(cfg, causal=False)
    attn_causal = forward_attention_flops_per_token(cfg, causal=cfg.causal)  # an encoder's mask lets every key through
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


# --- attention kernels ----------------------------------------------------------------------------
# The FLOPs an attention variant needs for (batch, heads, seq, head_dim), counted by matmul (2 per multiply-add):
#   exact softmax attention (dense, sdpa, xformers, flash_attn, longformer): 4 * b * h * d * pairs forward,
#       pairs = the (query, key) pairs the mask lets through (masks.attended_pairs): n^2 full,
#       n(n+1)/2 causal (the "halved when causal"), about n * window for a sliding window;
#       backward 2.5x forward (recompute QK^T, then dV, dP, dQ, dK: FlashAttention's accounting).
#   performer (FAVOR+, m features): feature maps 2 * (2 n m d) for q and k, then
#       non-causal: phi(k)^T [v, 1] and phi(q) context: 2 * (2 n m (d+1));
#       causal: per chunk of c rows also phi(q) phi(k)^T and its product with [v, 1]: 2 n c m + 2 n c (d+1);
#       backward 2x forward (autograd of plain matmuls).
ATTENTION_BACKWARD_FACTOR = {"exact": 2.5, "performer": 2.0}


def attention_flops(variant: str, *, batch: int, heads: int, seq_len: int, head_dim: int, causal: bool,
                    backward: bool, options: dict | None = None) -> float:
    from models.attention.masks import attended_pairs
    from models.attention.performer import DEFAULT_CHUNK, default_num_features

    options = options or {}
    n, d = seq_len, head_dim
    if variant == "performer":
        m = options.get("num_features") or default_num_features(d)
        forward = 2 * (2 * n * m * d) + 2 * (2 * n * m * (d + 1))
        if causal:
            c = min(options.get("chunk_size") or DEFAULT_CHUNK[True], n)
            forward += 2 * n * c * m + 2 * n * c * (d + 1)
        factor = ATTENTION_BACKWARD_FACTOR["performer"]
    else:
        window = options.get("window") if variant == "longformer" else None
        globals_ = options.get("global_tokens", 0) if variant == "longformer" else 0
        forward = 4 * d * attended_pairs(n, causal=causal, window=window, global_tokens=globals_)
        factor = ATTENTION_BACKWARD_FACTOR["exact"]
    total = forward * (1 + factor) if backward else forward
    return float(batch * heads * total)


def attention_memory_estimate(variant: str, *, batch: int, heads: int, seq_len: int, head_dim: int,
                              bytes_per_element: int, backward: bool, options: dict | None = None) -> float:
    """Bytes of the largest intermediates a variant materialises (a guard against an OS-level OOM kill).

    dense, sdpa's math backend (and flex on CPU, which runs unfused) keep the n x n scores and probabilities,
    and in backward their gradients too; the others are linear in n and are not guarded.
    """
    options = options or {}
    materialises = (variant == "dense" or (variant == "sdpa" and options.get("backend") == "math")
                    or (variant == "longformer" and options.get("impl") == "flex"))
    if not materialises:
        return 0.0
    square = batch * heads * seq_len * seq_len * max(bytes_per_element, 4)  # softmax runs in fp32
    return float(square * (4 if backward else 2))


def kv_cache_bytes(*, n_layer: int, kv_heads: int, head_dim: int, context: int, batch: int, bytes_per_element: int) -> int:
    """Keys and values of every layer: 2 x layers x kv_heads x head_dim x context x batch x bytes per element."""
    return 2 * n_layer * kv_heads * head_dim * context * batch * bytes_per_element


def context_where_cache_exceeds(weights_bytes: int, *, n_layer: int, kv_heads: int, head_dim: int, batch: int,
                                bytes_per_element: int) -> float:
    """The context length at which the KV cache for `batch` sequences holds as many bytes as the weights."""
    return weights_bytes / kv_cache_bytes(n_layer=n_layer, kv_heads=kv_heads, head_dim=head_dim, context=1,
                                          batch=batch, bytes_per_element=bytes_per_element)


def encdec_training_flops_per_token(cfg: GPTConfig, non_embedding_params: int) -> FlopsPerToken:
    """Training FLOPs per token of the window an encoder-decoder is trained on (models/encdec.py): the encoder
    reads encoder_len tokens, the decoder writes decoder_len; each decoder layer also projects the encoder's
    output to keys and values and attends to all of it. Per window, divided by its seq_len tokens."""
    from models.encdec import span_layout
    layout = span_layout(cfg.seq_len)
    enc, dec, d, layers = layout.encoder_len, layout.decoder_len, cfg.d_model, cfg.n_layer
    block = block_matmul_flops_per_token(cfg)
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
        six_n=6.0 * non_embedding_params,
        attention_dense=3 * attention_dense / cfg.seq_len,
        attention_causal=3 * attention_causal / cfg.seq_len,
    )
