"""Device peak rates and the memory formulas every family shares (the KV cache).

A family's training FLOPs per token are its spec's (models/<family>.py, FlopsPerToken in models/spec.py), each in
closed form beside its model, or FlopCounterMode's count where no closed form exists; an attention variant's FLOPs
and memory are its own module's (models/attention/).
"""
from __future__ import annotations

import re


# Dense (no sparsity) peak rates in FLOP/s from NVIDIA's data sheets, per product, by the compute dtype a precision
# mode runs its matmuls in. The sheets print tensor-core figures "with sparsity" (marked *); dense is half of those.
# fp32 is the CUDA-core (non-tensor) figure.
#   H100 SXM / NVL:  NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100/): fp32 67 / 60,
#                    TF32 989* / 835*, BF16 = FP16 1,979* / 1,671*, FP8 3,958* / 3,341*
#   H100 PCIe:       the H100 PCIe product brief: fp32 51, TF32 756*, BF16 = FP16 1,513*, FP8 3,026*
#   H200 / H200 NVL: NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200/): as H100 SXM / NVL
#   GH200:           NVIDIA GH200 Grace Hopper Superchip datasheet: the H100 SXM figures
#   A100:            NVIDIA A100 datasheet (40GB and 80GB, PCIe and SXM alike): fp32 19.5, TF32 156, BF16 = FP16 312
#   L4:              NVIDIA L4 datasheet: fp32 30.3, TF32 120*, BF16 = FP16 242*, FP8 485*
#   L40S:            NVIDIA L40S datasheet: fp32 91.6, TF32 183, BF16 = FP16 362.05, FP8 733 (dense, as printed)
#   L40:             NVIDIA L40 datasheet: fp32 90.5, TF32 90.5, BF16 = FP16 181.05, FP8 362
#   A10:             NVIDIA A10 datasheet: fp32 31.2, TF32 62.5, BF16 = FP16 125
#   V100 SXM2/PCIe, V100S: NVIDIA V100 datasheet: fp32 15.7 / 14 / 16.4, FP16 tensor 125 / 112 / 130
#   T4:              NVIDIA T4 datasheet: fp32 8.1, FP16 (mixed precision) 65
def _sheet(fp32, tf32=None, bf16=None, fp16=None, fp8=None, sparse=True) -> dict:
    half = 0.5 if sparse else 1.0
    rates = {"fp32": fp32, "tf32": tf32 and tf32 * half, "bf16": bf16 and bf16 * half, "fp16": fp16 and fp16 * half,
             "fp8": fp8 and fp8 * half}
    return {dtype: rate * 1e12 for dtype, rate in rates.items() if rate}


PEAK_FLOPS = {
    "H100 SXM": _sheet(67, 989, 1979, 1979, 3958),
    "H100 NVL": _sheet(60, 835, 1671, 1671, 3341),
    "H100 PCIe": _sheet(51, 756, 1513, 1513, 3026),
    "H200": _sheet(67, 989, 1979, 1979, 3958),
    "H200 NVL": _sheet(60, 835, 1671, 1671, 3341),
    "GH200": _sheet(67, 989, 1979, 1979, 3958),
    "A100 SXM 40GB": _sheet(19.5, 156, 312, 312, sparse=False),
    "A100 SXM 80GB": _sheet(19.5, 156, 312, 312, sparse=False),
    "A100 PCIe 40GB": _sheet(19.5, 156, 312, 312, sparse=False),
    "A100 PCIe 80GB": _sheet(19.5, 156, 312, 312, sparse=False),
    "L4": _sheet(30.3, 120, 242, 242, 485),
    "L40S": _sheet(91.6, 183, 362.05, 362.05, 733, sparse=False),
    "L40": _sheet(90.5, 90.5, 181.05, 181.05, 362, sparse=False),
    "A10": _sheet(31.2, 62.5, 125, 125, sparse=False),
    "V100 SXM2": _sheet(15.7, fp16=125, sparse=False),
    "V100 PCIe": _sheet(14, fp16=112, sparse=False),
    "V100S PCIe": _sheet(16.4, fp16=130, sparse=False),
    "T4": _sheet(8.1, fp16=65, sparse=False),
}
# The names torch.cuda.get_device_name reports, lower-cased with "NVIDIA"/"Tesla" and punctuation dropped, matched
# whole: an H100 PCIe or NVL must not get the SXM figure, and a product not listed gets no figure at all.
DEVICE_NAMES = [
    (r"h100 (80gb hbm3|sxm5? ?(80gb)?)", "H100 SXM"),
    (r"h100 nvl", "H100 NVL"),
    (r"h100 (80gb )?pcie", "H100 PCIe"),
    (r"h200( sxm)?( 141gb)?( hbm3e)?", "H200"),
    (r"h200 nvl", "H200 NVL"),
    (r"gh200( \d+gb?)?( hbm3e?)?", "GH200"),
    (r"a100 sxm4 40gb", "A100 SXM 40GB"),
    (r"a100 sxm4 80gb", "A100 SXM 80GB"),
    (r"a100 pcie 40gb", "A100 PCIe 40GB"),
    (r"a100 80gb pcie", "A100 PCIe 80GB"),
    (r"l4", "L4"),
    (r"l40s", "L40S"),
    (r"l40", "L40"),
    (r"a10", "A10"),
    (r"v100 sxm2 (16|32)gb", "V100 SXM2"),
    (r"v100 pcie (16|32)gb", "V100 PCIe"),
    (r"v100s pcie 32gb", "V100S PCIe"),
    (r"t4", "T4"),
]


def device_product(device_name: str) -> str | None:
    """The product of PEAK_FLOPS a device name (as torch reports it) is, or None when it is not in the table."""
    words = re.sub(r"[-_,()]", " ", device_name.lower()).split()
    name = " ".join(w for w in words if w not in ("nvidia", "tesla"))
    for pattern, product in DEVICE_NAMES:
        if re.fullmatch(pattern, name):
            return product
    return None


def peak_flops(device_name: str, compute_dtype: str) -> float | None:
    """The data-sheet dense peak for a device name as torch reports it, or None when unknown (every CPU, every
    product not in the table, and a dtype the product's sheet gives no figure for)."""
    product = device_product(device_name)
    return PEAK_FLOPS[product].get(compute_dtype) if product else None


def kv_cache_bytes(*, n_layer: int, kv_heads: int, head_dim: int, context: int, batch: int, bytes_per_element: int) -> int:
    """Keys and values of every layer: 2 x layers x kv_heads x head_dim x context x batch x bytes per element."""
    return 2 * n_layer * kv_heads * head_dim * context * batch * bytes_per_element


def context_where_cache_exceeds(weights_bytes: int, *, n_layer: int, kv_heads: int, head_dim: int, batch: int,
                                bytes_per_element: int) -> float:
    """The context length at which the KV cache for `batch` sequences holds as many bytes as the weights."""
    return weights_bytes / kv_cache_bytes(n_layer=n_layer, kv_heads=kv_heads, head_dim=head_dim, context=1,
                                          batch=batch, bytes_per_element=bytes_per_element)
