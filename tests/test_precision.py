"""Precision modes in task=train: what is in effect is what the record says, and unsupported modes are records."""
import json

import pytest
import torch

from harness import load_results
from tests.conftest import harness_cmd


def train(tmp_path, tiny, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = harness_cmd(*tiny, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "run" / "record.json").read_text())


@pytest.mark.parametrize("mode,params,autocast", [("bf16", "float32", "bfloat16"), ("fp16", "float32", "float16"),
                                                   ("bf16_pure", "bfloat16", None)])
def test_mixed_precision_trains_and_records_what_was_in_effect(tmp_path, tiny, mode, params, autocast):
    reference = train(tmp_path / "fp32", tiny)
    record = train(tmp_path / mode, tiny, f"precision={mode}")
    info = record["precision_info"]
    assert (info["mode"], info["param_dtype"], info["autocast_dtype"]) == (mode, params, autocast)
    assert info["grad_scaling"] == (mode == "fp16")
    # Same data, same init: the loss follows fp32's to within the rounding of the narrower type.
    assert record["metrics"]["val_loss"] == pytest.approx(reference["metrics"]["val_loss"], rel=0.02)
    assert record["metrics"]["val_loss"] != reference["metrics"]["val_loss"]


def test_fp16_counts_the_steps_its_gradient_scaler_skips(tmp_path, tiny):
    # A starting scale of 2^40 overflows fp16 gradients: the scaler halves it on each skipped step until they fit.
    record = train(tmp_path, tiny, "precision=fp16", "precision.init_scale=1099511627776")
    info = record["precision_info"]
    assert 0 < info["skipped_steps"] < record["metrics"]["steps"]
    assert info["final_scale"] == 2.0**40 / 2 ** info["skipped_steps"]
    assert info["slow_here"] and "emulated" in info["slow_here"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_gpu_only_precisions_are_unsupported_records_in_a_sweep(tmp_path, tiny):
    result = harness_cmd("-m", *tiny, "precision=fp32,tf32,fp8", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").set_index("precision.name")
    assert df.loc["fp32", "status"] == "ok"
    for mode in ("tf32", "fp8"):
        assert df.loc[mode, "status"] == "unsupported" and "needs an NVIDIA GPU" in df.loc[mode, "error"]


def test_weight_only_quantized_evaluation_records_memory_and_loss_change(tmp_path, tiny):
    record = train(tmp_path, tiny, "model.d_model=128", "task.eval_quantized=[int8,nf4]")
    q = record["quantized"]
    # d_model 128: every Linear fits NF4's 64 x 256 blocks; 4 bits + block scales < 8 bits + a scale per row < 32 bits.
    assert q["nf4"]["model_bytes"] < q["int8"]["model_bytes"] < q["full_bytes"]
    assert q["nf4"]["layers_left_full_precision"] == 0
    for method in ("int8", "nf4"):
        assert abs(q[method]["val_loss_change"]) < 0.01
        assert q[method]["val_loss"] == pytest.approx(record["metrics"]["val_loss"] + q[method]["val_loss_change"])


def test_unknown_quantization_is_one_line(tmp_path, tiny):
    result = harness_cmd(*tiny, "task.eval_quantized=[int3]", "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: task.eval_quantized: unknown quantization 'int3'; known: int8, nf4"
