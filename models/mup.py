"""The maximal-update parametrisation (muP) for Adam, relative to a base width.

Yang et al. 2022, "Tensor Programs V: Tuning Large Neural Networks via Zero-Shot Hyperparameter Transfer", Table 3
(Adam), in the form with an output multiplier (their Table 8; the `mup` package's MuReadout). With m = width /
base_width (width: d_model):

  hidden weights (matrices whose fan-in and fan-out both grow with width: attention and MLP projections)
      init variance / m, Adam learning rate / m;
  output logits       multiplied by 1 / m (the readout weights keep their init and learning rate);
  attention logits    q.k / d_head instead of q.k / sqrt(d_head), made equal at the base width: the queries are
                      scaled by sqrt(base_head_dim / head_dim) before the usual 1 / sqrt(d_head);
  embeddings, biases and norm gains   unchanged.

At the base width muP is the standard parametrisation (sp), so a learning rate tuned there carries to every width.
The families take the two forward multipliers as config fields (`logit_scale`, `q_scale`) and mark their readout
(`mark_readout(lm_head)`); the init and the learning rates are set here, on the built model: a weight is hidden when it
is 2-D, not an embedding table and not a marked readout. The marks are module attributes, so they survive DDP, FSDP,
tensor-parallel and pipeline wrapping.
"""
from __future__ import annotations

import math

import torch
from torch import nn

PARAMETRIZATIONS = ("sp", "mup")


class Scaled(nn.Module):
    """A readout's output multiplied by `scale` (a pipeline's last stage keeps the model's logit scale)."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def mark_readout(module: nn.Module) -> nn.Module:
    """Mark `module` (a Linear from the last hidden state to the vocabulary) as the readout: not a hidden weight."""
    module.mup_readout = True
    return module


def readout(*modules: nn.Module, scale: float = 1.0) -> nn.Sequential:
    """The modules that turn the last hidden state into logits, with the logit scale when it is not 1."""
    return nn.Sequential(*modules, *([Scaled(scale)] if scale != 1.0 else []))


def forward_scales(width: int, base_width: int, head_dim: int, base_head_dim: int) -> dict:
    """The config fields a family's forward reads: logit_scale (1 / m) and q_scale."""
    return {"logit_scale": base_width / width, "q_scale": math.sqrt(base_head_dim / head_dim)}


def hidden_weights(model: nn.Module) -> list[torch.nn.Parameter]:
    """The model's hidden weights (see the module's docstring), each once however often it is shared."""
    excluded = {id(p) for module in model.modules()
                if isinstance(module, nn.Embedding) or getattr(module, "mup_readout", False)
                for p in module.parameters(recurse=False)}
    return [p for p in model.parameters() if p.dim() == 2 and id(p) not in excluded]


@torch.no_grad()
def rescale_init(model: nn.Module, width: int, base_width: int) -> None:
    """Hidden weights' init variance divided by m = width / base_width (the family's own init times 1/sqrt(m))."""
    for parameter in hidden_weights(model):
        parameter.mul_(math.sqrt(base_width / width))


def lr_multipliers(model: nn.Module, width: int, base_width: int) -> dict[int, float]:
    """{id(parameter): its learning rate's multiplier}: 1 / m for hidden weights, 1 for the rest."""
    return {id(p): base_width / width for p in hidden_weights(model)}
