"""A job's config resolved once, before any work: what the checks read and what a runner receives.

resolve_model(cfg)          the family's spec, the model section with its shape picked (for a target model.params,
                            by the family's closed-form count) and muP's widths: no data needed.
resolve_job(cfg)            how and where the job runs: device, precision, layout, seed, compile, profile, progress.
resolve(cfg, data_vocab)    with the data's vocabulary, the model config to build and its exact FLOPs per token, the
                            tokens D (data.tokens, or C / FLOPs per token), the learning rate and batch (the task's
                            numbers, or its rules for this N and C), the steps and the learning-rate schedule, and the
                            job: a runner reads this, never the config.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness import hparams, schedules
from harness.errors import ConfigError
from models import families, mup
from models.sizing import shape_for_params
from models.spec import FlopsPerToken, ModelSpec


def model_spec(m: DictConfig) -> ModelSpec:
    """The spec of the model section's family (model=custom: one for the class its _target_ names)."""
    try:
        return families.get(m.get("family", "gpt"), OmegaConf.to_container(m, resolve=True))
    except (ValueError, ImportError) as error:
        raise ConfigError(str(error)) from None


def parametrization(m: DictConfig) -> str:
    return str(m.get("parametrization", "sp"))


def attention_options(cfg: DictConfig) -> dict:
    return {k: v for k, v in cfg.attention.items() if k != "name"}


@dataclass(frozen=True)
class ModelPlan:
    spec: ModelSpec
    section: dict                 # the model section, its shape resolved (n_layer, d_model, n_head)
    attention: str
    attention_options: dict
    # under muP: (width, base_width, head_dim, base_head_dim), the base's head dimension defaulting to
    # base_width / n_head (the heads stay as the width grows); None under sp
    mup_widths: tuple[int, int, int, int] | None

    @property
    def seq_len(self) -> int:
        return int(self.section["seq_len"])

    def config(self, data_vocab: int):
        """The family's config of the model to build; its vocabulary is the data's plus what the family adds (an
        encoder's [MASK], an encoder-decoder's sentinels). Under muP, with its logit and query multipliers."""
        config = self.spec.config(self.section, self.spec.model_vocab(data_vocab, self.seq_len), self.attention,
                                  self.attention_options)
        return dataclasses.replace(config, **mup.forward_scales(*self.mup_widths)) if self.mup_widths else config


def model_shape(m: DictConfig, spec: ModelSpec) -> tuple[int, int, int]:
    """(n_layer, d_model, n_head): as given, or picked for the target `model.params` by the family's closed-form count."""
    if m.params is None:
        n_head = int(m.n_head) if m.n_head is not None else int(m.d_model) // int(m.head_dim)
        return int(m.n_layer), int(m.d_model), n_head
    section = OmegaConf.to_container(m, resolve=True)

    def count(n_layer: int, d_model: int, n_head: int) -> int:
        shape = {**section, "n_layer": n_layer, "d_model": d_model, "n_head": n_head}
        return spec.non_embedding_params(spec.config(shape, 1, "sdpa", {}))
    try:
        return shape_for_params(float(m.params), count, aspect_ratio=float(m.aspect_ratio), head_dim=int(m.head_dim))
    except ValueError as error:
        raise ConfigError(str(error)) from None


def resolve_model(cfg: DictConfig, spec: ModelSpec | None = None) -> ModelPlan:
    """The model the config asks for, its shape picked once (`spec`: the family's, when the caller has it)."""
    m = cfg.model
    spec = spec or model_spec(m)
    section = OmegaConf.to_container(m, resolve=True)
    if spec.unsupported("sizing") is None:
        section["n_layer"], section["d_model"], section["n_head"] = model_shape(m, spec)
    widths = None
    if parametrization(m) == "mup" and spec.unsupported("mup") is None:
        d_model, n_head, base_width = section["d_model"], section["n_head"], int(m.base_width)
        widths = (d_model, base_width, d_model // n_head, int(m.get("base_head_dim") or base_width // n_head))
    return ModelPlan(spec, section, str(cfg.attention.name), attention_options(cfg), widths)


@dataclass(frozen=True)
class JobPlan:
    device: str                   # as configured (auto, cpu, cuda, cuda:1)
    precision: str                # the precision mode's name
    init_scale: float             # the gradient scaler's first scale (fp16)
    parallel: dict                # the layout's section: name, world_size, tp_degree, schedule, microbatches, ...
    seed: int
    compile: bool
    profile_steps: int            # profile=N
    progress: str                 # bar, lines, off or auto
    resume: bool
    config: dict                  # the whole config, resolved: what its records and checkpoints are keyed by

    @property
    def layout(self) -> str:
        return str(self.parallel["name"])


def resolve_job(cfg: DictConfig) -> JobPlan:
    return JobPlan(str(cfg.device), str(cfg.precision.name), float(cfg.precision.get("init_scale", 2.0**16)),
                   OmegaConf.to_container(cfg.parallel, resolve=True), int(cfg.seed), bool(cfg.get("compile", False)),
                   int(cfg.get("profile", 0)), str(cfg.progress), bool(cfg.resume), job_config(cfg))


def job_config(cfg: DictConfig) -> dict:
    """The config as plain data, resolved, without Hydra's own section (a sweep's point carries it)."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            for key in cfg if key != "hydra"}


@dataclass(frozen=True)
class Plan:
    model: ModelPlan
    model_config: Any
    flops_per_token: FlopsPerToken
    tokens_requested: float       # D: data.tokens, or C / the exact training FLOPs per token
    hyperparameters: hparams.Hyperparameters
    task: DictConfig              # the task with its rules (task.lr=law, porian, ...) resolved to numbers; read-only
    batch_size: int
    total_steps: int
    schedule: schedules.Schedule
    job: JobPlan

    @property
    def seq_len(self) -> int:
        return self.model.seq_len

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def resolve(cfg: DictConfig, data_vocab: int, model: ModelPlan | None = None, job: JobPlan | None = None) -> Plan:
    """The training job's plan on data of `data_vocab` tokens (`model`, `job`: those parts, when already resolved)."""
    model = model or resolve_model(cfg)
    spec, model_config = model.spec, model.config(data_vocab)
    try:
        per_token = spec.flops_per_token(model_config)
    except ValueError as error:   # model=custom: a module that does not keep the protocol shows it when first built
        raise ConfigError(str(error)) from None
    tokens = float(cfg.compute) / per_token.causal if cfg.compute is not None else float(cfg.data.tokens)
    n_params = spec.non_embedding_params(model_config) if spec.unsupported("sizing") is None else float("nan")
    chosen = hparams.resolve(cfg.task, n_params, per_token.causal * tokens, model.seq_len, tokens)
    task = OmegaConf.merge(cfg.task, {"lr": chosen.lr, "batch_size": chosen.batch_size,
                                      "warmup_fraction": chosen.warmup_fraction, "beta2": chosen.beta2})
    OmegaConf.set_readonly(task, True)
    batch_size = int(task.batch_size)
    total_steps = max(1, round(tokens / (batch_size * model.seq_len)))
    return Plan(model, model_config, per_token, tokens, chosen, task, batch_size, total_steps,
                schedules.from_task(task, total_steps), job or resolve_job(cfg))
