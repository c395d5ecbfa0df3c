"""task=attention through the CLI, and the attention variants inside the GPT through attention=NAME."""
import json
import math
import os
import subprocess
import sys

import pytest

from harness import load_results
from models import attention as attention_registry
from tests.conftest import TIMEOUT_S, harness_cmd

SMALL = ["task=attention", "task.seq_len=300", "task.heads=2", "task.head_dim=32", "task.min_repeats=2",
         "task.max_repeats=3", "task.error_seq_len=128", "progress=off"]


def test_attention_point_records_time_flops_memory_and_error(tmp_path):
    result = harness_cmd(*SMALL, "attention=longformer", "attention.window=64", "attention.global_tokens=2",
                         "task.mode=fwd_bwd", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    m = record["metrics"]
    assert record["status"] == "ok" and m["repeats"] >= 2 and m["time_p10_s"] <= m["time_median_s"] <= m["time_p90_s"]
    assert m["flops"] == attention_registry.flops("longformer", batch=1, heads=2, seq_len=300, head_dim=32, causal=True,
                                               backward=True, options={"window": 64, "global_tokens": 2})
    assert m["flops_per_s"] == pytest.approx(m["flops"] / m["time_median_s"])
    # the backward counted by FlashAttention's convention (2.5x forward), named; without the recompute it is 2x
    forward = attention_registry.flops("longformer", batch=1, heads=2, seq_len=300, head_dim=32, causal=True,
                                    backward=False, options={"window": 64, "global_tokens": 2})
    assert m["flops_convention"] == "flash" and m["flops"] == 3.5 * forward and m["flops_no_recompute"] == 3 * forward
    assert m["peak_memory_bytes"] > 0 and m["error_fwd"] < 1e-5 and m["error_grad"] < 1e-5
    assert record["kernel_info"]["exact"] is True
    # a 2048^3 fp32 product on this CPU: between 1 GFLOP/s and 10 TFLOP/s, and the attention runs below it
    assert 1e9 < m["matmul_flops_per_s"] < 1e13
    assert m["fraction_of_matmul"] == pytest.approx(m["flops_per_s"] / m["matmul_flops_per_s"]) and m["fraction_of_matmul"] < 1


def test_unsupported_and_too_large_points_are_records_and_the_sweep_goes_on(tmp_path):
    result = harness_cmd("-m", *SMALL, "attention=xformers,dense,sdpa", "task.max_memory_gb=0.0001",
                         "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").set_index("attention.name")
    assert df.loc["xformers", "status"] == "unsupported" and "no cpu kernels" in df.loc["xformers", "error"]
    assert df.loc["dense", "status"] == "unsupported" and "task.max_memory_gb=0.0001" in df.loc["dense", "error"]
    assert df.loc["sdpa", "status"] == "ok"


def test_a_point_larger_than_the_free_memory_is_refused_before_it_allocates(tmp_path):
    # sdpa's math backend keeps the n x n scores: 2 heads x 200000^2 x fp32 x 4 (forward and backward) = 1.28 TB
    assert attention_registry.memory_estimate("sdpa", batch=1, heads=2, seq_len=200_000, head_dim=32, bytes_per_element=4,
                                           backward=True, options={"backend": "math"}) == 2 * 200_000**2 * 4 * 4
    assert attention_registry.memory_estimate("sdpa", batch=1, heads=2, seq_len=200_000, head_dim=32, bytes_per_element=4,
                                           backward=True, options={"backend": "flash"}) == 0
    result = harness_cmd(*SMALL, "attention=sdpa_math", "task.seq_len=200000", "task.mode=fwd_bwd", "task.max_memory_gb=1e6",
                         "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1  # a single run says why in one line
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "unsupported"
    assert "would materialise ~1192.1 GiB" in record["error"] and "GiB free on cpu" in record["error"]


def test_bad_attention_option_is_one_line(tmp_path):
    result = harness_cmd(*SMALL, "attention=longformer", "attention.impl=fast", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: attention=longformer: unknown longformer impl 'fast'; known: blocked, flex, xformers"


@pytest.mark.slow
@pytest.mark.parametrize("variant", [["attention=performer", "attention.num_features=32"],
                                     ["attention=longformer", "attention.window=8", "attention.global_tokens=1"]],
                         ids=["performer", "longformer"])
def test_gpt_trains_with_each_cpu_variant(tmp_path, tiny, variant):
    result = harness_cmd(*tiny, *variant, "data.tokens=1e5", "task.lr=1e-2", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    # It learns: below the uniform guess over the Markov source's 16 tokens.
    assert record["status"] == "ok" and record["metrics"]["val_loss"] < math.log(16) - 0.1


def test_attention_kernels_study_reads_each_exact_kernel_against_the_matmul_rate(tmp_path):
    result = harness_cmd("study=attention_kernels", "task.seq_len=256", "task.batch=1", "task.heads=2", "task.head_dim=32",
                         "task.min_repeats=2", "task.max_repeats=2", "progress=off", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads((tmp_path / "sweep" / "report" / "kernels.json").read_text())
    ran = {(row["kernel"], row["causal"]) for row in found["kernels"]}
    assert {("sdpa (flash)", True), ("sdpa (math)", False), ("dense", True)} <= ran  # the CPU's kernels
    for row in found["kernels"]:
        assert row["fraction_of_matmul"] == pytest.approx(row["tflops_per_s"] / row["matmul_tflops_per_s"])
    assert len({row["matmul_tflops_per_s"] for row in found["kernels"]}) == 1   # measured once by the sweep's process
    for best in found["best"]:
        mine = [row for row in found["kernels"] if row["causal"] == best["causal"]]
        assert best["fraction_of_matmul"] == max(row["fraction_of_matmul"] for row in mine)
        assert best["met"] == (best["fraction_of_matmul"] >= 0.5)
    report = (tmp_path / "sweep" / "report" / "report.md").read_text()
    assert "sdpa backend 'cudnn' has no kernel on cpu" in report and "xformers has no cpu kernels" in report


def test_the_matmul_rate_is_measured_once_per_process_for_each_precision():
    import torch

    from harness import measure
    cpu, before = torch.device("cpu"), torch.get_float32_matmul_precision()
    rate = measure.matmul_flops_per_s(cpu, torch.float32, size=96)
    assert measure.matmul_flops_per_s(cpu, torch.float32, size=96) == rate   # the same measurement, not a second one
    try:
        torch.set_float32_matmul_precision("medium" if before != "medium" else "high")
        assert measure.matmul_flops_per_s(cpu, torch.float32, size=96) != rate   # another precision: measured anew
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_pinned_sdpa_backend_that_cannot_take_the_inputs_says_why():
    import torch

    from models import attention
    q = torch.randn(1, 2, 8, 16)
    v = torch.randn(1, 2, 8, 32)  # a value head size the fused kernel does not take
    with pytest.raises(NotImplementedError, match="sdpa backend 'flash' cannot run these inputs .* same last dimension"):
        attention.get_attention("sdpa", causal=True, backend="flash")(q, q, v)
    assert attention.get_attention("sdpa", causal=True, backend="math")(q, q, v).shape == (1, 2, 8, 32)


def test_a_flash_attn_wheel_that_does_not_load_is_an_unsupported_record(tmp_path):
    # a wheel built for another torch imports as a package but fails on its compiled extension
    broken = tmp_path / "site" / "flash_attn"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi")')
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    result = subprocess.run([sys.executable, "-m", "harness", "-m", *SMALL, "attention=flash_attn", "hydra.sweep.dir=sweep"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert result.returncode == 0, result.stderr
    record = load_results(tmp_path / "sweep").iloc[0]
    assert record["status"] == "unsupported"
    assert "flash-attn package is installed but does not load: flash_attn_2_cuda.so: undefined symbol" in record["error"]
