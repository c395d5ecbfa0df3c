"""profile=N: a torch.profiler summary of N training steps in the record (profile_info), those steps left out of the
step-time statistics; the kinds of kernel names seen on an H200 and the CPU's operator names."""
import json

import pytest

from harness import profiling
from tests.conftest import TINY, harness_cmd


def test_a_profiled_run_records_where_its_steps_went_and_times_only_the_unprofiled_steps(tmp_path):
    result = harness_cmd(*TINY, "data.tokens=1e4", "profile=4", "task.timing_warmup_steps=2", "hydra.run.dir=run",
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    info, steps = record["profile_info"], record["metrics"]["steps"]
    assert info["steps"] == 4 and info["device"] == "cpu" and info["host_syncs_per_step"] == 0
    assert sum(info["by_kind"].values()) == pytest.approx(1.0)
    # shares of time: which kinds appear is behaviour, how large each is depends on the machine's load
    assert info["by_kind"]["matmul"] > 0 and info["by_kind"]["attention"] > 0
    assert sum(row["ms_per_step"] for row in info["top"]) <= info["time_per_step_ms"] * (1 + 1e-9)
    assert all(not row["name"].startswith(("ProfilerStep", "Optimizer.")) for row in info["top"])
    assert info["host_wall_per_step_ms"] >= info["host_ms_per_step"] * 0.5
    plain = harness_cmd(*TINY, "data.tokens=1e4", "task.timing_warmup_steps=2", "hydra.run.dir=plain", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    unprofiled = json.loads((tmp_path / "plain" / "record.json").read_text())
    # non-semantic: an unprofiled run of the same config has the same hash, and the same numbers
    assert unprofiled["config_hash"] == record["config_hash"] and "profile_info" not in unprofiled
    assert unprofiled["metrics"]["val_loss"] == record["metrics"]["val_loss"]
    assert steps > 2 + 1 + 4   # the window closed inside the run


def test_a_window_past_the_runs_end_says_so():
    profiler = profiling.StepProfiler(__import__("torch").device("cpu"), skip=50, steps=3)
    for _ in range(5):
        profiler.step()
    profiler.stop()
    assert profiler.info(5) == {"steps": 0, "unsupported": "profile=3: the window starts after step 51 and this run "
                                                           "has 5 steps"}
    assert [profiler.touched(i) for i in (49, 50, 53, 54)] == [False, True, True, False]


@pytest.mark.parametrize("name, kind", [
    ("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64", "attention"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>", "attention"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata<4>, "
     "FusedAdamMathFunctor<float, 4, ADAM_MODE::1, false>>", "optimizer"),
    ("triton_per_fused__to_copy_add_native_layer_norm_native_layer_norm_backward_view_10", "norm"),
    ("triton_poi_fused_gelu_gelu_backward_view_4", "elementwise/other"),
    ("void at::native::vectorized_elementwise_kernel<8, at::native::bfloat16_copy_kernel_cuda", "copy"),
    ("aten::addmm", "matmul"), ("aten::_scaled_dot_product_flash_attention_for_cpu_backward", "attention"),
    ("aten::_log_softmax", "loss"),
])
def test_kernel_names_are_sorted_into_kinds(name, kind):
    assert profiling.kind_of(name) == kind


def test_profile_is_a_whole_number_of_steps_on_one_process(tmp_path):
    for value, message in (("-1", "profile=-1 must be a whole number of training steps (0: none)"),
                           ("2", "profile=2 profiles task=train on one process; got task=train, parallel=ddp")):
        result = harness_cmd(*TINY, f"profile={value}", *(["parallel=ddp"] if value == "2" else []), cwd=tmp_path)
        assert result.returncode == 2 and f"error: {message}" in result.stderr, result.stderr
