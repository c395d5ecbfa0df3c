"""task=train: AdamW with warm-up and cosine decay over the whole token budget, evaluated along the way.

Deterministic on CPU: the same config gives the same loss curve, bit for bit.
"""
from __future__ import annotations

import contextlib
import functools
import math
import statistics
import time

import numpy as np
import torch
from omegaconf import DictConfig

from harness import data as data_sources
from harness import flops, measure, precision, quantize
from harness.config import attention_options, check_data_fits, gpt_config
from harness.progress import Progress
from harness.tasks import Diverged, Unsupported
from models import attention as attention_registry
from models.gpt import GPT
from models.sizing import non_embedding_params


def lr_at(step: int, total_steps: int, peak: float, warmup_steps: int, min_ratio: float) -> float:
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: torch.nn.Module, t: DictConfig) -> torch.optim.Optimizer:
    # Decay matrices only, not biases, norms or (as in GPT-2) nothing 1-D (nanoGPT's configure_optimizers).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": float(t.weight_decay)}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=float(t.lr), betas=(float(t.beta1), float(t.beta2)))


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               grad_clip: float, cast=contextlib.nullcontext, scaler: torch.amp.GradScaler | None = None):
    """One optimizer step; returns (loss, whether the gradient scaler skipped the step)."""
    with cast():
        _, loss = model(x, y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        return loss, False
    scale = scaler.get_scale()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)      # skipped when the gradients hold inf/NaN; update() then lowers the scale
    scaler.update()
    return loss, scaler.get_scale() < scale


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: np.ndarray, batch_size: int, device: torch.device,
             cast=contextlib.nullcontext) -> float:
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(windows), batch_size):
        chunk = torch.from_numpy(windows[i:i + batch_size]).to(device)
        with cast():
            _, loss = model(chunk[:, :-1], chunk[:, 1:])
        total += loss.item() * chunk[:, 1:].numel()
        count += chunk[:, 1:].numel()
    model.train()
    return total / count


def run(cfg: DictConfig) -> dict:
    """Train one model; returns the record's metrics, model and data info, and loss curve."""
    wall_start = time.perf_counter()
    device = measure.resolve_device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Unsupported(f"device={cfg.device!r} but CUDA is not available")
    mode = precision.MODES[cfg.precision.name]
    refused = precision.unsupported(mode.name, device)
    if refused:
        raise Unsupported(refused)
    availability = attention_registry.available(cfg.attention.name, device, mode.autocast or mode.params,
                                                **attention_options(cfg))
    if not availability:
        raise Unsupported(f"attention={cfg.attention.name}: {availability.reason}")

    dataset = data_sources.load(cfg.data)
    model_cfg = gpt_config(cfg, dataset.vocab_size)
    per_token = flops.training_flops_per_token(model_cfg, non_embedding_params(model_cfg))
    tokens_requested = float(cfg.compute) / per_token.causal if cfg.compute is not None else float(cfg.data.tokens)
    check_data_fits(cfg, len(dataset.train), len(dataset.val), tokens_requested)

    t = cfg.task
    seq_len, batch_size = model_cfg.seq_len, int(t.batch_size)
    tokens_per_step = batch_size * seq_len
    total_steps = max(1, round(tokens_requested / tokens_per_step))
    warmup_steps = max(1, int(total_steps * float(t.warmup_fraction)))
    eval_steps = {max(1, round(total_steps * (i + 1) / int(t.eval_points))) for i in range(int(t.eval_points))}
    grad_clip = float(t.grad_clip)

    torch.manual_seed(int(cfg.seed))
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True)
    model = precision.prepare(GPT(model_cfg).to(device), mode.name)
    counts = model.param_counts()
    optimizer = make_optimizer(model, t)
    cast = functools.partial(precision.autocast, mode.name, device)
    scaler = precision.grad_scaler(mode.name, device, float(cfg.precision.get("init_scale", 2.0**16)))
    skipped_steps = 0
    batches = data_sources.Batches(dataset.train, seq_len, batch_size, seed=int(cfg.seed))
    val_windows = data_sources.validation_windows(dataset.val, seq_len, int(t.eval_tokens))

    measure.reset_peak_memory(device)
    progress = Progress(total_steps * tokens_per_step, cfg.progress)
    step_times: list[float] = []
    train_seconds = 0.0
    curve: list[dict] = []
    interval_losses: list[float] = []
    try:
        for step in range(total_steps):
            lr = lr_at(step, total_steps, float(t.lr), warmup_steps, float(t.min_lr_ratio))
            for group in optimizer.param_groups:
                group["lr"] = lr
            start = measure.timer(device)
            batch = torch.from_numpy(batches.next()).to(device, non_blocking=True)
            loss, skipped = train_step(model, optimizer, batch[:, :-1], batch[:, 1:], grad_clip, cast, scaler)
            loss = loss.item()
            skipped_steps += skipped
            step_times.append(measure.timer(device) - start)
            train_seconds += step_times[-1]
            if not math.isfinite(loss):
                raise Diverged(f"training loss became {loss} at step {step + 1} of {total_steps} (lr {lr:.3g})")
            interval_losses.append(loss)
            if step + 1 in eval_steps:
                tokens_done = (step + 1) * tokens_per_step
                curve.append({"step": step + 1, "tokens": tokens_done, "flops": tokens_done * per_token.causal,
                              "train_loss": statistics.fmean(interval_losses),
                              "val_loss": evaluate(model, val_windows, batch_size, device, cast), "lr": lr})
                interval_losses = []
            progress.update(tokens_per_step, loss, tokens_per_step * (step + 1) / train_seconds)
    finally:
        progress.close()

    timed = step_times[int(t.timing_warmup_steps):] or step_times
    tokens = total_steps * tokens_per_step
    tokens_per_s = tokens_per_step * len(timed) / sum(timed)
    quantiles = np.quantile(timed, [0.1, 0.5, 0.9])
    peak = flops.peak_flops(measure.device_name(device), mode.compute)
    val_loss = curve[-1]["val_loss"]
    metrics = {
        "val_loss": val_loss,
        "val_bpb": val_loss / math.log(2) / dataset.bytes_per_token if dataset.bytes_per_token else None,
        "train_loss": curve[-1]["train_loss"],
        "tokens": tokens,
        "tokens_requested": tokens_requested,
        "steps": total_steps,
        "epochs": tokens / batches.windows_per_epoch_tokens(),
        "flops": tokens * per_token.causal,
        "flops_dense": tokens * per_token.dense,
        "flops_6nd": tokens * per_token.six_n,
        "tokens_per_s": tokens_per_s,
        "step_time_median_s": float(quantiles[1]),
        "step_time_p10_s": float(quantiles[0]),
        "step_time_p90_s": float(quantiles[2]),
        "wall_time_s": time.perf_counter() - wall_start,
        "peak_memory_bytes": measure.peak_memory_bytes(device),
        "mfu": tokens_per_s * per_token.causal / peak if peak else None,
        "mfu_flops": "causal",
    }
    model_info = {
        "family": "gpt", "n_layer": model_cfg.n_layer, "d_model": model_cfg.d_model, "n_head": model_cfg.n_head,
        "d_mlp": model_cfg.d_mlp, "vocab_size": model_cfg.vocab_size, "seq_len": seq_len,
        "params_total": counts["total"], "params_non_embedding": counts["non_embedding"], "params_embedding": counts["embedding"],
        "flops_per_token_dense": per_token.dense, "flops_per_token_causal": per_token.causal, "flops_per_token_6n": per_token.six_n,
        "param_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    data_info = {"train_tokens": len(dataset.train), "val_tokens": len(dataset.val), "vocab_size": dataset.vocab_size,
                 "val_eval_tokens": int(val_windows[:, 1:].size), **dataset.info}
    quantized = {}
    if t.get("eval_quantized"):
        quantized["full_bytes"] = quantize.model_bytes(model)
        for method in t.eval_quantized:
            try:  # a quantization that fails costs its own entry, never the training result
                copy, kept = quantize.quantized_copy(model, method)
                loss = evaluate(copy, val_windows, batch_size, device)
                quantized[method] = {"model_bytes": quantize.model_bytes(copy), "val_loss": loss,
                                     "val_loss_change": loss - val_loss, "layers_left_full_precision": kept}
            except Exception as error:
                quantized[method] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"}
    precision_info = {  # what was in effect, read off the model and the scaler, not the config
        "mode": mode.name, "param_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "autocast_dtype": str(mode.autocast).removeprefix("torch.") if mode.autocast else None,
        "matmul_precision": torch.get_float32_matmul_precision(), "grad_scaling": scaler is not None,
        "final_scale": scaler.get_scale() if scaler else None, "skipped_steps": skipped_steps,
        "slow_here": precision.slow_here(mode.name, device),
    }
    return {"metrics": metrics, "model_info": model_info, "data_info": data_info, "precision_info": precision_info,
            "quantized": quantized, "curve": curve}

