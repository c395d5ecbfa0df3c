"""compile=true: the compiled blocks train what eager trains, the saved model's names do not change, and where
compilation cannot run the job trains eagerly and says why. Speed is the study's (study=compile), not a test's."""
import json

import pytest
import torch

from harness import compiling
from models import families
from models.spec import IGNORE, Examples, token_loss
from tests.conftest import TINY, harness_cmd

RUN = [*TINY, "data.tokens=1e4", "task.save_model=true"]


SMALL = {"seq_len": 32, "n_layer": 2, "d_model": 32, "n_head": 2, "mlp_ratio": 4.0, "bias": True, "dropout": 0.0,
         "tie_embeddings": True, "positions": "learned"}


# slow: encdec and llama compile the same blocks as gpt and encoder, for a minute on 2 cores
@pytest.mark.parametrize("family", ["gpt", "encoder", *(pytest.param(f, marks=pytest.mark.slow) for f in ("encdec", "llama"))])
def test_one_compiled_step_gives_eagers_logits_and_gradients(family):
    # training runs a family compiled on the same batches diverge only as far as rounding grows along training
    # (an encoder-decoder's eager runs on 1 and 2 threads end about as far apart as eager and compiled)
    spec = families.get(family)
    cfg = spec.config(SMALL, spec.model_vocab(50, 32), "sdpa", {})
    torch.manual_seed(0)
    eager = spec.build(cfg)
    compiled = spec.build(cfg)
    compiled.load_state_dict(eager.state_dict())
    assert compiling.compile_blocks(compiled) == len(compiling.repeated_blocks(compiled)) >= 2
    x, y = Examples(spec, 50, seed=0)(torch.randint(0, 50, (4, 33), generator=torch.Generator().manual_seed(1)))
    expected, got = eager(x), compiled(x)
    token_loss(expected, y).backward()
    token_loss(got, y).backward()
    assert ((got - expected).norm() / expected.norm()).item() < 1e-5
    reference = dict(eager.named_parameters())
    for name, p in compiled.named_parameters():
        assert ((p.grad - reference[name].grad).norm() / reference[name].grad.norm()).item() < 1e-5, name


@pytest.mark.parametrize("predicted", [None, 100])   # 100: a micro-batch's summed loss over its batch's count
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_compiled_loss_is_the_loss_and_its_gradient(dtype, predicted):
    # bf16 logits, as autocast's lm_head gives them, with ignored targets (an encoder's unmasked positions)
    logits = torch.randn(3, 17, 50, generator=torch.Generator().manual_seed(0)).mul(3).to(dtype)
    targets = torch.randint(0, 50, (3, 17), generator=torch.Generator().manual_seed(1))
    targets[0, :5] = IGNORE
    losses, grads = [], []
    for loss_fn in (token_loss, compiling.compiled_loss()):
        x = logits.clone().requires_grad_()
        loss = loss_fn(x, targets, None if predicted is None else torch.tensor(predicted))
        loss.backward()
        losses.append(loss)
        grads.append(x.grad.float())
    assert losses[1].dtype == torch.float32
    assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-6)
    if predicted:   # the summed loss over the count given: 46 targets predicted here, against 100
        assert losses[0].item() == pytest.approx(token_loss(logits, targets).item() * 46 / 100, rel=1e-6)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2   # bf16 gradients: one rounding apart at most
    assert ((grads[1] - grads[0]).norm() / grads[0].norm()).item() < tolerance
    assert grads[0][0, :5].abs().max() == grads[1][0, :5].abs().max() == 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("compile")
    for mode, compile in (("eager", "false"), ("compiled", "true")):
        result = harness_cmd(*RUN, f"compile={compile}", f"hydra.run.dir={mode}", cwd=cwd)
        assert result.returncode == 0, result.stderr
    return {mode: (json.loads((cwd / mode / "record.json").read_text()), cwd / mode) for mode in ("eager", "compiled")}


@pytest.mark.xdist_group("compile_runs")   # one worker compiles the runs fixture
def test_compiled_blocks_train_what_eager_trains(runs):
    (eager, _), (compiled, _) = runs["eager"], runs["compiled"]
    info = compiled["compile_info"]
    assert info["compiled"] and info["units"] == 1 and info["fallback"] is None and info["graph_breaks"] == 0
    assert info["loss"]
    assert eager["compile_info"] == {"requested": False, "compiled": False, "fallback": None}
    # fused kernels round differently, so close, not equal
    for key in ("train_loss", "val_loss"):
        assert [p[key] for p in compiled["curve"]] == pytest.approx([p[key] for p in eager["curve"]], rel=1e-4)


@pytest.mark.xdist_group("compile_runs")
def test_a_compiled_models_saved_weights_keep_their_names(runs):
    (_, eager_dir), (_, compiled_dir) = runs["eager"], runs["compiled"]
    eager = torch.load(eager_dir / "model.pt", weights_only=True)
    compiled = torch.load(compiled_dir / "model.pt", weights_only=True)
    assert list(compiled) == list(eager)


def test_where_compile_cannot_run_the_job_trains_eagerly_and_says_why(monkeypatch):
    from hydra import compose, initialize_config_dir

    from harness.config import CONF_DIR
    from harness.tasks import train
    monkeypatch.setattr(compiling, "unsupported", lambda device_type: "torch.compile does not run on cpu here: no compiler")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*TINY, "data.tokens=2048", "compile=true"])
    result = train.run(cfg)
    assert result["compile_info"] == {"requested": True, "compiled": False,
                                      "fallback": "torch.compile does not run on cpu here: no compiler"}
    assert result["metrics"]["val_loss"] > 0


@pytest.mark.slow
def test_compiled_blocks_train_the_same_on_every_layout(tmp_path):
    from harness import load_results
    steps = [*TINY, "model.n_layer=2", "data.tokens=1536", "task.eval_points=6", "task.eval_tokens=1024"]
    eager = harness_cmd(*steps, "hydra.run.dir=eager", cwd=tmp_path)
    assert eager.returncode == 0, eager.stderr
    result = harness_cmd("-m", *steps, "compile=true", "parallel=single,ddp,zero1,fsdp_zero2,fsdp_zero3,tp,pp",
                         "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    reference = [p["val_loss"] for p in json.loads((tmp_path / "eager" / "record.json").read_text())["curve"]]
    df = load_results(tmp_path / "sweep").set_index("parallel.name")
    assert (df.status == "ok").all() and df["compile_info.compiled"].all(), df[["status", "error"]]
    for layout, curve in df["curve"].items():
        assert [p["val_loss"] for p in curve] == pytest.approx(reference, rel=1e-5), layout


@pytest.mark.parametrize("backend", ["auto", "flash", "math"])
def test_a_compiled_block_is_one_graph_whatever_sdpa_backend_is_pinned(backend):
    # The first GPU run (sdpa pinned to flash) took 5 graph breaks per process and trained slower compiled than
    # eager: the pinned backend's wrapper caught warnings, which dynamo cannot trace.
    import torch._dynamo

    from models.gpt import Block, GPTConfig
    block = Block(GPTConfig(vocab_size=64, seq_len=32, n_layer=1, d_model=32, n_head=2, attention="sdpa",
                            attention_options={"backend": backend}))
    explained = torch._dynamo.explain(block)(torch.randn(2, 32, 32))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
