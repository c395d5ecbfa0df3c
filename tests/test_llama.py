"""model=llama: exact FLOPs (FlopCounterMode), parameters (transformers' LlamaForCausalLM), grouped-query attention
against multi-head attention with shared heads, its KV cache at the allocator, tensor parallelism over query and
key-value heads, and a run through the harness."""
import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import distributed, flops
from models import llama
from models.llama import Llama, LlamaConfig
from models.spec import token_loss
from tests.conftest import TINY, harness_cmd

SHAPES = {
    "mha": dict(n_kv_head=None),
    "gqa": dict(n_kv_head=2),
    "mqa": dict(n_kv_head=1),
    "tied_narrow_ffn": dict(n_kv_head=2, tie_embeddings=True, ffn_hidden=100),
}


def small(**overrides) -> LlamaConfig:
    return LlamaConfig(**{"vocab_size": 97, "seq_len": 24, "n_layer": 2, "d_model": 64, "n_head": 4, **overrides})


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_training_flops_per_token_equal_the_flop_counter(shape):
    cfg = small(attention="dense", **shape)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len))
    with FlopCounterMode(display=False) as counter:
        token_loss(Llama(cfg)(x), x).backward()
    assert llama.flops_per_token(cfg).dense == pytest.approx(counter.get_total_flops() / x.numel(), rel=1e-9)


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_parameter_counts_equal_transformers_llama(shape):
    transformers = pytest.importorskip("transformers", reason="transformers (the `peers` extra) is not installed")
    cfg = small(**shape)
    counts = llama.param_counts(Llama(cfg))
    reference = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.hidden, num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head, num_key_value_heads=cfg.kv_heads, tie_word_embeddings=cfg.tie_embeddings,
        max_position_embeddings=cfg.seq_len))
    assert counts["total"] == sum(p.numel() for p in reference.parameters())
    assert counts["non_embedding"] == llama.non_embedding_params(cfg)
    assert counts["embedding"] == cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def test_the_default_swiglu_width_is_metas():
    # LLaMA-7B: d_model 4096, multiple_of 256 -> 11008 (Touvron et al. 2023, and Meta's params.json)
    assert LlamaConfig(d_model=4096, n_head=32, multiple_of=256).hidden == 11008
    assert LlamaConfig(d_model=128, multiple_of=32).hidden == 352    # 8/3 x 128 = 341.3, up to a multiple of 32


def test_grouped_query_attention_is_multi_head_attention_with_each_key_value_head_shared_by_its_group():
    torch.manual_seed(0)
    gqa = Llama(small(n_kv_head=2)).double().eval()
    mha = Llama(small(n_kv_head=None)).double().eval()
    state = gqa.state_dict()
    for name, tensor in state.items():   # key-value head j serves query heads 2j and 2j + 1
        if name.endswith(("attn.wk.weight", "attn.wv.weight")):
            state[name] = tensor.view(2, 16, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    mha.load_state_dict(state)
    x = torch.randint(0, 97, (2, 24))
    assert torch.allclose(gqa(x), mha(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_kv_head", [None, 2, 1], ids=["mha", "gqa", "mqa"])
def test_the_kv_cache_holds_the_key_value_heads_only_measured_at_the_allocator(n_kv_head):
    from harness.tasks.inference import cached_logits_error, generation_memory
    torch.manual_seed(0)
    cfg = small(n_kv_head=n_kv_head, seq_len=64)
    model, prompt = Llama(cfg).eval(), torch.randint(0, 97, (3, 20))
    assert cached_logits_error(model, llama.SPEC, prompt, 12) < 1e-5
    memory = generation_memory(model, llama.SPEC, prompt, 10)
    assert memory.held == flops.kv_cache_bytes(n_layer=2, kv_heads=cfg.kv_heads, head_dim=16, context=30, batch=3,
                                               bytes_per_element=4)


def _tensor_parallel_errors(n_kv_head: int) -> dict:
    """On every rank: the TP model's logits and gradients against the unsharded model's."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from harness import parallel
    torch.manual_seed(0)
    reference = Llama(small(n_kv_head=n_kv_head))
    torch.manual_seed(0)
    model = Llama(small(n_kv_head=n_kv_head))
    parallel.tensor_parallel(model, init_device_mesh("cpu", (dist.get_world_size(),)), llama.tp_plan(model))
    x = torch.randint(0, 97, (3, 24), generator=torch.Generator().manual_seed(1))
    expected, got = reference(x), model(x)
    expected.square().mean().backward()
    got.square().mean().backward()
    wanted = dict(reference.named_parameters())
    grads = {name: ((p.grad.full_tensor() - wanted[name].grad).norm() / wanted[name].grad.norm()).item()
             for name, p in model.named_parameters()}
    return {"logits": ((got - expected).norm() / expected.norm()).item(), "grads": grads}


def test_tensor_parallel_splits_query_and_key_value_heads_and_matches_the_unsharded_model():
    for n_kv_head in (2, 4):   # on 2 ranks: one key-value head each (GQA), or two (MHA)
        for result in distributed.launch(_tensor_parallel_errors, (n_kv_head,), 2, "cpu", timeout_s=300):
            assert result["logits"] < 1e-6, n_kv_head
            assert len(result["grads"]) == len(list(Llama(small()).parameters()))
            assert max(result["grads"].values()) < 1e-5, (n_kv_head, result["grads"])


LLAMA = ["model=llama", *TINY, "model.d_model=64", "model.n_head=4"]


def test_llama_trains_through_the_harness_and_a_tp_degree_must_divide_its_key_value_heads(tmp_path):
    result = harness_cmd(*LLAMA, "model.n_kv_head=2", "data.tokens=1e5", "task.eval_points=3", "hydra.run.dir=run",
                         cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "run" / "record.json").read_text())
    info = record["model_info"]
    assert (info["family"], info["n_kv_head"], info["d_mlp"], info["flops_counted"]) == ("llama", 2, 192, "closed form")
    cfg = small(vocab_size=16, seq_len=32, n_layer=1, n_kv_head=2)
    assert info["params_non_embedding"] == llama.non_embedding_params(cfg)
    assert info["flops_per_token_causal"] == llama.flops_per_token(cfg).causal
    losses = [point["val_loss"] for point in record["curve"]]
    assert losses[-1] < losses[0]
    bad = harness_cmd(*LLAMA, "model.n_head=8", "model.n_kv_head=2", "parallel=tp", "parallel.world_size=4",
                      "hydra.run.dir=bad", cwd=tmp_path)
    assert (bad.returncode, bad.stderr.strip()) == (2, "error: parallel=tp: tensor-parallel degree 4 does not divide "
                                                       "model.n_kv_head=2")
    groups = harness_cmd(*LLAMA, "model.n_kv_head=3", "hydra.run.dir=bad", cwd=tmp_path)
    assert (groups.returncode, groups.stderr.strip()) == (2, "error: model.n_kv_head=3 does not divide model.n_head=4: "
                                                             "each key-value head serves a whole group")


def test_sizing_by_parameters_uses_llamas_count(tmp_path):
    from hydra import compose, initialize_config_dir

    from harness.config import CONF_DIR
    from harness.plan import model_shape, model_spec
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = compose("config", overrides=["model=llama", "model.params=2e6", "model.head_dim=32"])
    n_layer, d_model, n_head = model_shape(cfg.model, model_spec(cfg.model))
    count = llama.non_embedding_params(LlamaConfig(n_layer=n_layer, d_model=d_model, n_head=n_head))
    assert abs(count / 2e6 - 1) <= 0.10 and d_model == 32 * n_head
