"""What is particular to NVIL and MuProp (the registry's tests check their contract, unbiasedness
and training for every cost): their formulas on known samples, where each of their gradients goes,
NVIL's running moments and eval mode, their refusals, and deliberately broken variants caught by the
same z-test as everything else."""

import itertools
import zlib

import pytest
import torch
from helpers import (
    CHAIN_LOGITS,
    LOGITS,
    Z_THRESHOLD,
    chain_model,
    chain_params,
    decoder_objective,
    estimated_chain,
    estimated_single_layer,
    max_z,
    randomised,
    single_layer_f,
    single_layer_params,
)
from torch import nn

from discrete_vi.checks import ConfigurationError
from discrete_vi.estimators import NVIL, MuProp, estimators_at
from discrete_vi.estimators.muprop import muprop_terms
from discrete_vi.models import BinaryVAE


def nvil_at(state_seed: int, n_samples: int = 2, n_layers: int = 1, **options) -> NVIL:
    """NVIL with `n_layers` baselines, network weights and running moments randomised."""
    torch.manual_seed(state_seed)
    estimator = NVIL(n_samples, **options)
    estimator.prepare_layers(n_layers)
    randomised(estimator, state_seed)
    with torch.no_grad():
        for baseline in estimator.baselines:  # a variance well above 1, so the normaliser matters
            baseline.signal_variance.fill_(4.0 + baseline.signal_variance.abs().item())
    return estimator


def encoder_problem(seed: int = 0):
    """Logits from a linear encoder of 6 inputs, 5 examples, 4 units, and a decoder objective."""
    torch.manual_seed(seed)
    encoder = nn.Linear(6, 4)
    x = torch.randn(5, 6)
    decoder, f = decoder_objective(seed)
    return encoder, x, decoder, f


# --- NVIL ----------------------------------------------------------------------------------------


def test_nvil_follows_its_formula_and_each_gradient_goes_where_it_belongs():
    """Encoder: exactly -g / B chained through the logits; decoder: the samples' pathwise gradient
    only; baseline network: exactly d J / d psi, J = mean((f - c - C)^2 / n^2), nothing else."""
    estimator = nvil_at(1, n_samples=3)
    baseline = estimator.baselines[0]
    c, n = baseline.signal_mean.clone(), baseline.scale().clone()
    encoder, x, decoder, f = encoder_problem()
    logits = encoder(x)
    torch.manual_seed(2)
    out = estimator(logits, f)
    out.loss.backward()
    theta, b, values = torch.sigmoid(logits.detach()), out.samples[0], out.f_values
    predicted = baseline.network(logits.detach())  # C(phi): [B]
    g = ((values - c - predicted.detach()).unsqueeze(-1) * (b - theta)).mean(0)
    expected_encoder = torch.autograd.grad(encoder(x), list(encoder.parameters()), -g / x.shape[0])
    for param, expected in zip(encoder.parameters(), expected_encoder):
        torch.testing.assert_close(param.grad, expected)
    expected_decoder = torch.autograd.grad(-f(b).mean(), list(decoder.parameters()))
    for param, expected in zip(decoder.parameters(), expected_decoder):
        torch.testing.assert_close(param.grad, expected)
    squared_error = ((values - c - predicted) / n).square().mean()
    expected_baseline = torch.autograd.grad(squared_error, list(baseline.network.parameters()))
    for param, expected in zip(baseline.network.parameters(), expected_baseline):
        torch.testing.assert_close(param.grad, expected)


def test_nvil_running_moments_follow_the_formula_after_the_estimate():
    estimator = nvil_at(3, n_samples=2, decay=0.8)
    baseline = estimator.baselines[0]
    c, v = baseline.signal_mean.item(), baseline.signal_variance.item()
    _, f = decoder_objective()
    logits = torch.randn(5, 4)
    leaf = logits.clone().requires_grad_(True)
    torch.manual_seed(4)
    out = estimator(leaf, f)
    out.loss.backward()
    with torch.no_grad():
        residual = out.f_values - baseline.network(logits)  # f - C, [K, B]
    assert baseline.signal_mean.item() == pytest.approx(0.8 * c + 0.2 * residual.mean().item(), rel=1e-5)
    assert baseline.signal_variance.item() == pytest.approx(0.8 * v + 0.2 * residual.var(correction=0).item(), rel=1e-5)
    # The estimate used the moments from before the call.
    g = -leaf.grad * 5
    expected = ((residual - c).unsqueeze(-1) * (out.samples[0] - torch.sigmoid(logits))).mean(0)
    torch.testing.assert_close(g, expected)
    assert estimator.logged_state()["signal_std"].item() == pytest.approx(baseline.signal_variance.item() ** 0.5)


def test_nvil_gradients_scale_with_the_loss():
    """A gradient scaler or accumulation multiplies the loss: every gradient scales with it."""
    _, f = decoder_objective()
    logits = torch.randn(5, 4)
    grads = []
    for scale in (1.0, 1024.0):
        estimator = nvil_at(12)
        torch.manual_seed(1)
        leaf = logits.clone().requires_grad_(True)
        (scale * estimator(leaf, f).loss).backward()
        grads.append([leaf.grad / scale, *(p.grad / scale for p in estimator.parameters())])
    for unscaled, scaled in zip(*grads):
        torch.testing.assert_close(unscaled, scaled)


def test_nvil_updates_nothing_in_eval_mode_or_without_autograd():
    estimator = nvil_at(5)
    before = {k: v.clone() for k, v in estimator.state_dict().items()}
    _, f = decoder_objective()
    estimator.eval()
    leaf = torch.randn(5, 4, requires_grad=True)
    estimator(leaf, f).loss.backward()
    assert leaf.grad is not None
    assert all(p.grad is None for p in estimator.parameters()), "eval mode must not train the baseline"
    estimator.train()
    with torch.no_grad():
        estimator(torch.randn(5, 4), f)
    for key, value in estimator.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_nvil_normalised_gradient_is_the_gradient_divided_by_the_running_std(exact_single):
    """`normalise_gradient=True` (the paper's adaptive step): g * n is unbiased, g itself is not."""
    estimator = nvil_at(6, n_samples=2, normalise_gradient=True)
    n = estimator.baselines[0].scale().item()
    assert n >= 2
    torch.manual_seed(7)
    estimator.eval()  # keep n fixed over the whole sample
    estimates = estimated_single_layer(estimator)
    assert max_z(estimates["logits"] * n, exact_single["logits"]) < Z_THRESHOLD
    assert max_z(estimates["logits"], exact_single["logits"]) > 3 * Z_THRESHOLD
    for name in ("w", "v", "c"):  # parameters inside f are untouched by the normaliser
        assert max_z(estimates[name], exact_single[name]) < Z_THRESHOLD


def test_a_model_gives_nvil_one_baseline_per_layer_before_its_optimizer():
    model = BinaryVAE(estimator=NVIL(), input_size=12, latent_sizes=(5, 3))
    assert len(model.estimator.baselines) == 2
    optimizer = model.configure_optimizers()
    estimator_group = [g for g in optimizer.param_groups if g.get("name") == "estimator"][0]
    assert len(estimator_group["params"]) == len(list(model.estimator.parameters())) > 0
    assert estimator_group["lr"] == model.estimator.lr == 1e-3
    assert {"signal_mean", "signal_std", "signal_mean_2", "signal_std_2"} <= set(model.estimator.logged_state())
    assert "estimator.baselines.1.signal_variance" in model.state_dict()
    randomised(model.estimator, 13)
    restored = BinaryVAE(estimator=NVIL(), input_size=12, latent_sizes=(5, 3))
    restored.load_state_dict(model.state_dict())
    for key, value in model.estimator.state_dict().items():
        assert torch.equal(restored.estimator.state_dict()[key], value), key


def test_nvil_baseline_network_fits_logits_of_any_width():
    """Narrower layers are zero-padded to the input width, wider ones fold unit d onto d mod width."""
    torch.manual_seed(0)
    network = randomised(NVIL(input_width=3, hidden_size=5), 1).baselines[0].network
    logits = torch.randn(2, 7, 5)
    folded = logits[..., :3] + torch.nn.functional.pad(logits[..., 3:], (0, 1))
    by_hand = network.output(torch.tanh(network.hidden(folded))).squeeze(-1)
    torch.testing.assert_close(network(logits), by_hand)
    padded = torch.nn.functional.pad(logits[..., :2], (0, 1))
    torch.testing.assert_close(network(logits[..., :2]), network(padded))


class SampleSeeingNVIL(NVIL):
    """Deliberately wrong: the baseline network is fed the logits plus the sample."""

    def layer_estimate(self, baseline, values, samples, logits):
        centred = values - baseline.signal_mean - baseline.network(logits + samples)
        return (centred.detach() / self.n_samples).unsqueeze(-1) * (samples - torch.sigmoid(logits)), centred


@pytest.mark.parametrize("n_samples", [1, 3])
def test_the_z_test_rejects_nvil_with_a_baseline_that_sees_the_sample(n_samples, exact_single):
    # The bias is E[C(phi + b) (b - theta)]: it needs a network whose output moves with its input
    # (some random draws are nearly flat, and a flat baseline is harmless whatever it sees).
    reference = nvil_at(11, n_samples)
    estimator = SampleSeeingNVIL(n_samples)
    estimator.load_state_dict(reference.state_dict())
    with torch.no_grad():
        flipped = estimator.baselines[0].network(LOGITS + 1) - estimator.baselines[0].network(LOGITS)
    assert flipped.abs().max() > 0.5
    torch.manual_seed(zlib.crc32(f"nvil-K{n_samples}-sees-the-sample".encode()))
    estimates = estimated_single_layer(estimator)
    assert max_z(estimates["logits"], exact_single["logits"]) > 3 * Z_THRESHOLD


def test_nvil_refuses_bad_settings():
    for make, message in [
        (lambda: NVIL(0), "n_samples must be >= 1"),
        (lambda: NVIL(2, baseline_lr=0.0), "baseline_lr must be > 0"),
        (lambda: NVIL(2, hidden_size=0), "hidden_size must be >= 1"),
        (lambda: NVIL(2, input_width=0), "input_width must be >= 1"),
        (lambda: NVIL(2, decay=1.0), "decay must be in"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            make()


# --- MuProp --------------------------------------------------------------------------------------


def test_muprop_follows_its_formula_with_one_call_of_f_at_k_plus_one_points():
    _, f = decoder_objective()
    calls = []

    def counted(b):
        calls.append(b.shape[0])
        return f(b)

    logits = torch.randn(5, 4) * 2
    leaf = logits.clone().requires_grad_(True)
    torch.manual_seed(3)
    out = MuProp(3)(leaf, counted)
    out.loss.backward()
    assert calls == [4] and MuProp(3).n_evaluations == 4
    theta = torch.sigmoid(logits)
    point = theta.clone().requires_grad_(True)
    centre = f(point.unsqueeze(0))
    (slope,) = torch.autograd.grad(centre.sum(), point)
    b = out.samples[0]
    signal = out.f_values - centre.detach() - (slope * (b - theta)).sum(-1)
    expected = (signal.unsqueeze(-1) * (b - theta)).mean(0) + slope * theta * (1 - theta)
    torch.testing.assert_close(-leaf.grad * 5, expected)


def test_muprop_on_a_linear_f_is_exact_in_every_draw():
    """f linear in b: the Taylor control is f itself, so every draw gives a * theta (1 - theta)."""
    weights = torch.tensor([1.5, -2.0, 0.5, 3.0])
    logits = torch.randn(6, 4)
    leaf = logits.clone().requires_grad_(True)
    MuProp(2)(leaf, lambda b: (b * weights).sum(-1) + 1.0).loss.backward()
    theta = torch.sigmoid(logits)
    torch.testing.assert_close(-leaf.grad * 6, weights * theta * (1 - theta))


def test_muprop_mean_over_every_outcome_is_the_exact_gradient(exact_single):
    """Without Monte Carlo: the K = 1 estimate averaged over all 2^4 samples of each example, with
    their probabilities, equals the exact gradient, the saturated example included (whose rare
    double flips make the Monte Carlo test need more replicas: helpers.HEAVY_TAILED_REPLICAS)."""
    params = single_layer_params(1)
    f = single_layer_f(params)
    theta = torch.sigmoid(LOGITS).unsqueeze(0)  # [1, 3, 4]
    point = theta.clone().requires_grad_(True)
    centre = f(point)
    (slope,) = torch.autograd.grad(centre.sum(), point)
    outcomes = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)))  # [16, 4]
    samples = outcomes.unsqueeze(1).expand(-1, 3, -1)  # [16, 3, 4]
    probabilities = (samples * theta + (1 - samples) * (1 - theta)).prod(-1)  # [16, 3]
    with torch.no_grad():
        values = f(samples)
    terms = torch.stack([muprop_terms(values[i : i + 1], centre.detach(), samples[i : i + 1], theta, theta, slope)[0]
                         for i in range(16)])  # [16, 3, 4], one K = 1 estimate per outcome
    mean = (probabilities.unsqueeze(-1) * terms).sum(0)
    torch.testing.assert_close(mean, exact_single["logits"], rtol=1e-4, atol=1e-6)


@pytest.fixture
def uncorrected_muprop(monkeypatch):
    """MuProp deliberately wrong: the Taylor control subtracted without its expectation added back."""

    def terms_without_correction(f_values, f_centre, samples, point, theta, slope):
        signal = f_values - f_centre - (slope * (samples - point)).sum(-1)
        return signal.unsqueeze(-1) * (samples - theta) / samples.shape[0]

    monkeypatch.setattr("discrete_vi.estimators.muprop.muprop_terms", terms_without_correction)
    return MuProp


@pytest.mark.parametrize("n_samples", [1, 3])
def test_the_z_test_rejects_muprop_without_its_analytic_correction(n_samples, uncorrected_muprop, exact_single):
    torch.manual_seed(zlib.crc32(f"muprop-K{n_samples}-uncorrected".encode()))
    estimates = estimated_single_layer(uncorrected_muprop(n_samples))
    assert max_z(estimates["logits"], exact_single["logits"]) > 3 * Z_THRESHOLD


def test_the_z_test_rejects_uncorrected_muprop_in_a_chain(uncorrected_muprop, exact_chain):
    torch.manual_seed(11)
    _, estimates = estimated_chain(uncorrected_muprop(2))
    assert max_z(estimates["logits"], exact_chain["logits"]) > 3 * Z_THRESHOLD


def test_muprop_chain_mean_field_pass_trains_nothing():
    """The layer maps' parameters get the estimator's gradient through the sampled chain's logits
    only: the same as a chain call whose mean-field pass runs on a frozen copy of the layers."""
    params = chain_params(1)
    layers, f = chain_model(params)
    logits = CHAIN_LOGITS.clone().requires_grad_(True)
    torch.manual_seed(12)
    out = MuProp(2).chain(logits, layers, f)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in params.named_parameters()}
    frozen = chain_params(1).requires_grad_(False)
    frozen.load_state_dict(params.state_dict())
    frozen_layer, _ = chain_model(frozen)
    calls = []

    def layer(b):  # the sampled chain's call uses the live map, the mean-field pass the frozen copy
        calls.append(b.shape[0])
        return (layers if len(calls) == 1 else frozen_layer)[0](b)

    params.zero_grad()
    logits.grad = None
    torch.manual_seed(12)
    MuProp(2).chain(logits, [layer], f).loss.backward()
    assert calls == [2, 1]
    for name, p in params.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], msg=name)


def test_muprop_refuses_one_evaluation_and_an_f_without_a_gradient_in_b():
    with pytest.raises(ConfigurationError, match="n_evaluations must be >= 2"):
        MuProp.at_cost(1)
    assert MuProp.at_cost(4).n_samples == 3
    assert "MuProp" in estimators_at(2) and "MuProp" not in estimators_at(1)
    decoder, f = decoder_objective()
    with pytest.raises(ConfigurationError, match="MuProp needs d f / d b .* not differentiable in its samples"):
        MuProp(2)(torch.randn(5, 4, requires_grad=True), lambda b: f(b.detach()))
    with pytest.raises(ConfigurationError, match="not differentiable in its samples"):
        MuProp(2)(torch.randn(5, 4, requires_grad=True), lambda b: (b.detach() > 0.5).float().sum(-1))
