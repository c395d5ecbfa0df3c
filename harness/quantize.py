"""Weight-only quantization for evaluation, with torchao: int8 (per output channel) and nf4 (QLoRA's 4-bit
NormalFloat, Dettmers et al. 2023: blocks of 64 weights, block scales themselves quantized in blocks of 256).

Only the transformer's nn.Linear weights are quantized; the token embedding and the (tied) output head stay
in full precision, as in QLoRA. Bytes are counted from the storage the quantized tensors actually hold.
"""
from __future__ import annotations

import copy
import functools
import importlib.util
import logging

import torch

from harness.errors import first_line

METHODS = ("int8", "nf4")
WEIGHTS = ("fp32", "bf16", *METHODS)  # the weight precisions task=inference decodes with


def unsupported(method: str) -> str | None:
    if method not in METHODS:
        return f"unknown quantization {method!r}; known: {', '.join(METHODS)}"
    return torchao_problem()


@functools.lru_cache(maxsize=None)
def torchao_problem() -> str | None:
    """Why torchao's weight-only workflows cannot be used here: not installed, or installed but not loading with
    this torch (a torchao built for a newer torch fails on import)."""
    if importlib.util.find_spec("torchao") is None:
        return "weight-only quantization needs torchao, not installed here (pip install -e '.[quant]')"
    try:
        _config("int8"), _config("nf4")
    except Exception as error:  # ImportError, AttributeError from a torch it was not built for, ...
        return f"torchao is installed but does not load with torch {torch.__version__}: {first_line(error)}"
    return None


def _config(method: str):
    logging.getLogger("torchao").setLevel(logging.ERROR)  # it reports every CUDA extension a CPU build lacks
    if method == "int8":
        from torchao.quantization import Int8WeightOnlyConfig
        return Int8WeightOnlyConfig()
    try:  # torchao's NF4 workflow; its location is provisional: torchao.dtypes up to 0.14, torchao.prototype after
        from torchao.prototype._nf4tensor_api import NF4WeightOnlyConfig
    except ImportError:
        from torchao.dtypes._nf4tensor_api import NF4WeightOnlyConfig
    return NF4WeightOnlyConfig()


# NF4 quantizes weights in blocks of 64 and their scales in blocks of 256: a weight needs 64 * 256 | numel.
NF4_MULTIPLE = 64 * 256


def quantizable(module: torch.nn.Module, method: str, head) -> bool:
    if not isinstance(module, torch.nn.Linear) or module is head:
        return False
    return method != "nf4" or module.weight.numel() % NF4_MULTIPLE == 0


def quantized_copy(model: torch.nn.Module, method: str) -> tuple[torch.nn.Module, int]:
    """A quantized copy, and how many Linear layers had to stay in full precision (too small for NF4's blocks)."""
    from torchao.quantization import quantize_
    copied = copy.deepcopy(model).eval()
    head = getattr(copied, "lm_head", None)
    linears = [m for m in copied.modules() if isinstance(m, torch.nn.Linear) and m is not head]
    kept = sum(not quantizable(m, method, head) for m in linears)
    quantize_(copied, _config(method), filter_fn=lambda module, _: quantizable(module, method, head))
    return copied, kept


def stored_bytes(t: torch.Tensor) -> int:
    """Bytes a tensor holds: for a tensor subclass (Int8Tensor, NF4Tensor) the sum over its inner tensors."""
    if hasattr(t, "__tensor_flatten__"):
        names, _ = t.__tensor_flatten__()
        return sum(stored_bytes(getattr(t, name)) for name in names)
    return t.numel() * t.element_size()


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter and buffer (a tied weight counts once)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            total += stored_bytes(t)
    return total
