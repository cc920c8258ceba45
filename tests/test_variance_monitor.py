"""The gradient variance as the papers plot it (encoder parameters), the variance basket,
and the frozen prior (prior_lr 0) of the double-CV paper's setup."""

import pytest
import torch

from discrete_vi.callbacks import EstimatorVarianceBasket
from discrete_vi.cli import run_cli
from discrete_vi.data import BinarizedImageDataModule
from discrete_vi.diagnostics import encoder_gradient_variance
from discrete_vi.estimators import RLOO, DisARM
from discrete_vi.models import BinaryVAE
from helpers import SMALL_EVAL, TINY, only_version, steps_by_tag


def by_hand(model: BinaryVAE, batch: torch.Tensor, n_draws: int) -> float:
    """Variance over `n_draws` independent estimator calls of d ELBO / d theta_encoder, per
    parameter, averaged over parameters."""
    params = model.encoder_parameters()
    estimates = []
    for _ in range(n_draws):
        grads = torch.autograd.grad(model.estimate(batch).loss, params)
        estimates.append(-torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(estimates).var(0).mean().item()


@pytest.mark.parametrize("latent_sizes, estimator", [([6], RLOO(2)), ([6, 4], DisARM(1))],
                         ids=["one-layer-batched", "two-layers-per-draw"])
def test_encoder_variance_matches_independent_estimates(latent_sizes, estimator):
    torch.manual_seed(0)
    model = BinaryVAE(estimator=estimator, input_size=20, latent_sizes=latent_sizes, val_samples=2, test_samples=2)
    batch = (torch.rand(5, 20) < 0.5).float()
    n_draws = 600
    torch.manual_seed(1)
    measured = encoder_gradient_variance(model, batch, n_draws, chunk=500).item()
    torch.manual_seed(2)
    expected = by_hand(model, batch, n_draws)
    assert measured == pytest.approx(expected, rel=0.12), (measured, expected)
    assert all(p.grad is None for p in model.parameters()), "measuring touches no .grad"


def test_basket_logs_one_tag_per_estimator_at_the_same_steps(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, "--model.latent_sizes", "[20]", *SMALL_EVAL, "--model.estimator", "DisARM",
             "--trainer.callbacks+=discrete_vi.callbacks.GradientVarianceMonitor",
             "--trainer.callbacks.every_n_steps", "2",
             "--trainer.callbacks+=discrete_vi.callbacks.EstimatorVarianceBasket",
             "--trainer.callbacks.estimators", "[RLOO, RLOODoubleCV, ARM, DisARM]",
             "--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.adapt_steps", "3"])
    steps = steps_by_tag(only_version(tmp_path))
    basket = {tag: s for tag, s in steps.items() if tag.startswith("variance/")}
    assert sorted(basket) == ["variance/ARM", "variance/DisARM", "variance/RLOO", "variance/RLOODoubleCV"]
    assert all(s == [2, 4] for s in basket.values()), basket
    assert steps["train/grad_variance"] == [2, 4]


def test_a_multi_sample_run_logs_its_bound_and_the_default_basket_of_its_objective(tmp_path, monkeypatch):
    """Training on the K-sample bound from the command line (LocalDisARM, K = 2: 4 evaluations of
    f): `train/bound`, the gradient variance of that bound and a basket of its estimators."""
    monkeypatch.chdir(tmp_path)
    cli = run_cli(["fit", *TINY, "--model.latent_sizes", "[20]", *SMALL_EVAL,
                   "--model.training_objective", "multi_sample", "--model.estimator", "LocalDisARM",
                   "--model.estimator.n_samples", "2",
                   "--trainer.callbacks+=discrete_vi.callbacks.GradientVarianceMonitor",
                   "--trainer.callbacks.every_n_steps", "2",
                   "--trainer.callbacks+=discrete_vi.callbacks.EstimatorVarianceBasket",
                   "--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.adapt_steps", "3"])
    assert cli.model.training_objective == "multi_sample" and cli.trainer.global_step == 4
    steps = steps_by_tag(only_version(tmp_path))
    assert steps["train/bound"] == [0, 1, 2, 3] and steps["train/elbo"] == [0, 1, 2, 3]
    assert steps["variance/VIMCO"] == steps["variance/LocalDisARM"] == steps["train/grad_variance"] == [2, 4]
    assert "val/log_likelihood" in steps


def test_basket_ordering_on_a_small_vae_matches_the_estimator_tests():
    """At fixed parameters of a VAE (D = 50, after a little RLOO training on the bundled digits),
    on one batch, at 2 evaluations of f: RLOO + double CV (alpha learned there) < RLOO, and
    DisARM <= ARM, as tests/test_estimators_variance.py establishes on the toy."""
    torch.manual_seed(0)
    data = BinarizedImageDataModule("mnist_subset", batch_size=50)
    data.setup("fit")
    batches = [data.on_after_batch_transfer(b, 0) for _, b in zip(range(31), data.train_dataloader())]
    model = BinaryVAE(estimator=RLOO(2), input_size=784, latent_sizes=[50], val_samples=2, test_samples=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for batch in batches[:-1]:
        optimizer.zero_grad()
        model.estimate(batch).loss.backward()
        optimizer.step()
    basket = EstimatorVarianceBasket(["RLOO", "RLOODoubleCV", "ARM", "DisARM"], n_draws=200, adapt_steps=100)
    torch.manual_seed(3)
    variance = basket.measure(model, batches[-1])
    assert basket._basket["RLOO"] is model.estimator, "the model's own estimator is measured as trained"
    assert basket._basket["RLOODoubleCV"].alpha.item() != 0.0
    assert variance["RLOODoubleCV"] < variance["RLOO"], variance
    assert variance["DisARM"] <= variance["ARM"], variance


def test_unknown_basket_estimator_is_one_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", *TINY, "--trainer.callbacks+=discrete_vi.callbacks.EstimatorVarianceBasket",
                 "--trainer.callbacks.estimators", "[RLOO, NoSuch]"])
    assert exit_info.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("discrete-vi: error:")]
    assert len(err) == 1 and "NoSuch" in err[0] and "RLOODoubleCV" in err[0], err
    assert not (tmp_path / "lightning_logs").exists()


def test_prior_lr_zero_keeps_the_prior_fixed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli([*TINY, "--model.latent_sizes", "[20]", *SMALL_EVAL, "--model.prior_lr", "0"], run=False)
    before = {n: p.detach().clone() for n, p in cli.model.named_parameters()}
    cli.trainer.fit(cli.model, cli.datamodule)
    after = dict(cli.model.named_parameters())
    assert torch.equal(after["prior_logits"], before["prior_logits"]), "the prior is frozen"
    assert not torch.equal(after["encoder.0.weight"], before["encoder.0.weight"]), "the rest trains"
    assert not torch.equal(after["decoder.0.weight"], before["decoder.0.weight"])
    (prior_group,) = [g for g in cli.trainer.optimizers[0].param_groups if g.get("name") == "prior"]
    assert prior_group["lr"] == 0.0


@pytest.mark.parametrize("name", ["doublecv_vae_mnist_linear", "doublecv_vae_mnist_nonlinear",
                                  "doublecv_vae_fashion_mnist_linear", "doublecv_vae_fashion_mnist_nonlinear"])
def test_doublecv_configs_match_the_papers_code(name):
    """Fixed prior, Adam 1e-3, alpha rate 1e-3, batch 100, D = 200, K = 2, 100-sample test bound."""
    import yaml
    from pathlib import Path

    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml").read_text())
    model = config["model"]["init_args"]
    assert model["prior_lr"] == 0 and model["lr"] == 1e-3 and model["latent_sizes"] == [200]
    assert model["estimator"]["init_args"] == {"n_samples": 2, "alpha_lr": 1e-3}
    assert model["test_samples"] == 100 and config["data"]["batch_size"] == 100
