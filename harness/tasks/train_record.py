"""A training run's record: its metrics, and the model, data, precision, layout and compilation in effect, read off
what the run did (harness/tasks/train.py's setup and state), not off its config."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

from harness import compiling, flops, measure, parallel, precision, profiling
from harness.tasks.evaluation import length_extrapolation, quantized_evaluation
from harness.tasks.state import TrainingState

if TYPE_CHECKING:
    from harness.tasks.train import Setup


def record(run: Setup, state: TrainingState, profiler: profiling.StepProfiler, started_at: int) -> dict:
    """The record's sections from what the run did: metrics, the model, data, precision and layout in effect."""
    t, layout = run.t, run.layout
    step_times, earlier = state.seconds(), len(state.earlier_seconds)
    unprofiled = [s for i, s in enumerate(step_times) if not profiler.touched(i - earlier)]
    timed = unprofiled[int(t.timing_warmup_steps):] or unprofiled or step_times
    compile_info = run.compile_info
    if compile_info["compiled"]:  # the first step of this process traced and compiled the blocks
        first = step_times[earlier] if len(step_times) > earlier else float("nan")
        compile_info.update(first_step_s=first, compile_s=first - float(np.median(timed)),
                            graph_breaks=compiling.graph_breaks() - compile_info.pop("graph_breaks_before"))
    per_rank = [_rank_info(layout, run.mode, run.param_dtype, timed, run.tokens_per_step, run.device)]
    if run.multi_rank:
        mine, per_rank = per_rank[0], [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(per_rank, mine)
    metrics = _metrics(run, state, timed, per_rank, started_at)
    for r in per_rank:
        del r["step_times_s"]
    val_loss = metrics["val_loss"]
    extrapolation = (length_extrapolation(layout, run.seq_len, run.positions, run.dataset.val, t,
                                          run.cast, run.examples) if t.get("eval_lengths") else {})
    quantized = (quantized_evaluation(layout.model, t, run.val_windows, run.batch_size, run.device, val_loss, run.examples)
                 if t.get("eval_quantized") else {})
    saved = {"model_state": {k: v.detach().cpu() for k, v in layout.model.state_dict().items()}} if t.get("save_model") else {}
    return {**saved, "metrics": metrics, "model_info": _model_info(run), "data_info": _data_info(run),
            "precision_info": _precision_info(run, int(state.skipped_steps)),
            "parallel_info": _parallel_info(run, per_rank), "schedule_info": run.schedule.info(),
            "hparams_info": {**run.chosen.info, "optimizer_fused": bool(layout.optimizer.defaults.get("fused")),
                             "micro_batch_size": run.micro_batch,
                             "accumulation_steps": parallel.accumulation_steps(run.batch_size // layout.degrees.dp,
                                                                               run.micro_batch)},
            "compile_info": compile_info, "quantized": quantized,
            **({"profile_info": profiler.info(run.total_steps - started_at)} if profiler.steps else {}),
            "length_extrapolation": extrapolation, "curve": state.curve,
            **({"cooldowns": list(run.branch_starts.values())} if run.branch_starts else {})}


def _metrics(run: Setup, state: TrainingState, timed: list[float], per_rank: list[dict], started_at: int) -> dict:
    per_token, tokens_per_step, cooldown = run.per_token, run.tokens_per_step, run.cooldown
    tokens = run.total_steps * tokens_per_step
    # The step is as slow as the slowest rank's.
    step_time_total = max(sum(r["step_times_s"]) for r in per_rank)
    tokens_per_s = tokens_per_step * len(timed) / step_time_total
    quantiles = np.quantile(timed, [0.1, 0.5, 0.9])
    device_name = measure.device_name(run.device)
    mfu_peak = run.mode.mfu_peak
    peak = flops.peak_flops(device_name, mfu_peak) if mfu_peak else None
    val_loss = state.curve[-1]["val_loss"]
    branched_at = cooldown.start if cooldown is not None else 0
    epoch_tokens = run.batches.windows_per_epoch_tokens()
    return {
        "val_loss": val_loss,
        "val_bpb": val_loss / math.log(2) / run.dataset.bytes_per_token if run.dataset.bytes_per_token else None,
        "train_loss": state.curve[-1]["train_loss"],
        "tokens": tokens,
        "tokens_requested": run.tokens_requested,
        "steps": run.total_steps,
        # what this job computed: a branch only from where it left the run
        "flops_spent": (run.total_steps - branched_at) * tokens_per_step * per_token.causal,
        # the checkpoint's step when a killed run (or branch) was continued
        "resumed_from_step": started_at if started_at != branched_at else None,
        "epochs": tokens / epoch_tokens,
        # U of a data-constrained law (Muennighoff et al. 2023): the distinct training tokens the run read
        "unique_tokens": min(tokens, epoch_tokens),
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
        "mfu_peak": (f"{flops.device_product(device_name)} {mfu_peak}" if peak else
                     "none: fp8 mixes fp8 and bf16 matmuls" if mfu_peak is None else
                     f"none: no data-sheet peak for {device_name!r} in {mfu_peak}"),
    }


def _model_info(run: Setup) -> dict:
    spec, counts, per_token = run.spec, run.counts, run.per_token
    return {
        "family": spec.name, **spec.describe(run.model_cfg),
        "vocab_size": spec.model_vocab(run.dataset.vocab_size, run.seq_len), "seq_len": run.seq_len,
        "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
        "params_embedding": counts["embedding"], "params_encoder": counts["encoder"], "params_decoder": counts["decoder"],
        "flops_per_token_dense": per_token.dense, "flops_per_token_causal": per_token.causal, "flops_per_token_6n": per_token.six_n,
        "flops_counted": spec.flops_counted, "param_dtype": str(run.param_dtype).removeprefix("torch."),
    }


def _data_info(run: Setup) -> dict:
    dataset = run.dataset
    return {"train_tokens": len(dataset.train), "val_tokens": len(dataset.val), "vocab_size": dataset.vocab_size,
            "val_eval_tokens": int(run.val_windows[:, 1:].size), **dataset.info}


def _precision_info(run: Setup, skipped_steps: int) -> dict:
    """What was in effect, read off the model and the scaler, not the config."""
    mode, scaler = run.mode, run.scaler
    return {
        "mode": mode.name, "param_dtype": str(run.param_dtype).removeprefix("torch."),
        "autocast_dtype": str(mode.autocast).removeprefix("torch.") if mode.autocast else None,
        "matmul_precision": torch.get_float32_matmul_precision(), "grad_scaling": scaler is not None,
        "final_scale": scaler.get_scale() if scaler else None, "skipped_steps": skipped_steps,
        "slow_here": precision.slow_here(mode.name, run.device),
    }


def _parallel_info(run: Setup, per_rank: list[dict]) -> dict:
    layout, p = run.layout, run.parallel
    deg = layout.degrees
    return {
        "strategy": layout.name, "world_size": len(per_rank), "dp": deg.dp, "tp": deg.tp, "pp": deg.pp,
        "backend": torch.distributed.get_backend() if run.multi_rank else None,
        "zero_stage": parallel.ZERO_STAGE[layout.name],
        "schedule": p.get("schedule") if layout.name == "pp" else None,
        "microbatches": int(p["microbatches"]) if layout.name == "pp" else None,
        "bytes_per_param": per_rank[0]["bytes_per_param"],
        "per_rank": per_rank,
    }


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
