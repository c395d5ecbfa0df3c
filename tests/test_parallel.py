"""Parallel strategies on 2 (and 4) gloo ranks on CPU: every layout trains what the single process trains.

These are the guard against silent parallelism bugs: a wrong gradient average, a TP plan that mixes up heads,
a pipeline that drops a microbatch or forgets the tied embedding all show up as a different loss trajectory.
"""
import json

import pandas as pd
import pytest
import torch
import torch.distributed as dist

from harness import distributed, load_results, parallel
from models.gpt import GPT, SPEC, GPTConfig, tp_plan
from models.spec import IGNORE, token_loss
from tests.conftest import TINY, harness_cmd

# Six optimizer steps, the loss recorded after every one of them (eval_points = steps).
STEPS = ["data=markov", "data.train_tokens=2e5", "data.val_tokens=2e4", "data.tokens=1536", "model.n_layer=2",
         "model.d_model=32", "model.n_head=2", "model.seq_len=32", "task.batch_size=8", "task.eval_points=6",
         "task.eval_tokens=1024", "progress=off"]
DATA_PARALLEL = ("ddp", "zero1", "fsdp_zero2", "fsdp_zero3")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("parallel")
    result = harness_cmd("-m", *STEPS, "parallel=single,ddp,zero1,fsdp_zero2,fsdp_zero3,tp,pp",
                         "hydra.sweep.dir=sweep", cwd=cwd)
    assert result.returncode == 0, result.stderr
    more = harness_cmd("-m", *STEPS, "parallel=pp", "parallel.schedule=gpipe", "hydra.sweep.dir=gpipe", cwd=cwd)
    assert more.returncode == 0, more.stderr
    two_d = harness_cmd("-m", *STEPS, "parallel=fsdp_tp", "parallel.world_size=4", "hydra.sweep.dir=fsdp_tp", cwd=cwd)
    assert two_d.returncode == 0, two_d.stderr
    df = load_results([cwd / "sweep", cwd / "gpipe", cwd / "fsdp_tp"])
    df["layout"] = df["parallel.name"] + df["parallel.schedule"].fillna("").map(lambda s: f"_{s}" if s else "")
    assert (df.status == "ok").all(), df[["layout", "status", "error"]]
    return df.set_index("layout")


def trajectory(row) -> list[float]:
    return [point[key] for point in row.curve for key in ("train_loss", "val_loss")]


@pytest.mark.slow
def test_every_strategy_reproduces_the_single_process_loss_trajectory(sweep):
    reference = trajectory(sweep.loc["single"])
    assert len(reference) == 12
    for layout in ("ddp", "zero1", "fsdp_zero2", "fsdp_zero3", "tp", "pp_1f1b", "pp_gpipe", "fsdp_tp"):
        assert trajectory(sweep.loc[layout]) == pytest.approx(reference, rel=1e-5, abs=0), layout


@pytest.mark.slow
def test_the_encoder_decoder_trains_the_same_on_data_and_tensor_parallel_layouts(tmp_path):
    # span corruption happens on the whole batch before it is split, and TP splits cross-attention's heads too
    result = harness_cmd("-m", "model=encdec", *STEPS, "parallel=single,ddp,fsdp_zero3,tp", "hydra.sweep.dir=sweep", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "sweep").set_index("parallel.name")
    assert (df.status == "ok").all(), df[["status", "error"]]
    reference = trajectory(df.loc["single"])
    for layout in ("ddp", "fsdp_zero3", "tp"):
        assert trajectory(df.loc[layout]) == pytest.approx(reference, rel=1e-5, abs=0), layout


@pytest.mark.slow
def test_llama_trains_the_same_on_every_layout(tmp_path):
    # grouped-query attention: TP gives each rank two of the four query heads and the key-value head they read
    llama = ["model=llama", *STEPS, "model.n_head=4", "model.n_kv_head=2"]
    result = harness_cmd("-m", *llama, "parallel=single,ddp,zero1,fsdp_zero2,fsdp_zero3,tp,pp", "hydra.sweep.dir=sweep",
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    two_d = harness_cmd("-m", *llama, "parallel=fsdp_tp", "parallel.world_size=4", "hydra.sweep.dir=fsdp_tp", cwd=tmp_path)
    assert two_d.returncode == 0, two_d.stderr
    df = load_results([tmp_path / "sweep", tmp_path / "fsdp_tp"]).set_index("parallel.name")
    assert (df.status == "ok").all(), df[["status", "error"]]
    reference = trajectory(df.loc["single"])
    for layout in ("ddp", "zero1", "fsdp_zero2", "fsdp_zero3", "tp", "pp", "fsdp_tp"):
        assert trajectory(df.loc[layout]) == pytest.approx(reference, rel=1e-5, abs=0), layout


@pytest.mark.slow
def test_data_parallel_strategies_agree_bit_for_bit(sweep):
    # Same arithmetic: the same gradient average, the same elementwise AdamW, sharded or not.
    first = trajectory(sweep.loc["ddp"])
    for layout in DATA_PARALLEL[1:]:
        assert trajectory(sweep.loc[layout]) == first, layout


@pytest.mark.slow
def test_records_say_the_layout_and_every_rank(sweep):
    for layout, (world, dp, tp, pp) in {"ddp": (2, 2, 1, 1), "tp": (2, 1, 2, 1), "pp_1f1b": (2, 1, 1, 2),
                                        "fsdp_tp": (4, 2, 2, 1), "single": (1, 1, 1, 1)}.items():
        row = sweep.loc[layout]
        assert (row["parallel_info.world_size"], row["parallel_info.dp"], row["parallel_info.tp"], row["parallel_info.pp"]) == (world, dp, tp, pp)
        assert [r["rank"] for r in row["parallel_info.per_rank"]] == list(range(world))
        assert (row["parallel_info.backend"] == "gloo") if world > 1 else pd.isna(row["parallel_info.backend"])


@pytest.mark.slow
def test_memory_held_per_rank_matches_the_zero_model(sweep):
    full = sweep.loc["ddp", "parallel_info.per_rank"][0]
    assert full["param_bytes"] == full["grad_bytes"] == full["optimizer_bytes"] / 2 == 4 * full["psi"]
    # What the ZeRO stage shards; the rest every rank holds whole. Parameters are compared mid-step, when
    # ZeRO-2 (FSDP2 without resharding after forward) holds all of them gathered.
    for layout, sharded in {"ddp": (), "zero1": ("optimizer_bytes",), "fsdp_zero2": ("grad_bytes", "optimizer_bytes"),
                            "fsdp_zero3": ("param_bytes_in_step", "grad_bytes", "optimizer_bytes")}.items():
        ranks = sweep.loc[layout, "parallel_info.per_rank"]
        # ZeroRedundancyOptimizer gives whole parameters to ranks, so its halves differ by up to the largest one.
        # (8 bytes of AdamW state per element; the model of STEPS: 16 Markov symbols, 2 layers of width 32.)
        swept = GPT(GPTConfig(vocab_size=16, seq_len=32, n_layer=2, d_model=32, n_head=2))
        assert sum(p.numel() for p in swept.parameters()) * 4 == full["param_bytes"]
        slack = max(p.numel() for p in swept.parameters()) * 8 if layout == "zero1" else 64
        for key in ("param_bytes_in_step", "grad_bytes", "optimizer_bytes"):
            predicted = f"predicted_{key.removesuffix('_in_step')}"
            held = [r[key] for r in ranks]
            if key in sharded:
                assert all(abs(r[key] - r[predicted]) <= slack for r in ranks), (layout, key, ranks)
                assert all(r[predicted] == full[key.removesuffix("_in_step")] / 2 for r in ranks)
            else:
                assert held == [full[key]] * 2 and all(r[predicted] == full[key] for r in ranks), (layout, key)
        if sharded:  # at rest every FSDP rank keeps only its shard: together the shards are the whole
            for key in ("param_bytes", "grad_bytes", "optimizer_bytes") if layout != "zero1" else ("optimizer_bytes",):
                assert sum(r[key] for r in ranks) == full[key], (layout, key)


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 64, "seq_len": 16, "n_layer": 4, "d_model": 32, "n_head": 4, **overrides}))


def _tensor_parallel_errors(positions: str) -> dict:
    """On every rank: the TP model's logits and gradients against the unsharded model's."""
    from torch.distributed.device_mesh import init_device_mesh
    reference, model = tiny_model(positions=positions), tiny_model(positions=positions)
    parallel.tensor_parallel(model, init_device_mesh("cpu", (dist.get_world_size(),)), tp_plan(model))
    x = torch.randint(0, 64, (3, 16), generator=torch.Generator().manual_seed(1))
    expected, got = reference(x), model(x)
    expected.square().mean().backward()
    got.square().mean().backward()
    grads = {name: (p.grad.full_tensor() - dict(reference.named_parameters())[name].grad).norm().item()
             / dict(reference.named_parameters())[name].grad.norm().item() for name, p in model.named_parameters()}
    return {"logits": ((got - expected).norm() / expected.norm()).item(), "grads": grads,
            "tied": model.lm_head.weight is model.wte.weight}


def _tensor_parallel_errors_by_positions(kinds: list[str]) -> dict:
    return {positions: _tensor_parallel_errors(positions) for positions in kinds}


def test_tensor_parallel_outputs_and_gradients_match_the_unsharded_model():
    kinds = ["learned", "sinusoidal", "rope"]
    for ranks in distributed.launch(_tensor_parallel_errors_by_positions, (kinds,), 2, "cpu", timeout_s=300):
        for positions in kinds:
            result = ranks[positions]
            assert result["logits"] < 1e-6, positions
            assert result["tied"] and len(result["grads"]) == len(list(tiny_model(positions=positions).parameters()))
            assert max(result["grads"].values()) < 1e-5, (positions, result["grads"])


def _pipeline_gradient_errors(schedule: str) -> dict:
    """Pipeline gradients over 4 microbatches against one full-batch backward of the whole model."""
    reference = tiny_model()
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(2))
    loss = token_loss(reference(x), y)
    loss.backward()
    layout = parallel.build("pp", tiny_model(), SPEC, lambda m, zero=False: torch.optim.SGD(m.parameters()), torch.device("cpu"),
                            8, schedule=schedule, microbatches=4)
    pp_loss = parallel.forward_backward(layout, x, y, cast=lambda: torch.autocast("cpu", enabled=False))
    lo, hi = layout.extra["stage_blocks"]
    errors = {}
    for name, p in layout.model.named_parameters():
        if name.startswith("blocks."):
            index, rest = name.split(".", 2)[1:]
            name = f"blocks.{lo + int(index)}.{rest}"
        # the stage's embedding and head (final norm, unembedding) by the model's names; the last stage's copy of
        # the tied table has its gradient summed with the first's
        name = {"head.0.weight": "ln_f.weight", "head.0.bias": "ln_f.bias",
                "head.1.weight": "wte.weight"}.get(name, name.removeprefix("embed."))
        ref = dict(reference.named_parameters())[name].grad
        errors[name] = ((p.grad - ref).norm() / ref.norm()).item()
    return {"loss": (pp_loss.item(), loss.item()), "errors": errors, "blocks": [lo, hi]}


def _pipeline_gradient_errors_by_schedule(schedules: list[str]) -> dict:
    return {schedule: _pipeline_gradient_errors(schedule) for schedule in schedules}


def test_pipeline_gradients_match_the_full_batch_gradients():
    for schedule_results in zip(*(ranks.values() for ranks in distributed.launch(
            _pipeline_gradient_errors_by_schedule, (["gpipe", "1f1b"],), 2, "cpu", timeout_s=300))):
        results = list(schedule_results)  # this schedule's result on rank 0, rank 1
        assert [r["blocks"] for r in results] == [[0, 2], [2, 4]]
        for result in results:
            assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-6)
            assert max(result["errors"].values()) < 1e-5, result["errors"]
        assert "wte.weight" in results[0]["errors"] and "wte.weight" in results[1]["errors"]


def _data_parallel_gradient_errors(names: list[str], micro_batch: int | None = None) -> dict:
    """For each layout, this rank's gradients after one step on the global batch (`micro_batch` rows per forward and
    backward) against one full-batch backward of the unsharded model: a wrong average (a sum, a missing all-reduce,
    one rank's rows counted twice, a micro-batch's gradients left out or never reduced) shows at once."""
    from omegaconf import OmegaConf

    from harness.optimizer import make_optimizer
    reference = tiny_model()
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(2))
    loss = token_loss(reference(x), y)
    loss.backward()
    wanted = dict(reference.named_parameters())
    t = OmegaConf.create({"lr": 1e-3, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95})
    results = {}
    for name in names:
        layout = parallel.build(name, tiny_model(), SPEC, lambda m, zero=False: make_optimizer(m, t, zero), torch.device("cpu"),
                                8, tp_degree=2)
        step_loss = parallel.forward_backward(layout, x, y, cast=lambda: torch.autocast("cpu", enabled=False),
                                              micro_batch=micro_batch, measure_params=True)
        errors = {}
        for key, p in getattr(layout.model, "module", layout.model).named_parameters():
            grad = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
            errors[key] = ((grad - wanted[key].grad).norm() / wanted[key].grad.norm()).item()
        layout.optimizer.step()  # AdamW's state exists from the first step
        results[name] = {"loss": (step_loss.item(), loss.item()), "errors": errors, "held": parallel.rank_memory(layout),
                         "psi": parallel.model_parallel_params(layout)}
    return results


@pytest.fixture(scope="module")
def data_parallel_ranks():
    return distributed.launch(_data_parallel_gradient_errors, (list(DATA_PARALLEL),), 2, "cpu", timeout_s=300)


@pytest.mark.xdist_group("data_parallel_ranks")   # one worker runs the ranks fixture
def test_data_parallel_gradients_equal_one_full_batch_backward(data_parallel_ranks):
    ranks = [*data_parallel_ranks, *distributed.launch(_data_parallel_gradient_errors, (["fsdp_tp"],), 4, "cpu", timeout_s=300)]
    for rank in ranks:
        for name, result in rank.items():
            assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-6), name
            assert len(result["errors"]) == len(list(tiny_model().parameters())), name
            assert max(result["errors"].values()) < 1e-5, (name, result["errors"])


def test_accumulated_micro_batches_give_every_data_parallel_layout_the_full_batch_gradients():
    # 8 rows, 2 ranks, micro-batches of 2: each rank runs 2 forwards and backwards (DDP's first without its all-reduce)
    ranks = distributed.launch(_data_parallel_gradient_errors, (["ddp", "zero1", "fsdp_zero2", "fsdp_zero3"], 2), 2, "cpu",
                               timeout_s=300)
    for rank in ranks:
        for name, result in rank.items():
            assert result["loss"][0] == pytest.approx(result["loss"][1], rel=1e-6), name
            assert max(result["errors"].values()) < 1e-5, (name, result["errors"])


def test_micro_batches_are_what_the_model_sees_and_their_gradients_sum_to_the_batchs():
    from omegaconf import OmegaConf

    from harness.optimizer import make_optimizer
    x = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(2))
    y[:2, :12] = IGNORE   # as a masked objective: the first micro-batch predicts 8 targets, the others 32 each
    reference = tiny_model()
    loss = token_loss(reference(x), y)
    loss.backward()
    t = OmegaConf.create({"lr": 1e-3, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95})
    layout = parallel.build("single", tiny_model(), SPEC, lambda m, zero=False: make_optimizer(m, t, zero),
                            torch.device("cpu"), 8)
    seen, losses = [], []
    layout.model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    layout.loss = lambda logits, targets, predicted: losses.append(targets.shape[0]) or token_loss(logits, targets, predicted)
    step_loss = parallel.forward_backward(layout, x, y, cast=lambda: torch.autocast("cpu", enabled=False), micro_batch=2)
    assert seen == losses == [2, 2, 2, 2]
    assert step_loss.item() == pytest.approx(loss.item(), rel=1e-6)
    for (name, p), (_, q) in zip(layout.model.named_parameters(), reference.named_parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-5, atol=1e-7), name


def test_a_run_in_micro_batches_trains_as_one_in_whole_batches(tmp_path):
    result = harness_cmd("-m", *TINY, "data.tokens=1e4", "task.micro_batch_size=null,2", "hydra.sweep.dir=sweep",
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = {r["config"]["task"]["micro_batch_size"]: r
               for r in (json.loads(p.read_text()) for p in (tmp_path / "sweep").glob("*/record.json"))}
    whole, parts = records[None], records[2]
    assert (whole["hparams_info"]["accumulation_steps"], parts["hparams_info"]["accumulation_steps"]) == (1, 4)
    assert parts["hparams_info"]["micro_batch_size"] == 2
    # the same steps on the same batches: only the order of float32 sums differs
    assert parts["metrics"]["steps"] == whole["metrics"]["steps"] > 30
    assert parts["metrics"]["val_loss"] == pytest.approx(whole["metrics"]["val_loss"], rel=1e-4)
    assert parts["metrics"]["train_loss"] == pytest.approx(whole["metrics"]["train_loss"], rel=1e-4)


@pytest.mark.xdist_group("data_parallel_ranks")
def test_bytes_each_data_parallel_rank_holds_match_the_zero_model(data_parallel_ranks):
    # fp32 AdamW: 4 bytes per parameter and gradient, 8 of optimizer state. What the ZeRO stage shards is halved on
    # each of the 2 ranks; the rest every rank holds whole. Parameters are compared mid-step, when ZeRO-2 (FSDP2
    # without resharding after forward) holds all of them gathered.
    psi = sum(p.numel() for p in tiny_model().parameters())
    slack = {"zero1": max(p.numel() for p in tiny_model().parameters()) * 8}  # whole parameters go to a rank's shard
    for name in DATA_PARALLEL:
        stage = parallel.ZERO_STAGE[name]
        predicted = parallel.zero_prediction(psi, stage, 2, 4, 4, 8)
        held = [rank[name]["held"] for rank in data_parallel_ranks]
        assert all(rank[name]["psi"] == psi for rank in data_parallel_ranks)
        assert [h["param_bytes_in_step"] for h in held] == [4 * psi] * 2 if stage < 3 else True
        for key, measured in (("param_bytes", "param_bytes_in_step"), ("grad_bytes", "grad_bytes"),
                              ("optimizer_bytes", "optimizer_bytes")):
            for h in held:
                assert abs(h[measured] - predicted[key]) <= slack.get(name, 64), (name, key, h, predicted)
        if stage:  # together the shards are the whole
            assert sum(h["optimizer_bytes"] for h in held) == 8 * psi, name


@pytest.mark.parametrize("override,message", [  # every layout check: tests/test_config.py
    (["parallel=tp", "model.n_head=4", "model.d_model=48", "parallel.world_size=3"],
     "error: parallel=tp: tensor-parallel degree 3 does not divide model.n_head=4"),
])
def test_impossible_layouts_are_one_line_before_any_work(tmp_path, override, message):
    result = harness_cmd(*STEPS, *override, "hydra.run.dir=run", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == message
    assert not (tmp_path / "run" / "record.json").exists()


def test_more_ranks_than_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert distributed.too_many_ranks(2, "cuda") == "parallel.world_size=2 but this machine has 1 GPU(s)"
    assert distributed.too_many_ranks(1, "cuda") is None
    assert distributed.too_many_ranks(8, "cpu") is None  # CPU ranks are processes sharing the cores


@pytest.mark.slow
def test_unsupported_precision_layouts_and_divergence_are_records_in_a_sweep(tmp_path):
    result = harness_cmd("-m", *STEPS, "parallel=fsdp_zero3", "precision=fp16,bf16", "hydra.sweep.dir=s", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = load_results(tmp_path / "s").set_index("precision.name")
    assert df.loc["fp16", "status"] == "unsupported" and "gradient scaling" in df.loc["fp16", "error"]
    assert df.loc["bf16", "status"] == "ok"
    # A loss that blows up on every rank comes back from the ranks as `diverged`, not as a launcher traceback.
    result = harness_cmd(*STEPS, "parallel=ddp", "task.lr=1e6", "task.grad_clip=0", "hydra.run.dir=run", cwd=tmp_path)
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    assert record["status"] == "diverged" and "training loss became" in record["error"], record["error"]


def test_zero_model_reproduces_the_papers_figure_1_example():
    # Rajbhandari et al. 2020, Figure 1: Psi = 7.5B, N_d = 64, K = 12 (mixed-precision Adam).
    gb = {stage: sum(parallel.zero_prediction(7.5e9, stage, 64, 2, 2, 12).values()) / 1e9 for stage in range(4)}
    assert gb[0] == pytest.approx(120)
    assert gb[1] == pytest.approx(31.4, abs=0.05)
    assert gb[2] == pytest.approx(16.6, abs=0.05)
    assert gb[3] == pytest.approx(1.88, abs=0.01)


def test_slurm_ranks_come_from_the_environment(monkeypatch):
    monkeypatch.setattr(distributed.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(OSError("no scontrol")))
    assert distributed.first_host("gpu[03-05,07],cpu1") == "gpu03"
    assert distributed.first_host("node7") == "node7"
    for key, value in {"SLURM_NTASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "12345",
                       "SLURM_JOB_NODELIST": "gpu[03-04]"}.items():
        monkeypatch.setenv(key, value)
    ranks = distributed.slurm_ranks()
    assert {k: ranks[k] for k in ("rank", "world_size", "local_rank", "master_addr")} == {
        "rank": 3, "world_size": 4, "local_rank": 1, "master_addr": "gpu03"}
    assert 20000 <= ranks["master_port"] < 40000
    assert distributed.world_size("auto", "cuda") == 4
    assert distributed.is_secondary_slurm_rank()
    # Two job steps of one allocation (srun beside srun) share the job id: each gets its own rendezvous port.
    monkeypatch.setenv("SLURM_STEP_ID", "1")
    assert distributed.slurm_ranks()["master_port"] != ranks["master_port"]
    ports = {distributed.rendezvous_port("12345", str(step)) for step in range(20)}
    assert len(ports) == 20 and distributed.rendezvous_port("12345", "0") == distributed.rendezvous_port("12345", "0")


def test_one_gpu_makes_multi_rank_strategies_unsupported_records_not_a_stopped_sweep(monkeypatch):
    from hydra import compose, initialize_config_dir

    from harness.config import CONF_DIR, validate
    from harness.errors import Unsupported
    from harness.tasks import train

    monkeypatch.setattr(distributed, "world_size", lambda setting, device_type, machine=None: 1 if setting == "auto" else int(setting))
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=[*STEPS, "parallel=fsdp_tp"])
    validate(cfg)  # world_size=auto on a one-GPU machine is not a config error...
    with pytest.raises(Unsupported, match="parallel=fsdp_tp needs 2 or more ranks; parallel.world_size=auto found 1"):
        train.run(cfg)  # ...but a record saying why this machine cannot run it
