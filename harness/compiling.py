"""compile=true: torch.compile of the model, block by block, in place; eager with the reason where it cannot.

Each repeated block (the entries of the model's outermost ModuleLists; the whole module when it has none) is
compiled with nn.Module.compile(), as torchtitan compiles each transformer block: the same compiled code serves
every block, parameter names and state dicts stay as they are (checkpoints and saved models do not change), and
the parallel layouts wrap compiled blocks as they wrap eager ones. Training, evaluation and decoding steps all run
through the compiled blocks (each mode its own graph). The training loss is compiled too, as torchtitan compiles
its loss: the fp32 copy of the logits the loss reads is then never written out (at GPT-2's vocabulary and 32 x 1024
tokens, 6.6 GB a step, and as much again for its gradient); the log-softmax reads the bf16 logits directly.

Where compilation cannot run here (no C++ compiler for the CPU backend, a backend error) the job trains eagerly and
its record says why; a graph break or an unsupported op inside a block falls back to eager for that code only
(torch._dynamo's suppress_errors), and the record counts the graph breaks.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from harness.errors import first_line
from harness.parallel import repeated_blocks
from models.spec import token_loss


@functools.lru_cache(maxsize=None)
def unsupported(device_type: str) -> str | None:
    """Why torch.compile cannot run on this device type here (a trial compile of a tiny function), or None."""
    try:
        compiled = torch.compile(lambda x: torch.sin(x) * 2 + 1)
        compiled(torch.ones(4, device=device_type))
    except Exception as error:   # InductorError, a missing compiler, a backend that fails to load
        return f"torch.compile does not run on {device_type} here: {type(error).__name__}: {first_line(error)}"
    return None


def compile_blocks(model: nn.Module) -> int:
    """Compile each repeated block of `model` in place (the model itself when it has none); returns how many."""
    import torch._dynamo
    torch._dynamo.config.suppress_errors = True   # an op dynamo cannot trace runs eagerly instead of failing the job
    units = repeated_blocks(model) or [model]
    for unit in units:
        unit.compile()
    return len(units)


@functools.cache
def compiled_loss():
    """models.spec.token_loss, compiled (lazily: on its first call)."""
    return torch.compile(token_loss)


def graph_breaks() -> int:
    """Graph breaks dynamo has taken in this process so far."""
    from torch._dynamo.utils import counters
    return sum(counters["graph_break"].values())


def prepare(model: nn.Module, requested: bool, device: torch.device) -> dict:
    """Compile `model` when asked and possible; the record's compile_info (filled in with timings after training)."""
    if not requested:
        return {"requested": False, "compiled": False, "fallback": None}
    reason = unsupported(device.type)
    if reason:
        return {"requested": True, "compiled": False, "fallback": reason}
    return {"requested": True, "compiled": True, "fallback": None, "units": compile_blocks(model),
            "graph_breaks_before": graph_breaks()}
