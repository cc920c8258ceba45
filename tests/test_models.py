"""BinaryVAE and SigmoidBeliefNet: the training step's gradients, evaluation bounds,
short training runs and configuration errors."""

import math
from functools import partial

import pytest
import pytorch_lightning as pl
import torch
from custom_estimator import OneLayerReinforce

from discrete_vi.data import BinarizedImageDataModule
from discrete_vi.diagnostics import logit_gradient_variance
from discrete_vi.estimators import ARM, NVIL, RLOO, RODEO, VIMCO, DisARM, LocalDisARM, MuProp, RLOODoubleCV
from discrete_vi.bernoulli import bernoulli_log_prob
from discrete_vi.checks import ConfigurationError
from discrete_vi.exact import all_configurations
from discrete_vi.models import BinaryVAE, SigmoidBeliefNet


@pytest.fixture(scope="module")
def digits():
    """64 binarized digits from the bundled subset: float32 [64, 784]."""
    datamodule = BinarizedImageDataModule(dataset="mnist_subset", seed=0)
    datamodule.setup("fit")
    return next(iter(datamodule.val_dataloader()))[:64].float().clamp(0, 1).round()


@pytest.mark.parametrize("estimator", [RLOO(3), RLOODoubleCV(2), DisARM(2), VIMCO(3), LocalDisARM(2)],
                         ids=["rloo", "double_cv", "disarm", "vimco", "local_disarm"])
def test_training_step_gives_the_encoder_exactly_the_estimators_gradient(estimator, digits):
    torch.manual_seed(0)
    model = BinaryVAE(estimator=estimator, latent_sizes=(16,), init_output_bias=False,
                      training_objective=estimator.training_objective)
    with torch.no_grad():
        estimator.alpha.fill_(0.3) if isinstance(estimator, RLOODoubleCV) else None
    torch.manual_seed(1)
    model.training_step(digits, 0).backward()
    encoder_grad = model.encoder[0].weight.grad.clone()

    # The estimator called directly on the same samples: g = -B * d loss / d logits,
    # chained into the encoder by hand: d loss / d W = (d loss / d logits)^T x. (f gets the
    # logits from the estimator: detached for the ELBO, live for the multi-sample bound.)
    model.zero_grad()
    logits = model.encoder[0](digits).detach().requires_grad_(True)
    torch.manual_seed(1)
    out = estimator.chain(logits, [], partial(model.objective, digits))
    out.loss.backward()
    torch.testing.assert_close(encoder_grad, logits.grad.T @ digits)


def test_parameter_groups_carry_their_learning_rates():
    model = BinaryVAE(estimator=RLOODoubleCV(2, alpha_lr=3e-3), lr=1e-4, prior_lr=1e-2)
    groups = model.configure_optimizers().param_groups
    rates = {g.get("name", "estimator"): g["lr"] for g in groups}
    assert rates == {"encoder": 1e-4, "decoder": 1e-4, "prior": 1e-2, "estimator": 3e-3}
    assert groups[-1]["params"] == [model.estimator.alpha]
    n_model = sum(len(g["params"]) for g in groups[:-1])
    assert n_model == len(list(model.parameters())) - 1


def test_multi_sample_bound_approaches_the_exact_log_likelihood(digits):
    """A VAE with 4 latent bits: log p(x) by enumeration; ELBO <= S-sample bound <= ~log p(x)."""
    torch.manual_seed(0)
    x = digits[:8]
    # torch's init: its larger decoder weights make p(b | x) far from q, so the bound improves on the ELBO
    # (with glorot's small weights and zero biases, an untrained model's q is already close to p(b | x)).
    model = BinaryVAE(latent_sizes=(4,), eval_chunk=64, init="pytorch")
    logits, _ = model.stochastic_layers(x)
    configs = all_configurations(4).unsqueeze(1).expand(-1, x.shape[0], -1)
    n_samples = 2000
    with torch.no_grad():
        log_weights = model.objective(x, [configs], [logits])  # log p(x, b) - log q(b | x)
        log_q = bernoulli_log_prob(configs, logits)
        exact = torch.logsumexp(log_weights + log_q, 0)
        elbo, bound = model.bounds(x, n_samples)
        # Relative variance of the importance weight w = p(x, b) / q(b): E_q[w^2] / p(x)^2 - 1.
        relative_variance = torch.exp(torch.logsumexp(2 * log_weights + log_q, 0) - 2 * exact) - 1
    # log of a mean of S weights: standard deviation ~ sqrt(rv / S), downward bias ~ rv / (2 S).
    tolerance = 5 * (relative_variance / n_samples).sqrt() + relative_variance / (2 * n_samples)
    assert (elbo < bound).all()
    assert ((bound - exact).abs() < tolerance).all(), (bound - exact, tolerance)
    assert (exact - elbo).min() > 0.5  # the bound is a real improvement on the ELBO here


def test_gradient_variance_is_measured_without_touching_gradients(digits):
    model = BinaryVAE(estimator=RLOO(2), latent_sizes=(16,))
    variance = logit_gradient_variance(model, digits[:10], n_draws=6)
    assert variance.ndim == 0 and variance > 0
    assert all(p.grad is None for p in model.parameters())


def fit_and_measure(model, steps: int, digits) -> tuple[float, float]:
    """Validation ELBO on `digits` before and after `steps` training steps on the bundled subset."""
    datamodule = BinarizedImageDataModule(dataset="mnist_subset", batch_size=50)
    pl.seed_everything(0)
    trainer = pl.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    torch.manual_seed(0)
    before = model.bounds(digits, 20)[0].mean().item()
    trainer.fit(model, datamodule=datamodule)
    after = model.bounds(digits, 20)[0].mean().item()
    return before, after


@pytest.mark.parametrize("estimator", [RLOO(2), ARM(1), DisARM(1), NVIL(1), MuProp(1), RLOODoubleCV(2),
                                       RODEO(2, hidden_size=16)],
                         ids=["rloo", "arm", "disarm", "nvil", "muprop", "double_cv", "rodeo"])
def test_two_layer_vae_improves_its_elbo(estimator, digits):
    torch.manual_seed(0)
    model = BinaryVAE(estimator=estimator, latent_sizes=(200, 200), lr=3e-3)
    before, after = fit_and_measure(model, 150, digits)
    assert after > before + 20, (before, after)


@pytest.mark.parametrize("estimator", [VIMCO(4), LocalDisARM(2)], ids=["vimco", "local_disarm"])
def test_vae_improves_on_the_multi_sample_bound(estimator, digits):
    torch.manual_seed(0)
    model = BinaryVAE(estimator=estimator, training_objective="multi_sample", latent_sizes=(50,), lr=3e-3)
    before, after = fit_and_measure(model, 150, digits)
    assert after > before + 20, (before, after)


@pytest.mark.parametrize("make, message", [
    (lambda: BinaryVAE(estimator=VIMCO(2)), "VIMCO estimates the gradient of the K-sample bound"),
    (lambda: SigmoidBeliefNet(estimator=RLOO(2), training_objective="multi_sample"),
     "RLOO estimates the gradient of the ELBO"),
    (lambda: BinaryVAE(estimator=LocalDisARM(2), training_objective="multi_sample", latent_sizes=(20, 10)),
     "LocalDisARM is defined for one stochastic layer only.*use one of: VIMCO$"),
])
def test_an_estimator_of_another_objective_fails_at_configuration(make, message):
    with pytest.raises(ConfigurationError, match=message):
        make()


def test_the_training_objective_is_saved_with_the_model():
    model = BinaryVAE(estimator=VIMCO(3), training_objective="multi_sample", latent_sizes=(8,))
    assert model.hparams["training_objective"] == "multi_sample"
    assert model.hparams["estimator"]["class_path"] == "discrete_vi.estimators.multi_sample.VIMCO"


def test_sigmoid_belief_net_improves_its_likelihood(digits):
    torch.manual_seed(0)
    model = SigmoidBeliefNet(estimator=DisARM(1), latent_sizes=(50, 50), lr=3e-3)
    before, after = fit_and_measure(model, 150, digits)
    assert after > before + 20, (before, after)


@pytest.mark.parametrize("make", [lambda: BinaryVAE(estimator=OneLayerReinforce(2), latent_sizes=(200, 200)),
                                  lambda: SigmoidBeliefNet(estimator=OneLayerReinforce(2))])
def test_a_one_layer_estimator_on_two_layers_fails_at_configuration(make):
    with pytest.raises(ConfigurationError, match="OneLayerReinforce is defined for one stochastic layer only.*RLOODoubleCV"):
        make()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"latent_sizes": ()}, "latent_sizes must be a non-empty list"),
        ({"latent_sizes": (200, 0)}, "latent_sizes must be a non-empty list"),
        ({"network": "deep"}, "network must be one of"),
        ({"negative_slope": -0.1}, "negative_slope must be in"),
        ({"init": "xavier"}, "init must be one of 'glorot', 'pytorch'"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"prior_lr": -1.0}, "prior_lr must be >= 0"),
        ({"encoder_lr": 0.0}, "encoder_lr must be > 0"),
        ({"val_samples": 0}, "val_samples must be >= 1"),
        ({"estimator": "RLOO"}, "estimator must be an Estimator"),
    ],
)
def test_bad_model_settings_raise_clear_errors(kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        BinaryVAE(**kwargs)


def test_nonlinear_vae_mirrors_its_networks():
    model = BinaryVAE(network="nonlinear", latent_sizes=(200, 200))
    shapes = [tuple(p.shape) for p in model.encoder[0].parameters()]
    assert shapes == [(200, 784), (200,), (200, 200), (200,), (200, 200), (200,)]
    assert isinstance(model.encoder[0][1], torch.nn.LeakyReLU) and model.encoder[0][1].negative_slope == 0.3
    assert [tuple(p.shape) for p in model.decoder[0].parameters()][-2:] == [(784, 200), (784,)]
    assert math.isfinite(model.bounds(torch.zeros(2, 784), 3)[0].sum().item())
    arm_mnist = BinaryVAE(network="nonlinear", negative_slope=0.1)  # the ARM paper's MNIST networks
    slopes = {m.negative_slope for part in (arm_mnist.encoder, arm_mnist.decoder) for m in part.modules()
              if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.1}


def linear_maps(model) -> list[torch.nn.Linear]:
    return [m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear) and not name.startswith("estimator")]


@pytest.mark.parametrize("make", [lambda init: BinaryVAE(network="nonlinear", latent_sizes=(200, 100), init=init),
                                  lambda init: SigmoidBeliefNet(latent_sizes=(200, 200), init=init)], ids=["vae", "sbn"])
def test_glorot_init_is_the_papers_and_pytorch_init_is_torchs(make):
    """glorot: weights U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (variance a^2 / 3), zero biases;
    pytorch: weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    torch.manual_seed(0)
    for layer in linear_maps(make("glorot")):
        fan_out, fan_in = layer.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert layer.weight.abs().max() <= bound and torch.count_nonzero(layer.bias) == 0
        # the variance of n >= 20,000 uniforms: relative standard error sqrt(0.8 / n) < 1%
        assert layer.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.05)
    for layer in linear_maps(make("pytorch")):
        bound = 1 / math.sqrt(layer.weight.shape[1])
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert torch.count_nonzero(layer.bias) == layer.bias.numel()
        assert layer.weight.var().item() == pytest.approx(bound**2 / 3, rel=0.05)


def test_the_models_init_leaves_the_estimators_own_networks_alone():
    torch.manual_seed(0)
    estimator = RODEO(2)
    before = {name: p.detach().clone() for name, p in estimator.named_parameters()}
    model = BinaryVAE(estimator=estimator, init="glorot")
    assert all(torch.equal(p, before[name]) for name, p in model.estimator.named_parameters())
    assert torch.count_nonzero(model.encoder[0].bias) == 0


def test_checkpoints_load_across_estimators():
    """Evaluation does not need the estimator: a double-CV checkpoint loads into an RLOO model
    and the other way round, with a warning, and the model's weights come through."""
    trained = BinaryVAE(estimator=RLOODoubleCV(2), latent_sizes=(8,))
    with torch.no_grad():
        trained.estimator.alpha.fill_(0.7)
        trained.prior_logits.fill_(0.3)
    checkpoint = {"state_dict": trained.state_dict()}
    plain = BinaryVAE(estimator=RLOO(2), latent_sizes=(8,))
    with pytest.warns(UserWarning, match=r"does not fit RLOO: ignored \['estimator.alpha'\]"):
        plain.on_load_checkpoint(checkpoint)
    plain.load_state_dict(checkpoint["state_dict"])
    assert torch.all(plain.prior_logits == 0.3)

    checkpoint = {"state_dict": plain.state_dict()}
    double_cv = BinaryVAE(estimator=RLOODoubleCV(2), latent_sizes=(8,))
    with pytest.warns(UserWarning, match="kept as initialised"):
        double_cv.on_load_checkpoint(checkpoint)
    double_cv.load_state_dict(checkpoint["state_dict"])
    assert double_cv.estimator.alpha.item() == 0.0


def test_two_layer_vae_objective_is_the_log_weight_computed_by_hand(digits):
    torch.manual_seed(0)
    model = BinaryVAE(latent_sizes=(6, 4))
    x = digits[:3]
    b1 = torch.bernoulli(torch.full((2, 3, 6), 0.5))
    b2 = torch.bernoulli(torch.full((2, 3, 4), 0.5))
    phi1 = model.encoder[0](x)
    phi2 = model.encoder[1](b1)

    def log_bernoulli(b, logits):  # written out, independent of the package's helper
        p = torch.sigmoid(logits)
        return (b * torch.log(p) + (1 - b) * torch.log1p(-p)).sum(-1)

    expected = (
        log_bernoulli(x, model.decoder[0](b1))
        + log_bernoulli(b1, model.decoder[1](b2))
        + log_bernoulli(b2, model.prior_logits)
        - log_bernoulli(b1, phi1)
        - log_bernoulli(b2, phi2)
    )
    got = model.objective(x, [b1, b2], [phi1.detach(), phi2.detach()])
    torch.testing.assert_close(got, expected.detach(), rtol=1e-4, atol=1e-3)


def test_gradient_clipping_leaves_the_estimators_own_parameters_alone(digits):
    model = BinaryVAE(estimator=RLOODoubleCV(2), latent_sizes=(16,))
    model.training_step(digits, 0).backward()
    model.estimator.alpha.grad = torch.tensor(100.0)
    model.configure_gradient_clipping(None, gradient_clip_val=0.5)
    model_params = [p for g in model.parameter_groups() for p in g["params"]]
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model_params]))
    assert total == pytest.approx(0.5, rel=1e-4)
    assert model.estimator.alpha.grad.item() == 100.0


def test_a_parameter_left_out_of_the_groups_is_an_error():
    class ExtraHead(BinaryVAE):
        def __init__(self):
            super().__init__(latent_sizes=(4,))
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"leaves out trainable parameters \['extra.weight', 'extra.bias'\]"):
        ExtraHead().configure_optimizers()


def test_output_bias_is_set_from_the_data_once(digits):
    model = BinaryVAE(latent_sizes=(8,))
    datamodule = BinarizedImageDataModule(dataset="mnist_subset", batch_size=50)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, limit_val_batches=0)
    trainer.fit(model, datamodule=datamodule)
    trained_bias = model.decoder[0].bias.detach().clone()
    assert bool(model.initialised_from_data)
    model.setup("fit")  # e.g. a second fit in the same process
    torch.testing.assert_close(model.decoder[0].bias.detach(), trained_bias)


def test_sigmoid_belief_net_splits_images_between_rows_13_and_14():
    from discrete_vi.models.sbn import split_upper_lower

    images = torch.arange(2 * 3 * 784).reshape(2, 3, 784)
    upper, lower = split_upper_lower(images)
    assert upper.shape == lower.shape == (2, 3, 392)
    grid = images[1, 2].reshape(28, 28)
    assert torch.equal(upper[1, 2], grid[:14].reshape(-1)) and torch.equal(lower[1, 2], grid[14:].reshape(-1))
