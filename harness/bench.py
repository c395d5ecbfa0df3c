"""`harness-bench --base REV [--head REV] [-k EXPR] [--json FILE]`: the kernel suite timed on two revisions (or
two Python environments, `--base-python PATH`) on this machine, in alternating processes, and judged case by case.

Each revision is checked out into a worktree of its own and its processes import its code (PYTHONPATH), so the
two sides time different code where they differ. A side may also be a directory holding a copy of the project
(`--base DIR`, `--head DIR`), timed as it is: this needs no git, as on a machine the project was copied to. The
defaults (10 processes a side, times over the reference product, alpha 0.01, a 2% floor) come from the power study
in results/bench_gate/ (tests/bench/bench_gate_power.py): on a 2-core shared VM they flagged none of 270 unchanged
kernel comparisons and caught a ~10% slowdown 98% of the time, a ~7% one 58%; 5% is below what 10 processes can see
through a 3-5% spread between processes.

A comparison's unit of evidence is a process. Each side's suite runs in several processes, alternating with the
other side's (A B B A ...), and each process's median time of a case is one sample. The rounds inside one process
share its state (its allocator, its caches, the machine's load at that moment), so they are not independent:
their spread understates the spread between processes, which is the noise a comparison has to see through.

Per case, from the two sides' per-process medians:
- ratio: head's median over base's (above 1: head is slower);
- a 95% interval of that ratio from a bootstrap over processes (each side's processes resampled with replacement);
- p: the two-sided Mann-Whitney U test of the two sets of medians (asv's test; Google Benchmark's compare.py
  uses it too), exact for the small samples a comparison has;
- verdict: `slower` or `faster` only when p < alpha and the ratio is beyond the minimum change (both, as asv
  asks); `same` otherwise. The interval is reported, not voted: at p < alpha it excludes 1 all but always.

`--instructions` (CPU, valgrind) adds callgrind's instruction counts at the suite's smallest shape: a case the
times call `same` is `slower` (`faster`) when its count grew (shrank) by the minimum change. Counts of the same code
differ by under 1e-4 between processes, so a 5% slowdown that adds work is seen through any timing noise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

@dataclass(frozen=True)
class Comparison:
    base_median_s: float
    head_median_s: float
    ratio: float
    low: float
    high: float
    p_value: float
    verdict: str


def compare(base: Sequence[float], head: Sequence[float], *, min_change: float, alpha: float,
            resamples: int = 2000, seed: int = 0) -> Comparison:
    """base, head: one median time per process of each side. min_change: the smallest slowdown (0.05 = 5%) that
    counts; a speed-up counts from 1 / (1 + min_change). alpha: the test's significance level."""
    a, b = np.asarray(base, dtype=float), np.asarray(head, dtype=float)
    if min(len(a), len(b)) < 2:
        raise ValueError(f"a comparison needs at least 2 processes a side, got {len(a)} and {len(b)}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b)) and np.all(a > 0) and np.all(b > 0)):
        raise ValueError("every time must be a positive number of seconds")
    ratio = float(np.median(b) / np.median(a))
    p_value = float(stats.mannwhitneyu(b, a, alternative="two-sided", method="auto").pvalue)
    rng = np.random.default_rng(seed)
    resampled = (np.median(b[rng.integers(0, len(b), (resamples, len(b)))], axis=1)
                 / np.median(a[rng.integers(0, len(a), (resamples, len(a)))], axis=1))
    low, high = (float(v) for v in np.percentile(resampled, [2.5, 97.5]))
    significant = p_value < alpha
    if significant and ratio >= 1 + min_change:
        verdict = "slower"
    elif significant and ratio <= 1 / (1 + min_change):
        verdict = "faster"
    else:
        verdict = "same"
    return Comparison(float(np.median(a)), float(np.median(b)), ratio, low, high, p_value, verdict)


# --- two sides, one machine: worktrees or environments, alternating processes ---------------------------------

SUITE = "tests/bench/test_attention_kernels.py"
# glibc's malloc raises its mmap threshold as large blocks are freed, so whether a 16 MB score matrix is mapped
# afresh (page faults on every call) or reused from the heap depends on what the process ran before: measured here,
# dense attention at 1024 tokens took 15 ms in some processes and 32 ms in others of the same code. A fixed threshold
# takes that state out of every process (15-19 ms in all).
ALLOCATOR_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31)}


class BenchError(Exception):
    """Bad input or a side that cannot run: one line, exit status 2."""


@dataclass(frozen=True)
class Side:
    name: str      # base or head
    label: str     # the revision, or the working tree, and the interpreter
    root: Path     # the code it imports
    python: str


def _git(root: Path, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    except FileNotFoundError:   # no git on this machine: as if outside a repository
        return subprocess.CompletedProcess(["git", *args], 127, "", "git: command not found")


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def project_root() -> tuple[Path, bool]:
    """The project the comparison runs in (its git top level, or the working directory) and whether git knows it."""
    top = _git(Path.cwd(), "rev-parse", "--show-toplevel")
    root = Path(top.stdout.strip()) if top.returncode == 0 else Path.cwd()
    if not (root / SUITE).is_file():
        raise BenchError(f"{root} holds no kernel suite ({SUITE}): run harness-bench in the project")
    return root, top.returncode == 0


def side(name: str, given: str | None, root: Path, in_git: bool, where: Path, worktrees: list[Path]) -> Side:
    """`given` as one side: a directory holding the project (timed as it is), a revision (checked out into a
    worktree at `where`, appended to `worktrees`), or None: the working tree."""
    if given is None:
        return Side(name, f"working tree under {sys.executable}", root, sys.executable)
    if Path(given).is_dir():
        if not (Path(given) / SUITE).is_file():
            raise BenchError(f"--{name} {given!r} is a directory without the kernel suite ({SUITE})")
        return Side(name, f"directory {Path(given).resolve()}", Path(given).resolve(), sys.executable)
    if not in_git:
        raise BenchError(f"--{name} {given!r}: {root} is not inside a git repository, so a side must be a directory")
    worktrees.append(checkout(root, given, where))
    return Side(name, given, worktrees[-1], sys.executable)


def checkout(root: Path, revision: str, where: Path) -> Path:
    """`revision` checked out into its own worktree at `where` (detached)."""
    if _git(root, "rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").returncode:
        raise BenchError(f"{revision!r} is not a revision of {root}")
    added = _git(root, "worktree", "add", "--detach", "--quiet", str(where), revision)
    if added.returncode:
        raise BenchError(f"cannot check {revision!r} out: {_last_line(added.stderr)}")
    return where


def _suite(side: Side, select: str | None, out: Path, env: dict, prefix: Sequence[str] = ()) -> subprocess.Popen:
    """One process of `side`'s kernel suite, started, writing pytest-benchmark's JSON to `out`."""
    command = [*prefix, side.python, "-m", "pytest", "-q", "-p", "no:cacheprovider", SUITE, "--benchmark-only",
               f"--benchmark-json={out}", *(["-k", select] if select else [])]
    # the side's own code first; what the caller's PYTHONPATH adds (e.g. packages unpacked beside an image) after it
    python_path = os.pathsep.join([str(side.root), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.Popen(command, cwd=side.root, env={**os.environ, **ALLOCATOR_ENV, "PYTHONPATH": python_path, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _benchmarks(side: Side, process: subprocess.Popen, select: str | None, out: Path, none_ok: bool = False) -> list[dict]:
    output, _ = process.communicate()
    if process.returncode == 5 and none_ok:
        return []
    if process.returncode == 5:
        raise BenchError(f"-k {select!r} selects no case of {SUITE}")
    if process.returncode:
        raise BenchError(f"the kernel suite failed on the {side.name} side ({side.label}): {_last_line(output)}")
    found = json.loads(out.read_text())["benchmarks"]
    if not found and not none_ok:
        raise BenchError(f"the kernel suite timed no case on the {side.name} side ({side.label}); -k {select!r}")
    return found


def run_suite(side: Side, select: str | None, rounds: int, out: Path, threads: int | None = None) -> dict[str, dict]:
    """One process of `side`'s kernel suite: {case: {"median_s", "reference_s", "flops"}} from pytest-benchmark's
    JSON (median_s: the CUDA events' median where the suite timed with them; reference_s: the median of the
    reference product timed before each round in the same process)."""
    env = {"BENCH_ROUNDS": str(rounds), **({"BENCH_THREADS": str(threads)} if threads else {})}
    found = _benchmarks(side, _suite(side, select, out, env), select, out)
    return {b["name"]: {"median_s": b["extra_info"].get("event_median_s", b["stats"]["median"]),
                        "reference_s": b["extra_info"].get("reference_s"), "flops": b["extra_info"].get("flops")}
            for b in found}


def count_instructions(sides: Sequence[Side], select: str | None, scratch: Path) -> dict[str, dict[str, int]]:
    """{side name: {case: instructions of one call}}: each side's suite in one process under callgrind, on one
    thread, at the suite's smallest shape (tests/bench/test_attention_kernels.py says why); empty where the
    selection has no case there. The sides run at once: a count does not depend on what else the machine runs."""
    if shutil.which("valgrind") is None:
        raise BenchError("--instructions needs valgrind on PATH (callgrind counts the instructions)")
    running = []
    for side in sides:
        where = scratch / f"callgrind-{side.name}"
        where.mkdir()
        env = {"BENCH_ROUNDS": "1", "BENCH_THREADS": "1", "OMP_NUM_THREADS": "1",
               "BENCH_CALLGRIND_OUT": str(where / "callgrind.out")}
        valgrind = ["valgrind", "--tool=callgrind", "--collect-atstart=no",
                    f"--callgrind-out-file={where / 'callgrind.out'}.%p"]
        running.append((side, _suite(side, select, where / "suite.json", env, valgrind), where / "suite.json"))
    try:
        return {side.name: {b["name"]: b["extra_info"]["instructions"]
                            for b in _benchmarks(side, process, select, out, none_ok=True)
                            if "instructions" in b["extra_info"]}
                for side, process, out in running}
    finally:
        for _, process, _ in running:
            if process.poll() is None:
                process.kill()
                process.wait()


def alternate(sides: tuple[Side, Side], processes: int) -> list[Side]:
    """A B B A A B ...: each pair swaps who goes first, so drift over the run hits both sides alike."""
    order = []
    for i in range(processes):
        order += list(sides) if i % 2 == 0 else list(reversed(sides))
    return order


def measure_sides(sides: tuple[Side, Side], processes: int, rounds: int, select: str | None,
                  scratch: Path, threads: int | None = None, echo=print) -> dict[str, dict[str, list]]:
    """{side name: {case: [one run_suite result per process]}}, and each case's FLOPs under "_flops"."""
    found = {side.name: {} for side in sides}
    flops: dict[str, float] = {}
    order = alternate(sides, processes)
    for i, side in enumerate(order):
        start = time.perf_counter()
        for case, result in run_suite(side, select, rounds, scratch / f"{i}.json", threads).items():
            found[side.name].setdefault(case, []).append(result)
            if result["flops"]:
                flops[case] = result["flops"]
        echo(f"harness-bench: process {i + 1}/{len(order)} ({side.name}) took {time.perf_counter() - start:.1f} s", flush=True)
    return {**found, "_flops": flops}


def per_process(results: list[dict], normalized: bool) -> np.ndarray:
    """A case's sample: each process's median time, or (normalized) that over the process's reference product."""
    if normalized and all(r["reference_s"] for r in results):
        return np.array([r["median_s"] / r["reference_s"] for r in results])
    return np.array([r["median_s"] for r in results])


def comparisons(measured: dict, *, min_change: float, alpha: float, normalized: bool,
                instructions: dict[str, dict[str, int]] | None = None) -> list[dict]:
    """One row per case both sides timed. With instruction counts (count_instructions), a case the times call
    `same` is `slower` (`faster`) when its instructions grew (shrank) by the minimum change: `signal` says which
    decided. Counts move ~1e-5 between processes of the same code, so they see what timing noise hides."""
    rows = []
    for case in sorted(set(measured["base"]) & set(measured["head"])):
        base, head = measured["base"][case], measured["head"][case]
        c = compare(per_process(base, normalized), per_process(head, normalized), min_change=min_change, alpha=alpha)
        base_s, head_s = (float(np.median([r["median_s"] for r in side])) for side in (base, head))
        flops = measured["_flops"].get(case)
        counts = [instructions[side].get(case) for side in ("base", "head")] if instructions else [None, None]
        instructions_ratio = counts[1] / counts[0] if None not in counts else None
        verdict, signal = c.verdict, "time"
        if verdict == "same" and instructions_ratio is not None:
            if instructions_ratio >= 1 + min_change:
                verdict, signal = "slower", "instructions"
            elif instructions_ratio <= 1 / (1 + min_change):
                verdict, signal = "faster", "instructions"
        rows.append({"name": case, "base_median_s": base_s, "head_median_s": head_s,
                     "ratio": c.ratio, "low": c.low, "high": c.high, "p_value": c.p_value, "verdict": verdict,
                     "signal": signal, "base_instructions": counts[0], "head_instructions": counts[1],
                     "instructions_ratio": instructions_ratio,
                     "head_tflops_per_s": flops / head_s / 1e12 if flops else None})
    return rows


def table(rows: list[dict]) -> str:
    width = max([len("case")] + [len(r["name"]) for r in rows])
    lines = [f"{'case':<{width}}  {'base':>10}  {'head':>10}  {'ratio [95% interval]':>24}  {'p':>8}  {'instr':>6}  "
             f"{'verdict':<7}  TFLOP/s"]
    for r in rows:
        interval = f"{r['ratio']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
        rate = f"{r['head_tflops_per_s']:.3g}" if r["head_tflops_per_s"] else "-"
        counted = f"{r['instructions_ratio']:.4f}" if r.get("instructions_ratio") else "-"
        verdict = r["verdict"] + ("*" if r.get("signal") == "instructions" else "")
        lines.append(f"{r['name']:<{width}}  {r['base_median_s'] * 1e3:>8.3f}ms  {r['head_median_s'] * 1e3:>8.3f}ms  "
                     f"{interval:>24}  {r['p_value']:>8.2g}  {counted:>6}  {verdict:<7}  {rate}")
    if any(r.get("signal") == "instructions" for r in rows):
        lines.append("* decided by instruction counts (instr: head's over base's), the times alone said same")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="harness-bench", description=(
        "Compare the kernel suite's speed between two revisions (or two Python environments) on this machine, in "
        "alternating processes; exit 1 when a case is slower, 2 on bad input."))
    parser.add_argument("--base", help="the revision to compare against (a worktree of it is timed), or a directory "
                                       "holding a copy of the project")
    parser.add_argument("--head", help="the revision or directory under test (default: the working tree)")
    parser.add_argument("--base-python", help="compare environments: the base side runs the head's code under this interpreter")
    parser.add_argument("-k", dest="select", help="select cases as pytest -k does")
    parser.add_argument("--json", help="write the comparison here")
    parser.add_argument("--processes", type=int, default=10, help="processes per side (default 10)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds per case per process (default 7)")
    parser.add_argument("--min-change", type=float, default=0.02, help="the smallest change that counts (default 0.02)")
    parser.add_argument("--alpha", type=float, default=0.01, help="the test's significance level (default 0.01)")
    parser.add_argument("--threads", type=int, help="torch's CPU threads in every process (default: torch's own)")
    parser.add_argument("--instructions", action="store_true", help=(
        "also count each case's instructions under callgrind (valgrind; CPU; the smallest shape; ~4 more minutes): "
        "a case whose times say same is slower when its instructions grew by --min-change"))
    parser.add_argument("--raw", action="store_true",
                        help="compare raw times, not times over the reference product timed in the same process")
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except BenchError as error:
        print(f"harness-bench: error: {error}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.processes < 2 or args.rounds < 1:
        raise BenchError(f"--processes {args.processes} --rounds {args.rounds}: at least 2 processes and 1 round")
    if not 0 < args.alpha < 1 or args.min_change < 0:
        raise BenchError(f"--alpha {args.alpha} must be in (0, 1) and --min-change {args.min_change} at least 0")
    if (args.base is None) == (args.base_python is None):
        raise BenchError("give --base REV or DIR (two revisions or copies) or --base-python PATH (two environments)")
    root, in_git = project_root()
    if args.base_python and not os.access(args.base_python, os.X_OK):
        raise BenchError(f"--base-python {args.base_python!r} is not an executable")
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as scratch:
        scratch = Path(scratch)
        worktrees = []
        try:
            if args.base is not None:
                base = side("base", args.base, root, in_git, scratch / "base", worktrees)
            else:
                base = Side("base", f"working tree under {args.base_python}", root, args.base_python)
            head = side("head", args.head, root, in_git, scratch / "head", worktrees)
            (scratch / "out").mkdir()
            measured = measure_sides((base, head), args.processes, args.rounds, args.select, scratch / "out",
                                     args.threads)
            counted = None
            if args.instructions:
                print("harness-bench: counting instructions under callgrind, both sides at once", flush=True)
                start = time.perf_counter()
                counted = count_instructions((base, head), args.select, scratch)
                print(f"harness-bench: counted in {time.perf_counter() - start:.0f} s", flush=True)
        finally:
            for tree in worktrees:
                _git(root, "worktree", "remove", "--force", str(tree))
            if worktrees:
                _git(root, "worktree", "prune")
    rows = comparisons(measured, min_change=args.min_change, alpha=args.alpha, normalized=not args.raw,
                       instructions=counted)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "base": base.label, "head": head.label, "processes": args.processes, "rounds": args.rounds,
            "min_change": args.min_change, "alpha": args.alpha, "threads": args.threads,
            "normalized": not args.raw, "instructions": args.instructions, "cases": rows}, indent=1))
    slower = [r["name"] for r in rows if r["verdict"] == "slower"]
    print(f"slower: {', '.join(slower)}" if slower else f"no case slower ({len(rows)} compared)")
    return 1 if slower else 0


if __name__ == "__main__":
    sys.exit(main())
