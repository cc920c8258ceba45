"""REBAR and RELAX: what is particular to them.

The conditional relaxation `z~ | b` and its derivative; the estimate on known draws against the
definitions with autograd doing every derivative; the broken variants other ports shipped (`z~`
independent of `b`, `z~` without its dependence on the logits: duvenaud/relax#6, the control's
gradient leaking into the model: pydrobert-pytorch#9), caught by the same z-test as
tests/test_estimators_unbiased.py; the learned state's gradient against finite differences of
`mean(g^2)`; eval mode, loss scaling, refusals. The registry runs the rest (contract,
unbiasedness for one layer and chains, command line).
"""

import zlib

import pytest
import torch
from helpers import (
    second_moment_run,
    CHAIN_LOGITS,
    SMALL_EVAL,
    TINY,
    Z_THRESHOLD,
    chain_model,
    chain_params,
    decoder_objective,
    estimated_chain,
    estimated_single_layer,
    max_z,
    only_version,
    steps_by_tag,
)
from torch import nn

from discrete_vi.bernoulli import draw_bernoulli, uniform
from discrete_vi.checks import ConfigurationError
from discrete_vi.cli import run_cli
from discrete_vi.estimators import REBAR, RELAX, Reinforce, estimators_at, relax
from discrete_vi.estimators.relax import conditional_logistic


def moved(make, seed: int = 0):
    """`make()` with temperature, eta and network moved well away from their initial values."""
    torch.manual_seed(seed)
    estimator = make()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        estimator.log_temperature.fill_(-0.4)  # lambda = 0.67
        estimator.eta.fill_(0.7)
        for p in getattr(estimator, "network", nn.Module()).parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return estimator


BOTH = [lambda n_samples=1: REBAR(n_samples), lambda n_samples=1: RELAX(n_samples, hidden_size=16)]
BOTH_IDS = ["REBAR", "RELAX"]


# --- the conditional relaxation -------------------------------------------------------------


def test_z_given_b_has_the_right_law_and_derivative():
    torch.manual_seed(0)
    phi = torch.tensor([-6.0, -1.5, 0.0, 0.7, 3.0, 9.0])
    n = 200000
    b, _ = draw_bernoulli(phi.expand(n, -1))
    z, slope = conditional_logistic(phi.expand(n, -1), b, uniform((n, 6), bits=16))
    assert torch.equal((z > 0).float(), b), "H(z~) must be b for every draw"
    # Marginally z ~ Logistic(phi, 1): P(z < t) = sigmoid(t - phi) at a few thresholds.
    for t in (-2.0, 0.5, 4.0):
        hits = (z < phi + t).float()
        expected = torch.sigmoid(torch.tensor(t))
        assert ((hits.mean(0) - expected).abs() / (hits.std(0) / n**0.5)).max() < Z_THRESHOLD
    # d z~ / d phi with b and v fixed, against autograd of the plain formula; not 1 (relax#6).
    leaf = phi.double().requires_grad_(True)  # float64: the plain formula cancels at phi = 9
    v = uniform((5, 6), bits=16)
    for bits in (torch.zeros(6), torch.ones(6)):
        theta = torch.sigmoid(leaf)
        u = torch.where(bits > 0, v * theta, theta + v * (1 - theta))
        (autograd_slope,) = torch.autograd.grad((leaf + torch.log(1 - u) - torch.log(u)).sum(), leaf)
        _, slope = conditional_logistic(phi, bits, v)
        torch.testing.assert_close(slope.sum(0).double(), autograd_slope, rtol=1e-5, atol=1e-6)
        assert ((slope > 0) & (slope <= 1)).all() and (slope < 0.99).any()


# --- the estimate on known draws ------------------------------------------------------------


def textbook_estimate(estimator, logits, f, seed: int, n: int):
    """g from the definitions, autograd doing every derivative: `z = phi + (z - phi)` (a location
    family: dz/dphi = 1), `z~` built from the live logits through theta (so autograd gives its
    derivative), `c(z) = eta [f(sigmoid(z / lambda)) + r(phi, z)]`. The draws are replayed from
    `seed` in the estimator's order: b's uniforms, then those of z and z~ (16 bits)."""
    torch.manual_seed(seed)
    phi = logits.expand(n, -1, -1)
    b, _ = draw_bernoulli(phi)
    v = uniform((2 * n, *logits.shape), bits=16)
    leaf = logits.clone().requires_grad_(True)
    live = leaf.expand(n, -1, -1)
    theta = torch.sigmoid(live)
    z_value, _ = conditional_logistic(phi, b, v[:n])
    z = live + (z_value - phi)
    u_tilde = torch.where(b > 0, v[n:] * theta, theta + v[n:] * (1 - theta))
    z_tilde = live + torch.log(1 - u_tilde) - torch.log(u_tilde)
    temperature, eta = estimator.log_temperature.detach().exp(), estimator.eta.detach()

    def control(points):
        value = f(torch.sigmoid(points / temperature))
        if isinstance(estimator, RELAX):  # the network as its layers define it (autograd, not its written-out slope)
            net = estimator.network
            hidden = nn.functional.leaky_relu(net.hidden(torch.stack([phi, points], -1)), 0.3)
            value = value + net.output(hidden).squeeze(-1).sum(-1)
        return eta * value

    at_z, at_z_tilde = control(z), control(z_tilde)
    (pathwise,) = torch.autograd.grad((at_z - at_z_tilde).sum(), leaf)
    score = b - torch.sigmoid(phi)
    return ((f(b) - at_z_tilde).detach().unsqueeze(-1) * score).mean(0) + pathwise / n, b


def model_gradients(estimator, seed: int = 5, n_examples: int = 6):
    """One training call on a small VAE-like model (linear encoder and decoder): the gradients of
    the logits, the encoder and the decoder, and the samples."""
    torch.manual_seed(0)
    encoder = nn.Linear(3, 4)
    decoder, f = decoder_objective()
    x = torch.randn(n_examples, 3)
    logits = encoder(x)
    logits.retain_grad()
    torch.manual_seed(seed)
    out = estimator(logits, f)
    out.loss.backward()
    return logits.detach(), f, decoder, {"logits": logits.grad, "encoder": encoder.weight.grad,
                                         "decoder": decoder.weight.grad}, out


def check_the_model_learns_from_hard_samples_only(make):
    """Train mode: the decoder's gradient is -(1/(K B)) sum_k d f(b_k) / d weight, and the logits'
    and encoder's are those of eval mode (where nothing is learned) on the same draws."""
    _, f, decoder, grads, out = model_gradients(make())
    (hard_only,) = torch.autograd.grad(-f(out.samples[0]).mean(), decoder.weight)
    torch.testing.assert_close(grads["decoder"], hard_only)
    _, _, _, frozen, _ = model_gradients(make().eval())
    for name in ("logits", "encoder", "decoder"):
        torch.testing.assert_close(grads[name], frozen[name], rtol=0, atol=0)


@pytest.mark.parametrize("make", BOTH, ids=BOTH_IDS)
@pytest.mark.parametrize("n_samples", [1, 3])
def test_the_estimate_follows_the_definition_and_the_model_learns_from_hard_samples_only(make, n_samples):
    estimator = moved(lambda: make(n_samples), seed=n_samples)
    logits, f, _, grads, out = model_gradients(estimator)
    expected, b = textbook_estimate(estimator, logits, f, seed=5, n=n_samples)
    torch.testing.assert_close(out.samples[0], b)
    torch.testing.assert_close(-logits.shape[0] * grads["logits"], expected, rtol=1e-4, atol=1e-5)
    assert all(p.grad is not None for p in estimator.parameters())
    check_the_model_learns_from_hard_samples_only(lambda: moved(lambda: make(n_samples), seed=n_samples))


@pytest.mark.parametrize("make", BOTH, ids=BOTH_IDS)
def test_with_eta_zero_the_estimate_is_reinforce_on_the_same_samples(make):
    f = decoder_objective()[1]
    logits = torch.randn(5, 4)
    grads = []
    for estimator in (Reinforce(2), make(2)):
        with torch.no_grad():
            getattr(estimator, "eta", torch.zeros(())).zero_()
        torch.manual_seed(3)
        leaf = logits.clone().requires_grad_(True)
        estimator(leaf, f).loss.backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1])


class LeakingREBAR(REBAR):
    """Deliberately wrong (pydrobert-pytorch#9): the second moment is added to the loss, so its
    gradient reaches the decoder (through d f / d s) as well as the estimator's parameters."""

    def descent_term(self, second_moment):
        return second_moment - second_moment.detach()


def test_a_control_that_leaks_into_the_model_is_caught():
    with pytest.raises(AssertionError, match="not close"):
        check_the_model_learns_from_hard_samples_only(lambda: moved(lambda: LeakingREBAR(1)))


# --- broken variants, caught by the enumeration z-test -----------------------------------------


def independent_of_b(logits, samples, uniforms):
    """Deliberately wrong: z and z~ drawn given an independent b' instead of b."""
    return conditional_logistic(logits, draw_bernoulli(logits)[0], uniforms)


def without_theta_path(logits, samples, uniforms):
    """Deliberately wrong (duvenaud/relax#6): d z~ / d phi taken as 1, z~'s dependence on theta lost."""
    z, slope = conditional_logistic(logits, samples, uniforms)
    return z, torch.ones_like(slope)


@pytest.mark.parametrize("make", BOTH, ids=BOTH_IDS)
def test_the_unbroken_estimators_pass_the_z_test(make, exact_single):
    torch.manual_seed(zlib.crc32(b"relaxed-unbroken"))
    estimates = estimated_single_layer(moved(make), chunks=2)
    for name, exact in exact_single.items():
        assert max_z(estimates[name], exact) < Z_THRESHOLD, name


@pytest.mark.parametrize("make", BOTH, ids=BOTH_IDS)
@pytest.mark.parametrize("broken", [independent_of_b, without_theta_path], ids=["z~-independent-of-b", "relax-issue-6"])
def test_the_z_test_rejects_broken_conditional_relaxations(make, broken, monkeypatch, exact_single):
    monkeypatch.setattr(relax, "conditional_logistic", broken)
    torch.manual_seed(zlib.crc32(broken.__name__.encode()))
    estimates = estimated_single_layer(moved(make), chunks=2)
    assert max_z(estimates["logits"], exact_single["logits"]) > 2 * Z_THRESHOLD


class HardBelowREBAR(REBAR):
    """The DisARM and RODEO code's control for several layers, deliberately here: layer l relaxed,
    the layers below resampled hard with fresh noise. Its pathwise derivative ignores how the
    lower layers' law moves with z_l, so the estimate is biased (the reason this package relaxes
    the lower layers with the hard draws' noise instead)."""

    @staticmethod
    def _relaxed_block(layer, hard, fixed, layers, points, temperature):
        samples = [torch.cat([b, b]) for b in hard.samples[:layer]]
        logit_inputs = [torch.cat([phi, phi]) for phi in fixed[: layer + 1]]
        below = torch.sigmoid(points / temperature)
        samples.append(below)
        for m in range(layer + 1, len(fixed)):
            phi = layers[m - 1](below).float()
            below = draw_bernoulli(phi)[0]
            samples.append(below)
            logit_inputs.append(phi)
        return samples, logit_inputs


def test_the_z_test_rejects_lower_layers_resampled_hard(exact_chain):
    torch.manual_seed(zlib.crc32(b"rebar-chain-hard-below"))
    estimator = HardBelowREBAR(1)
    with torch.no_grad():
        estimator.log_temperature.fill_(-0.4)
        estimator.eta.fill_(1.5)
    _, estimates = estimated_chain(estimator)
    assert max_z(estimates["logits"], exact_chain["logits"]) > 2 * Z_THRESHOLD


def test_chains_train_every_layer_from_hard_samples_only():
    """The layer map learns through the second layer's logits only: its gradient is the same
    whether or not the estimator learns (the relaxed passes call it, but give it nothing)."""
    grads = []
    for training in (True, False):
        params = chain_params(2)
        layers, f = chain_model(params)
        logits = CHAIN_LOGITS.repeat(2, 1).requires_grad_(True)
        estimator = moved(lambda: RELAX(2, hidden_size=8)).train(training)
        torch.manual_seed(0)
        out = estimator.chain(logits, layers, f)
        out.loss.backward()
        assert all(set(s.unique().tolist()) <= {0.0, 1.0} for s in out.samples)
        assert out.f_values.shape == (2, 6)
        assert all((p.grad is not None) == training for p in estimator.parameters())
        grads.append({"logits": logits.grad, **{n: p.grad for n, p in params.named_parameters()}})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=0, msg=name)
    assert grads[0]["layer_weight"].abs().sum() > 0


# --- learning: the second moment's gradient, eval mode, loss scaling ---------------------------


def small_decoder_f(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(4, 6, generator=g)
    return lambda b: torch.tanh(b @ weights).sum(-1) ** 2 - b.sum(-1)


@pytest.mark.parametrize("make", BOTH, ids=BOTH_IDS)
def test_learned_gradients_are_those_of_the_second_moment(make):
    """Each parameter's gradient is d mean(g**2) / d param: central differences on the same draws."""
    logits = torch.linspace(-2, 2, 12).view(3, 4)
    f = small_decoder_f()
    reference = moved(make, seed=4)

    def run(name=None, delta=0.0):
        return second_moment_run(make, reference.state_dict(), logits, f, name, delta)

    _, grads = run()
    # g is linear in eta and in the network's output bias: mean(g**2) is quadratic in them and a
    # central difference is exact at any step (a wide one keeps float32 rounding out of it).
    steps = {"eta": 0.5, "network.output.bias": 0.5}
    for name in grads:
        eps = steps.get(name, 1e-2)
        fd = (run(name, eps)[0] - run(name, -eps)[0]) / (2 * eps)
        assert grads[name] == pytest.approx(fd, rel=2e-2, abs=1e-5), name
    assert abs(grads["log_temperature"]) > 1e-3


@pytest.mark.parametrize("make", BOTH, ids=BOTH_IDS)
def test_nothing_is_learned_in_eval_mode_and_gradients_scale_with_the_loss(make):
    logits = torch.randn(5, 4)
    f = small_decoder_f(2)
    results = []
    for scale in (1.0, 512.0):
        estimator = moved(make)
        leaf = logits.clone().requires_grad_(True)
        torch.manual_seed(1)
        (scale * estimator(leaf, f).loss).backward()
        results.append([leaf.grad / scale, *(p.grad / scale for p in estimator.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    estimator = moved(make).eval()
    leaf = logits.clone().requires_grad_(True)
    estimator(leaf, f).loss.backward()
    assert leaf.grad is not None and all(p.grad is None for p in estimator.parameters())


@pytest.mark.parametrize("make", BOTH, ids=BOTH_IDS)
def test_without_autograd_only_the_value_is_formed(make):
    f = small_decoder_f()
    with torch.no_grad():
        out = make()(torch.randn(5, 4), f)
    torch.testing.assert_close(out.loss, -out.f_values.mean())
    assert not out.loss.requires_grad and out.samples[0].shape == (1, 5, 4)


# --- refusals and settings ---------------------------------------------------------------------


@pytest.mark.parametrize("make", BOTH, ids=BOTH_IDS)
def test_an_f_that_is_not_differentiable_in_its_samples_is_refused(make):
    _, f = decoder_objective()
    for not_differentiable in (lambda b: f(b.detach()), lambda b: (b.detach() ** 2).sum(-1)):
        with pytest.raises(ConfigurationError, match="not differentiable in its samples"):
            make()(torch.randn(5, 4, requires_grad=True), not_differentiable)
    layers, chain_f = chain_model(chain_params(1))
    second_layer_detached = lambda samples, logits: chain_f([samples[0], samples[1].detach()], logits)  # noqa: E731
    with pytest.raises(ConfigurationError, match="not differentiable in its samples"):
        make().chain(CHAIN_LOGITS.clone().requires_grad_(True), layers, second_layer_detached)


def test_cost_settings_and_state():
    assert REBAR(2).n_evaluations == 6 and RELAX(1).n_evaluations == 3
    assert REBAR.at_cost(6).n_samples == 2 and RELAX.at_cost(3).n_samples == 1
    for cost in (1, 2, 4, 5):
        with pytest.raises(ConfigurationError, match="multiple of 3"):
            RELAX.at_cost(cost)
    assert {"REBAR", "RELAX", "RLOO"} <= set(estimators_at(3)) and "DisARM" not in estimators_at(3)
    assert "REBAR" not in estimators_at(2) and "DisARM" in estimators_at(2)
    for make, message in [
        (lambda: REBAR(0), "n_samples must be >= 1"),
        (lambda: REBAR(1, temperature=0), "temperature must be > 0"),
        (lambda: RELAX(1, control_lr=-1), "control_lr must be > 0"),
        (lambda: RELAX(1, hidden_size=0), "hidden_size must be >= 1"),
    ]:
        with pytest.raises(ConfigurationError, match=message):
            make()
    estimator = RELAX(1, temperature=0.1, control_lr=3e-3)
    assert estimator.lr == 3e-3 and set(estimator.logged_state()) == {"temperature", "eta"}
    assert estimator.logged_state()["temperature"].item() == pytest.approx(0.1)
    assert {"log_temperature", "eta", "network.hidden.weight", "network.output.bias"} <= set(estimator.state_dict())
    assert estimator.network.hidden.out_features == 137 and RELAX(1).compile_refusal


def test_help_documents_every_option(capsys):
    for name in ("REBAR", "RELAX"):
        with pytest.raises(SystemExit):
            run_cli(["fit", "--model.estimator.help", name])
    printed = " ".join(capsys.readouterr().out.split())
    for text in ("K >= 1 samples per example", "initial temperature lambda", "learning rate of log lambda",
                 "hidden LeakyReLU(0.3) units"):
        assert text in printed, text


def test_the_variance_basket_leaves_out_what_cannot_run_at_the_models_cost(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_cli(["fit", *TINY, "--model.latent_sizes", "[12]", *SMALL_EVAL, "--model.estimator", "RELAX",
             "--trainer.callbacks+=discrete_vi.callbacks.EstimatorVarianceBasket",
             "--trainer.callbacks.estimators", "[RLOO, DisARM, REBAR, RELAX]",
             "--trainer.callbacks.every_n_steps", "2", "--trainer.callbacks.adapt_steps", "2"])
    basket = sorted(tag for tag in steps_by_tag(only_version(tmp_path)) if tag.startswith("variance/"))
    assert basket == ["variance/REBAR", "variance/RELAX", "variance/RLOO"]
    assert "DisARM cannot run at 3 evaluations of f" in capsys.readouterr().err
