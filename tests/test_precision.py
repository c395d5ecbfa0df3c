"""Precision modes in task=train: what is in effect is what the record says, and unsupported modes are records."""
import importlib.util
import json
import sys

import pytest
import torch

from harness import load_results
from tests.conftest import harness_cmd


def train(tmp_path, tiny, *overrides):
    tmp_path.mkdir(parents=True, exist_ok=True)
    result = harness_cmd(*tiny, *overrides, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return json.loads((tmp_path / "run" / "record.json").read_text())


@pytest.fixture(scope="module")
def fp32_reference(tmp_path_factory):
    from tests.conftest import TINY
    return train(tmp_path_factory.mktemp("fp32"), list(TINY))


@pytest.mark.xdist_group("fp32_reference")   # one worker trains the fp32 reference
@pytest.mark.parametrize("mode,params,autocast", [("bf16", "float32", "bfloat16"), ("fp16", "float32", "float16"),
                                                   ("bf16_pure", "bfloat16", None)])
def test_mixed_precision_trains_and_records_what_was_in_effect(tmp_path, tiny, fp32_reference, mode, params, autocast):
    reference = fp32_reference
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


@pytest.mark.parametrize("positions", ["rope", "sinusoidal", "alibi"])
def test_bf16_weights_keep_position_tables_in_fp32(positions):
    # A bf16 position angle or distance has 8 bits of mantissa: past position 256 it is another position's.
    from harness import precision
    from models.gpt import GPT, GPTConfig
    model = precision.prepare(GPT(GPTConfig(vocab_size=64, seq_len=32, n_layer=2, d_model=64, n_head=4,
                                            positions=positions)), "bf16_pure")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.lm_head.weight is model.wte.weight
    assert [b.dtype for b in model.buffers()] and {b.dtype for b in model.buffers()} == {torch.float32}


def test_alibi_biases_are_rounded_to_bf16_once():
    from models.positions import alibi_bias, alibi_slopes
    slopes = alibi_slopes(4)
    bias = alibi_bias(slopes, 1, 1002, causal=True, dtype=torch.bfloat16)[:, 0, 0]  # the key 1001 positions back
    assert torch.equal(bias, (-slopes * 1001).to(torch.bfloat16))


@pytest.mark.skipif(importlib.util.find_spec("torchao") is None, reason="torchao is not installed (the quant extra)")
def test_fp8_converts_the_blocks_and_keeps_the_output_head_in_high_precision():
    from harness import precision
    from models.gpt import GPT, GPTConfig
    model = precision.prepare(GPT(GPTConfig(vocab_size=64, seq_len=32, n_layer=2, d_model=64, n_head=4)), "fp8")
    linears = {name: type(m).__name__ for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert linears.pop("lm_head") == "Linear" and set(linears.values()) == {"Float8Linear"} and len(linears) == 8
    mode = precision.MODES["fp8"]
    assert mode.autocast == torch.bfloat16 and mode.mfu_peak is None  # mixed fp8 / bf16 matmuls: no single peak


def test_the_timed_step_holds_the_step_only(monkeypatch, tiny):
    # The family's examples (here BERT masking) are made outside the timed step, and nothing in it waits for the
    # device: no loss or norm read back to the host while the clock runs.
    from hydra import compose, initialize_config_dir

    from harness import measure
    from models.spec import Examples
    from harness.config import CONF_DIR
    from harness.tasks import train
    clocks, made_while_timed, reads_while_timed = [], [], []

    class Recording(measure.StepClock):
        def start(self):
            clocks.append(True)
            super().start()

        def stop(self):
            super().stop()
            clocks.append(False)

    def timing():
        return bool(clocks) and clocks[-1]

    def read(original):
        def spy(self):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            # AdamW's step counter lives on the host (not capturable): reading it waits for nothing
            if timing() and not caller.startswith("torch.optim"):
                reads_while_timed.append(caller)
            return original(self)
        return spy

    examples = Examples.__call__
    monkeypatch.setattr(measure, "StepClock", Recording)
    monkeypatch.setattr(Examples, "__call__", lambda self, *a, **k: made_while_timed.append(timing()) or examples(self, *a, **k))
    monkeypatch.setattr(torch.Tensor, "item", read(torch.Tensor.item))
    monkeypatch.setattr(torch.Tensor, "__float__", read(torch.Tensor.__float__))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*tiny, "model=encoder", "model.n_layer=1", "model.d_model=32", "model.n_head=2"])
    result = train.train(*train.prepare(cfg))
    assert result["metrics"]["steps"] > 20 and len(made_while_timed) > 20 and not any(made_while_timed)
    assert not reads_while_timed, reads_while_timed


def test_an_absent_or_broken_torchao_is_a_reason_not_a_crash(monkeypatch):
    from harness import quantize

    def broken(method):
        raise AttributeError("module 'torch.utils._pytree' has no attribute 'register_constant'")

    quantize.torchao_problem.cache_clear()
    monkeypatch.setattr(quantize, "_config", broken)  # a torchao built for a newer torch
    try:
        assert quantize.unsupported("nf4").startswith("torchao is installed but does not load with torch ")
        monkeypatch.setattr(quantize.importlib.util, "find_spec", lambda name: None)
        quantize.torchao_problem.cache_clear()
        assert "needs torchao, not installed here (pip install -e '.[quant]')" in quantize.unsupported("int8")
    finally:
        quantize.torchao_problem.cache_clear()


def test_bf16_on_a_gpu_without_bf16_tensor_cores_runs_and_says_it_is_slow(monkeypatch):
    from harness import precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))   # a V100
    cuda = torch.device("cuda")
    assert precision.unsupported("bf16", cuda) is None
    assert precision.slow_here("bf16_pure", cuda) == ("bf16 on compute capability 7.0 has no bf16 tensor cores; "
                                                      "expect it slower than fp16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    assert precision.slow_here("bf16", cuda) is None
