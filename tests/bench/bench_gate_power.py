"""The power study of the kernel gate: how often `harness-bench` (and, for contrast, `make bench-compare` at 10% and
35%) flags an unchanged kernel, and how often it catches a kernel made 2, 3, 5, 10 and 20% slower, on this machine.

Pool: a scratch clone of this repository's HEAD holds one branch per variant: `A` and `A2` (HEAD itself, twice:
two sides that differ in nothing) and one scratch commit per slowdown that adds wasted work to the dense kernel
(models/attention/dense.py recomputes the scores of its first fraction f of query rows and throws them away, the
way a real regression arrives), each in a worktree of its own. The pool then runs round after round; each round
runs one process of every variant's kernel suite (bench.run_suite, as `harness-bench` does) in an order that
rotates from round to round. Every variant runs the same cases (`--select`): what a process ran before a case
changes how fast the case runs (bench.ALLOCATOR_ENV), so the sides must not differ in that.

Analysis: a comparison of P processes a side is the P consecutive rounds of a window (interleaved, as in a real
comparison), slid one round at a time; each case of each window is one kernel comparison. False alarms: A against
A2 (both directions would be the same test), every case; detection: A against each slowdown, the dense forward
cases. A slowdown's true size is measured from the whole pool (median over all its processes against A's).
`make bench-compare` is one process against one baseline process (a neighbouring round's A), failing when the
median is more than 10% (35%) slower. Windows overlap, so the comparisons are not independent: a rate from n of
them is less precise than n independent comparisons would make it.

    .venv/bin/python -m tests.bench.bench_gate_power pool --rounds 24 --select "dense or performer or auto"   # ~21 min
    .venv/bin/python -m tests.bench.bench_gate_power analyse               # seconds
    .venv/bin/python -m tests.bench.bench_gate_power instructions          # ~15 min: callgrind counts of every variant
    python -m tests.bench.bench_gate_power slowed --slowdown 0.05 --out DIR  # a copy of the project, dense made ~5% slower
Writes results/bench_gate/pool.json, then power.json, power.md and power.png/svg; instructions.json (or --out).
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from harness import bench

NOMINAL = (0.02, 0.03, 0.05, 0.10, 0.20)
# Wasted work per unit of slowdown: the recomputed rows skip the causal mask, so f rows cost a little less than f
# of the kernel (calibrated by a first pool; the study reports each variant's measured slowdown, not this guess).
WORK_PER_SLOWDOWN = 1.15
DENSE = "models/attention/dense.py"
ANCHOR = "        scores_bhnn = (q @ k.transpose(-2, -1))"
SLOWED = "dense-"   # the cases the injection slows (their forward; the backward pass is untouched)


def inject(source: str, fraction: float) -> str:
    if ANCHOR not in source:
        raise SystemExit(f"{DENSE} no longer has the line the injection anchors on: {ANCHOR.strip()!r}")
    waste = (f"        extra = round({fraction!r} * q.shape[-2])   # scratch: wasted work, an injected regression\n"
             "        torch.softmax((q[..., :extra, :] @ k.transpose(-2, -1)).float(), dim=-1) @ v\n")
    return source.replace(ANCHOR, waste + ANCHOR, 1)


def git(where: Path, *args: str) -> str:
    done = bench._git(where, *args)
    if done.returncode:
        raise SystemExit(f"git {' '.join(args)} in {where}: {bench._last_line(done.stderr)}")
    return done.stdout


def variants(root: Path, scratch: Path) -> dict[str, Path]:
    """{variant: its worktree}: HEAD twice and one scratch commit per slowdown, in a scratch clone of root."""
    clone = scratch / "clone"
    subprocess.run(["git", "clone", "--quiet", str(root), str(clone)], check=True)
    git(clone, "config", "user.email", "power@study")
    git(clone, "config", "user.name", "power study")
    trees = {}
    for name in ("A", "A2"):
        git(clone, "worktree", "add", "--quiet", "--detach", str(scratch / name), "HEAD")
        trees[name] = scratch / name
    for slowdown in NOMINAL:
        name = f"slow{slowdown:g}"
        git(clone, "worktree", "add", "--quiet", "-b", name, str(scratch / name), "HEAD")
        path = scratch / name / DENSE
        path.write_text(inject(path.read_text(), slowdown * WORK_PER_SLOWDOWN))
        git(scratch / name, "commit", "--quiet", "-am", f"scratch: the dense kernel {slowdown:.0%} slower")
        trees[name] = scratch / name
    return trees


def pool(args) -> None:
    root = Path(git(Path.cwd(), "rev-parse", "--show-toplevel").strip())
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as scratch:
        trees = variants(root, Path(scratch))
        names = list(trees)
        found = {name: [] for name in names}
        seconds = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                side = bench.Side(name, name, trees[name], sys.executable)
                start = time.perf_counter()
                found[name].append(bench.run_suite(side, args.select, args.bench_rounds, Path(scratch) / "out.json",
                                                   args.threads))
                seconds[name].append(time.perf_counter() - start)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {seconds[n][-1]:.1f} s" for n in names), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "pool.json").write_text(json.dumps({
        "commit": git(root, "rev-parse", "HEAD").strip(), "rounds": args.rounds, "bench_rounds": args.bench_rounds,
        "threads": args.threads, "work_per_slowdown": WORK_PER_SLOWDOWN, "process_seconds": seconds,
        "processes": found}))


def verdicts(base: list[dict], head: list[dict], case: str, processes: int, normalized: bool, min_change: float,
             alpha: float) -> list[str]:
    """The verdict of every window of `processes` consecutive rounds."""
    out = []
    for start in range(len(base) - processes + 1):
        window = slice(start, start + processes)
        b = bench.per_process([p[case] for p in base[window]], normalized)
        h = bench.per_process([p[case] for p in head[window]], normalized)
        out.append(bench.compare(b, h, min_change=min_change, alpha=alpha, resamples=10).verdict)
    return out


def single_process_flags(base: list[dict], head: list[dict], case: str, threshold: float) -> list[bool]:
    """`make bench-compare`: each head process against the base process of the round before (its baseline)."""
    return [h[case]["median_s"] / b[case]["median_s"] - 1 > threshold for b, h in zip(base[:-1], head[1:])]


def dispersion(processes: list[dict], case: str) -> dict:
    """Between-process spread of a case: the robust CV (1.4826 MAD / median) of raw and of normalized medians."""
    def cv(x):
        return float(1.4826 * np.median(np.abs(x - np.median(x))) / np.median(x))
    samples = [p[case] for p in processes]
    return {"raw_cv": cv(bench.per_process(samples, False)), "normalized_cv": cv(bench.per_process(samples, True))}


def rate(flags) -> float:
    return float(np.mean(flags)) if len(flags) else float("nan")


def analyse(args) -> None:
    data = json.loads((args.out / "pool.json").read_text())
    found = data["processes"]
    cases = sorted(found["A"][0])
    slowed = [c for c in cases if SLOWED in c and "fwd_bwd" not in c]
    noise = pd.DataFrame([{"case": c, **dispersion(found["A"] + found["A2"], c)} for c in cases])

    def gate(processes, normalized, min_change, alpha):
        alarms = [v != "same" for c in cases
                  for v in verdicts(found["A"], found["A2"], c, processes, normalized, min_change, alpha)]
        detection = {}
        for slowdown in NOMINAL:
            head = found[f"slow{slowdown:g}"]
            detection[f"{slowdown:g}"] = rate([v == "slower" for c in slowed
                                               for v in verdicts(found["A"], head, c, processes, normalized, min_change, alpha)])
        return {"processes": processes, "normalized": normalized, "min_change": min_change, "alpha": alpha,
                "false_alarm_rate": rate(alarms), "comparisons": len(alarms), "detection": detection}

    grid = [gate(p, n, m, a) for p in args.processes for n in (True, False) for m in (0.0, 0.01, 0.02, 0.03)
            for a in (0.01, 0.002) if not (p < 5 and a == 0.01) and not (p < 7 and a == 0.002)]
    measured = {}
    for slowdown in NOMINAL:
        head = found[f"slow{slowdown:g}"]
        measured[f"{slowdown:g}"] = {c: float(np.median([p[c]["median_s"] for p in head])
                                              / np.median([p[c]["median_s"] for p in found["A"]]) - 1) for c in slowed}
    contrast = {}
    for threshold in (0.10, 0.35):
        contrast[f"{threshold:g}"] = {
            "false_alarm_rate": rate([f for c in cases for f in single_process_flags(found["A"], found["A2"], c, threshold)]),
            "detection": {f"{s:g}": rate([f for c in slowed for f in single_process_flags(found["A"], found[f"slow{s:g}"], c, threshold)])
                          for s in NOMINAL}}
    default = next(g for g in grid if (g["processes"], g["normalized"], g["min_change"], g["alpha"])
                   == (args.default_processes, args.default_normalized, args.default_min_change, args.default_alpha))
    by_case = [{"case": c, "nominal": s, "measured": measured[f"{s:g}"][c],
                "detection": rate([v == "slower" for v in verdicts(found["A"], found[f"slow{s:g}"], c, default["processes"],
                                                                   default["normalized"], default["min_change"],
                                                                   default["alpha"])])}
               for c in slowed for s in NOMINAL]
    per_side = np.median([sum(data["process_seconds"][n][r:r + default["processes"]])
                          for n in ("A", "A2") for r in range(data["rounds"] - default["processes"] + 1)])
    power = {"false_alarm_rate": default["false_alarm_rate"], "comparisons": default["comparisons"],
             "detection": default["detection"], "defaults": {k: default[k] for k in ("processes", "normalized", "min_change", "alpha")},
             "measured_slowdown": measured, "detection_by_case": by_case, "default_comparison_seconds": float(2 * per_side),
             "bench_compare": contrast, "grid": grid, "noise": noise.to_dict("records"),
             "pool": {"commit": data["commit"], "rounds": data["rounds"], "bench_rounds": data["bench_rounds"],
                      "threads": data["threads"]}}
    (args.out / "power.json").write_text(json.dumps(power, indent=1))
    figure(power, args.out)
    (args.out / "power.md").write_text(markdown(power))
    print(markdown(power))


def figure(power: dict, out: Path) -> None:
    """Each slowed case's detection against its measured slowdown, from 0 (the false-alarm rate over every case)."""
    from harness import plots
    fig, ax = plots.plt.subplots(figsize=(6.5, 4))
    d = power["defaults"]
    for case, rows in pd.DataFrame(power["detection_by_case"]).groupby("case"):
        rows = rows.sort_values("measured")
        ax.plot([0, *rows["measured"] * 100], [power["false_alarm_rate"], *rows["detection"]], "o-",
                label=f"harness-bench, {case.split('[')[1].rstrip(']')}")
    ax.axhline(0.95, color="grey", lw=0.8, ls=":")
    ax.axhline(0.01, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="measured slowdown of the case (%); 0: unchanged kernels", ylabel="flagged slower (fraction)",
           ylim=(-0.02, 1.02), title=f"harness-bench: {d['processes']} processes a side, min change {d['min_change']:.0%}, "
                                      f"alpha {d['alpha']:g}")
    ax.legend(fontsize=7, loc="center right")
    plots.save(fig, out, "power")


def markdown(power: dict) -> str:
    d = power["defaults"]
    rows = [{"slowdown (nominal)": s, "measured": f"{np.median(list(power['measured_slowdown'][s].values())):.1%}",
             "harness-bench": power["detection"][s],
             **{f"bench-compare {float(t):.0%}": f["detection"][s] for t, f in power["bench_compare"].items()}}
            for s in power["detection"]]
    rows.insert(0, {"slowdown (nominal)": "0 (false alarms)", "measured": "-", "harness-bench": power["false_alarm_rate"],
                    **{f"bench-compare {float(t):.0%}": f["false_alarm_rate"] for t, f in power["bench_compare"].items()}})
    from harness.analysis import markdown_table
    grid = pd.DataFrame([{**{k: g[k] for k in ("processes", "normalized", "min_change", "alpha", "false_alarm_rate")},
                          **{f"detect {s}": v for s, v in g["detection"].items()}} for g in power["grid"]])
    return ("# Kernel gate: false alarms and detection on this machine\n\n" + __doc__.split("\n\n")[1] + "\n\n"
            + __doc__.split("\n\n")[2] + "\n\n"
            + f"Defaults: {d['processes']} processes a side, {'normalized by the reference product' if d['normalized'] else 'raw times'}, "
            f"min change {d['min_change']:.0%}, alpha {d['alpha']:g}; {power['comparisons']} unchanged kernel comparisons; "
            f"one comparison at these defaults of the cases the pool ran takes {power['default_comparison_seconds'] / 60:.1f} min.\n\n"
            + markdown_table(pd.DataFrame(rows).round(4)) + "\n\n## Each slowed case\n\n"
            + markdown_table(pd.DataFrame(power["detection_by_case"]).round(4)) + "\n\n## Every setting tried\n\n"
            + markdown_table(grid.round(4)) + "\n\n## Between-process spread (A and A2 pooled)\n\n"
            + markdown_table(pd.DataFrame(power["noise"]).round(4)) + "\n")


def instructions(args) -> None:
    """Instruction counts (`harness-bench --instructions`): A and A2 over the selection (the noise: how far two
    processes of the same code differ) and each slowdown's dense cases, two variants at a time. A count is all but
    deterministic, so one process a variant is the comparison; judged at the default minimum change."""
    root = Path(git(Path.cwd(), "rev-parse", "--show-toplevel").strip())
    with tempfile.TemporaryDirectory(prefix="bench-gate-") as scratch:
        trees = variants(root, Path(scratch))
        sides = {name: bench.Side(name, name, tree, sys.executable) for name, tree in trees.items()}
        counts, seconds = {}, {}
        slowed = [n for n in sides if n.startswith("slow")]
        for names, select in [(("A", "A2"), args.select), *[(tuple(slowed[i:i + 2]), SLOWED.rstrip("-"))
                                                              for i in range(0, len(slowed), 2)]]:
            start = time.perf_counter()
            counts.update(bench.count_instructions([sides[n] for n in names], select, Path(scratch)))
            seconds[" ".join(names)] = time.perf_counter() - start
            print(f"{', '.join(names)}: {seconds[' '.join(names)]:.0f} s", flush=True)
    noise = {c: counts["A2"][c] / counts["A"][c] for c in counts["A"]}
    threshold = args.default_min_change
    result = {
        "commit": git(root, "rev-parse", "HEAD").strip(), "min_change": threshold, "counts": counts,
        "process_seconds": seconds, "a_a_ratio": noise, "max_a_a_change": max(abs(r - 1) for r in noise.values()),
        "false_alarm_rate": rate([abs(r - 1) >= threshold for r in noise.values()]), "comparisons": len(noise),
        "instructions_ratio": {f"{s:g}": {c: counts[f"slow{s:g}"][c] / counts["A"][c] for c in counts[f"slow{s:g}"]}
                               for s in NOMINAL}}
    result["detection"] = {s: rate([r >= 1 + threshold for c, r in ratios.items() if "fwd_bwd" not in c])
                           for s, ratios in result["instructions_ratio"].items()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "instructions.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: result[k] for k in ("max_a_a_change", "false_alarm_rate", "comparisons", "detection",
                                             "instructions_ratio", "process_seconds")}, indent=1))


def slowed(args) -> None:
    """A copy of this project (its code, not its results or environments) at args.out whose dense kernel does
    args.slowdown more work, for `harness-bench --head DIR` where there is no git (.ci/gpu-check gate)."""
    root, _ = bench.project_root()
    out = args.out.resolve()
    if out == root.resolve() or root.resolve() in out.parents:
        raise SystemExit(f"--out {args.out}: give a directory outside the project (it is replaced)")
    shutil.rmtree(args.out, ignore_errors=True)
    shutil.copytree(root, args.out, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".whl", ".devwork", "results", "multirun", "outputs", "__pycache__", "*.egg-info"))
    path = args.out / DENSE
    path.write_text(inject(path.read_text(), args.slowdown * WORK_PER_SLOWDOWN))
    print(f"{args.out}: {DENSE} does {args.slowdown:.0%} more work (nominal)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["pool", "analyse", "instructions", "slowed"])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--bench-rounds", type=int, default=7)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--select", help="the cases every process runs, as pytest -k (default: the whole suite)")
    parser.add_argument("--processes", type=int, nargs="+", default=[5, 6, 8, 10])
    parser.add_argument("--default-processes", type=int, default=10)
    parser.add_argument("--default-normalized", type=lambda s: s == "true", default=True)
    parser.add_argument("--default-min-change", type=float, default=0.02)
    parser.add_argument("--default-alpha", type=float, default=0.01)
    parser.add_argument("--out", type=Path, default=Path("results/bench_gate"))
    parser.add_argument("--slowdown", type=float, default=0.05, help="slowed: the nominal slowdown of the dense kernel")
    args = parser.parse_args(argv)
    {"pool": pool, "analyse": analyse, "instructions": instructions, "slowed": slowed}[args.step](args)


if __name__ == "__main__":
    main()
