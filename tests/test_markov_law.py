"""End to end: train on a Markov source whose entropy rate is known, fit L(D) = E + B D^-beta from the
records, and find the truth in E (the loss no amount of data removes is the source's entropy)."""
import pytest

from harness import load_results
from harness.fit import fit_power_law
from tests.conftest import harness_cmd


@pytest.mark.slow
def test_fitted_irreducible_loss_is_the_sources_entropy_rate(tmp_path):
    sweep = ["-m", "data=markov", "data.order=1", "data.vocab_size=16", "data.train_tokens=2e6", "data.val_tokens=5e4",
             "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.seq_len=32", "task.batch_size=16",
             "task.eval_points=1", "task.eval_tokens=16384", "task.lr=1e-2", "progress=off",
             "data.tokens=1e4,2e4,4e4,8e4,1.6e5,3.2e5", "hydra.sweep.dir=sweep"]
    result = harness_cmd(*sweep, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    runs = load_results(tmp_path / "sweep").sort_values("metrics.tokens")
    assert list(runs["status"]) == ["ok"] * 6
    entropy = runs["data_info.entropy_rate"].iloc[0]
    fit = fit_power_law(runs["metrics.tokens"], runs["metrics.val_loss"])
    assert fit.E == pytest.approx(entropy, rel=0.02)
