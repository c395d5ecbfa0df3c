"""The optimizer a training run steps: AdamW with weight decay on matrices only, muP's per-parameter learning-rate
multipliers, and the schedule's learning rate set on every group."""
from __future__ import annotations

import functools

import torch
from omegaconf import DictConfig

from models import mup


def parametrize(model: torch.nn.Module, mup_widths: tuple[int, int, int, int] | None):
    """Under muP (`mup_widths`: the plan's ModelPlan.mup_widths): the built model's hidden weights re-initialised
    (models/mup.py), and the function make_optimizer takes for their learning-rate multipliers; None under sp."""
    if mup_widths is None:
        return None
    width, base_width, _, _ = mup_widths
    mup.rescale_init(model, width, base_width)
    return functools.partial(mup.lr_multipliers, width=width, base_width=base_width)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """The schedule's learning rate on every param group, times the group's `lr_scale` (muP's hidden weights)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def make_optimizer(model: torch.nn.Module, t: DictConfig, zero: bool = False, lr_scales=None) -> torch.optim.Optimizer:
    """AdamW; with zero=True each data-parallel rank keeps the state of its share only (ZeroRedundancyOptimizer).
    `lr_scales(model)`: {id(parameter): multiplier of its learning rate} (muP's hidden weights), kept per param
    group as `lr_scale`, which the schedule's learning rate is multiplied by."""
    # Decay matrices only, not biases, norms or (as in GPT-2) nothing 1-D (nanoGPT's configure_optimizers).
    params = [p for p in model.parameters() if p.requires_grad]
    scales = lr_scales(model) if lr_scales is not None else {}
    groups = []
    for scale in sorted({scales.get(id(p), 1.0) for p in params}):
        mine = [p for p in params if scales.get(id(p), 1.0) == scale]
        groups += [{"params": [p for p in mine if p.dim() >= 2], "weight_decay": float(t.weight_decay), "lr_scale": scale},
                   {"params": [p for p in mine if p.dim() < 2], "weight_decay": 0.0, "lr_scale": scale}]
    groups = [group for group in groups if group["params"]] or [{"params": params, "lr_scale": 1.0}]
    settings = {"lr": float(t.lr), "betas": (float(t.beta1), float(t.beta2)), **optimizer_kernel(params)}
    if zero:
        from torch.distributed.optim import ZeroRedundancyOptimizer
        return ZeroRedundancyOptimizer(groups, optimizer_class=torch.optim.AdamW, **settings)
    return torch.optim.AdamW(groups, **settings)


def optimizer_kernel(params: list[torch.Tensor]) -> dict:
    """AdamW's fused kernel where every parameter is on a GPU: one launch updates them all, where the default
    (foreach) launches several kernels per group of tensors. On a CPU the default, as every CPU run has used."""
    return {"fused": True} if params and all(p.device.type == "cuda" for p in params) else {}
