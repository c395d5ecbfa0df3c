"""A run's learning rate and batch size: a number, a fitted law, or a published rule, resolved for its model size.

task.lr          a number; `law` (lr = c N^-gamma from task.lr_law, a fits.json that study=lr_ladder writes); or a
                 published rule: `porian` or `deepseek`.
task.batch_size  a number of sequences; or `porian` or `deepseek` (their batch in tokens / model.seq_len, rounded).

N is the model's non-embedding parameter count, C its training FLOPs (exact, harness/flops.py). The published rules
were fitted on models of 5M-900M (Porian et al.) and 1e17-3e20 FLOPs (DeepSeek), far above what a CPU trains: at
CPU sizes they extrapolate, and a learning-rate ladder of one's own (study=lr_ladder) is the measured choice.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import ConfigError

LR_RULES = ("law", "porian", "deepseek")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
BATCH_RULES = ("porian", "deepseek")

# Porian et al. 2024, "Resolving Discrepancies in Compute-Optimal Scaling of Language Models", sec. 4 (their tuned
# hyperparameters, fitted across 5M-900M parameters): lr = 0.0047 (N / 108M)^(-1/3), batch in tokens
# = 327,680 (N / 108M)^(2/3), warm-up = N tokens, AdamW beta2 = 0.99 when a batch holds fewer than 524,288 tokens.
# The warm-up is capped at half the run (a CPU-sized run can train on fewer than N tokens).
PORIAN = {"lr": 0.0047, "batch_tokens": 327_680, "n_ref": 108e6, "lr_exponent": -1 / 3, "batch_exponent": 2 / 3,
          "small_batch_tokens": 524_288, "small_batch_beta2": 0.99,
          "citation": "Porian et al. 2024, Resolving Discrepancies in Compute-Optimal Scaling of Language Models"}
# DeepSeek-AI 2024, "DeepSeek LLM: Scaling Open-Source Language Models with Longtermism", eq. 1: in compute C,
# eta_opt = 0.3118 C^-0.1250 and B_opt = 0.2920 C^0.3271 (B in tokens).
DEEPSEEK = {"lr": 0.3118, "lr_exponent": -0.1250, "batch": 0.2920, "batch_exponent": 0.3271,
            "citation": "DeepSeek-AI 2024, DeepSeek LLM, eq. 1"}


@dataclass
class Hyperparameters:
    lr: float
    batch_size: int
    warmup_fraction: float
    beta2: float
    info: dict = field(default_factory=dict)   # the rules used and the values they gave (the record's hparams_info)


def read_lr_law(path) -> dict:
    """{c, gamma} of a fits.json's lr_law (lr = c N^-gamma), or a one-line error naming the file. A relative path is
    looked up from the working directory, then from the project's root (results/lr_ladder/... from anywhere)."""
    given = Path(str(path))
    path = given if given.is_file() or given.is_absolute() else PROJECT_ROOT / given
    if not path.is_file():
        raise ConfigError(f"task.lr_law={given}: no such file (a fits.json written by study=lr_ladder)")
    try:
        law = json.loads(path.read_text())["lr_law"]
        return {"c": float(law["c"]), "gamma": float(law["gamma"])}
    except (ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"task.lr_law={path}: no lr_law with c and gamma ({type(error).__name__}: {error})") from None


def resolve(t, n_params: float, compute: float, seq_len: int, total_tokens: float) -> Hyperparameters:
    """The task's learning rate, batch size, warm-up and beta2 for a model of n_params non-embedding parameters
    training on total_tokens tokens for `compute` FLOPs."""
    info = {}
    lr, batch_size = t.lr, t.batch_size
    warmup_fraction, beta2 = float(t.warmup_fraction), float(t.beta2)
    if batch_size == "porian":
        tokens = PORIAN["batch_tokens"] * (n_params / PORIAN["n_ref"]) ** PORIAN["batch_exponent"]
        batch_size = max(1, round(tokens / seq_len))
        info["batch_size"] = {"rule": "porian", "tokens": tokens, "citation": PORIAN["citation"]}
    elif batch_size == "deepseek":
        tokens = DEEPSEEK["batch"] * compute ** DEEPSEEK["batch_exponent"]
        batch_size = max(1, round(tokens / seq_len))
        info["batch_size"] = {"rule": "deepseek", "tokens": tokens, "compute": compute, "citation": DEEPSEEK["citation"]}
    batch_size = int(batch_size)
    if lr == "law":
        law = read_lr_law(t.lr_law)
        lr = law["c"] * n_params ** -law["gamma"]
        info["lr"] = {"rule": "law", "path": str(t.lr_law), **law, "params": n_params}
    elif lr == "porian":
        lr = PORIAN["lr"] * (n_params / PORIAN["n_ref"]) ** PORIAN["lr_exponent"]
        warmup_fraction = min(n_params / total_tokens, 0.5)
        if batch_size * seq_len < PORIAN["small_batch_tokens"]:
            beta2 = PORIAN["small_batch_beta2"]
        info["lr"] = {"rule": "porian", "params": n_params, "warmup_tokens": n_params, "citation": PORIAN["citation"]}
    elif lr == "deepseek":
        lr = DEEPSEEK["lr"] * compute ** DEEPSEEK["lr_exponent"]
        info["lr"] = {"rule": "deepseek", "compute": compute, "citation": DEEPSEEK["citation"]}
    lr = float(lr)
    info.update(lr_in_effect=lr, batch_size_in_effect=batch_size, warmup_fraction_in_effect=warmup_fraction,
                beta2_in_effect=beta2)
    return Hyperparameters(lr=lr, batch_size=batch_size, warmup_fraction=warmup_fraction, beta2=beta2, info=info)


def check(t) -> None:
    """One-line errors for a learning rate or batch size that is neither a positive number nor a known rule."""
    if isinstance(t.lr, str):
        if t.lr not in LR_RULES:
            raise ConfigError(f"task.lr={t.lr!r}: a positive number or one of {', '.join(LR_RULES)}")
        if t.lr == "law":
            if not t.get("lr_law"):
                raise ConfigError("task.lr=law needs task.lr_law=PATH (a fits.json written by study=lr_ladder)")
            read_lr_law(t.lr_law)
    elif not (isinstance(t.lr, (int, float)) and t.lr > 0):
        raise ConfigError(f"task.lr={t.lr} must be a positive number")
    if isinstance(t.batch_size, str):
        if t.batch_size not in BATCH_RULES:
            raise ConfigError(f"task.batch_size={t.batch_size!r}: a positive whole number or one of {', '.join(BATCH_RULES)}")
    elif not (isinstance(t.batch_size, int) and not isinstance(t.batch_size, bool) and t.batch_size > 0):
        raise ConfigError(f"task.batch_size={t.batch_size} must be a positive integer")
