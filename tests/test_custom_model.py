"""A module the harness has never seen: the README's TinyLM, defined outside the package, through the console
scripts a user runs (a sweep with a compute budget, the report), its FLOPs and parameters against closed forms."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import load_results
from models.gpt import GPTConfig, flops_per_token, stack_params
from tests.conftest import ROOT, TIMEOUT_S, TINY

BIN = Path(sys.executable).parent
# the tiny training settings without the built-in shape keys (a custom section has only its own arguments)
SETTINGS = [arg for arg in TINY if not arg.startswith("model.")] + ["model.seq_len=32"]


def readme_module() -> str:
    """The custom module README shows, as a user would copy it."""
    section = (ROOT / "README.md").read_text().split("## Your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("custom")
    (cwd / "tinylm.py").write_text(readme_module())
    args = ["harness", "-m", *SETTINGS, "model=custom", "model._target_=tinylm.TinyLM", "+model.d_model=16,32",
            "+model.n_layer=2", "+model.n_head=2", "compute=2e9", "hydra.sweep.dir=sweep"]
    result = run(*args, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return cwd, args, load_results(cwd / "sweep").sort_values("model_info.d_model").reset_index(drop=True)


def test_a_module_from_outside_the_package_sweeps_at_a_compute_budget(sweep):
    _, _, df = sweep
    assert list(df.status) == ["ok", "ok"] and list(df["model_info.d_model"]) == [16, 32]
    for _, row in df.iterrows():
        assert row["model_info.target"] == "tinylm.TinyLM"
        assert row["model_info.flops_counted"] == "measured (FlopCounterMode)"
        # D = C / (FLOPs per token), rounded to whole steps of 8 x 32 tokens
        assert row["metrics.tokens_requested"] == pytest.approx(2e9 / row["model_info.flops_per_token_causal"])
        assert abs(row["metrics.flops"] - 2e9) <= 0.5 * 256 * row["model_info.flops_per_token_causal"]
        assert row["curve"][-1]["val_loss"] < row["curve"][0]["val_loss"] + 0.05


def test_measured_flops_and_numel_counts_equal_the_closed_forms_of_the_same_transformer(sweep):
    # TinyLM is the GPT's block (pre-LN, fused QKV with biases, a 4x GELU MLP... ReLU here, which FLOPs ignore) with
    # an untied head and a learned position table: the GPT's closed forms count it, attention as a dense kernel
    _, _, df = sweep
    for _, row in df.iterrows():
        d, vocab = int(row["model_info.d_model"]), int(row["model_info.vocab_size"])
        gpt = GPTConfig(vocab_size=vocab, seq_len=32, n_layer=2, d_model=d, n_head=2, tie_embeddings=False)
        assert row["model_info.flops_per_token_causal"] == pytest.approx(flops_per_token(gpt).dense, rel=1e-9)
        # non-embedding by the protocol: all but nn.Embedding weights, so the untied head counts
        assert row["model_info.params_non_embedding"] == stack_params(gpt) + vocab * d
        assert row["model_info.params_embedding"] == (vocab + 32) * d


def test_the_custom_sweep_reports_and_resumes(sweep):
    cwd, args, df = sweep
    (cwd / "sweep" / "report" / "report.md").unlink()
    report = run("harness-report", "sweep", cwd=cwd)
    assert report.returncode == 0, report.stderr
    text = (cwd / "sweep" / "report" / "report.md").read_text()
    for _, row in df.iterrows():   # each run's row: its numel count and its measured FLOPs at the budget
        assert f"| ok | 2e+09 | {row['model_info.params_non_embedding']} | 2 | {row['model_info.d_model']} |" in text
    again = run(*args, cwd=cwd)   # a sweep run again skips what it has
    assert again.returncode == 0 and again.stdout.count("skip: this point finished ok before") == 2, again.stdout


def test_what_the_protocol_does_not_cover_is_unsupported_naming_the_hook(sweep):
    cwd, _, _ = sweep
    result = run("harness", *SETTINGS, "model=custom", "model._target_=tinylm.TinyLM", "parallel=tp", "hydra.run.dir=tp", cwd=cwd)
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: unsupported: model._target_=tinylm.TinyLM defines no tp_plan() (the opt-in "
                                     "hook for tensor parallelism) (parallel=tp, task=train)")
    assert json.loads((cwd / "tp" / "record.json").read_text())["status"] == "unsupported"
    missing = run("harness", *SETTINGS, "model=custom", "model._target_=nowhere.Model", "hydra.run.dir=bad", cwd=cwd)
    assert missing.returncode == 2 and missing.stderr.startswith("error: model._target_='nowhere.Model' cannot be imported")
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_data_parallel_and_fsdp_layouts_train_any_module_as_one_process_does(sweep):
    cwd, _, _ = sweep
    result = run("harness", "-m", *SETTINGS, "model=custom", "model._target_=tinylm.TinyLM", "+model.d_model=16",
                 "data.tokens=1536", "task.eval_points=6", "parallel=single,ddp,zero1,fsdp_zero2,fsdp_zero3",
                 "hydra.sweep.dir=layouts", cwd=cwd)
    assert result.returncode == 0, result.stderr
    df = load_results(cwd / "layouts").set_index("parallel.name")
    assert (df.status == "ok").all(), df[["status", "error"]]
    curve = [[p[k] for p in df.loc[name, "curve"] for k in ("train_loss", "val_loss")] for name in df.index]
    for name, losses in zip(df.index, curve):
        assert losses == pytest.approx(curve[list(df.index).index("single")], rel=1e-5), name
