"""harness-bench: its statistics on synthetic per-process medians with known shifts (a shift beyond the minimum
change is found, no shift is not, at about the test's level; a significant shift smaller than the minimum change
is `same`), and end to end in a scratch clone: each side times its own revision's code, bad input is one line and
exit 2, and no worktree is left behind. Timing stays out of pass/fail tests, but for a kernel that sleeps 0.5 s."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from harness import bench

ALPHA, MIN_CHANGE = 0.01, 0.03


def processes(rng, n, ratio=1.0, spread=0.02, base_s=1e-3):
    """n per-process medians: a process's own level varies lognormally by `spread` (the between-process noise)."""
    return base_s * ratio * np.exp(rng.normal(0.0, spread, n))


def test_a_slowdown_beyond_the_minimum_change_is_slower_with_an_interval_around_it():
    rng = np.random.default_rng(0)
    result = bench.compare(processes(rng, 10), processes(rng, 10, ratio=1.10), min_change=MIN_CHANGE, alpha=ALPHA)
    assert result.verdict == "slower" and result.p_value < ALPHA
    assert result.low < 1.10 < result.high and result.low > 1
    assert result.ratio == pytest.approx(result.head_median_s / result.base_median_s)


def test_a_speedup_is_faster():
    rng = np.random.default_rng(1)
    assert bench.compare(processes(rng, 10), processes(rng, 10, ratio=0.9), min_change=MIN_CHANGE,
                         alpha=ALPHA).verdict == "faster"


@pytest.mark.parametrize("spread", [0.02, 0.10])
def test_unchanged_sides_are_the_same_about_as_often_as_the_level_allows(spread):
    # at a 10% spread between processes a median ratio beyond the minimum change is common: the test's level,
    # not the minimum change, must keep the false alarms down
    rng = np.random.default_rng(2)
    verdicts = [bench.compare(processes(rng, 10, spread=spread), processes(rng, 10, spread=spread),
                              min_change=MIN_CHANGE, alpha=ALPHA).verdict for _ in range(300)]
    assert verdicts.count("same") >= 297   # at most 1% false alarms


def test_a_significant_change_smaller_than_the_minimum_is_the_same():
    rng = np.random.default_rng(3)
    result = bench.compare(processes(rng, 12, spread=0.002), processes(rng, 12, ratio=1.01, spread=0.002),
                           min_change=MIN_CHANGE, alpha=ALPHA)
    assert result.p_value < ALPHA and result.verdict == "same"


def test_the_interval_covers_the_true_ratio_about_95_percent_of_the_time():
    rng = np.random.default_rng(4)
    covered = [(r.low <= 1.05 <= r.high) for r in (
        bench.compare(processes(rng, 10), processes(rng, 10, ratio=1.05), min_change=MIN_CHANGE, alpha=ALPHA,
                      resamples=1000) for _ in range(200))]
    assert 0.85 <= np.mean(covered) <= 1.0   # the percentile bootstrap of a median at n = 10 runs a little narrow


def test_dividing_by_the_reference_product_takes_the_machines_speed_out_of_each_process():
    # each process runs on a machine 15% faster or slower (its kernel and its reference product alike): the raw
    # times hide a 5% slowdown, the times over the reference product show it
    rng = np.random.default_rng(5)

    def side(ratio):
        speed = np.exp(rng.normal(0.0, 0.15, 8))
        return [{"median_s": 1e-3 * ratio * s * np.exp(rng.normal(0.0, 0.004)),
                 "reference_s": 2e-4 * s * np.exp(rng.normal(0.0, 0.004)), "flops": 1e9} for s in speed]

    measured = {"base": {"k": side(1.0)}, "head": {"k": side(1.05)}, "_flops": {"k": 1e9}}
    (normalized,) = bench.comparisons(measured, min_change=0.02, alpha=ALPHA, normalized=True)
    (raw,) = bench.comparisons(measured, min_change=0.02, alpha=ALPHA, normalized=False)
    assert normalized["verdict"] == "slower" and normalized["low"] < 1.05 < normalized["high"]
    assert raw["verdict"] == "same" and raw["p_value"] > ALPHA


@pytest.mark.parametrize("head_instructions, verdict, signal", [
    (30_700_000, "slower", "instructions"),   # 2.3% more instructions: past the minimum change
    (30_000_450, "same", "time"),             # a few hundred more: the noise between processes of the same code
    (28_500_000, "faster", "instructions"),
])
def test_instruction_counts_decide_a_case_the_times_call_the_same(head_instructions, verdict, signal):
    rng = np.random.default_rng(6)
    side = lambda: [{"median_s": float(t), "reference_s": None, "flops": None} for t in processes(rng, 10, spread=0.05)]
    measured = {"base": {"k": side()}, "head": {"k": side()}, "_flops": {}}
    (timed,) = bench.comparisons(measured, min_change=0.02, alpha=ALPHA, normalized=False)
    assert timed["verdict"] == "same" and timed["instructions_ratio"] is None
    counts = {"base": {"k": 30_000_000}, "head": {"k": head_instructions}}
    (row,) = bench.comparisons(measured, min_change=0.02, alpha=ALPHA, normalized=False, instructions=counts)
    assert (row["verdict"], row["signal"]) == (verdict, signal)
    assert row["instructions_ratio"] == pytest.approx(head_instructions / 30_000_000)


def test_a_slowdown_the_times_see_stays_slower_whatever_the_counts_say():
    rng = np.random.default_rng(7)
    side = lambda ratio: [{"median_s": float(t), "reference_s": None, "flops": None}
                          for t in processes(rng, 10, ratio=ratio, spread=0.01)]
    measured = {"base": {"k": side(1.0)}, "head": {"k": side(1.2)}, "_flops": {}}
    counts = {"base": {"k": 30_000_000}, "head": {"k": 30_000_000}}   # more time, same work: e.g. a cache-hostile layout
    (row,) = bench.comparisons(measured, min_change=0.02, alpha=ALPHA, normalized=False, instructions=counts)
    assert (row["verdict"], row["signal"]) == ("slower", "time")


@pytest.mark.parametrize("base, head, message", [
    ([1e-3], [1e-3, 1e-3], "a comparison needs at least 2 processes a side, got 1 and 2"),
    ([1e-3, -1.0], [1e-3, 1e-3], "every time must be a positive number of seconds"),
    ([1e-3, float("nan")], [1e-3, 1e-3], "every time must be a positive number of seconds"),
])
def test_bad_samples_are_one_line(base, head, message):
    with pytest.raises(ValueError, match=message):
        bench.compare(base, head, min_change=MIN_CHANGE, alpha=ALPHA)


# --- harness-bench end to end, in a scratch clone of this project -------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
SLOW_DENSE = ("    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:\n",
              "    def attn(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:\n        time.sleep(0.5)\n")


def git(repo, *args):
    done = subprocess.run(["git", "-C", str(repo), "-c", "user.name=bench", "-c", "user.email=bench@example.com", *args],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def commit_change(repo, path, old, new, message):
    target = repo / path
    target.write_text(target.read_text().replace(old, new, 1))
    git(repo, "commit", "-qam", message)


def scratch_clone(where: Path) -> Path:
    """A clone of this project with its working tree committed (the code under test, committed or not), and a head
    commit that makes the dense kernel sleep 0.5 s a call."""
    repo = where / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    files = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    for name in filter(None, files):
        source, target = ROOT / name, repo / name
        if source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        elif target.exists():   # deleted in the working tree
            target.unlink()
    git(repo, "add", "-A")
    if git(repo, "status", "--porcelain"):
        git(repo, "commit", "-qm", "the working tree")
    dense = "models/attention/dense.py"
    commit_change(repo, dense, "import math\n", "import math\nimport time\n", "import time")
    commit_change(repo, dense, *SLOW_DENSE, "a slower dense kernel")
    return repo


@pytest.fixture
def scratch(tmp_path):
    return scratch_clone(tmp_path)


@pytest.fixture(scope="module")
def untouched_scratch(tmp_path_factory):
    """One scratch clone for the tests that change nothing in it."""
    return scratch_clone(tmp_path_factory.mktemp("bench"))


def harness_bench(repo, *args):
    return subprocess.run([sys.executable, "-m", "harness.bench", *args], cwd=repo, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(repo)})


def worktrees(repo) -> int:
    return git(repo, "worktree", "list").count("\n")


def test_each_side_times_its_own_revisions_code_and_no_worktree_is_left(scratch, tmp_path):
    result = harness_bench(scratch, "--base", "HEAD~1", "--head", "HEAD", "-k", "dense and s256 and not fwd_bwd",
                           "--processes", "2", "--rounds", "1", "--json", str(tmp_path / "out.json"))
    assert result.returncode == 0, result.stderr
    (case,) = json.loads((tmp_path / "out.json").read_text())["cases"]
    assert case["name"] == "test_attention_kernel[dense-s256-d64-fwd]"
    # the head's kernel sleeps 0.5 s a call, the base's does not: by far more than any noise (the base's call takes
    # ~1 ms on 2 cores and moves 10-30% between processes)
    assert case["head_median_s"] - case["base_median_s"] > 0.4
    assert case["verdict"] == "same"   # 2 processes a side can never reach p < 0.01: too few to call a change
    assert worktrees(scratch) == 1


@pytest.mark.parametrize("args, message", [
    (["--base", "nope"], "'nope' is not a revision of"),
    (["--base", "HEAD", "-k", "no_such_case"], "-k 'no_such_case' selects no case of tests/bench/test_attention_kernels.py"),
    ([], "give --base REV or DIR (two revisions or copies) or --base-python PATH (two environments)"),
    (["--base-python", "/no/python"], "--base-python '/no/python' is not an executable"),
    (["--base", "HEAD", "--processes", "1"], "--processes 1 --rounds 7: at least 2 processes and 1 round"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_worktree(untouched_scratch, args, message):
    scratch = untouched_scratch
    result = harness_bench(scratch, *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert worktrees(scratch) == 1


@pytest.fixture(scope="module")
def copies(untouched_scratch, tmp_path_factory):
    """The project copied twice outside any git repository (as onto a GPU machine): as it is, and with a dense
    kernel that sleeps 0.5 s a call."""
    where = tmp_path_factory.mktemp("copies")
    for name, revision in (("plain", "HEAD~2"), ("slow", "HEAD")):
        (where / name).mkdir()
        archive = subprocess.run(["git", "-C", str(untouched_scratch), "archive", revision], capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(where / name)], input=archive, check=True)
    return where / "plain", where / "slow"


def test_outside_git_the_project_is_the_working_directory_and_a_directory_side_is_timed_as_it_is(copies, monkeypatch,
                                                                                                  tmp_path):
    # the processes a side runs import its root's code, as a revision's worktree's (the test above times that)
    plain, slow = copies
    monkeypatch.chdir(plain)
    root, in_git = bench.project_root()
    assert (root, in_git) == (plain, False)
    worktrees = []
    head = bench.side("head", str(slow), root, in_git, tmp_path / "head", worktrees)
    assert head == bench.Side("head", f"directory {slow.resolve()}", slow.resolve(), sys.executable)
    assert bench.side("base", ".", root, in_git, tmp_path / "base", worktrees).root == plain.resolve()
    assert worktrees == [] and not (tmp_path / "head").exists()


@pytest.mark.parametrize("args, message", [
    (["--base", "HEAD"], "--base 'HEAD': {plain} is not inside a git repository, so a side must be a directory"),
    (["--base", ".", "--head", "{empty}"], "--head '{empty}' is a directory without the kernel suite"),
])
def test_outside_git_a_side_that_is_not_a_copy_is_one_line(copies, tmp_path, args, message):
    plain, _ = copies
    result = harness_bench(plain, *[a.format(empty=tmp_path) for a in args])
    assert result.returncode == 2 and message.format(plain=plain, empty=tmp_path) in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_slowed_copy_adds_its_work_to_the_dense_kernel_only(copies, tmp_path):
    plain, _ = copies
    run = lambda out: subprocess.run([sys.executable, "-m", "tests.bench.bench_gate_power", "slowed", "--slowdown",  # noqa: E731
                                      "0.05", "--out", str(out)], cwd=plain, capture_output=True, text=True,
                                     env={**os.environ, "PYTHONPATH": str(plain)})
    made = run(tmp_path / "slowed")
    assert made.returncode == 0, made.stderr
    changed = [p.relative_to(tmp_path / "slowed") for p in (tmp_path / "slowed").rglob("*.py")
               if p.read_text() != (plain / p.relative_to(tmp_path / "slowed")).read_text()]
    assert changed == [Path("models/attention/dense.py")]
    wasted = re.search(r"extra = round\(([0-9.e-]+) \* q.shape\[-2\]\)", (tmp_path / "slowed" / changed[0]).read_text())
    assert float(wasted.group(1)) == pytest.approx(0.05 * 1.15)   # the power study's calibration
    refused = run(plain / "inside")
    assert refused.returncode == 1 and "give a directory outside the project" in refused.stderr
    assert not (plain / "inside").exists()


def test_a_suite_that_fails_on_one_side_names_the_side(scratch):
    commit_change(scratch, "tests/bench/test_attention_kernels.py", "import os\n", "import os\nimport no_such_module\n",
                  "a broken suite")
    result = harness_bench(scratch, "--base", "HEAD~1", "-k", "dense and s256 and not fwd_bwd", "--processes", "2",
                          "--rounds", "1")
    assert result.returncode == 2 and "the kernel suite failed on the head side (working tree under" in result.stderr
    assert worktrees(scratch) == 1


def test_bench_compare_ends_in_one_readable_line_per_slower_case(tmp_path):
    # a saved baseline whose medians are made a thousand times faster: the re-run is slower in every selected case
    storage = tmp_path / "benchmarks"
    select = ["tests/bench/test_attention_kernels.py", "-k", "dense and s256", "--benchmark-only",
              f"--benchmark-storage=file://{storage}", "-p", "no:cacheprovider"]
    env = {**os.environ, "BENCH_ROUNDS": "1"}
    saved = subprocess.run([sys.executable, "-m", "pytest", "-q", *select, "--benchmark-save=base"], cwd=ROOT,
                           capture_output=True, text=True, env=env)
    assert saved.returncode == 0, saved.stdout + saved.stderr
    (baseline,) = storage.rglob("0001_base.json")
    data = json.loads(baseline.read_text())
    for case in data["benchmarks"]:
        case["stats"] = {k: v / 1000 if isinstance(v, float) else v for k, v in case["stats"].items()}
    baseline.write_text(json.dumps(data))
    compared = subprocess.run([sys.executable, "-m", "pytest", "-q", *select, "--benchmark-compare=0001",
                               "--benchmark-compare-fail=median:10%"], cwd=ROOT, capture_output=True, text=True, env=env)
    out = compared.stdout + compared.stderr
    assert compared.returncode == 1 and "Traceback" not in out and "INTERNALERROR" not in out, out
    slower = [line for line in out.splitlines() if line.startswith("slower: ")]
    assert sorted(line.split(":")[1].strip() for line in slower) == sorted(
        f"test_attention_kernel[dense-s256-d64-{mode}] (0001_base)" for mode in ("fwd", "fwd_bwd")), slower
    assert compared.stdout.strip().splitlines()[-1].startswith("slower: "), compared.stdout


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("valgrind"), reason="needs valgrind (callgrind counts the instructions)")
def test_instructions_count_the_work_a_kernel_adds(scratch, tmp_path):
    # the head's dense kernel computes its scores twice: about twice the instructions, while a process's timing of
    # one round at 2 processes a side can call nothing; no other case's count moves
    commit_change(scratch, "models/attention/dense.py", *reversed(SLOW_DENSE), "no sleep")
    commit_change(scratch, "models/attention/dense.py", "        scores_bhnn = (q @ k.transpose(-2, -1))",
                  "        q @ k.transpose(-2, -1)\n        scores_bhnn = (q @ k.transpose(-2, -1))", "scores twice")
    result = harness_bench(scratch, "--base", "HEAD~1", "-k", "(dense or performer) and s256 and not fwd_bwd",
                           "--processes", "2", "--rounds", "1", "--instructions", "--json", str(tmp_path / "out.json"))
    assert result.returncode == 1, result.stdout + result.stderr
    cases = {c["name"]: c for c in json.loads((tmp_path / "out.json").read_text())["cases"]}
    dense, performer = cases["test_attention_kernel[dense-s256-d64-fwd]"], cases["test_attention_kernel[performer-s256-d64-fwd]"]
    assert (dense["verdict"], dense["signal"]) == ("slower", "instructions") and dense["instructions_ratio"] > 1.2
    assert performer["verdict"] == "same" and abs(performer["instructions_ratio"] - 1) < 1e-3
    assert result.stdout.strip().splitlines()[-1] == "slower: test_attention_kernel[dense-s256-d64-fwd]"
    assert worktrees(scratch) == 1
