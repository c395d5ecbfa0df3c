"""The harness's training loop against a bare PyTorch loop (nanoGPT's bench.py) on the same model and batch shape.

Both run STEPS optimizer steps of the same GPT with the same AdamW; the harness also fetches a fresh batch
each step, sets the schedule's learning rate, checks the loss and times itself. Run as a script for the ratio:

    .venv/bin/python -m tests.bench.test_train_loop            # prints tokens/s of both and harness / bare
    .venv/bin/python -m tests.bench.test_train_loop --compile  # the same with each block compiled on both sides
"""
from __future__ import annotations

import sys

import torch
from hydra import compose, initialize_config_dir

from harness.config import CONF_DIR
from harness.plan import resolve_model
from models.spec import token_loss
from harness.data import Batches, load
from harness.measure import interleaved_medians
from harness.tasks import train
from models.gpt import GPT

STEPS, BATCH, SEQ = 40, 8, 256
OVERRIDES = ["model.n_layer=4", "model.d_model=128", "model.n_head=4", f"model.seq_len={SEQ}",
             f"task.batch_size={BATCH}", f"data.tokens={STEPS * BATCH * SEQ}", "task.eval_points=1",
             f"task.eval_tokens={SEQ}", "task.timing_warmup_steps=5", "progress=off"]


def config(compile: bool = False):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("config", overrides=[*OVERRIDES, f"compile={str(compile).lower()}"])


def bare_loop(cfg) -> None:
    """nanoGPT bench.py: one fixed batch, forward, backward, clip, step; model build included as in the harness, and
    with compile=true its blocks compiled as torchtitan compiles them."""
    data = load(cfg.data)
    torch.manual_seed(0)
    model = GPT(resolve_model(cfg).config(data.vocab_size))
    if cfg.compile:
        for block in model.blocks:
            block.compile()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                  lr=2e-3, betas=(0.9, 0.95))
    batch = torch.from_numpy(Batches(data.train, SEQ, BATCH, seed=0).next())
    x, y = batch[:, :-1], batch[:, 1:]
    for _ in range(STEPS):
        loss = token_loss(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        loss.item()


def test_harness_loop(benchmark):
    cfg = config()
    benchmark.group = "train-loop"
    benchmark.extra_info["tokens"] = STEPS * BATCH * SEQ
    benchmark.pedantic(train.run, args=(cfg,), rounds=3, iterations=1, warmup_rounds=1)


def test_bare_loop(benchmark):
    cfg = config()
    benchmark.group = "train-loop"
    benchmark.extra_info["tokens"] = STEPS * BATCH * SEQ
    benchmark.pedantic(bare_loop, args=(cfg,), rounds=3, iterations=1, warmup_rounds=1)


def compare(rounds: int = 5, compile: bool = False) -> dict:
    """Whole runs of both loops, interleaved so machine noise hits both alike; tokens/s from the median times. With
    compile, the warm-up round compiles (the process's compiled code serves the later rounds' new models)."""
    cfg = config(compile)
    seconds = interleaved_medians({"harness": lambda: train.run(cfg), "bare": lambda: bare_loop(cfg)},
                                  torch.device("cpu"), rounds=rounds, warmup=1)
    tokens = STEPS * BATCH * SEQ
    return {"harness_tokens_per_s": tokens / seconds["harness"], "bare_tokens_per_s": tokens / seconds["bare"],
            "ratio": seconds["bare"] / seconds["harness"]}


if __name__ == "__main__":
    compiled = "--compile" in sys.argv
    result = compare(compile=compiled)
    print(f"{'compiled: ' if compiled else ''}harness {result['harness_tokens_per_s']:,.0f} tok/s, bare loop {result['bare_tokens_per_s']:,.0f} tok/s, "
          f"harness / bare = {result['ratio']:.3f}")
