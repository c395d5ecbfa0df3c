"""Config checks that run before any work, and turning the config into a model shape.

Every error is one line that names the bad key, its value, and what would be valid.
"""
from __future__ import annotations

import difflib
import functools
import importlib.util
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from harness import distributed, hparams, measure, parallel, precision, progress, quantize, schedules, tracking
from harness.errors import ConfigError, Unsupported, check_count, check_flag, check_positive, check_range
from harness.plan import ModelPlan, attention_options, model_spec, parametrization, resolve, resolve_model

from models import attention as attention_registry
from models import mup
from models.positions import KINDS as POSITION_KINDS
from models.spec import ModelSpec

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("task", "model", "data", "attention", "precision", "parallel", "study", "logger")
TASKS = ("train", "attention", "inference")
ATTENTION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ATTENTION_MODES = ("fwd", "fwd_bwd")
ALIBI_ATTENTION = ("sdpa", "dense")
MIN_REPEATS = 5  # timed repeats behind an inference median: fewer move with the machine's noise
# Training options that work on one process only.
SINGLE_PROCESS_ONLY = ("save_model", "eval_quantized")


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@functools.cache
def _yaml(path: Path) -> DictConfig:
    """A config file of the package, read once per process (checking a study's overrides read ~180 of them)."""
    return OmegaConf.load(path)


def group_keys(group: str, option: str | None = None) -> list[str]:
    """The top-level keys of a config group's option (conf/GROUP/OPTION.yaml); without an option, of every option
    and of what the studies set in that group."""
    if option is not None:
        path = CONF_DIR / group / f"{option}.yaml"
        return list(_yaml(path)) if path.exists() else []
    keys = {key for name in group_options(group) for key in group_keys(group, name)}
    for study in (CONF_DIR / "study").glob("*.yaml"):
        keys |= set(_yaml(study).get(group) or {})
    return sorted(keys)


def chosen_option(group: str, args: list[str]) -> str | None:
    """The option of `group` these command-line arguments select (conf/config.yaml's default unless one is given),
    or None when a study is named (a study may select another)."""
    given = [arg.partition("=")[2] for arg in args if arg.lstrip("+").partition("=")[0] == group]
    if given:
        return given[-1] if "," not in given[-1] else None
    if any(arg.partition("=")[0] == "study" for arg in args):
        return None
    defaults = [entry for entry in OmegaConf.to_container(_yaml(CONF_DIR / "config.yaml").defaults)
                if isinstance(entry, dict)]
    return next((entry[group] for entry in defaults if group in entry), None)


# The groups whose keys an override may name as GROUP.KEY=VALUE (the rest are lists, or global packages).
KEYED_GROUPS = ("task", "model", "data", "attention", "precision", "parallel")


def check_group_overrides(args: list[str]) -> None:
    """`attention=foo` or `model.d_modle=64` on the command line: name the unknown option or key in one line (before
    Hydra's page of search paths, or its hint to add the key with `+`)."""
    for arg in args:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep:
            continue
        group, _, rest = key.partition(".")
        if key in GROUPS:
            options = group_options(key)
            for choice in value.strip("[]").split(","):
                if choice and choice not in options and "(" not in choice:
                    raise ConfigError(f"{key}={choice!r} is not a known {key}; choose from: {', '.join(options)}")
        elif group in KEYED_GROUPS and rest and not arg.startswith(("+", "~")):
            name = rest.split(".")[0]
            option = chosen_option(group, args)
            if option and not (CONF_DIR / group / f"{option}.yaml").exists():
                continue   # an option from the user's own config directory: Hydra checks its keys
            valid = group_keys(group, option) if option else group_keys(group)
            if name not in valid:
                error = _unknown_key(group, name, valid)
                raise ConfigError(f"{error} ({group}={option} takes no {name!r})" if option else str(error))


def validate(cfg: DictConfig, machine: distributed.Machine | None = None) -> None:
    """Checks on the config alone (no data, no model built). `machine`: what the job's allocation offers when it
    will not run here (a SLURM launcher's nodes); by default this machine resolves device=auto and world_size=auto."""
    _check_job(cfg)
    _check_attention(cfg)
    if cfg.task.name == "attention":
        _validate_attention_task(cfg.task)
        return
    spec = model_spec(cfg.model)
    model = _check_model(cfg, spec)
    if cfg.precision.name not in precision.MODES:
        raise ConfigError(f"precision.name={cfg.precision.name!r}; known: {', '.join(precision.MODES)}")
    if cfg.task.name == "inference":
        _validate_inference_task(cfg)
    else:
        _check_training(cfg, spec)
        _check_parallel(cfg, machine, model)
        if cfg.study.name != "none" and importlib.util.find_spec(f"studies.{cfg.study.name}") is None:
            raise ConfigError(f"study.name={cfg.study.name!r} has no module studies/{cfg.study.name}.py")
    _check_capabilities(cfg, spec)


def _check_job(cfg: DictConfig) -> None:
    """The task's name and the job's own options: loggers, compile, profile, threads, device, seed, resume, progress."""
    if cfg.task.name not in TASKS:
        raise ConfigError(f"task.name={cfg.task.name!r}; known: {', '.join(TASKS)}")
    for problem in filter(None, map(tracking.unsupported, cfg.get("logger") or {})):
        raise ConfigError(problem)
    check_flag(cfg.get("compile", False), "compile")
    profile = cfg.get("profile", 0)
    check_count(profile, "profile", "of training steps (0: none)")
    if profile and (cfg.task.name != "train" or cfg.parallel.name != "single"):
        raise ConfigError(f"profile={profile} profiles task=train on one process; got task={cfg.task.name}, "
                          f"parallel={cfg.parallel.name}")
    if cfg.get("threads", "auto") != "auto":
        check_positive(cfg.threads, "threads", integer=True)
    measure.resolve_device(cfg.get("device", "auto"))
    check_count(cfg.get("seed", 0), "seed")
    check_flag(cfg.get("resume", True), "resume")
    if cfg.get("progress", "auto") not in progress.MODES:
        raise ConfigError(f"progress={cfg.progress!r}; known: {', '.join(progress.MODES)}")


def _check_model(cfg: DictConfig, spec: ModelSpec) -> ModelPlan:
    """The model section: only keys the family takes, its shape, and what the family says is impossible; the model
    it resolves to."""
    m = cfg.model
    _check_model_keys(m, spec)
    if spec.unsupported("sizing") is None:
        _check_shape(m, spec)
    elif m.get("params") is not None:
        raise ConfigError(f"model.params: model.family={spec.name} has {spec.unsupported('sizing')}; size it by its own arguments")
    check_positive(m.seq_len, "model.seq_len", integer=True)
    for key, integer in spec.positive:
        if m.get(key) is not None:
            check_positive(m[key], f"model.{key}", integer=integer)
    if not 0 <= m.get("dropout", 0.0) < 1:
        raise ConfigError(f"model.dropout={m.dropout} must be in [0, 1)")
    if parametrization(m) not in mup.PARAMETRIZATIONS:
        raise ConfigError(f"model.parametrization={parametrization(m)!r}; known: {', '.join(mup.PARAMETRIZATIONS)}")
    if parametrization(m) == "mup" and spec.unsupported("mup") is None:
        check_positive(m.get("base_width"), "model.base_width", integer=True)
        if m.get("base_head_dim") is not None:
            check_positive(m.base_head_dim, "model.base_head_dim", integer=True)
    positions = m.get("positions")
    if positions is not None and positions not in POSITION_KINDS:
        raise ConfigError(f"model.positions={positions!r}; known: {', '.join(POSITION_KINDS)}")
    if positions == "alibi" and cfg.attention.name not in ALIBI_ATTENTION:
        raise ConfigError(f"model.positions=alibi biases the full score matrix: it needs attention=sdpa or dense, "
                          f"got attention={cfg.attention.name}")
    if positions == "alibi" and cfg.parallel.name in ("tp", "fsdp_tp"):
        raise ConfigError(f"model.positions=alibi is not supported with parallel={cfg.parallel.name}")
    if spec.attentions is not None and cfg.attention.name not in spec.attentions:
        raise ConfigError(f"model.family={spec.name} {spec.attentions_why}: it needs attention="
                          f"{' or '.join(spec.attentions)}, got attention={cfg.attention.name}")
    if cfg.task.get("eval_lengths") and not spec.any_length:
        raise ConfigError(f"task.eval_lengths needs a family that reads windows of any length; model.family={spec.name} does not")
    model = resolve_model(cfg, spec)
    section = model.section
    if positions == "rope" and spec.unsupported("sizing") is None and (section["d_model"] // section["n_head"]) % 2:
        raise ConfigError(f"model.positions=rope needs an even head size, got d_model/n_head="
                          f"{section['d_model'] // section['n_head']}")
    problem = spec.problems(section, OmegaConf.to_container(cfg.task, resolve=True))
    if problem:
        raise ConfigError(problem)
    return model


def _check_training(cfg: DictConfig, spec: ModelSpec) -> None:
    """task=train's budget, evaluations, hyperparameter rules, schedule and checkpoints."""
    if cfg.compute is not None:
        check_positive(cfg.compute, "compute")
    else:
        check_positive(cfg.data.tokens, "data.tokens")
    t = cfg.task
    for multiple in t.get("eval_lengths") or []:
        check_positive(multiple, "task.eval_lengths")
    for method in t.get("eval_quantized") or []:  # torchao missing here: that entry of the record says so, the run goes on
        if method not in quantize.METHODS:
            raise ConfigError(f"task.eval_quantized: {quantize.unsupported(method)}")
    hparams.check(t)
    if isinstance(t.batch_size, str) and cfg.parallel.name != "single":
        raise ConfigError(f"task.batch_size={t.batch_size} is resolved per model size; with parallel={cfg.parallel.name} "
                          "give a number (one that splits over the data-parallel ranks)")
    if (isinstance(t.lr, str) or isinstance(t.batch_size, str)) and spec.unsupported("sizing"):
        raise ConfigError(f"task.lr={t.lr}, task.batch_size={t.batch_size}: a rule in N needs the family's parameter "
                          f"count; model.family={spec.name} has {spec.unsupported('sizing')}")
    if t.get("micro_batch_size") is not None:
        check_positive(t.micro_batch_size, "task.micro_batch_size", integer=True)
    check_positive(t.eval_points, "task.eval_points", integer=True)
    check_positive(t.eval_tokens, "task.eval_tokens", integer=True)
    check_positive(t.check_every, "task.check_every", integer=True)
    if not 0 <= t.warmup_fraction < 1:
        raise ConfigError(f"task.warmup_fraction={t.warmup_fraction} must be in [0, 1)")
    _check_schedule(t)
    check_count(t.checkpoint_every, "task.checkpoint_every", "of steps (0: none)")
    check_count(t.timing_warmup_steps, "task.timing_warmup_steps", "of steps")
    for key in ("beta1", "beta2"):
        check_range(t[key], f"task.{key}", 0, 1)
    check_range(t.weight_decay, "task.weight_decay", 0)
    check_range(t.grad_clip, "task.grad_clip", 0, note="(0: no clipping)")
    for key in ("keep_checkpoints", "save_model"):
        check_flag(t[key], f"task.{key}")


def _unknown_key(where: str, key: str, valid) -> ConfigError:
    """The one line for a key nothing takes, naming the closest valid one."""
    close = difflib.get_close_matches(key, sorted(valid), n=1)
    hint = f"did you mean {where}.{close[0]}?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"{where}.{key}: {hint}")


def _check_model_keys(m: DictConfig, spec: ModelSpec) -> None:
    """A key the family does not take (a typo added as +model.KEY=VALUE would otherwise be recorded and ignored):
    a family takes its config group's keys (conf/model/<family>.yaml) and the arguments its spec names."""
    if spec.arguments is None:   # a custom module that takes **kwargs
        return
    valid = set(group_keys("model", spec.name)) | set(spec.arguments)
    for key in m:
        if key not in valid:
            raise ConfigError(f"{_unknown_key('model', key, valid)} (model.family={spec.name} takes no {key!r})")


def _check_schedule(t: DictConfig) -> None:
    if t.schedule not in schedules.SCHEDULES:
        raise ConfigError(f"task.schedule={t.schedule!r}; known: {', '.join(schedules.SCHEDULES)}")
    if not 0 <= t.min_lr_ratio <= 1:
        raise ConfigError(f"task.min_lr_ratio={t.min_lr_ratio} must be in [0, 1]")
    if t.get("cooldowns") and t.schedule != "wsd":
        raise ConfigError(f"task.cooldowns needs task.schedule=wsd (a branch leaves the run's constant phase), "
                          f"got task.schedule={t.schedule}")
    if t.schedule != "wsd":
        return
    if t.decay_shape not in schedules.DECAY_SHAPES:
        raise ConfigError(f"task.decay_shape={t.decay_shape!r}; known: {', '.join(schedules.DECAY_SHAPES)}")
    if not 0 < t.decay_fraction <= 1 - t.warmup_fraction:
        raise ConfigError(f"task.decay_fraction={t.decay_fraction} must be in (0, 1 - task.warmup_fraction = "
                          f"{1 - t.warmup_fraction:g}]: the decay follows the warm-up")
    for fraction in t.get("cooldowns") or []:
        # a branch of fraction f leaves the run at f * (1 - decay_fraction) of its steps, after the warm-up
        if not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
            raise ConfigError(f"task.cooldowns: {fraction} is not a fraction of the run's tokens in (0, 1)")
        if fraction * (1 - t.decay_fraction) < t.warmup_fraction:
            raise ConfigError(f"task.cooldowns: a branch at {fraction:g} would start decaying at "
                              f"{fraction * (1 - t.decay_fraction):g} of the run, inside the warm-up "
                              f"(task.warmup_fraction={t.warmup_fraction:g})")
    if len(set(t.get("cooldowns") or [])) != len(t.get("cooldowns") or []):
        raise ConfigError(f"task.cooldowns={list(t.cooldowns)} names a fraction twice")


def _check_parallel(cfg: DictConfig, machine: distributed.Machine | None, model: ModelPlan) -> None:
    """Shape and batch checks of the layout on the ranks `machine` gives; whether it really has them is checked
    when the job runs."""
    p = cfg.parallel
    if p.name not in parallel.STRATEGIES:
        raise ConfigError(f"parallel.name={p.name!r}; known: {', '.join(parallel.STRATEGIES)}")
    setting = p.get("world_size", 1)
    if setting != "auto":
        check_positive(setting, "parallel.world_size", integer=True)
    if p.get("backend", "auto") not in ("auto", "gloo", "nccl"):
        raise ConfigError(f"parallel.backend={p.backend!r}; known: auto, gloo, nccl")
    if p.get("tp_degree") is not None:
        check_positive(p.tp_degree, "parallel.tp_degree", integer=True)
    if p.get("timeout_s") is not None:
        check_positive(p.timeout_s, "parallel.timeout_s")
    for key in SINGLE_PROCESS_ONLY:
        if cfg.task.get(key) and p.name != "single":
            raise ConfigError(f"task.{key} needs parallel=single, got parallel={p.name}")
    world = distributed.world_size(setting, distributed.device_type(str(cfg.device), machine), machine)
    if setting == "auto" and world < 2 and p.name != "single":
        return  # one GPU here: the run records `unsupported`, so a sweep over strategies goes on
    spec = model.spec
    shape = spec.describe(spec.config(model.section, 1, model.attention, {}))  # the vocabulary does not matter
    problem = parallel.problems(p.name, world, parallel.degrees(p.name, world, p.get("tp_degree")),
                                heads={f"model.{key}": shape[key] for key in spec.tp_divides},
                                n_layer=shape.get("n_layer"),
                                batch_size=1 if isinstance(cfg.task.batch_size, str) else int(cfg.task.batch_size),
                                microbatches=int(p.get("microbatches", 1)), schedule=str(p.get("schedule", "1f1b")),
                                # a rule's batch is known per model size: checked with the data (check_data_fits)
                                micro_batch=None if isinstance(cfg.task.batch_size, str) else cfg.task.get("micro_batch_size"))
    if problem:
        raise ConfigError(problem)


def _check_attention(cfg: DictConfig) -> None:
    if cfg.attention.name not in attention_registry.names():
        raise ConfigError(f"attention.name={cfg.attention.name!r}; known: {', '.join(attention_registry.names())}")
    options = attention_options(cfg)
    valid = ["name", *attention_registry.option_names(cfg.attention.name)]
    for key in options:
        if key not in valid:
            raise ConfigError(f"{_unknown_key('attention', key, valid)} (attention={cfg.attention.name} takes no {key!r})")
    try:  # options are checked without building: a variant's package may be absent on this machine
        attention_registry.unsupported(cfg.attention.name, "cpu", **options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"attention={cfg.attention.name}: {error}") from None


def _validate_inference_task(cfg: DictConfig) -> None:
    t = cfg.task
    if cfg.parallel.name != "single":
        raise ConfigError(f"task=inference runs on one device, got parallel={cfg.parallel.name}")
    refused = attention_registry.unsupported_decoding(cfg.attention.name)
    if refused:
        raise ConfigError(f"task=inference with attention={cfg.attention.name}: {refused}")
    for key in ("context", "new_tokens", "batch_size", "repeats", "eval_tokens"):
        check_positive(t[key], f"task.{key}", integer=True)
    if t.repeats < MIN_REPEATS:
        raise ConfigError(f"task.repeats={t.repeats}: a median needs at least {MIN_REPEATS} timed repeats")
    known = ", ".join(quantize.WEIGHTS)
    if t.weights not in quantize.WEIGHTS:
        raise ConfigError(f"task.weights={t.weights!r}; known: {known}")
    for name in t.compare_weights or []:
        if name not in quantize.WEIGHTS:
            raise ConfigError(f"task.compare_weights: {name!r}; known: {known}")
    check_flag(t.recompute, "task.recompute")
    if t.checkpoint and not Path(t.checkpoint).is_file():
        raise ConfigError(f"task.checkpoint={t.checkpoint!r} is not a file")


def _validate_attention_task(t: DictConfig) -> None:
    for key in ("seq_len", "batch", "heads", "head_dim", "min_repeats", "max_repeats", "error_seq_len"):
        check_positive(t[key], f"task.{key}", integer=True)
    check_positive(t.max_memory_gb, "task.max_memory_gb")
    check_positive(t.max_seconds, "task.max_seconds")
    if t.min_repeats > t.max_repeats:
        raise ConfigError(f"task.min_repeats={t.min_repeats} is more than task.max_repeats={t.max_repeats}")
    check_count(t.warmup, "task.warmup", "of untimed calls (0: none)")
    check_flag(t.causal, "task.causal")
    if t.mode not in ATTENTION_MODES:
        raise ConfigError(f"task.mode={t.mode!r}; known: {', '.join(ATTENTION_MODES)}")
    if t.dtype not in ATTENTION_DTYPES:
        raise ConfigError(f"task.dtype={t.dtype!r}; known: {', '.join(ATTENTION_DTYPES)}")


def _check_shape(m: DictConfig, spec: ModelSpec) -> None:
    if m.params is not None:
        check_positive(m.params, "model.params")
        check_positive(m.aspect_ratio, "model.aspect_ratio")
        check_positive(m.head_dim, "model.head_dim", integer=True)
    else:
        for key in ("n_layer", "d_model"):
            check_positive(m[key], f"model.{key}", integer=True)
        if m.n_head is None:  # heads of model.head_dim channels
            check_positive(m.head_dim, "model.head_dim", integer=True)
            if m.d_model % m.head_dim:
                raise ConfigError(f"model.head_dim={m.head_dim} does not divide model.d_model={m.d_model}")
        else:
            check_positive(m.n_head, "model.n_head", integer=True)
            if m.d_model % m.n_head:
                raise ConfigError(f"model.n_head={m.n_head} does not divide model.d_model={m.d_model}")


def _check_capabilities(cfg: DictConfig, spec: ModelSpec) -> None:
    """What the task and layout ask of the family that its spec says it cannot do: an `unsupported` record."""
    needs = {"tp": cfg.parallel.name in ("tp", "fsdp_tp"), "pp": cfg.parallel.name == "pp",
             "kv_cache": cfg.task.name == "inference", "mup": parametrization(cfg.model) == "mup"}
    for capability, needed in needs.items():
        if needed and spec.unsupported(capability):
            raise Unsupported(f"{spec.unsupported(capability)} (parallel={cfg.parallel.name}, task={cfg.task.name})"
                              if capability != "kv_cache" else spec.unsupported(capability))


def check_data(cfg: DictConfig, dataset) -> None:
    """The checks that need the data (task=train): every split holds a window, the budget holds a batch."""
    plan = resolve(cfg, dataset.vocab_size)
    check_data_fits(cfg, len(dataset.train), len(dataset.val), plan.tokens_requested, plan.batch_size)


def check_data_fits(cfg: DictConfig, train_len: int, val_len: int, tokens: float, batch: int | None = None) -> None:
    """`batch`: the run's batch size in sequences (default task.batch_size; a rule's, resolved, which is also where
    a rule's batch is checked against task.micro_batch_size)."""
    seq_len, batch = int(cfg.model.seq_len), int(batch if batch is not None else cfg.task.batch_size)
    for split, length in (("train", train_len), ("validation", val_len)):
        if length < seq_len + 1:
            raise ConfigError(f"model.seq_len={seq_len} is longer than the {split} split of data={cfg.data.name} ({length} tokens)")
    micro = cfg.task.get("micro_batch_size")
    if isinstance(cfg.task.batch_size, str) and parallel.micro_batch_problem(batch, 1, micro):  # rules: one rank
        raise ConfigError(f"task.micro_batch_size={micro} does not divide the {batch} sequences "
                          f"task.batch_size={cfg.task.batch_size} gives this model")
    if tokens < batch * seq_len:
        key = "compute" if cfg.compute is not None else "data.tokens"
        raise ConfigError(f"{key}: {tokens:.4g} training tokens is less than one batch "
                          f"(task.batch_size={batch} x model.seq_len={seq_len} = {batch * seq_len})")
