"""Every config check, table-driven: the overrides that trip it and the one line it says (which names the key, its
value and what would be valid). In-process through Hydra's compose: tests/test_cli.py runs a few through the CLI."""
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from harness import data, measure
from harness.config import CONF_DIR, check_data, check_group_overrides, validate
from harness.errors import ConfigError, Unsupported

CHECKS = [
    (['+model.d_modle=64'],
     "model.d_modle: did you mean model.d_model? (model.family=gpt takes no 'd_modle')"),
    (['model=llama', '+model.mlp_ratio=4'],
     "model.mlp_ratio: did you mean model.aspect_ratio? (model.family=llama takes no 'mlp_ratio')"),
    (['parallel=ddp', 'parallel.timeout_s=0'],
     'parallel.timeout_s=0 must be a positive number'),
    (['threads=0'],
     'threads=0 must be a positive integer'),
    (['seed=-1'],
     'seed=-1 must be a whole number (0 or more)'),
    (['resume=maybe'],
     "resume='maybe' must be true or false"),
    (['progress=loud'],
     "progress='loud'; known: auto, bar, lines, off"),
    (['task.beta1=1'],
     'task.beta1=1 must be a number in [0, 1)'),
    (['task.weight_decay=-0.1'],
     'task.weight_decay=-0.1 must be a number >= 0'),
    (['task.grad_clip=-1'],
     'task.grad_clip=-1 must be a number >= 0 (0: no clipping)'),
    (['task.timing_warmup_steps=-1'],
     'task.timing_warmup_steps=-1 must be a whole number of steps'),
    (['task.save_model=yes'],
     "task.save_model='yes' must be true or false"),
    (['task=inference', 'task.recompute=1'],
     'task.recompute=1 must be true or false'),
    (['device=tpu'],
     "device='tpu': one of auto, cpu, cuda, cuda:N"),
    (['device=mps'],
     "device='mps': one of auto, cpu, cuda, cuda:N"),
    (['task=attention', 'device=cuda:x'],
     "device='cuda:x': one of auto, cpu, cuda, cuda:N"),
    (['task.name=fly'],
     "task.name='fly'; known: train, attention, inference"),
    (['model.family=mamba'],
     "model.family='mamba'; known: custom, encdec, encoder, gpt, llama"),
    (['model.params=-1'],
     'model.params=-1 must be a positive number'),
    (['model.params=1e6', 'model.aspect_ratio=0'],
     'model.aspect_ratio=0 must be a positive number'),
    (['model.params=1e6', 'model.head_dim=2.5'],
     'model.head_dim=2.5 must be a positive integer'),
    (['model.params=10'],
     'model.params=10: no shape with head_dim=32 has a non-embedding parameter count within 10%; try a larger target or a smaller model.head_dim'),
    (['model.n_layer=0'],
     'model.n_layer=0 must be a positive integer'),
    (['model.d_model=-32'],
     'model.d_model=-32 must be a positive integer'),
    (['model.n_head=null', 'model.head_dim=0'],
     'model.head_dim=0 must be a positive integer'),
    (['model.n_head=null', 'model.head_dim=12'],
     'model.head_dim=12 does not divide model.d_model=128'),
    (['model.n_head=0'],
     'model.n_head=0 must be a positive integer'),
    (['model.n_head=3'],
     'model.n_head=3 does not divide model.d_model=128'),
    (['model.positions=rope', 'model.d_model=96', 'model.n_head=32'],
     'model.positions=rope needs an even head size, got d_model/n_head=3'),
    (['model.seq_len=0'],
     'model.seq_len=0 must be a positive integer'),
    (['model.mlp_ratio=0'],
     'model.mlp_ratio=0 must be a positive number'),
    (['model=llama', 'model.n_kv_head=0'],
     'model.n_kv_head=0 must be a positive integer'),
    (['model=llama', 'model.ffn_hidden=2.5'],
     'model.ffn_hidden=2.5 must be a positive integer'),
    (['model.dropout=1.0'],
     'model.dropout=1.0 must be in [0, 1)'),
    (['model.positions=absolute'],
     "model.positions='absolute'; known: learned, sinusoidal, rope, alibi"),
    (['model.positions=alibi', 'attention=performer'],
     'model.positions=alibi biases the full score matrix: it needs attention=sdpa or dense, got attention=performer'),
    (['model=encdec', 'attention=performer'],
     'model.family=encdec cross-attends queries to a different number of keys: it needs attention=sdpa or dense, got attention=performer'),
    (['model=encdec', 'task.eval_lengths=[1,2]'],
     'task.eval_lengths needs a family that reads windows of any length; model.family=encdec does not'),
    (['model.positions=alibi', 'parallel=tp'],
     'model.positions=alibi is not supported with parallel=tp'),
    (['precision.name=fp7'],
     "precision.name='fp7'; known: fp32, tf32, bf16, fp16, bf16_pure, fp8"),
    (['compute=0'],
     'compute=0 must be a positive number'),
    (['data.tokens=-5'],
     'data.tokens=-5 must be a positive number'),
    (['task.eval_lengths=[1,-2]'],
     'task.eval_lengths=-2 must be a positive number'),
    (['task.eval_quantized=[int3]'],
     "task.eval_quantized: unknown quantization 'int3'; known: int8, nf4"),
    (['task.batch_size=0'],
     'task.batch_size=0 must be a positive integer'),
    (['task.lr=0'],
     'task.lr=0 must be a positive number'),
    (['task.eval_points=0'],
     'task.eval_points=0 must be a positive integer'),
    (['task.eval_tokens=0'],
     'task.eval_tokens=0 must be a positive integer'),
    (['task.check_every=0'],
     'task.check_every=0 must be a positive integer'),
    (['task.warmup_fraction=1.0'],
     'task.warmup_fraction=1.0 must be in [0, 1)'),
    (['task.schedule=step'],
     "task.schedule='step'; known: cosine, constant, wsd"),
    (['task.cooldowns=[0.5]'],
     'task.cooldowns needs task.schedule=wsd (a branch leaves the run\'s constant phase), got task.schedule=cosine'),
    (['task.schedule=wsd', 'task.cooldowns=[1.5]'],
     'task.cooldowns: 1.5 is not a fraction of the run\'s tokens in (0, 1)'),
    (['task.schedule=wsd', 'task.cooldowns=[0.05]'],
     'task.cooldowns: a branch at 0.05 would start decaying at 0.04 of the run, inside the warm-up (task.warmup_fraction=0.05)'),
    (['task.schedule=wsd', 'task.cooldowns=[0.5,0.5]'],
     'task.cooldowns=[0.5, 0.5] names a fraction twice'),
    (['task.min_lr_ratio=1.5'],
     'task.min_lr_ratio=1.5 must be in [0, 1]'),
    (['task.schedule=wsd', 'task.decay_shape=exp'],
     "task.decay_shape='exp'; known: linear, sqrt, cosine"),
    (['task.schedule=wsd', 'task.decay_fraction=0.99'],
     'task.decay_fraction=0.99 must be in (0, 1 - task.warmup_fraction = 0.95]: the decay follows the warm-up'),
    (['study.name=nope'],
     "study.name='nope' has no module studies/nope.py"),
    (['parallel.name=ring'],
     "parallel.name='ring'; known: single, ddp, zero1, fsdp_zero2, fsdp_zero3, tp, pp, fsdp_tp"),
    (['parallel=ddp', 'parallel.world_size=0'],
     'parallel.world_size=0 must be a positive integer'),
    (['parallel=ddp', 'parallel.backend=mpi'],
     "parallel.backend='mpi'; known: auto, gloo, nccl"),
    (['parallel=fsdp_tp', 'parallel.tp_degree=0'],
     'parallel.tp_degree=0 must be a positive integer'),
    (['parallel=ddp', 'task.save_model=true'],
     'task.save_model needs parallel=single, got parallel=ddp'),
    (['task.checkpoint_every=-1'],
     'task.checkpoint_every=-1 must be a whole number of steps (0: none)'),
    (['parallel=ddp', 'task.eval_quantized=[int8]'],
     'task.eval_quantized needs parallel=single, got parallel=ddp'),
    (['parallel=pp', 'parallel.world_size=3', 'model.n_layer=2'],
     'parallel=pp: 3 pipeline stages (world_size) is more than model.n_layer=2'),
    (['parallel=pp', 'parallel.microbatches=3', 'task.batch_size=8'],
     'parallel.microbatches=3 does not divide task.batch_size=8'),
    (['parallel=ddp', 'task.batch_size=7'], 'task.batch_size=7 does not split evenly over 2 data-parallel ranks'),
    (['task.micro_batch_size=0'], 'task.micro_batch_size=0 must be a positive integer'),
    (['task.batch_size=16', 'task.micro_batch_size=3'], 'task.micro_batch_size=3 does not divide task.batch_size=16'),
    (['parallel=ddp', 'task.batch_size=8', 'task.micro_batch_size=3'],
     "task.micro_batch_size=3 does not divide each of 2 data-parallel ranks' 4 sequences"),
    (['parallel=pp', 'task.micro_batch_size=2'],
     'task.micro_batch_size=2 with parallel=pp: the pipeline splits the batch itself (parallel.microbatches)'),
    (['parallel=single', 'parallel.world_size=2'], 'parallel=single runs one rank, got parallel.world_size=2'),
    (['parallel=fsdp_tp', 'parallel.tp_degree=4', 'parallel.world_size=2'],
     'parallel.tp_degree=4 does not divide parallel.world_size=2'),
    (['parallel=pp', 'parallel.schedule=zb'], "parallel.schedule='zb'; known: gpipe, 1f1b"),
    (['parallel=tp', 'parallel.world_size=3', 'model.n_head=4'],
     'parallel=tp: tensor-parallel degree 3 does not divide model.n_head=4'),
    (['attention.name=flashy'],
     "attention.name='flashy'; known: dense, flash_attn, longformer, performer, sdpa, xformers"),
    (['attention=longformer', 'attention.impl=fast'],
     "attention=longformer: unknown longformer impl 'fast'; known: blocked, flex, xformers"),
    (['task=inference', 'parallel=ddp'],
     'task=inference runs on one device, got parallel=ddp'),
    (['task=inference', 'attention=performer'],
     "task=inference with attention=performer: FAVOR+'s key stabiliser spans the whole sequence, so decoding from a KV cache cannot give the full forward's outputs; use dense, sdpa, xformers, flash_attn or longformer"),
    (['task=inference', 'task.context=0'],
     'task.context=0 must be a positive integer'),
    (['task=inference', 'task.repeats=3'],
     'task.repeats=3: a median needs at least 5 timed repeats'),
    (['task=inference', 'task.weights=int4'],
     "task.weights='int4'; known: fp32, bf16, int8, nf4"),
    (['task=inference', 'task.compare_weights=[bf16,int4]'],
     "task.compare_weights: 'int4'; known: fp32, bf16, int8, nf4"),
    (['task=inference', 'model=encdec', 'model.seq_len=64', 'task.context=100'],
     'task.context=100 and task.new_tokens=32 must fit the learned tables of model.seq_len=64: 57 encoder and 13 decoder positions; raise model.seq_len or use positions=rope|sinusoidal|alibi'),
    (['task=inference', 'task.context=250', 'task.new_tokens=8'],
     'task.context=250 + task.new_tokens=8 exceeds the learned position table of model.seq_len=256; raise model.seq_len or use positions=rope|sinusoidal|alibi'),
    (['task=inference', 'task.checkpoint=missing.pt'],
     "task.checkpoint='missing.pt' is not a file"),
    (['task=attention', 'task.seq_len=0'],
     'task.seq_len=0 must be a positive integer'),
    (['task=attention', 'task.max_memory_gb=0'],
     'task.max_memory_gb=0 must be a positive number'),
    (['task=attention', 'task.mode=bwd'],
     "task.mode='bwd'; known: fwd, fwd_bwd"),
    (['task=attention', 'task.dtype=fp8'],
     "task.dtype='fp8'; known: fp32, bf16, fp16"),
    (['task=attention', 'task.min_repeats=5', 'task.max_repeats=2'],
     'task.min_repeats=5 is more than task.max_repeats=2'),
    (['task=attention', 'task.warmup=-1'],
     'task.warmup=-1 must be a whole number of untimed calls (0: none)'),
    (['task=attention', 'task.causal=maybe'],
     "task.causal='maybe' must be true or false"),
    (['task=attention', 'task.max_seconds=0'],
     'task.max_seconds=0 must be a positive number'),
    (['task=attention', 'attention=performer', 'attention.num_features=0'],
     'attention=performer: performer num_features=0 must be positive'),
    (['task=attention', 'attention=performer', '+attention.features=8'],
     "attention.features: did you mean attention.num_features? (attention=performer takes no 'features')"),
    (['attention=dense', '+attention.window=8'],
     "attention.window: valid keys: name (attention=dense takes no 'window')"),
]


def config(overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides,message", CHECKS, ids=[" ".join(o) for o, _ in CHECKS])
def test_each_config_check_says_what_is_wrong_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as raised:
        validate(config(overrides))
    assert str(raised.value) == message


# What a family's spec says it cannot do is a record of status `unsupported`, so a sweep across families goes on.
UNSUPPORTED = [
    (['model=encdec', 'parallel=pp'],
     'model.family=encdec has two stacks the decoder reads across; parallel=pp splits one stack into stages '
     '(parallel=pp, task=train)'),
    (['task=inference', 'model=encoder'],
     'task=inference decodes left to right with a KV cache; model.family=encoder is not a decoder'),
]


@pytest.mark.parametrize("overrides,message", UNSUPPORTED, ids=[" ".join(o) for o, _ in UNSUPPORTED])
def test_what_a_family_cannot_do_is_unsupported(overrides, message):
    with pytest.raises(Unsupported) as raised:
        validate(config(overrides))
    assert str(raised.value) == message


def test_a_cuda_device_this_machine_lacks_is_unsupported(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(Unsupported, match=r"^device='cuda:2' but this machine has 2 CUDA device\(s\)$"):
        measure.device_here("cuda:2")
    assert measure.device_here("cuda:1") == torch.device("cuda:1") and measure.device_here("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Unsupported, match=r"^device='cuda' but CUDA is not available$"):
        measure.device_here("cuda")
    assert measure.device_here("cpu") == torch.device("cpu")


MARKOV = ["data=markov", "data.train_tokens=2e4", "data.val_tokens=1000", "model.seq_len=32", "task.batch_size=8"]
DATA_CHECKS = [
    (["model.seq_len=4096"], "model.seq_len=4096 is longer than the validation split of data=markov (1000 tokens)"),
    (["data.train_tokens=2000", "model.seq_len=2048", "data.val_tokens=4000"],
     "model.seq_len=2048 is longer than the train split of data=markov (2000 tokens)"),
    (["data.tokens=100"], "data.tokens: 100 training tokens is less than one batch (task.batch_size=8 x model.seq_len=32 = 256)"),
    (["compute=1e6"], "compute: 0.2069 training tokens is less than one batch (task.batch_size=8 x model.seq_len=32 = 256)"),
    (["task.batch_size=porian", "task.micro_batch_size=7", "data.tokens=1e6"],
     "task.micro_batch_size=7 does not divide the 387 sequences task.batch_size=porian gives this model"),
]


@pytest.mark.parametrize("overrides,message", DATA_CHECKS, ids=[" ".join(o) for o, _ in DATA_CHECKS])
def test_the_checks_that_need_the_data_say_what_is_wrong_in_one_line(overrides, message):
    cfg = config([*MARKOV, *overrides])
    validate(cfg)  # the config alone is fine
    with pytest.raises(ConfigError) as raised:
        check_data(cfg, data.load(cfg.data))
    assert str(raised.value) == message


SOURCES = [
    (["data=text", "data.paths=[]"], "data.paths is empty: give text files or globs, e.g. data.paths='[notes/*.txt]'"),
    (["data=text", "data.paths=[nowhere/*.txt]"], "data.paths: no file matches 'nowhere/*.txt'"),
    (["data=tokens", "data.train_path=missing.bin", "data.vocab_size=50"], "data.train_path='missing.bin': no such token file"),
    (["data=tokens", "data.dtype=int8", "data.vocab_size=50"], "data.dtype='int8'; known: uint16, uint32"),
    (["data=tokens", "data.train_path=TRAIN"], "data.vocab_size=None: token files need a positive vocab size"),
    (["data=tokens", "data.train_path=TRAIN", "data.vocab_size=50"], "data.vocab_size=50 but the train tokens hold id 94"),
    (["data=tokens", "data.train_path=ODD", "data.vocab_size=50"],
     "data.train_path='ODD': 201 bytes is not a whole, non-zero number of uint16 tokens (2 bytes each): another data.dtype?"),
    (["data=markov", "data.vocab_size=1"], "data.vocab_size=1, data.order=2: need vocab >= 2, order >= 0 and a transition table of vocab^(order+1) <= 2^24 entries"),
    (["data=markov", "data.vocab_size=50304", "data.order=1"], "data.vocab_size=50304, data.order=1: need vocab >= 2, order >= 0 and a transition table of vocab^(order+1) <= 2^24 entries"),
    (["data.name=web"], "data.name='web'; known: stdlib, text, tokens, markov"),
    (["data.val_fraction=0"], "data.val_fraction=0 must be a positive number"),
    (["data=tokens", "data.train_path=TRAIN", "data.vocab_size=100", "data.val_fraction=1.5"],
     "data.val_fraction=1.5 must be a number in [0, 1)"),
    (["data=markov", "data.seed=-3"], "data.seed=-3 must be a whole number (0 or more)"),
    (["data=markov", "data.concentration=0"], "data.concentration=0 must be a positive number"),
]


@pytest.mark.parametrize("overrides,message", SOURCES, ids=[" ".join(o) for o, _ in SOURCES])
def test_each_data_source_check_says_what_is_wrong_in_one_line(tmp_path, overrides, message):
    train = tmp_path / "train.bin"
    np.arange(100, dtype=np.uint16).tofile(train)
    odd = tmp_path / "odd.bin"   # a byte past a whole token: a truncated write, or another dtype's file
    odd.write_bytes(train.read_bytes() + b"\0")
    cfg = config([o.replace("TRAIN", str(train)).replace("ODD", str(odd)) for o in overrides])
    with pytest.raises(ConfigError) as raised:
        data.load(cfg.data)
    assert str(raised.value) == message.replace("ODD", str(odd))


@pytest.mark.parametrize("arg,message", [
    ("attention=flashy", "attention='flashy' is not a known attention; choose from: dense, flash_attn, longformer, "
                         "performer, sdpa, sdpa_cudnn, sdpa_efficient, sdpa_flash, sdpa_math, xformers"),
    ("model=mamba", "model='mamba' is not a known model; choose from: custom, encdec, encoder, gpt, llama"),
    ("parallel=ring", "parallel='ring' is not a known parallel; choose from: ddp, fsdp_tp, fsdp_zero2, fsdp_zero3, pp, "
                      "single, tp, zero1"),
    ("data=web", "data='web' is not a known data; choose from: markov, stdlib, text, tokens"),
    ("precision=fp32,fp7", "precision='fp7' is not a known precision; choose from: bf16, bf16_pure, fp16, fp32, fp8, tf32"),
])
def test_an_unknown_group_option_is_one_line(arg, message):
    with pytest.raises(ConfigError) as raised:
        check_group_overrides([arg])
    assert str(raised.value) == message


@pytest.mark.parametrize("args,message", [
    (["model.d_modle=64"], "model.d_modle: did you mean model.d_model? (model=gpt takes no 'd_modle')"),
    (["model=llama", "model.mlp_ratio=2"], "model.mlp_ratio: did you mean model.aspect_ratio? (model=llama takes no 'mlp_ratio')"),
    (["model.n_kv_head=2"], "model.n_kv_head: did you mean model.n_head? (model=gpt takes no 'n_kv_head')"),
    (["task.lrr=1e-3"], "task.lrr: did you mean task.lr? (task=train takes no 'lrr')"),
    (["study=demo", "model.d_modle=64"], "model.d_modle: did you mean model.d_model?"),
    (["model=llama", "model.n_kv_head=2"], None),
    (["study=inference_llama", "model.n_kv_head=2"], None),   # the study selects llama
    (["+model.anything=1"], None),                            # added keys are the family's check (validate)
])
def test_a_key_no_option_takes_is_named_before_hydra_runs(args, message):
    if message is None:
        check_group_overrides(args)
        return
    with pytest.raises(ConfigError) as raised:
        check_group_overrides(args)
    assert str(raised.value) == message


class FixedArguments(torch.nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, d_model: int = 16):
        super().__init__()


class AnyArguments(torch.nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, **options):
        super().__init__()


def test_a_custom_module_takes_the_keys_its_constructor_takes():
    custom = ["model=custom", "data.tokens=1e6"]
    validate(config([*custom, "model._target_=tests.test_config.FixedArguments", "+model.d_model=32"]))
    with pytest.raises(ConfigError) as raised:
        validate(config([*custom, "model._target_=tests.test_config.FixedArguments", "+model.d_modle=32"]))
    assert str(raised.value) == "model.d_modle: did you mean model.d_model? (model.family=custom takes no 'd_modle')"
    validate(config([*custom, "model._target_=tests.test_config.AnyArguments", "+model.d_modle=32"]))  # **options


class RaisesWhenBuilt(torch.nn.Module):
    def __init__(self, vocab_size: int, seq_len: int, width: int = 8):
        super().__init__()
        raise ValueError(f"width {width} is too small")


class EmbeddingsNotLogits(torch.nn.Module):
    def __init__(self, vocab_size: int, seq_len: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, 8)

    def forward(self, idx):
        return self.embed(idx)


@pytest.mark.parametrize("target,message", [
    ("torch.nn.Linear", "model._target_='torch.nn.Linear' takes no vocab_size or seq_len: the harness builds "
                        "CLASS(vocab_size=..., seq_len=..., **ARGS)"),
    ("os.getcwd", "model._target_='os.getcwd' is not a torch.nn.Module class"),
])
def test_a_custom_target_outside_the_protocol_is_one_line_at_the_config_check(target, message):
    with pytest.raises(ConfigError) as raised:
        validate(config(["model=custom", f"model._target_={target}"]))
    assert str(raised.value) == message


@pytest.mark.parametrize("target,message", [
    ("tests.test_config.RaisesWhenBuilt", "model._target_='tests.test_config.RaisesWhenBuilt' could not be built: "
                                          "ValueError: width 8 is too small"),
    ("tests.test_config.EmbeddingsNotLogits", "model._target_='tests.test_config.EmbeddingsNotLogits': forward(idx) of "
                                              "shape (1, 32) gave torch.float32 of shape (1, 32, 8), not floating-point "
                                              "logits of shape (1, 32, 50)"),
    ("torch.nn.Identity", "model._target_='torch.nn.Identity': forward(idx) of shape (1, 32) gave torch.int64 of shape "
                          "(1, 32), not floating-point logits of shape (1, 32, 50)"),
])
def test_a_custom_module_that_breaks_the_protocol_when_built_is_one_line(target, message):
    from harness.plan import resolve
    cfg = config(["model=custom", f"model._target_={target}", "model.seq_len=32", "data.tokens=1e6"])
    validate(cfg)   # its constructor's signature keeps the protocol; building it shows what does not
    with pytest.raises(ConfigError) as raised:
        resolve(cfg, data_vocab=50)
    assert str(raised.value) == message


def test_the_demo_grows_width_alone_and_its_branches_land_on_its_budgets():
    from harness.plan import model_shape, model_spec
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        sweep = compose("config", overrides=["study=demo"], return_hydra_config=True).hydra.sweeper.params
    budgets, shapes = set(), {}
    for design in sweep["+study/demo"].split(","):
        cfg = config(["study=demo", f"+study/demo={design}"])
        validate(cfg)
        n_layer, d_model, n_head = model_shape(cfg.model, model_spec(cfg.model))
        shapes[d_model] = (n_layer, n_head, cfg.model.seq_len, cfg.task.lr, cfg.task.lr_law)
        budgets |= {round(cfg.compute * fraction / 1e10) for fraction in [*cfg.task.cooldowns, 1]}
    assert sorted(shapes) == [12, 16, 24, 32, 48, 64]
    assert len(set(shapes.values())) == 1   # depth, heads, context and the lr law held: only the width changes
    assert next(iter(shapes.values()))[3:] == ("law", "results/lr_ladder/report/fits.json")
    assert sorted(budgets) == [8, 11, 16, 23, 32, 45, 64]   # x 1e10 FLOPs, a factor sqrt(2) apart


def test_the_demo_grid_and_the_families_study_accept_llama():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        demo = compose("config", overrides=["study=demo"], return_hydra_config=True).hydra.sweeper.params
        families = compose("config", overrides=["study=families"], return_hydra_config=True).hydra.sweeper.params
    for design in demo["+study/demo"].split(","):
        cfg = config(["study=demo", "model=llama", f"+study/demo={design}"])
        validate(cfg)
        assert cfg.model.family == "llama" and cfg.model.n_layer == 2
    for width in families["model.d_model"].split(","):
        validate(config(["study=families", "model=llama", f"model.d_model={width}"]))
