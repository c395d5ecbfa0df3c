"""A module the harness has never seen: docs/custom-model.md's TinyLM, defined outside the package, through the console
scripts a user runs (a sweep with a compute budget, the report), its FLOPs and parameters against closed forms."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from harness import checkpoint, load_results, records
from models.gpt import GPTConfig, flops_per_token, stack_params
from tests.conftest import ROOT, TIMEOUT_S, TINY, kill_when

BIN = Path(sys.executable).parent
# the tiny training settings without the built-in shape keys (a custom section has only its own arguments)
SETTINGS = [arg for arg in TINY if not arg.startswith("model.")] + ["model.seq_len=32"]


def readme_module() -> str:
    """The custom module docs/custom-model.md shows, as a user would copy it."""
    section = (ROOT / "docs" / "custom-model.md").read_text()
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT_S)


# one pytest-xdist worker runs the module, so its sweep fixture runs once
pytestmark = pytest.mark.xdist_group("custom_sweep")


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


HOOKED = '''
from torch import nn

from models import common, gpt


class HookedGPT(nn.Module):
    """The built-in GPT behind the custom protocol, opting in to every hook."""

    def __init__(self, vocab_size, seq_len, d_model=32, n_layer=2, n_head=2):
        super().__init__()
        self.inner = gpt.GPT(gpt.GPTConfig(vocab_size=vocab_size, seq_len=seq_len, d_model=d_model, n_layer=n_layer,
                                           n_head=n_head, positions="rope"))

    def forward(self, idx, cache=None):
        return self.inner(idx, cache=cache)

    def tp_plan(self):
        return {f"inner.{name}": style for name, style in gpt.tp_plan(self.inner).items()}

    def pipeline_parts(self):
        return gpt.pipeline_parts(self.inner)

    def kv_cache(self, batch, max_len, dtype, device):
        c = self.inner.cfg
        return common.KVCache(c.n_layer, batch, c.n_head, max_len, c.head_dim, dtype, device)
'''


def test_a_module_that_defines_the_kv_cache_hook_decodes_with_it(tmp_path):
    (tmp_path / "hooked.py").write_text(HOOKED)
    data = [arg for arg in SETTINGS if not arg.startswith("task.")]
    result = run("harness", "task=inference", *data, "model=custom", "model._target_=hooked.HookedGPT",
                 "model.seq_len=64", "task.context=24", "task.new_tokens=8", "task.batch_size=2",
                 "task.compare_weights=[]", "task.train_tokens=0", "task.eval_tokens=512", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "run" / "record.json").read_text())["metrics"]
    assert metrics["cache_matches_recompute"] and metrics["same_tokens_as_recompute"]
    assert metrics["kv_cache_bytes_formula"] is None   # the harness knows no formula for a module it has never seen


@pytest.mark.slow
def test_a_module_that_defines_the_tp_and_pipeline_hooks_trains_on_those_layouts_as_one_process_does(tmp_path):
    (tmp_path / "hooked.py").write_text(HOOKED)
    result = run("harness", "-m", *SETTINGS, "model=custom", "model._target_=hooked.HookedGPT", "data.tokens=1536",
                 "task.eval_points=6", "parallel=single,tp,pp", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").set_index("parallel.name")
    assert (df.status == "ok").all(), df[["status", "error"]]
    curves = {name: [p[k] for p in df.loc[name, "curve"] for k in ("train_loss", "val_loss")] for name in df.index}
    for name in ("tp", "pp"):
        assert curves[name] == pytest.approx(curves["single"], rel=1e-5), name


@pytest.mark.slow
def test_a_killed_custom_run_continues_from_its_checkpoint_bit_for_bit(sweep):
    cwd, _, _ = sweep
    args = [*SETTINGS, "model=custom", "model._target_=tinylm.TinyLM", "+model.d_model=16", "data.train_tokens=5e4",
            "data.tokens=1.024e5", "task.eval_points=4", "task.checkpoint_every=50"]
    assert run("harness", *args, "hydra.run.dir=whole", cwd=cwd).returncode == 0
    saved = checkpoint.path(cwd / "killed")
    kill_when(*args, "hydra.run.dir=killed", cwd=cwd, ready=saved.exists)
    assert saved.exists() and not (cwd / "killed" / records.RECORD_NAME).exists(), "killed before its first save"
    again = run("harness", *args, "hydra.run.dir=killed", cwd=cwd)
    assert again.returncode == 0, again.stderr
    whole, resumed = (records.read_record(cwd / name / records.RECORD_NAME) for name in ("whole", "killed"))
    assert resumed["metrics"]["resumed_from_step"] > 0 and resumed["curve"] == whole["curve"]
