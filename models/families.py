"""The model families: each is `models/<family>.py`'s SPEC, named by the config group's `family` key; `custom`
builds a spec for the class its model section's `_target_` names."""
from __future__ import annotations

import functools
import importlib
import pkgutil

import models
from models import custom
from models.spec import ModelSpec


@functools.cache
def known() -> tuple[str, ...]:
    """Every family: the modules of this package that define a SPEC (custom builds one per class), found once."""
    names = [module.name for module in pkgutil.iter_modules(models.__path__)
             if not module.ispkg and module.name not in ("spec", "families")
             and hasattr(importlib.import_module(f"models.{module.name}"), "SPEC")]
    return tuple(sorted(names + ["custom"]))


def loss_of(family: str) -> str:
    """What a family's recorded loss is (a custom module learns next-token prediction by the protocol)."""
    if family == "custom":
        return "next-token cross-entropy"
    return get(family).loss if family in known() else "its training loss"


def get(family: str, model_section: dict | None = None) -> ModelSpec:
    """The spec of `family`; `custom` builds one for the class its model section's _target_ names."""
    if family == "custom":
        return custom.spec(model_section or {})
    if family not in known():
        raise ValueError(f"model.family={family!r}; known: {', '.join(known())}")
    return importlib.import_module(f"models.{family}").SPEC
