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
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from harness import data as data_sources
from harness import checkpoint, compiling, distributed, flops, measure, parallel, precision, profiling, quantize, records
from harness import schedules
from harness.config import (attention_options, check_data_fits, model_config, model_spec, mup_widths, parametrization,
                            requested_tokens, run_hyperparameters)
from harness.progress import Progress
from harness.errors import Diverged, Unsupported, first_line
from models import attention as attention_registry
from models import mup
from models.spec import IGNORE, Examples
from models.positions import TABLE_KINDS

log = logging.getLogger("harness")


def parametrize(model: torch.nn.Module, m: DictConfig):
    """Under model.parametrization=mup: the built model's hidden weights re-initialised (models/mup.py), and the
    function make_optimizer takes for their learning-rate multipliers; None under sp."""
    if parametrization(m) != "mup":
        return None
    width, base_width, _, _ = mup_widths(m)
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


def train_step(layout: parallel.Layout, x: torch.Tensor, y: torch.Tensor, grad_clip: float,
               cast=contextlib.nullcontext, scaler: torch.amp.GradScaler | None = None, *, measure_params: bool = False):
    """One optimizer step on the global batch (x, y); returns (mean loss, whether the gradient scaler skipped it),
    both as device tensors (the skip None without a scaler): nothing here waits for the device."""
    optimizer = layout.optimizer
    optimizer.zero_grad(set_to_none=True)
    loss = parallel.forward_backward(layout, x, y, cast, scaler, measure_params=measure_params)
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


@torch.no_grad()
def evaluate(layout: parallel.Layout, windows: np.ndarray, batch_size: int, cast=contextlib.nullcontext,
             examples: Examples | None = None) -> float:
    """Mean loss per predicted token over the windows (for an encoder, over the masked tokens)."""
    layout.model.eval()
    total, count = 0.0, 0
    for index, i in enumerate(range(0, len(windows), batch_size)):
        chunk = torch.from_numpy(windows[i:i + batch_size])
        x, y = examples.for_evaluation(index)(chunk) if examples else (chunk[:, :-1], chunk[:, 1:])
        predicted = int((y != IGNORE).sum())
        if predicted:
            total += parallel.eval_loss(layout, x.to(layout.device), y.to(layout.device), cast) * predicted
            count += predicted
    layout.model.train()
    return total / count


def run(cfg: DictConfig, out_dir: Path | None = None, write_branch=None) -> dict:
    """Train one model on the ranks its parallel layout asks for; returns the record's sections. With
    task.checkpoint_every, out_dir holds the run's checkpoint, and a checkpoint found there is resumed. With
    task.cooldowns, each cooldown branch then trains from the state the run saved where the branch starts decaying,
    in out_dir/<its config hash>/, and write_branch(directory, config, digest, result) records it."""
    wall_start = time.perf_counter()
    device = measure.resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Unsupported(f"device={cfg.device!r} but CUDA is not available")
    mode = precision.MODES[cfg.precision.name]
    refused = precision.unsupported(mode.name, device) or parallel.unsupported_precision(cfg.parallel.name, mode.name)
    if refused:
        raise Unsupported(refused)
    availability = attention_registry.available(cfg.attention.name, device, mode.autocast or mode.params,
                                                **attention_options(cfg))
    if not availability:
        raise Unsupported(f"attention={cfg.attention.name}: {availability.reason}")
    world = distributed.world_size(cfg.parallel.get("world_size"), device.type)
    if distributed.too_many_ranks(world, device.type):
        raise Unsupported(distributed.too_many_ranks(world, device.type))
    if cfg.parallel.name != "single" and world < 2:
        raise Unsupported(f"parallel={cfg.parallel.name} needs 2 or more ranks; parallel.world_size=auto found "
                          f"{world} GPU on this machine")

    if cfg.parallel.name == "single":
        result = train_with_branches(cfg, out_dir, write_branch, wall_start)
    else:
        container = OmegaConf.to_container(cfg, resolve=True)
        result = distributed.launch(_train_rank, (container, out_dir, write_branch), world, device.type,
                                    backend_name=cfg.parallel.get("backend", "auto"),
                                    timeout_s=float(cfg.parallel.get("timeout_s", 600)))[0]
    result["metrics"].setdefault("wall_time_s", time.perf_counter() - wall_start)
    return result


def _train_rank(container: dict, out_dir: Path | None, write_branch) -> dict:
    return train_with_branches(OmegaConf.create(container), out_dir, write_branch, time.perf_counter())


def train_with_branches(cfg: DictConfig, out_dir: Path | None, write_branch, wall_start: float) -> dict:
    """Train the run on this rank, then each of its cooldown branches not recorded yet, from the state the run saved
    where the branch leaves it; rank 0 records each branch as it ends (write_branch). Returns the run's result."""
    result = train(cfg, out_dir)
    branches = result.pop("cooldowns", [])
    if not branches:
        return result
    result["metrics"]["wall_time_s"] = time.perf_counter() - wall_start   # the run's own, not its branches'
    writer = not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
    for branch, config, digest in branches:
        branch_dir = out_dir / digest
        if records.find_ok_record(out_dir, digest) is not None:  # recorded before this run was killed
            if writer and not cfg.task.get("keep_checkpoints"):
                checkpoint.remove(branch_dir)   # the start the run saved for it again
            continue
        branch_start = time.perf_counter()
        branch_result = train(cfg, branch_dir, cooldown=branch)
        branch_result["metrics"]["wall_time_s"] = time.perf_counter() - branch_start
        if writer:
            write_branch(branch_dir, config, digest, branch_result)
    return result


def cooldown_config(config: dict, branch: schedules.Cooldown, tokens_per_step: int) -> tuple[dict, str]:
    """A cooldown branch's config (the run's, with the branch's tokens and no cooldowns of its own, and a
    `cooldown` section naming the run it branched from and where) and its config hash. A run with a compute budget
    gives its branches the same fraction of it, so a sweep of sizes at one budget with cooldowns at budget ratios
    gives IsoFLOP slices: every branch belongs to a budget as a run of its own would."""
    budget = config["compute"] * branch.fraction if config.get("compute") is not None else None
    branched = {**config, "compute": budget, "data": {**config["data"], "tokens": branch.schedule.total_steps * tokens_per_step},
                "task": {**config["task"], "cooldowns": []},
                "cooldown": {"fraction": branch.fraction, "from": records.config_hash(config),
                             "start_step": branch.start, "steps": branch.schedule.total_steps}}
    return branched, records.config_hash(branched)


def train(cfg: DictConfig, checkpoint_dir: Path | None = None, cooldown: schedules.Cooldown | None = None) -> dict:
    """Train on this process's rank (the only one for parallel=single); with task.checkpoint_every, save the full
    training state to checkpoint_dir every that many steps, and continue from a checkpoint of this config there.

    With task.cooldowns (a wsd run), save the state where each branch starts decaying into its directory; with
    `cooldown`, train that branch from the state saved there to its own end."""
    device = measure.resolve_device(cfg.device)
    multi_rank = cfg.parallel.name != "single"
    if multi_rank:
        local_rank, local_world = int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("LOCAL_WORLD_SIZE", 1))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
        else:  # ranks share the cores instead of each starting a thread per core
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        # Advice that does not apply here: the GPT's logits are never modified in place, and a 2-D mesh's
        # gradient-norm reduction over two dimensions is two small all-reduces once per step.
        warnings.filterwarnings("ignore", message="FSDP2-wrapped module")
        logging.getLogger("torch.distributed.tensor._redistribute").setLevel(logging.ERROR)
    mode = precision.MODES[cfg.precision.name]
    dataset = data_sources.load(cfg.data)
    model_cfg = model_config(cfg, dataset.vocab_size)
    spec = model_spec(cfg.model)
    per_token = spec.flops_per_token(model_cfg)
    tokens_requested = requested_tokens(cfg, per_token.causal)
    chosen = run_hyperparameters(cfg, model_cfg)
    check_data_fits(cfg, len(dataset.train), len(dataset.val), tokens_requested, chosen.batch_size)

    # The task with its rules (task.lr=law, porian, ...) resolved to the numbers this run trains with.
    t = OmegaConf.merge(cfg.task, {"lr": chosen.lr, "batch_size": chosen.batch_size,
                                   "warmup_fraction": chosen.warmup_fraction, "beta2": chosen.beta2})
    seq_len, batch_size = int(cfg.model.seq_len), int(t.batch_size)
    tokens_per_step = batch_size * seq_len
    total_steps = max(1, round(tokens_requested / tokens_per_step))
    schedule = schedules.from_task(t, total_steps)
    branches = (schedules.cooldowns(schedule, t.cooldowns, float(t.decay_fraction))
                if t.get("cooldowns") and cooldown is None else [])
    config = OmegaConf.to_container(cfg, resolve=True)
    digest = records.config_hash(config)
    branch_starts = {}   # step -> (branch, its config, its config hash)
    for branch in branches:
        branch_starts[branch.start] = (branch, *cooldown_config(config, branch, tokens_per_step))
    if cooldown is not None:
        schedule, total_steps = cooldown.schedule, cooldown.schedule.total_steps
        digest = cooldown_config(config, cooldown, tokens_per_step)[1]
    eval_steps = {max(1, round(total_steps * (i + 1) / int(t.eval_points))) for i in range(int(t.eval_points))}
    grad_clip = float(t.grad_clip)

    torch.manual_seed(int(cfg.seed))
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    model = precision.prepare(spec.build(model_cfg).to(device), mode.name)
    compile_info = compiling.prepare(model, bool(cfg.get("compile", False)), device)
    examples = Examples(spec, dataset.vocab_size, seed=int(cfg.seed))
    counts = spec.param_counts(model)
    param_dtype = next(model.parameters()).dtype
    cast = functools.partial(precision.autocast, mode.name, device)
    p = cfg.parallel
    lr_scales = parametrize(model, cfg.model)
    layout = parallel.build(p.name, model, spec, functools.partial(make_optimizer, t=t, lr_scales=lr_scales), device,
                            batch_size, tp_degree=p.get("tp_degree"), schedule=p.get("schedule", "1f1b"),
                            microbatches=int(p.get("microbatches", 1)), cast=cast)
    del model  # a pipeline stage keeps only its own blocks
    scaler = precision.grad_scaler(mode.name, device, float(cfg.precision.get("init_scale", 2.0**16)))
    skipped_steps = torch.zeros((), dtype=torch.int64, device=device)
    batches = data_sources.Batches(dataset.train, seq_len, batch_size, seed=int(cfg.seed))
    val_windows = data_sources.validation_windows(dataset.val, seq_len, int(t.eval_tokens))

    def next_examples():
        """The next batch as the family's (inputs, targets), made on the host (masking, span corruption) outside the
        timed step; pinned on a GPU so the step's copy is asynchronous."""
        x, y = examples(torch.from_numpy(batches.next()))
        return (x.pin_memory(), y.pin_memory()) if device.type == "cuda" else (x, y)

    check_every, checkpoint_every = int(t.check_every), int(t.get("checkpoint_every", 0))
    curve: list[dict] = []
    pending: list[torch.Tensor] = []   # the losses of steps not read back to the host yet
    interval_losses: list[float] = []
    earlier_seconds: list[float] = []  # step times of the process(es) before a resume
    start_step = 0
    # A branch always starts from a saved state: the one the run saved where it starts decaying, or a later one.
    resumable = cooldown is not None or (checkpoint_every and checkpoint_dir and cfg.resume)
    resumed = None
    if resumable:
        resumed = checkpoint.load_sharded(checkpoint_dir, digest) if multi_rank else checkpoint.load(checkpoint_dir, digest)
    if cooldown is not None and resumed is None:
        raise RuntimeError(f"cooldown branch {cooldown.fraction:g} has no saved state to start from in {checkpoint_dir}")
    if resumed is not None:
        start_step, curve, interval_losses = resumed["step"], resumed["curve"], resumed["interval_losses"]
        earlier_seconds, batch = resumed["step_seconds"], resumed["next_batch"]
        if multi_rank:
            checkpoint.restore_rank_state(layout.model, layout.optimizer, resumed)
        else:
            layout.model.load_state_dict(resumed["model"])
            layout.optimizer.load_state_dict(resumed["optimizer"])
        if scaler is not None:
            scaler.load_state_dict(resumed["scaler"])
        skipped_steps += resumed["skipped_steps"]
        batches.restore(resumed["batches"])
        examples.restore(resumed["examples"])
        torch.set_rng_state(resumed["torch_rng"])
        if device.type == "cuda":
            torch.cuda.set_rng_state(resumed["cuda_rng"], device)
        log.info("%s from step %d of %d (%s)", cooldown.name if cooldown is not None else "resuming", start_step,
                 total_steps, checkpoint.path(checkpoint_dir))
    else:
        batch = next_examples()

    def save_checkpoint(next_step: int, directory: Path | None = None, owner: str | None = None) -> None:
        model_and_optimizer = (checkpoint.rank_state(layout.model, layout.optimizer) if multi_rank else
                               {"model": layout.model.state_dict(), "optimizer": layout.optimizer.state_dict()})
        save = checkpoint.save_sharded if multi_rank else checkpoint.save
        save(directory or checkpoint_dir, owner or digest, {
            "step": next_step, **model_and_optimizer,
            "scaler": scaler.state_dict() if scaler is not None else None, "skipped_steps": int(skipped_steps),
            "batches": batches.state(), "examples": examples.state(), "next_batch": batch,
            "torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
            "curve": curve, "interval_losses": interval_losses, "step_seconds": earlier_seconds + clock.seconds()})

    measure.reset_peak_memory(device)
    is_rank0 = layout.rank == 0
    progress = Progress(total_steps * tokens_per_step, cfg.progress if is_rank0 else "off", done=start_step * tokens_per_step,
                        label=cooldown.name if cooldown is not None else "train")
    clock = measure.StepClock(device)
    profiler = profiling.StepProfiler(device, skip=int(t.timing_warmup_steps), steps=int(cfg.get("profile", 0)))
    try:
        for step in range(start_step, total_steps):
            lr = schedule.lr(step)
            set_lr(layout.optimizer, lr)
            clock.start()
            x, y = (part.to(device, non_blocking=True) for part in batch)
            # Mid-step parameter bytes are read on the first step, which step-time statistics leave out.
            loss, skipped = train_step(layout, x, y, grad_clip, cast, scaler, measure_params=step == start_step)
            clock.stop()
            if step + 1 < total_steps:
                batch = next_examples()  # on a GPU the host makes it while the device still runs the step
            profiler.step()
            pending.append(loss.detach())
            if skipped is not None:
                skipped_steps += skipped
            evaluating = step + 1 in eval_steps
            saving = checkpoint_every and checkpoint_dir and (step + 1) % checkpoint_every == 0 and step + 1 < total_steps
            branching = step + 1 in branch_starts
            if evaluating or saving or branching or (step + 1) % check_every == 0 or step + 1 == total_steps:
                # One read of the losses every check_every steps: the only host sync of the steps between evaluations.
                losses = torch.stack(pending).float().tolist()
                bad = next((i for i, value in enumerate(losses) if not math.isfinite(value)), None)
                if bad is not None:
                    at = step + 1 - len(losses) + bad
                    raise Diverged(f"training loss became {losses[bad]} at step {at + 1} of {total_steps} "
                                   f"(lr {schedule.lr(at):.3g})")
                interval_losses += losses
                progress.update(tokens_per_step * len(losses), losses[-1], tokens_per_step * clock.steps / clock.total_seconds())
                pending = []
            if evaluating:
                tokens_done = (step + 1) * tokens_per_step
                curve.append({"step": step + 1, "tokens": tokens_done, "flops": tokens_done * per_token.causal,
                              "train_loss": statistics.fmean(interval_losses),
                              "val_loss": evaluate(layout, val_windows, batch_size, cast, examples), "lr": lr})
                interval_losses = []
            if saving:
                save_checkpoint(step + 1)
            if branching:
                branch_digest = branch_starts[step + 1][2]
                save_checkpoint(step + 1, checkpoint_dir / branch_digest, branch_digest)
    finally:
        profiler.stop()
        progress.close()
    step_times = earlier_seconds + clock.seconds()
    skipped_steps = int(skipped_steps)

    unprofiled = [s for i, s in enumerate(step_times) if not profiler.touched(i - len(earlier_seconds))]
    timed = unprofiled[int(t.timing_warmup_steps):] or unprofiled or step_times
    if compile_info["compiled"]:  # the first step of this process traced and compiled the blocks
        first = step_times[len(earlier_seconds)] if len(step_times) > len(earlier_seconds) else float("nan")
        compile_info.update(first_step_s=first, compile_s=first - float(np.median(timed)),
                            graph_breaks=compiling.graph_breaks() - compile_info.pop("graph_breaks_before"))
    tokens = total_steps * tokens_per_step
    rank_info = _rank_info(layout, mode, param_dtype, timed, tokens_per_step, device)
    per_rank = [rank_info]
    if multi_rank:
        per_rank = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(per_rank, rank_info)
    # The step is as slow as the slowest rank's.
    step_time_total = max(sum(r["step_times_s"]) for r in per_rank)
    tokens_per_s = tokens_per_step * len(timed) / step_time_total
    quantiles = np.quantile(timed, [0.1, 0.5, 0.9])
    device_name = measure.device_name(device)
    peak = flops.peak_flops(device_name, mode.mfu_peak) if mode.mfu_peak else None
    val_loss = curve[-1]["val_loss"]
    metrics = {
        "val_loss": val_loss,
        "val_bpb": val_loss / math.log(2) / dataset.bytes_per_token if dataset.bytes_per_token else None,
        "train_loss": curve[-1]["train_loss"],
        "tokens": tokens,
        "tokens_requested": tokens_requested,
        "steps": total_steps,
        # what this job computed: a branch only from where it left the run
        "flops_spent": (total_steps - (cooldown.start if cooldown is not None else 0)) * tokens_per_step * per_token.causal,
        # the checkpoint's step when a killed run (or branch) was continued
        "resumed_from_step": start_step if start_step != (cooldown.start if cooldown is not None else 0) else None,
        "epochs": tokens / batches.windows_per_epoch_tokens(),
        # U of a data-constrained law (Muennighoff et al. 2023): the distinct training tokens the run read
        "unique_tokens": min(tokens, batches.windows_per_epoch_tokens()),
        "flops": tokens * per_token.causal,
        "flops_dense": tokens * per_token.dense,
        "flops_6nd": tokens * per_token.six_n,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_rank": tokens_per_s / len(per_rank),
        "step_time_median_s": float(quantiles[1]),
        "step_time_p10_s": float(quantiles[0]),
        "step_time_p90_s": float(quantiles[2]),
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in per_rank),
        # MFU over every rank's peak: world_size devices did the work
        "mfu": tokens_per_s * per_token.causal / (peak * len(per_rank)) if peak else None,
        "mfu_flops": "causal",
        # the count the field's MFU figures use (PaLM app. B, nanoGPT, llm-foundry, torchtitan): attention's every
        # query against every key, the masked half included
        "mfu_dense": tokens_per_s * per_token.dense / (peak * len(per_rank)) if peak else None,
        "mfu_peak_flops": peak,                       # per device, dense, from harness.flops.PEAK_FLOPS
        "mfu_peak": (f"{flops.device_product(device_name)} {mode.mfu_peak}" if peak else
                     "none: fp8 mixes fp8 and bf16 matmuls" if mode.mfu_peak is None else
                     f"none: no data-sheet peak for {device_name!r} in {mode.mfu_peak}"),
    }
    for r in per_rank:
        del r["step_times_s"]
    model_info = {
        "family": spec.name, **spec.describe(model_cfg), "vocab_size": spec.model_vocab(dataset.vocab_size, seq_len),
        "seq_len": seq_len, "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
        "params_embedding": counts["embedding"], "params_encoder": counts["encoder"], "params_decoder": counts["decoder"],
        "flops_per_token_dense": per_token.dense, "flops_per_token_causal": per_token.causal, "flops_per_token_6n": per_token.six_n,
        "flops_counted": spec.flops_counted, "param_dtype": str(param_dtype).removeprefix("torch."),
    }
    data_info = {"train_tokens": len(dataset.train), "val_tokens": len(dataset.val), "vocab_size": dataset.vocab_size,
                 "val_eval_tokens": int(val_windows[:, 1:].size), **dataset.info}
    extrapolation = (_length_extrapolation(layout, seq_len, cfg.model.get("positions"), dataset.val, t, cast, examples)
                     if t.get("eval_lengths") else {})
    quantized = (_quantized_evaluation(layout.model, t, val_windows, batch_size, device, val_loss, examples)
                 if t.get("eval_quantized") else {})
    precision_info = {  # what was in effect, read off the model and the scaler, not the config
        "mode": mode.name, "param_dtype": str(param_dtype).removeprefix("torch."),
        "autocast_dtype": str(mode.autocast).removeprefix("torch.") if mode.autocast else None,
        "matmul_precision": torch.get_float32_matmul_precision(), "grad_scaling": scaler is not None,
        "final_scale": scaler.get_scale() if scaler else None, "skipped_steps": skipped_steps,
        "slow_here": precision.slow_here(mode.name, device),
    }
    deg = layout.degrees
    parallel_info = {
        "strategy": layout.name, "world_size": len(per_rank), "dp": deg.dp, "tp": deg.tp, "pp": deg.pp,
        "backend": torch.distributed.get_backend() if multi_rank else None,
        "zero_stage": parallel.ZERO_STAGE[layout.name],
        "schedule": cfg.parallel.get("schedule") if layout.name == "pp" else None,
        "microbatches": int(cfg.parallel.microbatches) if layout.name == "pp" else None,
        "bytes_per_param": per_rank[0]["bytes_per_param"],
        "per_rank": per_rank,
    }
    saved = {"model_state": {k: v.detach().cpu() for k, v in layout.model.state_dict().items()}} if t.get("save_model") else {}
    return {**saved, "metrics": metrics, "model_info": model_info, "data_info": data_info, "precision_info": precision_info,
            "parallel_info": parallel_info, "schedule_info": schedule.info(),
            "hparams_info": {**chosen.info, "optimizer_fused": bool(layout.optimizer.defaults.get("fused"))},
            "compile_info": compile_info, "quantized": quantized,
            **({"profile_info": profiler.info(total_steps - start_step)} if profiler.steps else {}),
            "length_extrapolation": extrapolation, "curve": curve,
            **({"cooldowns": list(branch_starts.values())} if branch_starts else {})}


def _rank_info(layout: parallel.Layout, mode, param_dtype: torch.dtype, timed: list[float], tokens_per_step: int,
               device: torch.device) -> dict:
    """This rank's own figures: memory held and predicted, and its speed on its share of the batch."""
    held = parallel.rank_memory(layout)
    width = torch.finfo(param_dtype).bits // 8
    bytes_per_param = {"param": width, "grad": width, "optimizer": 2 * width}  # AdamW: exp_avg and exp_avg_sq
    psi = parallel.model_parallel_params(layout)
    predicted = parallel.zero_prediction(psi, parallel.ZERO_STAGE[layout.name], layout.degrees.dp,
                                         bytes_per_param["param"], bytes_per_param["grad"], bytes_per_param["optimizer"])
    rank_tokens = tokens_per_step // layout.degrees.dp
    return {"rank": layout.rank, "peak_memory_bytes": measure.peak_memory_bytes(device), **held,
            "psi": psi, **{f"predicted_{k}": v for k, v in predicted.items()}, "bytes_per_param": bytes_per_param,
            "tokens_per_s": rank_tokens * len(timed) / sum(timed), "step_time_median_s": float(np.median(timed)),
            "torch_threads": torch.get_num_threads(), "step_times_s": timed}


def _length_extrapolation(layout: parallel.Layout, seq_len: int, positions: str | None, val_tokens: np.ndarray,
                          t: DictConfig, cast, examples: Examples) -> dict:
    """Validation loss on windows of `multiple` x model.seq_len tokens, the loss averaged over every position.

    A learned position table has no entry past model.seq_len, so longer windows are recorded as unsupported."""
    results = {}
    for multiple in t.eval_lengths:
        length = int(round(float(multiple) * seq_len))
        key = f"x{multiple:g}"
        if positions in TABLE_KINDS and length > seq_len:
            results[key] = {"seq_len": length, "val_loss": None,
                            "unsupported": f"{positions} positions stop at model.seq_len={seq_len}"}
            continue
        if len(val_tokens) < length + 1:
            results[key] = {"seq_len": length, "val_loss": None,
                            "unsupported": f"the validation split ({len(val_tokens)} tokens) is shorter than {length + 1}"}
            continue
        windows = data_sources.validation_windows(val_tokens, length, int(t.eval_tokens))
        results[key] = {"seq_len": length, "val_loss": evaluate(layout, windows, max(1, int(t.batch_size) * seq_len // length), cast, examples),
                        "windows": len(windows)}
    return results


def _quantized_evaluation(model: torch.nn.Module, t: DictConfig, val_windows: np.ndarray, batch_size: int,
                          device: torch.device, val_loss: float, examples: Examples) -> dict:
    quantized = {"full_bytes": quantize.model_bytes(model)}
    for method in t.eval_quantized:
        if quantize.unavailable(method):
            quantized[method] = {"unsupported": quantize.unavailable(method)}
            continue
        try:  # a quantization that fails costs its own entry, never the training result
            copy, kept = quantize.quantized_copy(model, method)
            loss = evaluate(parallel.local(copy, device), val_windows, batch_size, examples=examples)
            quantized[method] = {"model_bytes": quantize.model_bytes(copy), "val_loss": loss,
                                 "val_loss_change": loss - val_loss, "layers_left_full_precision": kept}
        except Exception as error:
            quantized[method] = {"error": f"{type(error).__name__}: {first_line(error)}"}
    return quantized
