"""model=custom: a module the harness has never seen, built by Hydra from the model section's `_target_`.

The protocol: `CLASS(vocab_size=..., seq_len=..., **ARGS)` builds it (ARGS: every other key of the model section,
given as `+model.ARG=VALUE`), `forward(idx)` maps token ids (batch, seq) to logits (batch, seq, vocab), and it learns
next-token prediction. The class is imported from the user's code (the directory `harness` runs in, or PYTHONPATH).

What the harness derives from that alone:
  parameters        by numel; non-embedding = all but the weights of every nn.Embedding (an untied output layer
                    counts as non-embedding: the harness cannot tell it from any other Linear)
  FLOPs per token   FlopCounterMode over one forward, loss and backward of the module built on the meta device,
                    once per config (records say `flops_counted: measured`)
  layouts           ddp, zero1, fsdp_zero2, fsdp_zero3 for any module (FSDP's units: its repeated blocks)

Optional hooks opt the module in to what needs more than the protocol; without one, a run that needs it is an
`unsupported` record that names the hook:
  tp_plan(self) -> {submodule name: ColwiseParallel() | RowwiseParallel() | ...}     parallel=tp, fsdp_tp
  pipeline_parts(self) -> (embed: ids -> h, blocks: list of h -> h, head: h -> logits)  parallel=pp
  kv_cache(self, batch, max_len, dtype, device) -> cache, and forward(idx, cache=cache)  task=inference
"""
from __future__ import annotations

import functools
import importlib
import inspect
import json
from dataclasses import asdict, dataclass

import torch
from torch import nn

from models.common import decoding
from models.spec import FlopsPerToken, ModelSpec, embedding_split, measured_flops_per_token, next_token_examples

RESERVED = ("family", "_target_", "seq_len", "parametrization", "base_width", "base_head_dim")
HOOKS = {"tp_plan": "tensor parallelism", "pipeline_parts": "pipeline parallelism", "kv_cache": "KV-cache decoding"}


@dataclass(frozen=True)
class CustomConfig:
    target: str
    args: dict
    vocab_size: int
    seq_len: int


def config(m: dict, vocab_size: int, attention: str, attention_options: dict) -> CustomConfig:
    return CustomConfig(str(m["_target_"]), {k: v for k, v in m.items() if k not in RESERVED}, vocab_size, int(m["seq_len"]))


def build(cfg: CustomConfig) -> nn.Module:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    try:
        return instantiate({"_target_": cfg.target, **cfg.args}, vocab_size=cfg.vocab_size, seq_len=cfg.seq_len)
    except InstantiationException as error:   # the user's constructor raised: its own message, not Hydra's frames
        cause = error.__cause__ or error
        raise ValueError(f"model._target_={cfg.target!r} could not be built: {type(cause).__name__}: "
                         f"{' '.join(str(cause).split())[:240]}") from None


@functools.lru_cache(maxsize=None)
def _measured(key: str) -> FlopsPerToken:
    cfg = CustomConfig(**json.loads(key))
    with torch.device("meta"):
        model = build(cfg)
        logits = model(torch.zeros((1, cfg.seq_len), dtype=torch.long))
    expected = (1, cfg.seq_len, cfg.vocab_size)
    if not (isinstance(logits, torch.Tensor) and logits.is_floating_point() and tuple(logits.shape) == expected):
        got = f"{logits.dtype} of shape {tuple(logits.shape)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(f"model._target_={cfg.target!r}: forward(idx) of shape {expected[:2]} gave {got}, not "
                         f"floating-point logits of shape {expected}")
    return measured_flops_per_token(model, cfg.seq_len, embedding_split(model)["non_embedding"])


def flops_per_token(cfg: CustomConfig) -> FlopsPerToken:
    return _measured(json.dumps(asdict(cfg), sort_keys=True))


def param_counts(model: nn.Module) -> dict[str, int]:
    counts = embedding_split(model)
    return {**counts, "encoder": 0, "decoder": counts["non_embedding"]}


def load_class(target: str) -> type:
    module, _, name = target.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"model._target_={target!r} cannot be imported ({type(error).__name__}: {error}); "
                         "it must name PKG.MODULE.CLASS importable from where harness runs or from PYTHONPATH") from None


def arguments(cls: type) -> tuple[str, ...] | None:
    """The model-section keys a custom module takes: the harness's own and the class's keyword arguments but
    vocab_size and seq_len (None: any, the class takes **kwargs)."""
    parameters = inspect.signature(cls).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return RESERVED + tuple(p.name for p in parameters if p.name not in ("vocab_size", "seq_len"))


def spec(m: dict) -> ModelSpec:
    target = m.get("_target_")
    if not target or target == "???":
        raise ValueError("model=custom needs model._target_=PKG.MODULE.CLASS (a class importable from your code)")
    cls = load_class(str(target))
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"model._target_={target!r} is not a torch.nn.Module class")
    takes = inspect.signature(cls).parameters
    missing = [name for name in ("vocab_size", "seq_len") if name not in takes]
    if missing and not any(p.kind is p.VAR_KEYWORD for p in takes.values()):
        raise ValueError(f"model._target_={target!r} takes no {' or '.join(missing)}: the harness builds "
                         "CLASS(vocab_size=..., seq_len=..., **ARGS)")

    def hook(name: str, use):
        return use if hasattr(cls, name) else f"model._target_={target} defines no {name}() (the opt-in hook for {HOOKS[name]})"
    return ModelSpec(
        name="custom", loss="next-token cross-entropy", config=config, build=build,
        model_vocab=lambda data_vocab, seq_len: data_vocab, examples=next_token_examples,
        flops_per_token=flops_per_token, param_counts=param_counts,
        describe=lambda cfg: {"target": cfg.target, **cfg.args},
        non_embedding_params="no closed-form parameter count (model=custom)",
        tp_plan=hook("tp_plan", lambda model: model.tp_plan()),
        pipeline_parts=hook("pipeline_parts", lambda model: model.pipeline_parts()),
        kv_cache=hook("kv_cache", lambda model, batch, context, new_tokens, dtype, device:
                      model.kv_cache(batch, context + new_tokens, dtype, device)),
        decoding=decoding, flops_counted="measured (FlopCounterMode)",
        arguments=arguments(cls),
        mup=f"model._target_={target} takes no logit or query multipliers, so muP cannot be applied to it "
            "(models/mup.py); use model.parametrization=sp")
