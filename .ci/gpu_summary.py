"""The table that ends .ci/gpu-check: each step, its status, its seconds and its headline number, read from what the
step wrote under results/gpu/<device>/<step>/. Exits 1 when a step did not finish ok.

    python .ci/gpu_summary.py results/gpu/NVIDIA_H200 training:ok:81 attention:ok:52 ...
"""
import json
import re
import sys
from pathlib import Path

import pandas as pd


def statuses(step_dir: Path) -> str:
    table = pd.read_csv(step_dir / "report" / "results.csv")
    return ", ".join(f"{n} {status}" for status, n in table["status"].value_counts().items())


def training(d: Path) -> str:
    fits = json.loads((d / "report" / "fits.json").read_text())
    best = ", ".join(f"{b.get('precision', 'bf16')} {b['mode']} {b['mfu']:.1%} ({b['mfu_dense']:.1%} dense) MFU"
                     for b in fits["best"])
    faster = "; ".join(f"{s['attention']}, {s.get('precision', 'bf16')}: compiled {s['compiled_over_eager']:.2f}x eager"
                       for s in fits["compiled_over_eager"])
    return f"{best}; {faster}"


def attention(d: Path) -> str:
    lines = [p.read_text().strip().splitlines()[-1] for p in (d / "pytest.log", d / "pytest_gpu.log") if p.exists()]
    return " | ".join(re.sub(r"=+", "", line).strip() for line in lines)


def precision(d: Path) -> str:
    fits = json.loads((d / "report" / "fits.json").read_text())
    fast = [f"{m['mode']} {m['speed_vs_fp32']:.2f}x" for m in fits["modes"] if m["status"] == "ok" and m["mode"] != "fp32"]
    return f"{statuses(d)}; tokens/s against fp32: {', '.join(fast)}"


def inference(d: Path) -> str:
    fits = json.loads((d / "report" / "fits.json").read_text())
    speedups = ", ".join(f"batch {p['batch']} {p['cache_speedup']:.2f}x" for p in fits["cache_speedup_at_2048"])
    return f"{statuses(d)}; KV cache against recompute at 2048: {speedups}"


def scaling(d: Path) -> str:
    fits = json.loads((d / "report" / "fits.json").read_text())
    k = ", ".join(f"{e['variant']} {e['k_time']:.2f}" for e in fits["exponents"] if e["mode"] == "fwd_bwd" and e.get("k_time") is not None)
    return f"{statuses(d)}; time ~ n^k, fwd+bwd: {k}"


def kernels(d: Path) -> str:
    fits = json.loads((d / "report" / "kernels.json").read_text())
    return "; ".join(f"{'causal' if b['causal'] else 'full'}: {b['best']} {b['fraction_of_matmul']:.0%} of matmul"
                     for b in fits["best"])


def gate(d: Path) -> str:
    same = json.loads((d / "same.json").read_text())["cases"]
    alarms = [c for c in same if c["verdict"] != "same"]
    slowed = [c for c in json.loads((d / "slower.json").read_text())["cases"]
              if "[dense-" in c["name"] and c["name"].endswith("-fwd]")]
    caught = [c for c in slowed if c["verdict"] == "slower"]
    ratios = ", ".join(f"{c['ratio']:.3f}" for c in slowed)
    return (f"A/A: {len(alarms)} of {len(same)} cases flagged; dense made slower (ratios {ratios}): "
            f"{len(caught)} of {len(slowed)} forward cases caught")


HEADLINES = {"training": training, "attention": attention, "precision": precision, "inference": inference,
             "scaling": scaling, "kernels": kernels, "gate": gate}


def main(root: str, steps: list[str]) -> int:
    rows, failed = [], False
    for entry in steps:
        step, status, seconds = entry.split(":")
        try:
            headline = HEADLINES[step](Path(root) / step)
        except Exception as error:  # a step that wrote nothing to read a headline from
            headline = f"(no headline: {type(error).__name__}: {error})"
        failed |= status != "ok"
        rows.append((step, status, seconds, headline))
    width = max(len(r[0]) for r in rows) if rows else 4
    print(f"\n{'step':<{width}}  status   seconds  headline")
    for step, status, seconds, headline in rows:
        print(f"{step:<{width}}  {status:<8} {seconds:>7}  {headline}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
