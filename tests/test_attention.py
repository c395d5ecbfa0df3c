"""Every attention variant against a float64 reference of the same mask, plus Performer's approximation.

Exact variants: fp32 within 1e-4 relative norm error (forward and dq, dk, dv); bf16/fp16 within 2x the error
of the same computation done by the reference in that dtype. Odd lengths, batch and heads > 1.
Variants that cannot run here are skipped with the reason `available` gives.
"""
import math
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from harness.measure import cpu_allocated_by
from models import attention
from models.attention import masks, performer
from models.attention.reference import reference, relative_error

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

FULL = [("dense", {}), ("sdpa", {"backend": "auto"}), ("sdpa", {"backend": "math"}), ("sdpa", {"backend": "flash"}),
        ("sdpa", {"backend": "efficient"}), ("sdpa", {"backend": "cudnn"}), ("xformers", {}), ("flash_attn", {})]
WINDOWED = [("longformer", {"impl": impl, "window": w, "global_tokens": g, **({"block": 16} if impl == "blocked" else {})})
            for impl in ("blocked", "flex", "xformers") for w, g in ((10, 0), (7, 3), (32, 5))]


def case_id(case):
    name, options = case
    return name + "".join(f"-{k}={v}" for k, v in options.items())


def inputs(device, dtype, n=77, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(2, 3, n, 32, generator=generator).to(device=device, dtype=dtype).requires_grad_() for _ in range(3)]


def mask_of(name, options):
    if name != "longformer":
        return {}
    return {"window": options["window"], "global_tokens": options["global_tokens"]}


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", FULL + WINDOWED, ids=case_id)
def test_exact_variants_match_float64(case, device, dtype_name, causal):
    name, options = case
    dtype = DTYPES[dtype_name]
    refused = attention.unsupported(name, device, dtype, **options)
    if refused:
        pytest.skip(refused)
    q, k, v = inputs(device, dtype)
    attn = attention.get_attention(name, causal=causal, **options)
    exact = reference(q, k, v, causal=causal, **mask_of(name, options))
    peer = reference(q, k, v, causal=causal, **mask_of(name, options), dtype=dtype)  # the same computation in this dtype
    forward_bound = 1e-4 if dtype == torch.float32 else 2 * relative_error(peer, exact)
    try:
        out = attn(q, k, v)
    except NotImplementedError as error:  # FlexAttention has no CPU backward and refuses inputs that need one
        with torch.no_grad():
            assert relative_error(attn(*(t.detach() for t in (q, k, v))), exact) <= forward_bound
        pytest.skip(f"forward checked; backward: {str(error).splitlines()[0]}")
    assert relative_error(out, exact) <= forward_bound
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(exact, (q, k, v), grad.double())
    if dtype == torch.float32:
        bounds = [1e-4] * 3
    else:
        bounds = [2 * relative_error(p, w) for p, w in zip(torch.autograd.grad(peer, (q, k, v), grad), want)]
    for g, w, bound in zip(got, want, bounds):
        assert relative_error(g, w) <= bound


def test_registry_covers_every_variant_with_a_config_and_reasons():
    conf = Path(__file__).resolve().parent.parent / "conf" / "attention"
    configs = {p.stem: OmegaConf.load(p) for p in conf.glob("*.yaml")}
    assert sorted(attention.names()) == sorted(stem for stem, c in configs.items() if c.name == stem)
    for stem, c in configs.items():
        if stem != c.name:  # a variant with an option pinned, e.g. sdpa_flash
            assert c.name in attention.names() and stem in [f"{c.name}_{v}" for v in c.values()], stem
            attention.get_attention(c.name, causal=True, **{k: v for k, v in c.items() if k != "name"})
    refused = attention.unsupported("sdpa", "cpu", torch.float32, backend="cudnn")
    assert refused and "cpu" in refused
    assert "no cpu kernels" in attention.unsupported("xformers", "cpu")
    with pytest.raises(ValueError, match="unknown attention 'nope'"):
        attention.get_attention("nope", causal=True)
    with pytest.raises(ValueError, match="unknown longformer impl 'fast'"):
        attention.get_attention("longformer", causal=True, impl="fast")


# --- Performer -----------------------------------------------------------------------------------------------
# FAVOR+ against exact attention and against a trivial estimator on the same inputs: the mean of v (for causal
# attention, the mean of v up to each row), which is exact for uniform attention. On q, k ~ N(0, 0.5^2),
# v ~ N(0, 1), n = 512, d = 64 (measured, 3 seeds): the trivial estimator scores 0.25 (non-causal) and 0.21 (causal);
# FAVOR+ scores 0.38 / 0.28 at the default round(d ln d) = 266 features, 0.22 / 0.17 at 1024 and 0.12 / 0.09 at
# 4096. So at the default feature count FAVOR+ is worse than ignoring q and k here (a finding, said in docs/attention.md);
# it beats the trivial estimator only with many features, and with larger q.k (variance ~ exp(|q|^2 + |k|^2))
# its features fall under eps and it becomes the trivial estimator. The bound: with 4096 features, under
# PERFORMER_BOUND x the trivial estimator's error on the same inputs.
PERFORMER_BOUND = 0.6


def performer_inputs(seed):
    generator = torch.Generator().manual_seed(100 + seed)
    q, k = (0.5 * torch.randn(2, 4, 512, 64, generator=generator) for _ in range(2))
    return q, k, torch.randn(2, 4, 512, 64, generator=generator)


def trivial_estimate(v, causal):
    """The mean of v over the keys a row sees: exact attention when every score is equal."""
    if not causal:
        return v.mean(-2, keepdim=True).expand_as(v)
    return v.cumsum(-2) / torch.arange(1, v.shape[-2] + 1, dtype=v.dtype).view(-1, 1)


def performer_error(causal, num_features, seeds=3):
    errors, trivial = [], []
    for seed in range(seeds):
        q, k, v = performer_inputs(seed)
        exact = reference(q, k, v, causal=causal)
        errors.append(relative_error(performer.build(causal, num_features=num_features, seed=seed)(q, k, v), exact))
        trivial.append(relative_error(trivial_estimate(v, causal), exact))
    return sum(errors) / len(errors), sum(trivial) / len(trivial)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_performer_error_falls_with_features_and_beats_the_trivial_estimator(causal):
    (e266, trivial), (e1024, _), (e4096, _) = (performer_error(causal, m) for m in (266, 1024, 4096))
    assert e266 > e1024 > e4096
    assert e4096 < PERFORMER_BOUND * trivial, (e4096, trivial)


def test_causal_prefix_sums_equal_the_direct_masked_computation():
    q, k, v = (t.detach() for t in inputs("cpu", torch.float32, n=77))
    module = performer.build(True, num_features=40, chunk_size=16, eps=1e-4, seed=3)
    out = module(q, k, v)
    projection = module.projection
    # Same features, built directly, then the O(n^2) masked form of the same estimator.
    def features(x, is_query):
        scaled = x * 32 ** -0.25
        projected = scaled @ projection.T
        peak = projected.amax(-1, keepdim=True) if is_query else projected.amax((-1, -2), keepdim=True)
        return torch.exp(projected - 0.5 * scaled.square().sum(-1, keepdim=True) - peak) + 1e-4
    weights = (features(q, True) @ features(k, False).transpose(-1, -2)).tril()
    direct = (weights @ v) / weights.sum(-1, keepdim=True)
    assert relative_error(out, direct) < 1e-5


def test_chunking_does_not_change_the_non_causal_result():
    q, k, v = (t.detach() for t in inputs("cpu", torch.float32, n=77))
    small = performer.build(False, num_features=50, chunk_size=8, seed=1)(q, k, v)
    whole = performer.build(False, num_features=50, chunk_size=4096, seed=1)(q, k, v)
    assert relative_error(small, whole) < 1e-6


def test_features_are_redrawn_every_interval_in_training_only():
    module = performer.build(False, num_features=16, redraw_interval=2, seed=0)
    q, k, v = inputs("cpu", torch.float32, n=9)
    drawn = []
    for _ in range(4):
        module(q, k, v)
        drawn.append(module.projection.clone())
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[1], drawn[2]) and torch.equal(drawn[2], drawn[3])
    with torch.no_grad():
        module(q, k, v)
    assert torch.equal(module.projection, drawn[3])


def test_performer_accumulates_half_precision_inputs_in_fp32():
    q, k, v = (t.detach() for t in inputs("cpu", torch.float32, n=64))
    full = performer.build(True, num_features=64, seed=2)(q, k, v)
    half = performer.build(True, num_features=64, seed=2)(*(t.bfloat16() for t in (q, k, v)))
    assert half.dtype == torch.bfloat16
    assert relative_error(half, full) < 2e-2  # bf16 rounding of inputs and output only


# --- memory and FLOPs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options", [("performer", {"num_features": 128}), ("longformer", {"window": 256})])
def test_linear_variants_use_memory_linear_in_sequence_length(name, options):
    peaks = []
    lengths = [1024, 2048, 4096]
    for n in lengths:
        q, k, v = (torch.randn(1, 2, n, 64, requires_grad=True) for _ in range(3))
        attn = attention.get_attention(name, causal=True, **options)
        peaks.append(cpu_allocated_by(lambda: attn(q, k, v).sum().backward()).peak)
    slope = math.log(peaks[-1] / peaks[0]) / math.log(lengths[-1] / lengths[0])
    assert slope <= 1.15, peaks


def test_dense_memory_is_quadratic():
    peaks = []
    for n in (512, 1024):
        q, k, v = (torch.randn(1, 2, n, 64) for _ in range(3))
        attn = attention.get_attention("dense", causal=True)
        peaks.append(cpu_allocated_by(lambda: attn(q, k, v)).peak)
    assert peaks[1] / peaks[0] == pytest.approx(4, rel=0.1)


def test_attention_flops_closed_forms():
    b, h, d, n, w = 2, 4, 64, 1000, 128
    full = attention.flops("sdpa", batch=b, heads=h, seq_len=n, head_dim=d, causal=False, backward=False)
    causal = attention.flops("dense", batch=b, heads=h, seq_len=n, head_dim=d, causal=True, backward=False)
    assert full == 4 * b * h * n * n * d
    assert causal == 4 * b * h * d * n * (n + 1) / 2
    window = attention.flops("longformer", batch=b, heads=h, seq_len=n, head_dim=d, causal=True, backward=False,
                                   options={"window": w, "global_tokens": 0})
    assert window == 4 * b * h * d * (w * (w + 1) / 2 + (n - w) * w)
    both = attention.flops("sdpa", batch=b, heads=h, seq_len=n, head_dim=d, causal=False, backward=True)
    assert both == 3.5 * full
    assert masks.attended_pairs(n, causal=False, window=w, global_tokens=3) == int(
        masks.dense_mask(n, causal=False, window=w, global_tokens=3).sum())
