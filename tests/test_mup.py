"""muP (models/mup.py): the coordinate check of Yang et al. 2022 (Tensor Programs V, fig. 5 and app. D.1), the
rules of its Table 3 on a built model, and equality with sp at the base width."""
import pytest
import torch
from hydra import compose, initialize_config_dir

from harness.config import CONF_DIR
from harness.optimizer import make_optimizer, parametrize, set_lr
from harness.plan import resolve_model
from models import mup
from models.spec import token_loss

WIDTHS = (64, 128, 256, 512, 1024)


def composed(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="config", overrides=list(overrides))


def built(parametrization: str, width: int, family: str = "gpt", lr: float = 3e-3, **extra):
    """The model and optimizer train.py builds, for a 2-layer model of this width (4 heads: head_dim grows)."""
    cfg = composed(f"model={family}", f"model.d_model={width}", "model.n_layer=2", "model.n_head=4", "model.seq_len=32",
                   f"model.parametrization={parametrization}", "model.base_width=64", f"task.lr={lr}",
                   *[f"model.{k}={v}" for k, v in extra.items()])
    torch.manual_seed(0)
    planned = resolve_model(cfg)
    model_cfg = planned.config(256)
    model = planned.spec.build(model_cfg)
    optimizer = make_optimizer(model, cfg.task, lr_scales=parametrize(model, planned.mup_widths))
    set_lr(optimizer, lr)
    return model, optimizer, model_cfg


def coordinates(parametrization: str, width: int, family: str = "gpt", steps: int = 4) -> dict[str, float]:
    """Mean |coordinate| of each block's output and of the logits after `steps` Adam steps (lr 3e-3) on one fixed
    batch of a decoder."""
    model, optimizer, _ = built(parametrization, width, family)
    tokens = torch.randint(0, 256, (8, 33), generator=torch.Generator().manual_seed(0))
    x, y = tokens[:, :-1], tokens[:, 1:]
    for _ in range(steps):
        optimizer.zero_grad()
        token_loss(model(x), y).backward()
        optimizer.step()
    sizes = {}
    hooks = [block.register_forward_hook(lambda module, args, out, i=i: sizes.__setitem__(f"block {i}", out.abs().mean().item()))
             for i, block in enumerate(model.blocks)]
    with torch.no_grad():
        sizes["logits"] = model(x).abs().mean().item()
    for hook in hooks:
        hook.remove()
    return sizes


@pytest.mark.parametrize("family", ["gpt", "llama"])
def test_coordinate_check_mup_activations_stay_put_and_sp_logits_grow_with_width(family):
    # After 4 Adam steps at lr 3e-3 (gpt, measured): under muP each block's output moves 1.16x across widths 64-1024;
    # under sp the block outputs grow 118x and the logits 6.1x, monotonically.
    sizes = {p: {w: coordinates(p, w, family) for w in WIDTHS} for p in ("sp", "mup")}
    for name in [k for k in sizes["mup"][64] if k.startswith("block")]:
        across = [sizes["mup"][w][name] for w in WIDTHS]
        assert max(across) / min(across) < 2, (name, across)
        sp = [sizes["sp"][w][name] for w in WIDTHS]
        assert sp[-1] / sp[0] > 10, (name, sp)
    sp_logits = [sizes["sp"][w]["logits"] for w in WIDTHS]
    assert sp_logits[-1] / sp_logits[0] > 4 and all(b > a for a, b in zip(sp_logits, sp_logits[1:])), sp_logits


@pytest.mark.parametrize("family", ["gpt", "encoder", "encdec", "llama"])
def test_mup_at_the_base_width_is_sp_and_wider_follows_table_3(family):
    sp, sp_optimizer, _ = built("sp", 64, family)
    base, base_optimizer, _ = built("mup", 64, family)
    for a, b in zip(sp.state_dict().values(), base.state_dict().values()):
        assert torch.equal(a, b)
    assert {g["lr"] for g in base_optimizer.param_groups} == {g["lr"] for g in sp_optimizer.param_groups} == {3e-3}
    model, optimizer, config = built("mup", 256, family)
    reference, _, _ = built("sp", 256, family)
    assert config.logit_scale == 0.25 and config.q_scale == 0.5   # m = 4; head_dim 64 against the base's 16
    hidden = {id(p) for p in mup.hidden_weights(model)}
    lr_of = {id(p): group["lr"] for group in optimizer.param_groups for p in group["params"]}
    for (name, p), (_, p_sp) in zip(model.named_parameters(), reference.named_parameters()):
        embedding_or_readout = "wte" in name or "wpe" in name or "lm_head" in name
        if p.dim() == 2 and not embedding_or_readout:
            assert id(p) in hidden and lr_of[id(p)] == pytest.approx(3e-3 / 4), name
            assert torch.allclose(p, p_sp * 0.5), name   # init variance / m
        else:
            assert id(p) not in hidden and lr_of[id(p)] == 3e-3 and torch.equal(p, p_sp), name


class Bigram(torch.nn.Module):
    """A module of a user's own: logits from the current token alone."""

    def __init__(self, vocab_size: int, seq_len: int):
        super().__init__()
        self.table = torch.nn.Embedding(vocab_size, vocab_size)

    def forward(self, idx):
        return self.table(idx)


def test_mup_on_a_module_of_your_own_is_a_clear_unsupported_record():
    from harness.config import validate
    from harness.errors import Unsupported
    cfg = composed("model=custom", "model._target_=tests.test_mup.Bigram", "+model.parametrization=mup")
    with pytest.raises(Unsupported, match="takes no logit or query multipliers"):
        validate(cfg)
    with pytest.raises(Exception, match="model.parametrization='xp'; known: sp, mup"):
        validate(composed("model.parametrization=xp"))
