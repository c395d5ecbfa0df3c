"""task=train: AdamW under a learning-rate schedule (harness.schedules) over the whole token budget, evaluated along the way.

Deterministic on CPU: the same config gives the same loss curve, bit for bit.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from harness import checkpoint, compiling, distributed, measure, parallel, precision, profiling, records
from harness import data as data_sources
from harness import schedules
from harness.config import CONF_DIR, check_data_fits
from harness.errors import Diverged, Unsupported
from harness.hparams import Hyperparameters
from harness.progress import Progress
from harness.optimizer import make_optimizer, parametrize, set_lr
from harness.plan import JobPlan, ModelPlan, Plan, resolve, resolve_job, resolve_model
from harness.tasks.evaluation import evaluate
from harness.tasks.state import TrainingState
from harness.tasks.train_record import record
from models import attention as attention_registry
from models.spec import Examples, FlopsPerToken, ModelSpec

log = logging.getLogger("harness")


def train_step(layout: parallel.Layout, x: torch.Tensor, y: torch.Tensor, grad_clip: float,
               cast=contextlib.nullcontext, scaler: torch.amp.GradScaler | None = None, *,
               micro_batch: int | None = None, measure_params: bool = False):
    """One optimizer step on the global batch (x, y), `micro_batch` sequences per forward and backward (None: a
    rank's whole share); returns (mean loss, whether the gradient scaler skipped it), both as device tensors (the
    skip None without a scaler): nothing here waits for the device."""
    optimizer = layout.optimizer
    optimizer.zero_grad(set_to_none=True)
    loss = parallel.forward_backward(layout, x, y, cast, scaler, micro_batch=micro_batch, measure_params=measure_params)
    if scaler is None:
        if grad_clip > 0:
            parallel.clip_grad_norm(layout, grad_clip)
        optimizer.step()
        return loss, None
    scale = precision.scale_tensor(scaler).clone()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if grad_clip > 0:
        parallel.clip_grad_norm(layout, grad_clip)
    scaler.step(optimizer)      # skipped when the gradients hold inf/NaN; update() then lowers the scale
    scaler.update()
    return loss, precision.scale_tensor(scaler) < scale


def run(cfg: DictConfig, out_dir: Path | None = None, write_branch=None) -> dict:
    """Train one model on the ranks its parallel layout asks for; returns the record's sections. With
    task.checkpoint_every, out_dir holds the run's checkpoint, and a checkpoint found there is resumed. With
    task.cooldowns, each cooldown branch then trains from the state the run saved where the branch starts decaying,
    in out_dir/<its config hash>/, and write_branch(directory, config, digest, result) records it."""
    wall_start = time.perf_counter()
    job, model = resolve_job(cfg), resolve_model(cfg)
    world = check_runnable(job, model)
    if job.layout == "single":
        result = train_with_branches(*prepare(cfg, model, job), out_dir, write_branch, wall_start)
    else:
        result = distributed.launch(_train_rank, (job.config, out_dir, write_branch), world, measure.resolve_device(job.device).type,
                                    backend_name=job.parallel.get("backend", "auto"),
                                    timeout_s=float(job.parallel.get("timeout_s", 600)))[0]
    result["metrics"].setdefault("wall_time_s", time.perf_counter() - wall_start)
    return result


def check_runnable(job: JobPlan, model: ModelPlan) -> int:
    """What this machine cannot run (an `unsupported` record, not a config error); returns the number of ranks."""
    device = measure.device_here(job.device)
    mode = precision.MODES[job.precision]
    refused = precision.unsupported(mode.name, device) or parallel.unsupported(job.layout, mode.name)
    if refused:
        raise Unsupported(refused)
    refused = attention_registry.unsupported(model.attention, device, mode.autocast or mode.params, **model.attention_options)
    if refused:
        raise Unsupported(f"attention={model.attention}: {refused}")
    world = distributed.world_size(job.parallel.get("world_size"), device.type)
    if distributed.too_many_ranks(world, device.type):
        raise Unsupported(distributed.too_many_ranks(world, device.type))
    if job.layout != "single" and world < 2:
        raise Unsupported(f"parallel={job.layout} needs 2 or more ranks; parallel.world_size=auto found "
                          f"{world} GPU on this machine")
    return world


def prepare(cfg: DictConfig, model: ModelPlan | None = None,
            job: JobPlan | None = None) -> tuple[Plan, data_sources.TokenData]:
    """The job's data and its plan on that data (harness.plan.resolve), checked against it: the runner's one read
    of the config."""
    dataset = data_sources.load(cfg.data)
    plan = resolve(cfg, dataset.vocab_size, model, job)
    check_data_fits(cfg, len(dataset.train), len(dataset.val), plan.tokens_requested, plan.batch_size)
    return plan, dataset


def _train_rank(container: dict, out_dir: Path | None, write_branch) -> dict:
    return train_with_branches(*prepare(OmegaConf.create(container)), out_dir, write_branch, time.perf_counter())


def train_with_branches(plan: Plan, dataset: data_sources.TokenData, out_dir: Path | None, write_branch,
                        wall_start: float) -> dict:
    """Train the run on this rank, then each of its cooldown branches not recorded yet, from the state the run saved
    where the branch leaves it; rank 0 records each branch as it ends (write_branch). Returns the run's result."""
    result = train(plan, dataset, out_dir)
    branches = result.pop("cooldowns", [])
    if not branches:
        return result
    result["metrics"]["wall_time_s"] = time.perf_counter() - wall_start   # the run's own, not its branches'
    writer = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    for branch, config, digest in branches:
        branch_dir = out_dir / digest
        if records.find_ok_record(out_dir, digest) is not None:  # recorded before this run was killed
            if writer and not plan.task.get("keep_checkpoints"):
                checkpoint.remove(branch_dir)   # the start the run saved for it again
            continue
        branch_start = time.perf_counter()
        branch_result = train(plan, dataset, branch_dir, cooldown=branch)
        branch_result["metrics"]["wall_time_s"] = time.perf_counter() - branch_start
        if writer:
            write_branch(branch_dir, config, digest, branch_result)
    return result


def trained_weights(cfg: DictConfig) -> Path:
    """Weights trained by task=train (its defaults) on task.train_tokens of this data, cached by everything that
    determines them, so the points of an inference sweep train once."""
    settings = OmegaConf.to_container(cfg, resolve=True)
    settings.update(task={**OmegaConf.to_container(OmegaConf.load(CONF_DIR / "task" / "train.yaml")), "save_model": True},
                    compute=None, parallel={"name": "single", "world_size": 1}, precision={"name": "fp32"}, progress="off")
    settings["data"]["tokens"] = float(cfg.task.train_tokens)
    train_cfg = OmegaConf.create(settings)
    key = records.config_hash(OmegaConf.to_container(OmegaConf.masked_copy(train_cfg, ["model", "data", "attention", "task", "seed"]),
                                                     resolve=True))
    directory = Path(os.path.expanduser(cfg.data.get("cache_dir") or "~/.cache/scaling-harness")) / "models" / key
    if not (directory / records.MODEL_NAME).exists():
        log.info("training the model to measure (%s tokens, cached in %s)", cfg.task.train_tokens, directory)
        directory.mkdir(parents=True, exist_ok=True)
        records.write_model(directory, train(*prepare(train_cfg))["model_state"])
    return directory / records.MODEL_NAME


@dataclass
class Setup:
    """What a training job fixes before its first step: its plan (harness.plan) built on this rank, with the data and
    the model laid out; the loop and the record read this, never the config."""
    t: DictConfig                 # the task with its rules (task.lr=law, porian, ...) resolved to numbers
    device: torch.device
    multi_rank: bool
    mode: precision.Mode
    dataset: data_sources.TokenData
    spec: ModelSpec
    model_cfg: object
    per_token: FlopsPerToken
    tokens_requested: float
    chosen: Hyperparameters       # the learning rate and batch size, and how they were chosen
    seq_len: int
    batch_size: int
    micro_batch: int | None       # sequences per forward and backward on a rank (None: its whole share)
    total_steps: int
    schedule: schedules.Schedule
    digest: str                   # the config hash the checkpoints belong to
    branch_starts: dict           # step -> (cooldown branch, its config, its config hash)
    eval_steps: set
    cooldown: schedules.Cooldown | None
    layout: parallel.Layout
    scaler: torch.amp.GradScaler | None
    batches: data_sources.Batches
    val_windows: np.ndarray
    examples: Examples
    counts: dict                  # the parameter counts of the model as built
    param_dtype: torch.dtype
    cast: object                  # the autocast context of the precision mode
    compile_info: dict
    progress: str                 # how the loop reports (progress=bar|lines|off|auto)
    profile_steps: int            # profile=N
    resume: bool
    positions: str | None         # the model's positional encoding
    parallel: dict                # the layout's settings (pp's schedule and microbatches)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len


def train(plan: Plan, dataset: data_sources.TokenData, checkpoint_dir: Path | None = None,
          cooldown: schedules.Cooldown | None = None) -> dict:
    """Train on this process's rank (the only one for parallel=single); with task.checkpoint_every, save the full
    training state to checkpoint_dir every that many steps, and continue from a checkpoint of this config there.

    With task.cooldowns (a wsd run), save the state where each branch starts decaying into its directory; with
    `cooldown`, train that branch from the state saved there to its own end."""
    run = setup(plan, dataset, cooldown)
    state = TrainingState(run.layout, run.scaler, run.batches, run.examples, run.device, run.multi_rank)
    start(run, state, checkpoint_dir)
    started_at = state.step
    profiler = loop(run, state, checkpoint_dir)
    return record(run, state, profiler, started_at)


def rank_device(job: JobPlan) -> torch.device:
    """This rank's device; on a CPU the ranks share the cores instead of each starting a thread per core."""
    device = measure.resolve_device(job.device)
    if job.layout == "single":
        return device
    local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    # Advice that does not apply here: the GPT's logits are never modified in place, and a 2-D mesh's
    # gradient-norm reduction over two dimensions is two small all-reduces once per step.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
    logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    return device


def setup(plan: Plan, dataset: data_sources.TokenData, cooldown: schedules.Cooldown | None) -> Setup:
    """The model laid out on this rank, its optimizer and schedule, and every number the run needs, from the plan."""
    job = plan.job
    device = rank_device(job)
    mode = precision.MODES[job.precision]
    spec, model_cfg, t = plan.model.spec, plan.model_config, plan.task
    seq_len, batch_size, tokens_per_step = plan.seq_len, plan.batch_size, plan.tokens_per_step
    total_steps, schedule = plan.total_steps, plan.schedule
    branches = (schedules.cooldowns(schedule, t.cooldowns, float(t.decay_fraction))
                if t.get("cooldowns") and cooldown is None else [])
    config = job.config
    digest = records.config_hash(config)
    branch_starts = {branch.start: (branch, *records.cooldown_config(config, branch, tokens_per_step)) for branch in branches}
    if cooldown is not None:
        schedule, total_steps = cooldown.schedule, cooldown.schedule.total_steps
        digest = records.cooldown_config(config, cooldown, tokens_per_step)[1]
    eval_steps = {max(1, round(total_steps * (i + 1) / int(t.eval_points))) for i in range(int(t.eval_points))}

    torch.manual_seed(job.seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    model = precision.prepare(spec.build(model_cfg).to(device), mode.name)
    compile_info = compiling.prepare(model, job.compile, device)
    examples = Examples(spec, dataset.vocab_size, seed=job.seed)
    counts = spec.param_counts(model)
    param_dtype = next(model.parameters()).dtype
    cast = functools.partial(precision.autocast, mode.name, device)
    p = job.parallel
    lr_scales = parametrize(model, plan.model.mup_widths)
    layout = parallel.build(p["name"], model, spec, functools.partial(make_optimizer, t=t, lr_scales=lr_scales), device,
                            batch_size, tp_degree=p.get("tp_degree"), schedule=p.get("schedule", "1f1b"),
                            microbatches=int(p.get("microbatches", 1)), cast=cast)
    if compile_info["compiled"] and layout.name != "pp":   # a pipeline's schedule holds its own loss
        layout.loss = compiling.compiled_loss()
        compile_info["loss"] = True
    del model  # a pipeline stage keeps only its own blocks
    return Setup(
        t=t, device=device, multi_rank=job.layout != "single", mode=mode, dataset=dataset, spec=spec,
        model_cfg=model_cfg, per_token=plan.flops_per_token, tokens_requested=plan.tokens_requested,
        chosen=plan.hyperparameters, seq_len=seq_len,
        batch_size=batch_size, micro_batch=t.get("micro_batch_size"), total_steps=total_steps, schedule=schedule,
        digest=digest, branch_starts=branch_starts,
        eval_steps=eval_steps, cooldown=cooldown, layout=layout,
        scaler=precision.grad_scaler(mode.name, device, job.init_scale),
        batches=data_sources.Batches(dataset.train, seq_len, batch_size, seed=job.seed),
        val_windows=data_sources.validation_windows(dataset.val, seq_len, int(t.eval_tokens)), examples=examples,
        counts=counts, param_dtype=param_dtype, cast=cast, compile_info=compile_info, progress=job.progress,
        profile_steps=job.profile_steps, resume=job.resume, positions=plan.model.section.get("positions"),
        parallel=p)


def next_examples(run: Setup) -> tuple[torch.Tensor, torch.Tensor]:
    """The next batch as the family's (inputs, targets), made on the host (masking, span corruption) outside the
    timed step; pinned on a GPU so the step's copy is asynchronous."""
    x, y = run.examples(torch.from_numpy(run.batches.next()))
    return (x.pin_memory(), y.pin_memory()) if run.device.type == "cuda" else (x, y)


def start(run: Setup, state: TrainingState, checkpoint_dir: Path | None) -> None:
    """Continue from this config's checkpoint in checkpoint_dir where there is one to continue from (a cooldown
    branch always starts from one: the state the run saved where the branch starts decaying), else from step 0."""
    cooldown = run.cooldown
    resumable = cooldown is not None or (run.t.get("checkpoint_every", 0) and checkpoint_dir and run.resume)
    if resumable and checkpoint.restore_state(checkpoint_dir, run.digest, state):
        log.info("%s from step %d of %d (%s)", cooldown.name if cooldown is not None else "resuming", state.step,
                 run.total_steps, checkpoint.path(checkpoint_dir))
    elif cooldown is not None:
        raise RuntimeError(f"cooldown branch {cooldown.fraction:g} has no saved state to start from in {checkpoint_dir}")
    else:
        state.batch = next_examples(run)


def loop(run: Setup, state: TrainingState, checkpoint_dir: Path | None) -> profiling.StepProfiler:
    """The steps from state.step to the end: each timed without waiting for the device, the losses read back every
    task.check_every steps (a diverged loss stops the run), evaluations, checkpoints and the branches' starts."""
    t, device, layout, tokens_per_step = run.t, run.device, run.layout, run.tokens_per_step
    check_every, checkpoint_every, grad_clip = int(t.check_every), int(t.get("checkpoint_every", 0)), float(t.grad_clip)
    pending: list[torch.Tensor] = []   # the losses of steps not read back to the host yet
    first = state.step
    measure.reset_peak_memory(device)
    progress = Progress(run.total_steps * tokens_per_step, run.progress if layout.rank == 0 else "off",
                        done=first * tokens_per_step, label=run.cooldown.name if run.cooldown is not None else "train")
    clock = state.clock
    profiler = profiling.StepProfiler(device, skip=int(t.timing_warmup_steps), steps=run.profile_steps)
    try:
        for step in range(first, run.total_steps):
            lr = run.schedule.lr(step)
            set_lr(layout.optimizer, lr)
            clock.start()
            x, y = (part.to(device, non_blocking=True) for part in state.batch)
            # Mid-step parameter bytes are read on the first step, which step-time statistics leave out.
            loss, skipped = train_step(layout, x, y, grad_clip, run.cast, run.scaler, micro_batch=run.micro_batch,
                                       measure_params=step == first)
            clock.stop()
            if step + 1 < run.total_steps:
                state.batch = next_examples(run)  # on a GPU the host makes it while the device still runs the step
            profiler.step()
            pending.append(loss.detach())
            if skipped is not None:
                state.skipped_steps += skipped
            state.step = step + 1
            evaluating = step + 1 in run.eval_steps
            saving = checkpoint_every and checkpoint_dir and (step + 1) % checkpoint_every == 0 and step + 1 < run.total_steps
            branching = step + 1 in run.branch_starts
            if evaluating or saving or branching or (step + 1) % check_every == 0 or step + 1 == run.total_steps:
                # One read of the losses every check_every steps: the only host sync of the steps between evaluations.
                losses = torch.stack(pending).float().tolist()
                bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
                if bad is not None:
                    at = step + 1 - len(losses) + bad
                    raise Diverged(f"training loss became {losses[bad]} at step {at + 1} of {run.total_steps} "
                                   f"(lr {run.schedule.lr(at):.3g})")
                state.interval_losses += losses
                progress.update(tokens_per_step * len(losses), losses[-1], tokens_per_step * clock.steps / clock.total_seconds())
                pending = []
            if evaluating:
                tokens_done = (step + 1) * tokens_per_step
                state.curve.append({"step": step + 1, "tokens": tokens_done, "flops": tokens_done * run.per_token.causal,
                                    "train_loss": statistics.fmean(state.interval_losses),
                                    "val_loss": evaluate(layout, run.val_windows, run.batch_size, run.cast, run.examples),
                                    "lr": lr})
                state.interval_losses = []
            if saving:
                checkpoint.save_state(checkpoint_dir, run.digest, state)
            if branching:
                branch_digest = run.branch_starts[step + 1][2]
                checkpoint.save_state(checkpoint_dir / branch_digest, branch_digest, state)
    finally:
        profiler.stop()
        progress.close()
    return profiler
