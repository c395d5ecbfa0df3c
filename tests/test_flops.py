"""The FLOP formulas against PyTorch's own counter, and the parameter formulas against numel()."""
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import flops
from models import gpt
from models.gpt import GPT, GPTConfig, stack_params
from models.sizing import shape_for_params
from models.spec import token_loss

SHAPES = [
    dict(n_layer=1, d_model=32, n_head=2, seq_len=16, vocab_size=256),
    dict(n_layer=2, d_model=64, n_head=4, seq_len=64, vocab_size=256),
    dict(n_layer=3, d_model=96, n_head=3, seq_len=128, vocab_size=1000, mlp_ratio=2.0),
    dict(n_layer=2, d_model=128, n_head=8, seq_len=256, vocab_size=512, tie_embeddings=False, bias=False),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s['n_layer']}d{s['d_model']}n{s['seq_len']}")
def test_dense_count_matches_flop_counter(shape):
    cfg = GPTConfig(attention="dense", **shape)
    model = GPT(cfg)
    batch = 2
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.seq_len))
    with FlopCounterMode(display=False) as counter:
        loss = token_loss(model(idx), idx)
        loss.backward()
    measured_per_token = counter.get_total_flops() / (batch * cfg.seq_len)
    predicted = gpt.flops_per_token(cfg)
    assert predicted.dense == pytest.approx(measured_per_token, rel=1e-9)  # exact: every matmul counted, nothing else


def test_causal_count_is_the_keys_a_causal_mask_lets_through():
    cfg = GPTConfig(n_layer=2, d_model=64, n_head=4, seq_len=100)
    per_token = gpt.flops_per_token(cfg)
    # Query i sees i+1 keys: sum over i of (i+1) = n(n+1)/2, against n^2 for the dense kernel.
    assert per_token.attention_causal / per_token.attention_dense == pytest.approx(101 / 200)
    assert per_token.dense - per_token.causal == pytest.approx(per_token.attention_dense - per_token.attention_causal)
    assert per_token.six_n == 6 * stack_params(cfg)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"L{s['n_layer']}d{s['d_model']}")
def test_closed_form_param_count_is_exact(shape):
    model = GPT(GPTConfig(**shape))
    counts = gpt.param_counts(model)
    assert counts["total"] == sum(p.numel() for p in model.parameters())
    assert counts["non_embedding"] == stack_params(model.cfg)


def gpt_count(n_layer: int, d_model: int, n_head: int) -> int:
    return stack_params(GPTConfig(n_layer=n_layer, d_model=d_model, n_head=n_head))


@pytest.mark.parametrize("target", [2e4, 1e5, 3e6, 2.5e7])
def test_shape_for_params_lands_within_ten_percent(target):
    n_layer, d_model, n_head = shape_for_params(target, gpt_count, aspect_ratio=32, head_dim=16)
    n = stack_params(GPTConfig(n_layer=n_layer, d_model=d_model, n_head=n_head))
    assert abs(n / target - 1) <= 0.10
    assert d_model == 16 * n_head


def test_shape_for_params_rejects_impossible_targets():
    with pytest.raises(ValueError, match="model.params=10"):
        shape_for_params(10, gpt_count, head_dim=32)


# torch.cuda.get_device_name() as NVIDIA's parts report it -> (product, dense bf16 TFLOP/s, dense fp8 TFLOP/s)
DEVICES = {
    "NVIDIA H100 80GB HBM3": ("H100 SXM", 989.5, 1979), "NVIDIA H100 PCIe": ("H100 PCIe", 756.5, 1513),
    "NVIDIA H100 NVL": ("H100 NVL", 835.5, 1670.5), "NVIDIA H200": ("H200", 989.5, 1979),
    "NVIDIA H200 NVL": ("H200 NVL", 835.5, 1670.5), "NVIDIA GH200 480GB": ("GH200", 989.5, 1979),
    "NVIDIA A100-SXM4-40GB": ("A100 SXM 40GB", 312, None), "NVIDIA A100-SXM4-80GB": ("A100 SXM 80GB", 312, None),
    "NVIDIA A100-PCIE-40GB": ("A100 PCIe 40GB", 312, None), "NVIDIA A100 80GB PCIe": ("A100 PCIe 80GB", 312, None),
    "NVIDIA L4": ("L4", 121, 242.5), "NVIDIA L40S": ("L40S", 362.05, 733), "NVIDIA L40": ("L40", 181.05, 362),
    "NVIDIA A10": ("A10", 125, None), "Tesla V100-SXM2-16GB": ("V100 SXM2", None, None), "Tesla T4": ("T4", None, None),
}


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_peak_table_matches_the_exact_product_from_its_data_sheet(name):
    product, bf16, fp8 = DEVICES[name]
    assert flops.device_product(name) == product
    assert flops.peak_flops(name, "bf16") == (pytest.approx(bf16 * 1e12) if bf16 else None)
    assert flops.peak_flops(name, "fp8") == (pytest.approx(fp8 * 1e12) if fp8 else None)


@pytest.mark.parametrize("name", ["AMD EPYC 7B13", "NVIDIA A10G", "NVIDIA B200", "NVIDIA GeForce RTX 4090",
                                  "NVIDIA H100 PCIe (MIG 1g.10gb)", "cuda (not available)"])
def test_an_unknown_device_gets_no_peak_rather_than_a_neighbours(name):
    assert flops.device_product(name) is None and flops.peak_flops(name, "bf16") is None
