"""The registry's exact variants against a float64 reference (issue 3 widens this to every variant and mask)."""
import math

import pytest
import torch

from models import attention


def reference(q, k, v, causal):
    q, k, v = (t.double() for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        n = q.shape[-2]
        scores = scores.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(scores, -1) @ v


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("name,options", [("dense", {}), ("sdpa", {"backend": "auto"}), ("sdpa", {"backend": "math"}),
                                          ("sdpa", {"backend": "flash"})])
def test_forward_and_gradients_match_float64(name, options, causal):
    if not attention.available(name, "cpu", torch.float32, **options):
        pytest.skip(attention.available(name, "cpu", torch.float32, **options).reason)
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 77, 32, requires_grad=True) for _ in range(3))
    out = attention.get_attention(name, causal=causal, **options)(q, k, v)
    expected = reference(q, k, v, causal)
    assert rel_err(out, expected) < 1e-4
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(expected, (q, k, v), grad.double())
    for g, w in zip(got, want):
        assert rel_err(g, w) < 1e-4


def test_availability_names_the_reason():
    verdict = attention.available("sdpa", "cpu", torch.float32, backend="cudnn")
    assert not verdict and "cpu" in verdict.reason
    with pytest.raises(ValueError, match="unknown attention 'nope'"):
        attention.get_attention("nope", causal=True)
