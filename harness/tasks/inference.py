"""task=inference: prefill latency, greedy decode throughput with a KV cache and without one (recomputing the
whole sequence for every new token), the cache's memory against its formula, and the weights' precision.

The prompts are `task.batch_size` windows of real validation text, `task.context` tokens each. The model is
randomly initialised (seeded) unless `task.checkpoint` names a `model.pt` saved by `task=train task.save_model=true`.

model=gpt continues the prompt. model=encdec reads the prompt's first context - 1 tokens and its first sentinel
(span corruption's question "what is hidden here", asked at the end) and writes the answer: the encoder runs once
in prefill, and decoding without the cache reruns the decoder over everything it has written (the encoder's
output is kept, as transformers' generate does). Either way the cache holds context + new_tokens positions.
"""
from __future__ import annotations

import copy
import pickle
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig

from harness import data as data_sources
from harness import compiling, flops, measure, quantize
from harness.plan import attention_options, resolve_model
from harness.parallel import local
from harness.precision import cast_weights
from harness.errors import ConfigError, Unsupported
from harness.tasks.evaluation import evaluate
from models import attention as attention_registry
from models.spec import Examples, ModelSpec


def weights_copy(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The model with its weights in `name`: fp32 as is, bf16 cast, int8/nf4 weight-only quantized (torchao)."""
    if name == "fp32":
        return model
    if name == "bf16":
        return cast_weights(copy.deepcopy(model), torch.bfloat16)
    quantized, _ = quantize.quantized_copy(model, name)
    return quantized


def compute_dtype(model: torch.nn.Module) -> torch.dtype:
    """Activations (and so the cache) follow the token table: fp32 for fp32 and weight-only quantized, bf16 for bf16."""
    return next(m.weight.dtype for m in model.modules() if isinstance(m, torch.nn.Embedding))


@dataclass
class Generation:
    tokens: torch.Tensor               # (batch, new_tokens), greedy
    prefill_s: float
    decode_s: float
    cache: object = None               # the KV cache it filled, when asked to keep it
    logits: torch.Tensor | None = None  # (batch, new_tokens, vocab): what each new token was chosen from, when asked


@torch.no_grad()
def generate(model: torch.nn.Module, spec: ModelSpec, prompt: torch.Tensor, new_tokens: int, *, cache: bool,
             keep_cache: bool = False, keep_logits: bool = False) -> Generation:
    """Greedy decoding of new_tokens after the prompt, with the family's KV cache (holding context + new_tokens
    positions) or recomputing the whole sequence per token."""
    device = prompt.device
    kv = spec.kv_cache(model, prompt.shape[0], prompt.shape[1], new_tokens, compute_dtype(model), device) if cache else None
    start = measure.timer(device)
    sequence, step = spec.decoding(model, prompt, kv)
    logits = step(sequence)[:, -1]
    token = logits.argmax(-1, keepdim=True)
    prefill = measure.timer(device) - start
    tokens, chosen_from = [token], [logits] if keep_logits else None
    start = measure.timer(device)
    for _ in range(new_tokens - 1):
        if cache:
            logits = step(token)[:, -1]
        else:
            sequence = torch.cat([sequence, token], dim=1)
            logits = step(sequence)[:, -1]
        token = logits.argmax(-1, keepdim=True)
        tokens.append(token)
        if keep_logits:
            chosen_from.append(logits)
    decode = measure.timer(device) - start
    return Generation(torch.cat(tokens, dim=1), prefill, decode, kv if keep_cache else None,
                      torch.stack(chosen_from, dim=1) if keep_logits else None)


# How far a cached step's logits may sit from the full forward's, relative to the largest logit: the rounding of the
# compute dtype (the two paths sum the same products in another order), nothing more.
CACHE_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@torch.no_grad()
def cached_logits_error(model: torch.nn.Module, spec: ModelSpec, prompt: torch.Tensor, new_tokens: int) -> float:
    """The cached decode against one full forward over the same tokens (the prompt and what was generated):
    the largest |difference| of the logits each new token was chosen from, over the largest |logit|."""
    generation = generate(model, spec, prompt, new_tokens, cache=True, keep_logits=True)
    sequence, step = spec.decoding(model, prompt, None)
    full = step(torch.cat([sequence, generation.tokens[:, :-1]], dim=1))[:, sequence.shape[1] - 1:]
    return float((generation.logits - full).abs().max() / full.abs().max())


def generation_memory(model: torch.nn.Module, spec: ModelSpec, prompt: torch.Tensor, new_tokens: int) -> measure.Allocation:
    """What the allocator holds for one whole cached generation (CUDA allocator statistics, or the CPU profiler's
    record of every allocation): its peak beyond what was allocated before, and what is still allocated at its end
    with the cache kept alive, which is the cache as allocated, plus anything the generation leaked."""
    kept = []
    held = measure.allocated_by(lambda: kept.append(generate(model, spec, prompt, new_tokens, cache=True, keep_cache=True).cache),
                                prompt.device)
    kept.clear()
    return held


def run(cfg: DictConfig, trained_weights: Callable[[DictConfig], Path]) -> dict:
    """Prefill and decode of the model (its weights random, loaded from task.checkpoint, or trained_weights(cfg) when
    task.train_tokens asks for a trained model), with and without the cache, and each of task.compare_weights."""
    wall_start = time.perf_counter()
    device = measure.device_here(cfg.device)
    check_runnable(cfg, device)
    t = cfg.task
    dataset = data_sources.load(cfg.data)
    model = resolve_model(cfg)
    spec, model_cfg = model.spec, model.config(dataset.vocab_size)
    context, new_tokens, batch = int(t.context), int(t.new_tokens), int(t.batch_size)
    if len(dataset.val) < batch * context + 1:
        raise Unsupported(f"the validation split ({len(dataset.val)} tokens) is too short for "
                          f"task.batch_size={batch} prompts of task.context={context} tokens")
    model, weights_source = load_model(cfg, spec, model_cfg, device, trained_weights)
    prompt = torch.from_numpy(dataset.val[: batch * context].astype("int64").reshape(batch, context)).to(device)
    val_windows = data_sources.validation_windows(dataset.val, int(cfg.model.seq_len), int(t.eval_tokens))
    examples = Examples(spec, dataset.vocab_size, int(cfg.seed))

    def loss_of(m: torch.nn.Module) -> float:
        return evaluate(local(m, device), val_windows, batch_size=8, examples=examples)

    main = weights_copy(model, t.weights)
    compile_info = compiling.prepare(main, bool(cfg.get("compile", False)), device)
    with_cache = timed_generations(main, spec, prompt, new_tokens, int(t.repeats), cache=True)
    recompute = timed_generations(main, spec, prompt, new_tokens, int(t.repeats), cache=False) if t.recompute else None
    metrics = cache_metrics(main, spec, model_cfg, prompt, new_tokens, with_cache, recompute)
    reference_loss = loss_of(model)
    loss = reference_loss if main is model else loss_of(main)
    metrics.update(val_loss=loss, val_loss_change=loss - reference_loss, peak_memory_bytes=metrics.pop("peak_memory_bytes"))
    reference_tokens = with_cache["tokens"] if main is model else generate(model, spec, prompt, new_tokens, cache=True).tokens
    compared = {}
    for name in t.compare_weights or []:
        if name in quantize.METHODS and quantize.unsupported(name):  # that entry says why; the rest is measured
            compared[name] = {"unsupported": quantize.unsupported(name)}
            continue
        other = weights_copy(model, name)
        result = timed_generations(other, spec, prompt, new_tokens, int(t.repeats), cache=True)
        other_loss = reference_loss if other is model else loss_of(other)
        compared[name] = {"weights_bytes": quantize.model_bytes(other), "decode_tokens_per_s": result["decode_tokens_per_s"],
                          "prefill_s": result["prefill_s"], "val_loss": other_loss, "val_loss_change": other_loss - reference_loss,
                          "same_tokens_as_fp32": bool(torch.equal(result["tokens"], reference_tokens))}
    metrics["wall_time_s"] = time.perf_counter() - wall_start
    counts = spec.param_counts(model)
    model_info = {"family": spec.name, **spec.describe(model_cfg), "seq_len": int(cfg.model.seq_len),
                  "params_total": counts["total"], "params_non_embedding": counts["non_embedding"],
                  **{f"params_{side}": counts[side] for side in ("encoder", "decoder")},
                  "weights": t.weights, "cache_dtype": str(compute_dtype(main)).removeprefix("torch."),
                  "weights_source": weights_source}
    if compile_info["compiled"]:
        compile_info["graph_breaks"] = compiling.graph_breaks() - compile_info.pop("graph_breaks_before")
    return {"metrics": metrics, "model_info": model_info, "weights": compared, "compile_info": compile_info,
            "data_info": {"val_tokens": len(dataset.val), **dataset.info}}


def check_runnable(cfg: DictConfig, device: torch.device) -> None:
    """What this machine cannot run of the point: an `unsupported` record before any work."""
    weights = cfg.task.weights
    if weights in quantize.METHODS and quantize.unsupported(weights):  # the point's own weights: nothing to measure
        raise Unsupported(f"task.weights={weights}: {quantize.unsupported(weights)}")
    refused = attention_registry.unsupported(cfg.attention.name, device, torch.float32, **attention_options(cfg))
    if refused:
        raise Unsupported(f"attention={cfg.attention.name}: {refused}")


def load_model(cfg: DictConfig, spec: ModelSpec, model_cfg, device: torch.device,
               trained_weights: Callable[[DictConfig], Path]) -> tuple[torch.nn.Module, str]:
    """The model in eval mode and where its weights came from: random (seeded), task.checkpoint, or trained here."""
    t = cfg.task
    torch.manual_seed(int(cfg.seed))
    model = spec.build(model_cfg).to(device).eval()
    if t.checkpoint:
        try:
            model.load_state_dict(torch.load(t.checkpoint, map_location=device, weights_only=True))
        except (pickle.UnpicklingError, EOFError):
            raise ConfigError(f"task.checkpoint={t.checkpoint!r} is not a file torch.save wrote (task=train "
                              "task.save_model=true writes model.pt)") from None
        except torch.OutOfMemoryError:
            raise
        except (RuntimeError, TypeError) as error:  # another model's weights, or a torch file of something else
            raise ConfigError(f"task.checkpoint={t.checkpoint!r} holds no weights of this model: "
                              f"{' '.join(str(error).split())[:240]}") from None
        return model, str(t.checkpoint)
    if t.train_tokens:
        path = trained_weights(cfg)
        model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
        return model, f"trained here on {float(t.train_tokens):.3g} tokens (task=train defaults; cached at {path})"
    return model, "random (seeded)"


def timed_generations(model: torch.nn.Module, spec: ModelSpec, prompt: torch.Tensor, new_tokens: int, repeats: int, *,
                      cache: bool) -> dict:
    """Medians over `repeats` generations after a warm-up at the measured shape (first-call allocations, dispatch)."""
    generate(model, spec, prompt, new_tokens, cache=cache)
    runs = [generate(model, spec, prompt, new_tokens, cache=cache) for _ in range(repeats)]
    prefill = statistics.median(r.prefill_s for r in runs)
    decode = statistics.median(r.decode_s for r in runs)
    batch, context = prompt.shape
    steps = max(1, new_tokens - 1) * batch
    return {"tokens": runs[0].tokens, "prefill_s": prefill, "prefill_tokens_per_s": batch * context / prefill,
            "decode_s": decode, "decode_tokens_per_s": steps / decode, "decode_ms_per_token": 1e3 * decode / max(1, new_tokens - 1)}


def cache_metrics(model: torch.nn.Module, spec: ModelSpec, model_cfg, prompt: torch.Tensor, new_tokens: int,
                  with_cache: dict, recompute: dict | None) -> dict:
    """The speeds with and without the cache, whether the cached logits are the full forward's, and the cache's bytes
    as measured against the family's formula."""
    batch, context = prompt.shape
    device = prompt.device
    dtype = compute_dtype(model)
    element = torch.finfo(dtype).bits // 8
    # the family's cache formula; a custom module's cache is known only as measured
    shape = {**spec.cache_shape(model_cfg), "batch": batch, "bytes_per_element": element} if spec.cache_shape else None
    weights_bytes = quantize.model_bytes(model)
    cache_formula = flops.kv_cache_bytes(context=context + new_tokens, **shape) if shape else None  # encdec: cross + self
    logits_error = cached_logits_error(model, spec, prompt, new_tokens)
    # One whole cached generation under the allocator's eye; the device's peak counter covers exactly it.
    measure.reset_peak_memory(device)
    memory = generation_memory(model, spec, prompt, new_tokens)
    peak_memory = measure.peak_memory_bytes(device)
    return {
        "prefill_s": with_cache["prefill_s"], "prefill_tokens_per_s": with_cache["prefill_tokens_per_s"],
        "decode_tokens_per_s": with_cache["decode_tokens_per_s"], "decode_ms_per_token": with_cache["decode_ms_per_token"],
        "decode_tokens_per_s_recompute": recompute["decode_tokens_per_s"] if recompute else None,
        "decode_ms_per_token_recompute": recompute["decode_ms_per_token"] if recompute else None,
        "cache_speedup": with_cache["decode_tokens_per_s"] / recompute["decode_tokens_per_s"] if recompute else None,
        "cache_logits_error": logits_error,
        "cache_logits_tolerance": CACHE_TOLERANCE[dtype],
        "cache_matches_recompute": logits_error <= CACHE_TOLERANCE[dtype],
        "same_tokens_as_recompute": bool(torch.equal(with_cache["tokens"], recompute["tokens"])) if recompute else None,
        "kv_cache_bytes": memory.held,
        "generation_peak_bytes": memory.peak,
        "kv_cache_bytes_formula": cache_formula,
        "weights_bytes": weights_bytes,
        "cache_exceeds_weights_at_context": (flops.context_where_cache_exceeds(weights_bytes, **shape) if shape else
                                             weights_bytes / (memory.held / (context + new_tokens))),
        "peak_memory_bytes": peak_memory,
    }
