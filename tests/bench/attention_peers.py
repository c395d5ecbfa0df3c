"""Our attention variants side by side with the most-used implementations, measured in one run (forward, fp32,
batch 1, 4 heads, head_dim 64), interleaved so machine noise hits both alike.

  performer (256 features) vs performer-pytorch FastAttention with the same projection, n = 4096
  longformer (window 512, blocked, non-causal) vs transformers' LongformerSelfAttention (attention_window 512,
      i.e. 256 keys each side), n = 4096; both sides apply the same Q/K/V projections (HF's own weights), and
      the two outputs are checked to agree; also the speed-up a kernel running at this CPU's measured fp32
      matrix-product rate with no other work would reach (the ceiling for any implementation here)
  longformer (window 512, blocked, causal) vs sdpa's fused flash kernel (causal), n = 2048 .. 16384
  peak tensor memory of performer and longformer (forward), fitted exponent over n = 2048 .. 16384

    pip install -e '.[peers]'                      # performer-pytorch, transformers
    .venv/bin/python -m tests.bench.attention_peers --out results/attention_peers/peers.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from harness.fit import fit_power_law
from harness.measure import cpu_allocated_by, interleaved_medians, matmul_flops_per_s
from models import attention as attention_registry
from models.attention import get_attention
from models.attention.reference import reference, relative_error

CPU = torch.device("cpu")
HEADS, HEAD_DIM = 4, 64


def qkv(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(1, HEADS, n, HEAD_DIM, generator=generator) for _ in range(3)]


def performer_vs_peer(n: int = 4096) -> list[dict]:
    from performer_pytorch import FastAttention
    q, k, v = qkv(n)
    rows = []
    for causal in (True, False):
        ours = get_attention("performer", causal=causal, num_features=256, seed=1)
        ours(q, k, v)  # draws the projection
        peer = FastAttention(dim_heads=HEAD_DIM, nb_features=256, causal=causal)
        peer.projection_matrix.copy_(ours.projection)
        exact = reference(q, k, v, causal=causal)
        with torch.no_grad():
            times = interleaved_medians({"ours": lambda: ours(q, k, v), "peer": lambda: peer(q, k, v)}, CPU,
                                        rounds=5 if causal else 41)
            rows.append({"comparison": "performer vs performer-pytorch", "causal": causal, "seq_len": n,
                         "ours_s": times["ours"], "peer_s": times["peer"], "speedup": times["peer"] / times["ours"],
                         "ours_error": relative_error(ours(q, k, v), exact), "peer_error": relative_error(peer(q, k, v), exact)})
    return rows


def longformer_vs_transformers(n: int = 4096) -> dict:
    from transformers import LongformerConfig
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention
    config = LongformerConfig(hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS, attention_window=[512],
                              attention_probs_dropout_prob=0.0)
    layer = LongformerSelfAttention(config, layer_id=0).eval()
    hidden = torch.randn(1, n, HEADS * HEAD_DIM, generator=torch.Generator().manual_seed(0))
    local = torch.zeros(1, n)
    no = torch.zeros(1, n, dtype=torch.bool)
    ours_attn = get_attention("longformer", causal=False, window=512, impl="blocked")

    def heads(x):
        return x.view(1, n, HEADS, HEAD_DIM).transpose(1, 2)

    def ours():
        out = ours_attn(heads(layer.query(hidden)), heads(layer.key(hidden)), heads(layer.value(hidden)))
        return out.transpose(1, 2).reshape(1, n, HEADS * HEAD_DIM)

    def theirs():
        return layer(hidden, attention_mask=local, is_index_masked=no, is_index_global_attn=no, is_global_attn=False)[0]

    with torch.no_grad():
        agreement = relative_error(ours(), theirs())
        times = interleaved_medians({"ours": ours, "peer": theirs}, CPU, rounds=9)
    # The fastest any implementation could be here: the window's FLOPs and the projections' at this CPU's
    # measured fp32 matrix-product rate, with nothing else (no softmax, no copies).
    needed = attention_registry.flops("longformer", batch=1, heads=HEADS, seq_len=n, head_dim=HEAD_DIM, causal=False,
                                   backward=False, options={"window": 512}) + 3 * 2 * n * (HEADS * HEAD_DIM) ** 2
    floor_s = needed / matmul_flops_per_s(CPU, torch.float32)
    return {"comparison": "longformer vs transformers LongformerSelfAttention", "causal": False, "seq_len": n,
            "ours_s": times["ours"], "peer_s": times["peer"], "speedup": times["peer"] / times["ours"],
            "outputs_relative_difference": agreement, "matmul_bound_s": floor_s,
            "speedup_at_matmul_bound": times["peer"] / floor_s}


def longformer_vs_sdpa(lengths=(2048, 4096, 8192, 16384)) -> list[dict]:
    ours = get_attention("longformer", causal=True, window=512, impl="blocked")
    flash = get_attention("sdpa", causal=True, backend="flash")
    rows = []
    for n in lengths:
        q, k, v = qkv(n)
        with torch.no_grad():
            times = interleaved_medians({"ours": lambda: ours(q, k, v), "peer": lambda: flash(q, k, v)}, CPU,
                                        rounds=5 if n >= 8192 else 9)
        rows.append({"comparison": "longformer (causal, w=512) vs sdpa flash (causal)", "causal": True, "seq_len": n,
                     "ours_s": times["ours"], "peer_s": times["peer"], "speedup": times["peer"] / times["ours"]})
    return rows


def memory_exponents(lengths=(2048, 4096, 8192, 16384)) -> list[dict]:
    rows = []
    for name, options in (("performer", {"num_features": 256}), ("longformer", {"window": 512})):
        attn = get_attention(name, causal=True, **options)
        peaks = []
        for n in lengths:
            q, k, v = qkv(n)
            with torch.no_grad():
                peaks.append(cpu_allocated_by(lambda: attn(q, k, v)).peak)
        slope = fit_power_law(list(lengths), peaks, irreducible=False).alpha * -1
        rows.append({"variant": name, "lengths": list(lengths), "peak_bytes": peaks, "memory_exponent": slope})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    result = {"threads": torch.get_num_threads(), "speed": [], "memory": memory_exponents()}
    for name, measure in (("performer", performer_vs_peer), ("transformers", longformer_vs_transformers)):
        try:
            found = measure()
            result["speed"] += found if isinstance(found, list) else [found]
        except ImportError as error:
            print(f"skipped {name} comparison: {error} (pip install -e '.[peers]')")
    result["speed"] += longformer_vs_sdpa()
    for row in result["speed"]:
        extra = "".join(f"  {k} {row[k]:.4g}" for k in ("ours_error", "peer_error", "outputs_relative_difference",
                                                         "speedup_at_matmul_bound") if k in row)
        print(f"{row['comparison']:<55} causal={row['causal']!s:<5} n={row['seq_len']:<6} ours {row['ours_s'] * 1e3:8.1f} ms"
              f"  peer {row['peer_s'] * 1e3:8.1f} ms  speed-up {row['speedup']:6.2f}x{extra}")
    for row in result["memory"]:
        print(f"memory exponent {row['variant']:<11} {row['memory_exponent']:.3f} over n = {row['lengths'][0]}..{row['lengths'][-1]}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=float))


if __name__ == "__main__":
    main()
