"""Inference costs: latency and memory against context length, the KV cache against its formula, and weight precision.

Sweep: conf/study/inference.yaml (task=inference over context and batch). The cache formula and the context at
which the cache outgrows the weights come from harness/flops.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from harness import plots
from harness.analysis import markdown_table


MODELS = {"gpt": "decoder-only GPT",
          "encdec": "T5-style encoder-decoder (the prompt is encoded once; its cache is the decoder's self-attention "
                    "keys and values plus each decoder layer's cross-attention keys and values of the encoder's output, "
                    "context + new tokens positions in all)"}


def measured(df: pd.DataFrame) -> pd.DataFrame:
    return df[(df["status"] == "ok") & (df["task.name"] == "inference")]


def kv_heads(ok: pd.DataFrame) -> pd.Series | None:
    """Each point's key-value heads, for a family that records them (grouped-query attention), else None."""
    if "model_info.n_kv_head" not in ok.columns or ok["model_info.n_kv_head"].isna().any():
        return None
    return ok["model_info.n_kv_head"].astype(int)


def points(df: pd.DataFrame) -> pd.DataFrame:
    ok = measured(df)
    if ok.empty:
        return pd.DataFrame()
    heads = kv_heads(ok)
    keys = (["kv_heads"] if heads is not None else []) + ["batch", "context"]
    return pd.DataFrame({
        **({"kv_heads": heads} if heads is not None else {}),
        "batch": ok["task.batch_size"].astype(int), "context": ok["task.context"].astype(int),
        "prefill_s": ok["metrics.prefill_s"], "decode_ms_per_token": ok["metrics.decode_ms_per_token"],
        "decode_ms_per_token_recompute": ok["metrics.decode_ms_per_token_recompute"],
        "decode_tokens_per_s": ok["metrics.decode_tokens_per_s"],
        "decode_tokens_per_s_recompute": ok["metrics.decode_tokens_per_s_recompute"],
        "cache_speedup": ok["metrics.cache_speedup"], "cache_logits_error": ok["metrics.cache_logits_error"],
        "same_tokens": ok["metrics.same_tokens_as_recompute"],
        "kv_cache_mb": ok["metrics.kv_cache_bytes"] / 1e6, "kv_cache_formula_mb": ok["metrics.kv_cache_bytes_formula"] / 1e6,
        "generation_peak_mb": ok["metrics.generation_peak_bytes"] / 1e6,
        "weights_mb": ok["metrics.weights_bytes"] / 1e6,
        "cache_exceeds_weights_at": ok["metrics.cache_exceeds_weights_at_context"],
    }).sort_values(keys, ascending=[k != "kv_heads" for k in keys]).reset_index(drop=True)


def attention_kind(kv: int, n_head: int) -> str:
    return "MHA" if kv == n_head else "MQA" if kv == 1 else f"GQA ({kv} groups)"


def kv_heads_section(table: pd.DataFrame, n_head: int, out: Path) -> tuple[list[str], dict]:
    """Multi-head, grouped-query and multi-query attention side by side: cache bytes, decode speed with the cache,
    and where the cache outgrows the weights, per key-value head count."""
    table = table.assign(attention=[attention_kind(kv, n_head) for kv in table["kv_heads"]])
    kv_heads_costs(table, out)
    largest = table["context"].max()
    at = table[table["context"] == largest]
    mha = at[at["kv_heads"] == n_head].set_index("batch")
    rows = [{"attention": r.attention, "kv_heads": r.kv_heads, "batch": r.batch, "context": r.context,
             "kv_cache_mb": r.kv_cache_mb, "cache_vs_mha": r.kv_cache_mb / mha.loc[r.batch, "kv_cache_mb"] if r.batch in mha.index else None,
             "decode_tokens_per_s": r.decode_tokens_per_s,
             "speed_vs_mha": r.decode_tokens_per_s / mha.loc[r.batch, "decode_tokens_per_s"] if r.batch in mha.index else None,
             "weights_mb": r.weights_mb, "cache_exceeds_weights_at": r.cache_exceeds_weights_at} for r in at.itertuples()]
    summary = pd.DataFrame(rows)
    fits = {"n_head": n_head, "at_context": int(largest),
            "by_kv_heads": summary.drop(columns=["attention"]).to_dict(orient="records")}
    text = ("## Key-value heads: multi-head, grouped-query, multi-query\n\n"
            f"{n_head} query heads; the cache holds the key-value heads only, so it shrinks by n_head / kv_heads. "
            f"At context {largest:,} (cache_vs_mha and speed_vs_mha against multi-head attention at the same batch; "
            "cache_exceeds_weights_at: cached positions at which the cache holds as many bytes as that model's weights, "
            "which shrink too, as the key and value projections narrow):\n\n" + markdown_table(summary)
            + "\n\n![KV cache and decode speed by key-value heads](inference_kv_heads.png)")
    return [text], fits


def weights_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per weight precision: bytes, decode speed with the cache (median over the sweep's points), validation loss."""
    ok = measured(df)
    rows = []
    for name in ("fp32", "bf16", "int8", "nf4"):
        if name == "fp32":
            part = ok.assign(**{"weights.fp32.weights_bytes": ok["metrics.weights_bytes"],
                                "weights.fp32.decode_tokens_per_s": ok["metrics.decode_tokens_per_s"],
                                "weights.fp32.val_loss": ok["metrics.val_loss"], "weights.fp32.val_loss_change": 0.0,
                                "weights.fp32.same_tokens_as_fp32": True})
        elif f"weights.{name}.weights_bytes" in ok.columns:
            part = ok[ok[f"weights.{name}.weights_bytes"].notna()]
        else:
            continue
        for (batch, context), row in part.set_index(["task.batch_size", "task.context"]).iterrows():
            rows.append({"weights": name, "batch": int(batch), "context": int(context),
                         "weights_mb": row[f"weights.{name}.weights_bytes"] / 1e6,
                         "decode_tokens_per_s": row[f"weights.{name}.decode_tokens_per_s"],
                         "val_loss": row[f"weights.{name}.val_loss"], "val_loss_change": row[f"weights.{name}.val_loss_change"],
                         "same_tokens_as_fp32": bool(row[f"weights.{name}.same_tokens_as_fp32"])})
    return pd.DataFrame(rows)


def unmeasured_weights(ok: pd.DataFrame) -> dict[str, str]:
    """The compared weight precisions this machine could not measure, and why (torchao absent, say)."""
    reasons = {}
    for column in sorted(c for c in ok.columns if c.startswith("weights.") and c.endswith(".unsupported")):
        said = ok[column].dropna().unique()
        if len(said):
            reasons[column.split(".")[1]] = "; ".join(map(str, said))
    return reasons


def analyse(df: pd.DataFrame, out: Path) -> list[str]:
    table = points(df)
    if table.empty:
        return ["No inference measurement finished ok."]
    weights = weights_table(df)
    inference_costs(table, out)
    ok = measured(df)
    first = ok.iloc[0]
    at_2k = table[table["context"] == 2048]
    summary = weights.groupby("weights", sort=False).agg(
        weights_mb=("weights_mb", "first"), decode_tokens_per_s_median=("decode_tokens_per_s", "median"),
        val_loss=("val_loss", "first"), val_loss_change=("val_loss_change", "first"),
        same_tokens_as_fp32=("same_tokens_as_fp32", "mean")).reset_index() if not weights.empty else weights
    if not summary.empty:
        summary["speed_vs_fp32"] = summary["decode_tokens_per_s_median"] / summary.loc[summary["weights"] == "fp32", "decode_tokens_per_s_median"].iloc[0]
    by = ["kv_heads", "batch"] if "kv_heads" in table.columns else ["batch"]
    crossover = table.groupby(by)["cache_exceeds_weights_at"].first().reset_index()
    formula_error = float(np.max(np.abs(table["kv_cache_mb"] / table["kv_cache_formula_mb"] - 1)))
    heads_text, heads_fits = (kv_heads_section(table, int(ok["model_info.n_head"].iloc[0]), out)
                              if "kv_heads" in table.columns and table["kv_heads"].nunique() > 1 else ([], {}))
    (out / "fits.json").write_text(json.dumps({
        "cache_speedup_at_2048": at_2k[[*by, "cache_speedup"]].to_dict(orient="records"),
        "cache_exceeds_weights_at": crossover.to_dict(orient="records"),
        "kv_cache_max_relative_error_vs_formula": formula_error,
        **({"kv_heads": heads_fits} if heads_fits else {})}, indent=1, default=float))
    family = str(first.get("model_info.family", "gpt"))
    sizes = sorted(set(ok["model_info.params_total"].astype(int)))
    parameters = f"{sizes[0]:,}" if len(sizes) == 1 else f"{sizes[0]:,} to {sizes[-1]:,}"
    source = str(first["model_info.weights_source"])
    weights_note = f"weights {source}" + ("; the validation-loss changes of bf16/int8/nf4 are those of an untrained "
                                          "model (set task.train_tokens or task.checkpoint)" if source.startswith("random") else "")
    return [
        f"Device: {first['env.device_name']} ({first['env.device']}). Model: {MODELS.get(family, family)}, "
        f"{int(first['model_info.n_layer'])} layers{' per stack' if family == 'encdec' else ''}, "
        f"d_model {int(first['model_info.d_model'])}, {int(first['model_info.n_head'])} heads of {int(first['model_info.head_dim'])}"
        f"{' (key-value heads: ' + ', '.join(map(str, sorted(table['kv_heads'].unique(), reverse=True))) + ')' if 'kv_heads' in table.columns else ''}, "
        f"{first['model_info.positions']} positions, {parameters} parameters; {weights_note}. "
        f"Greedy decoding of {int(first['task.new_tokens'])} tokens after a prompt of real validation text; medians of "
        f"{int(first['task.repeats'])} generations.",
        "## Latency, decode speed and the KV cache\n\nkv_cache_mb is measured: what a whole cached generation still "
        "holds at the allocator when it ends, its cache alive (CUDA allocator statistics, or the CPU profiler's record of "
        "every allocation), so a cache allocated twice or leaking would show; kv_cache_formula_mb is 2 x layers x "
        "kv_heads x head_dim x (context + new tokens) x batch x bytes; generation_peak_mb is the generation's peak "
        "beyond the weights (the cache and the prompt's activations). cache_logits_error: the cached decode's logits "
        "against one full forward over the same tokens, over the largest logit; same_tokens: greedy decoding with "
        "the cache produced exactly the tokens of recomputing.\n\n"
        + markdown_table(table),
        "The cache holds as many bytes as the weights from "
        f"{', '.join(f'{r.cache_exceeds_weights_at:,.0f} cached positions (' + (f'{r.kv_heads} key-value heads, ' if 'kv_heads' in by else '') + f'batch {r.batch})' for r in crossover.itertuples())}. "
        f"The measured cache is within {formula_error:.2%} of the formula at every point.",
        *heads_text,
        *(["## Weight precision\n\nDecode speed with the cache, median over the sweep's points; validation loss on "
           "model.seq_len windows.\n\n" + markdown_table(summary)] if len(summary) > 1 else []),
        *[f"Weights {name} not measured here: {why}" for name, why in unmeasured_weights(ok).items()],
        "![latency vs context](inference_latency.png)\n\n![KV cache memory vs context](inference_memory.png)",
    ]


def inference_costs(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """Decode time per token with and without the KV cache, and prefill time, against context (log-log); and the
    cache's measured memory against its formula, with the weights' bytes for scale."""
    sns.set_theme(style="whitegrid")
    paths = []
    keys = [key for key in ("kv_heads", "batch") if key in table.columns]   # a sweep over key-value heads: a line each
    contexts = sorted(table["context"].unique())   # every context measured gets its tick

    def lines():
        for values, group in table.groupby(keys):
            named = dict(zip(keys, values if isinstance(values, tuple) else (values,)))
            yield (f"{named['kv_heads']} kv heads, " if "kv_heads" in named else "") + f"batch {named['batch']}", group

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for (name, group), colour in zip(lines(), sns.color_palette("colorblind")):
        ax.plot(group["context"], group["decode_ms_per_token"], "o-", color=colour, label=f"decode, KV cache ({name})")
        ax.plot(group["context"], group["decode_ms_per_token_recompute"], "s--", color=colour, label=f"decode, recompute ({name})")
        ax.plot(group["context"], group["prefill_s"] * 1e3, "^:", color=colour, alpha=0.7, label=f"prefill, whole prompt ({name})")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="milliseconds", title="Latency against context",
           xticks=contexts)
    ax.legend(fontsize=7)
    paths += plots.save(fig, out_dir, "inference_latency")

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    for (name, group), colour in zip(lines(), sns.color_palette("colorblind")):
        ax.plot(group["context"], group["kv_cache_formula_mb"], "-", color=colour, label=f"formula ({name})")
        ax.plot(group["context"], group["kv_cache_mb"], "o", color=colour, label=f"measured ({name})")
    ax.axhline(table["weights_mb"].max(), color="black", linestyle="--", label="weights")
    ax.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="MB", title="KV cache memory against context",
           xticks=contexts)
    ax.legend(fontsize=7)
    paths += plots.save(fig, out_dir, "inference_memory")
    return paths


def kv_heads_costs(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The KV cache's measured bytes and decode speed with the cache against context, one line per attention kind
    (multi-head, grouped-query, multi-query), one marker per batch; each model's weights for scale."""
    sns.set_theme(style="whitegrid")
    fig, (memory, speed) = plt.subplots(1, 2, figsize=(11, 4.4))
    kinds = list(dict.fromkeys(table["attention"]))
    for kind, colour in zip(kinds, sns.color_palette("colorblind")):
        for (batch, group), marker in zip(table[table["attention"] == kind].groupby("batch"), "os^D"):
            memory.plot(group["context"], group["kv_cache_mb"], marker + "-", color=colour, label=f"{kind}, batch {batch}")
            speed.plot(group["context"], group["decode_tokens_per_s"], marker + "-", color=colour, label=f"{kind}, batch {batch}")
        memory.axhline(table.loc[table["attention"] == kind, "weights_mb"].iloc[0], color=colour, linestyle=":", alpha=0.8)
    contexts = sorted(table["context"].unique())
    memory.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="MB",
               title="KV cache (measured); dotted: each model's weights", xticks=contexts)
    speed.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="tokens / s", title="Decode with the KV cache",
              xticks=contexts)
    memory.legend(fontsize=7)
    return plots.save(fig, out_dir, "inference_kv_heads")
