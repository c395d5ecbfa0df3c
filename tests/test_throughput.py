"""study=throughput and .ci/gpu-check's summary, from the records the GPU check committed (results/gpu/NVIDIA_H200),
and the GPU-only choices the training step makes (fused AdamW, cuDNN's attention first), which skip on a CPU."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.records import load_results
from harness.report import build_report
from harness.optimizer import optimizer_kernel
from models.attention import sdpa

ROOT = Path(__file__).resolve().parent.parent
H200 = ROOT / "results" / "gpu" / "NVIDIA_H200"
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_the_throughput_report_reads_mfu_off_the_records_and_judges_it_against_the_target(tmp_path):
    df = load_results([H200 / "training"])
    fits = json.loads((build_report(H200 / "training", tmp_path, study="throughput") / "fits.json").read_text())
    for _, m in df.iterrows():
        peak = m["metrics.mfu_peak_flops"]
        assert m["metrics.mfu"] == pytest.approx(m["metrics.tokens_per_s"] * m["model_info.flops_per_token_causal"] / peak)
        assert m["metrics.mfu_dense"] == pytest.approx(m["metrics.tokens_per_s"] * m["model_info.flops_per_token_dense"] / peak)
    for best in fits["best"]:
        mine = df[df["compile_info.compiled"] == (best["mode"] == "compiled")]
        assert best["mfu"] == pytest.approx(mine["metrics.mfu"].max()) and best["met"] == (best["mfu"] >= 0.40)
    for pair in fits["compiled_over_eager"]:
        assert pair["compiled_over_eager"] == pytest.approx(pair["compiled_tokens_per_s"] / pair["eager_tokens_per_s"])
    # sdpa auto ran cuDNN's kernel on the H200, as its profile shows
    assert {run["attention"] for run in fits["runs"]} == {"sdpa (auto: cudnn)", "sdpa (flash)"}


def test_the_gpu_checks_summary_has_a_headline_for_every_step():
    steps = ["training:ok:83", "attention:ok:121", "precision:ok:30", "inference:ok:46", "scaling:ok:40", "kernels:ok:59"]
    result = subprocess.run([sys.executable, ".ci/gpu_summary.py", str(H200), *steps], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()[1:]
    assert [line.split()[0] for line in lines] == [step.split(":")[0] for step in steps]
    assert not any("no headline" in line for line in lines), result.stdout
    assert "bf16 compiled 39.0% (42.9% dense) MFU" in result.stdout and "sdpa (cudnn) 72% of matmul" in result.stdout
    failed = subprocess.run([sys.executable, ".ci/gpu_summary.py", str(H200), "kernels:timeout:300"], cwd=ROOT,
                            capture_output=True, text=True)
    assert failed.returncode == 1


def test_the_gate_steps_headline_counts_false_alarms_and_caught_slowdowns(tmp_path):
    def case(name, verdict, ratio):
        return {"name": f"test_attention_kernel[{name}]", "verdict": verdict, "ratio": ratio}
    (tmp_path / "gate").mkdir()
    same = [case("dense-s1024-d64-fwd", "same", 1.004), case("sdpa-auto-s4096-d64-fwd", "faster", 0.97)]
    slower = [case("dense-s1024-d64-fwd", "slower", 1.052), case("dense-s4096-d64-fwd", "same", 1.031),
              case("dense-s1024-d64-fwd_bwd", "slower", 1.02), case("sdpa-auto-s4096-d64-fwd", "slower", 1.1)]
    for name, cases in (("same", same), ("slower", slower)):
        (tmp_path / "gate" / f"{name}.json").write_text(json.dumps({"cases": cases}))
    result = subprocess.run([sys.executable, ".ci/gpu_summary.py", str(tmp_path), "gate:ok:200"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert ("A/A: 1 of 2 cases flagged; dense made slower (ratios 1.052, 1.031): 1 of 2 forward cases caught"
            in result.stdout), result.stdout


def test_the_gpu_check_says_in_a_line_when_there_is_no_gpu():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is here")
    result = subprocess.run(["bash", ".ci/gpu-check", "training"], cwd=ROOT, capture_output=True, text=True,
                            env={"PATH": "/usr/bin:/bin", "PY": sys.executable})
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1] == "gpu-check: no CUDA device here"


def test_on_a_cpu_adamw_and_sdpa_keep_their_defaults():
    assert optimizer_kernel([torch.zeros(2, requires_grad=True)]) == {}
    assert not sdpa.cudnn_first(torch.device("cpu"))


@needs_gpu
def test_on_a_gpu_adamw_is_fused_and_a_refusing_kernel_says_its_own_reason():
    assert optimizer_kernel([torch.zeros(2, device="cuda", requires_grad=True)]) == {"fused": True}
    reason = sdpa.unsupported(torch.device("cuda"), torch.float32, "cudnn")
    assert reason.startswith("sdpa backend 'cudnn' cannot run these inputs") and "runtime disabled" not in reason
    assert sdpa.unsupported(torch.device("cuda"), torch.bfloat16, "flash") is None
