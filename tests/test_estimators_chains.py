"""Double CV and RODEO on chains of stochastic layers (the RODEO authors' per-layer scheme,
`discrete_vi/estimators/linked.py`).

- Unbiased against exact enumeration on two- and three-layer chains (helpers' chain problem),
  for the first layer's logits, every later layer's parameters and the parameters inside f,
  with every layer's learned state randomised; deliberately broken variants fail the same test.
- The formula on known rows: each layer's estimate is the single-layer formula on its own rows.
- Each layer's learned state gets `d mean(g^2) / d param`, the mean over all layers' units
  (finite differences), scales with the loss's upstream scale, and learns nothing in eval mode.
- Per-layer state: names (one-layer names unchanged), created at configuration, checkpoints.
"""

import warnings
import zlib

import pytest
import torch
from helpers import (
    CHAIN_LOGITS,
    N_REPLICAS,
    Z_THRESHOLD,
    chain_model,
    chain_params,
    estimated_chain,
    max_z,
    randomised,
)

from discrete_vi.estimators import RODEO, RLOODoubleCV
from discrete_vi.estimators.double_cv import double_cv_terms
from discrete_vi.models import BinaryVAE

CHAIN_ESTIMATORS = {
    "RLOODoubleCV-2": lambda: RLOODoubleCV(2),
    "RLOODoubleCV-3": lambda: RLOODoubleCV(3),
    "RODEO-2": lambda: RODEO(2, hidden_size=16),
}


def prepared(estimator, n_layers: int, seed: int = 0):
    """`estimator` with state for `n_layers` layers, every layer's moved away from initialisation."""
    estimator.prepare_layers(n_layers)
    return randomised(estimator, seed)


def exact_for(n_layers: int, exact_chain, exact_chain3):
    return exact_chain if n_layers == 2 else exact_chain3


@pytest.mark.parametrize("n_layers", [2, 3])
@pytest.mark.parametrize("name", list(CHAIN_ESTIMATORS))
def test_hierarchical_estimates_are_unbiased(name, n_layers, exact_chain, exact_chain3):
    torch.manual_seed(zlib.crc32(f"{name}-{n_layers}-layers".encode()))
    estimator = prepared(CHAIN_ESTIMATORS[name](), n_layers, seed=n_layers)
    state = {n: p.detach().clone() for n, p in estimator.named_parameters()}
    out, estimates = estimated_chain(estimator, n_layers)
    assert out.f_values.shape == (n_layers * estimator.n_samples, 3 * N_REPLICAS)
    exact = exact_for(n_layers, exact_chain, exact_chain3)
    assert set(estimates) == set(exact)
    for param, value in exact.items():
        z = max_z(estimates[param], value)
        assert z < Z_THRESHOLD, f"{name}, {n_layers} layers: gradient w.r.t. {param} is off by {z:.1f} standard errors"
    for n, p in estimator.named_parameters():  # every layer's state learns (and is unchanged by the call)
        assert torch.equal(p, state[n])
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


# --- deliberately broken variants, caught by the same test ------------------------------------


class WrongThetaDoubleCV(RLOODoubleCV):
    """Deliberately wrong: layer l's correction term `alpha mean_k grad_k theta (1 - theta)` uses
    the next layer's theta (the first layer's for the last layer)."""

    def layer_estimates(self, rows, scale, learn):
        estimates, grads = super().layer_estimates(rows, scale, learn)
        for layer, (own, alpha) in enumerate(zip(rows, self.alphas())):
            theta, other = torch.sigmoid(own.logits), torch.sigmoid(rows[(layer + 1) % len(rows)].logits)
            shift = own.grads.mean(0) * (theta * (1 - theta) - other * (1 - other))
            estimates[layer] = estimates[layer] + alpha.detach() * shift
        return estimates, grads


class OwnGradientRODEO(RODEO):
    """Deliberately wrong: sample k's control functions use its own gradient `grad_k` (so they
    depend on `b_k`, and the Stein controls no longer have mean zero)."""

    def estimate(self, f_values, samples, logits, grads, layer=0):
        return super().estimate(f_values, samples, logits, grads.roll(1, 0), layer)  # K = 2: grad_j -> grad_k


@pytest.mark.parametrize("n_layers", [2, 3])
@pytest.mark.parametrize("make", [lambda: WrongThetaDoubleCV(2), lambda: OwnGradientRODEO(2, hidden_size=16)],
                         ids=["double-cv-wrong-layer-theta", "rodeo-own-gradient"])
def test_the_z_test_rejects_broken_hierarchical_estimators(make, n_layers, exact_chain, exact_chain3):
    """Every layer's state randomised, then alpha = 0.9 (and beta = -1.3) in every layer, so the
    broken term has weight. Measured over 4 seeds: max z 86-303 (double CV), 15-27 (RODEO)."""
    estimator = make()
    torch.manual_seed(zlib.crc32(f"{type(estimator).__name__}-{n_layers}".encode()))
    estimator = prepared(estimator, n_layers, seed=n_layers)
    with torch.no_grad():
        for name, p in estimator.named_parameters():
            if name.endswith("alpha") or name.startswith("later_layers.") and isinstance(estimator, RLOODoubleCV):
                p.fill_(0.9)
            elif name.endswith("beta"):
                p.fill_(-1.3)
    _, estimates = estimated_chain(estimator, n_layers)
    exact = exact_for(n_layers, exact_chain, exact_chain3)
    z = {param: max_z(estimates[param], value) for param, value in exact.items()}
    assert max(z.values()) > 2 * Z_THRESHOLD, z


# --- the formula on known rows -----------------------------------------------------------


def test_each_layer_gets_the_single_layer_formula_on_its_own_rows():
    """Two layers, K = 3: layer 1's estimate (the logits' gradient) and layer 2's (the gradient
    reaching the base chain's layer-2 logits) are double CV on rows 0-2 and 3-5 respectively,
    with d f / d b_l at those rows and that layer's alpha."""
    k, replicas = 3, 4
    params = chain_params(replicas)
    maps, f = chain_model(params)
    base_logits = []

    def layer(b):  # keeps the base chain's layer-2 logits (the only call that carries a graph)
        phi = maps[0](b)
        if phi.requires_grad:
            phi.retain_grad()
            base_logits.append(phi)
        return phi

    estimator = RLOODoubleCV(k)
    estimator.prepare_layers(2)
    with torch.no_grad():
        estimator.alpha.fill_(0.7)
        estimator.later_layers[0].fill_(-0.4)
    logits = CHAIN_LOGITS.repeat(replicas, 1).requires_grad_(True)
    torch.manual_seed(0)
    out = estimator.chain(logits, [layer], f)
    out.loss.backward()
    (phi2,) = base_logits
    batch = logits.shape[0]

    b1, b2 = (s.clone().requires_grad_(True) for s in out.samples)
    values = f([b1, b2], [logits.detach().expand(2 * k, -1, -1), maps[0](out.samples[0]).detach()])
    grad1, grad2 = torch.autograd.grad(values.sum(), [b1, b2])
    torch.testing.assert_close(values.detach(), out.f_values)
    for rows, theta, alpha, got in [
        (slice(0, k), torch.sigmoid(logits.detach()), 0.7, -batch * logits.grad),
        (slice(k, 2 * k), torch.sigmoid(phi2.detach()[0]), -0.4, -batch * phi2.grad[0]),
    ]:
        samples, grads = (b1, grad1) if rows.start == 0 else (b2, grad2)
        g0, g1 = double_cv_terms(out.f_values[rows], samples.detach()[rows], theta, grads[rows])
        torch.testing.assert_close(got, g0 + alpha * g1)
    # The rows of layer 2 keep the base chain's layer 1 (the same in each of its rows).
    assert torch.equal(out.samples[0][k:], out.samples[0][k : k + 1].expand(k, -1, -1))


# --- learned state: d mean(g^2) / d param, scale, eval mode ------------------------------


def chain_second_moment(reference, n_layers: int, name: str | None = None, delta: float = 0.0):
    """mean(g^2) over every layer's estimate (examples x all layers' units) for one fixed draw, and
    every parameter's gradient, for a copy of `reference` with parameter `name` moved by `delta`."""
    estimator = type(reference)(**reference.config()["init_args"])
    estimator.prepare_layers(n_layers)
    estimator.load_state_dict(reference.state_dict())
    if name is not None:
        with torch.no_grad():
            dict(estimator.named_parameters())[name].view(-1)[0] += delta
    params = chain_params(4, n_layers)
    maps, f = chain_model(params)
    captured = []

    def keeping(layer_map):
        def layer(b):
            phi = layer_map(b)
            if phi.requires_grad:
                phi.retain_grad()
                captured.append(phi)
            return phi

        return layer

    logits = CHAIN_LOGITS.repeat(4, 1).requires_grad_(True)
    torch.manual_seed(7)
    estimator.chain(logits, [keeping(m) for m in maps], f).loss.backward()
    batch = logits.shape[0]
    g = torch.cat([-batch * logits.grad] + [-batch * phi.grad[0] for phi in captured], -1)
    return (g.double() ** 2).mean().item(), {n: p.grad.view(-1)[0].item() for n, p in estimator.named_parameters()}


# g is linear in alpha, beta and the network's output bias, so mean(g^2) is quadratic in them and a
# central difference is exact at any step: a wide one (0.5) keeps float32 rounding out of it.
QUADRATIC, NONLINEAR = 0.5, 1e-2


@pytest.mark.parametrize(
    "make, steps",
    [
        (lambda: RLOODoubleCV(3), {"alpha": QUADRATIC, "later_layers.0": QUADRATIC, "later_layers.1": QUADRATIC}),
        (lambda: RODEO(2, hidden_size=8), {
            "alpha": QUADRATIC, "beta": QUADRATIC, "network.output.bias": QUADRATIC,
            "network.increment.weight": NONLINEAR,
            "later_layers.0.alpha": QUADRATIC, "later_layers.0.beta": QUADRATIC,
            "later_layers.0.network.base.weight": NONLINEAR,
            "later_layers.1.alpha": QUADRATIC, "later_layers.1.network.output.bias": QUADRATIC,
            "later_layers.1.network.increment.weight": NONLINEAR,
        }),
    ],
    ids=["RLOODoubleCV", "RODEO"],
)
def test_each_layers_state_gets_the_gradient_of_the_second_moment_over_all_layers(make, steps):
    torch.manual_seed(0)
    reference = prepared(make(), 3, seed=4)
    _, grads = chain_second_moment(reference, 3)
    for name, eps in steps.items():
        fd = (chain_second_moment(reference, 3, name, eps)[0] - chain_second_moment(reference, 3, name, -eps)[0]) / (2 * eps)
        assert grads[name] == pytest.approx(fd, rel=2e-2, abs=1e-5), name


@pytest.mark.parametrize("make", [lambda: RLOODoubleCV(2), lambda: RODEO(2, hidden_size=8)], ids=["RLOODoubleCV", "RODEO"])
def test_chain_gradients_scale_with_the_loss_and_eval_mode_learns_nothing(make):
    results = []
    for scale in (1.0, 512.0):
        torch.manual_seed(0)
        estimator = prepared(make(), 2, seed=1)
        params = chain_params(3)
        maps, f = chain_model(params)
        logits = CHAIN_LOGITS.repeat(3, 1).requires_grad_(True)
        torch.manual_seed(2)
        (scale * estimator.chain(logits, maps, f).loss).backward()
        results.append([logits.grad / scale, params.layer_weight.grad / scale, params.w2.grad / scale,
                        *(p.grad / scale for p in estimator.parameters())])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    estimator = prepared(make(), 2, seed=1).eval()
    params = chain_params(3)
    maps, f = chain_model(params)
    logits = CHAIN_LOGITS.repeat(3, 1).requires_grad_(True)
    estimator.chain(logits, maps, f).loss.backward()
    assert logits.grad is not None and params.layer_weight.grad is not None
    assert all(p.grad is None for p in estimator.parameters())


def test_a_layer_whose_samples_f_does_not_use_gets_rloo_and_f_without_any_gradient_is_refused():
    """f using only the last layer (as a sigmoid belief net's does): d f / d b_1 = 0, so layer 1's
    controls vanish and its estimate is RLOO's; an f differentiable in no layer's samples is an error."""
    params = chain_params(2)
    maps, f = chain_model(params)
    only_last = lambda samples, logits: f([torch.zeros_like(samples[0]), samples[1]], logits)  # noqa: E731
    logits = CHAIN_LOGITS.repeat(2, 1).requires_grad_(True)
    estimator = prepared(RLOODoubleCV(2), 2, seed=3)
    torch.manual_seed(0)
    out = estimator.chain(logits, maps, only_last)
    out.loss.backward()
    fv, b = out.f_values[:2], out.samples[0][:2]
    rloo = 0.5 * (fv[0] - fv[1]).unsqueeze(-1) * (b[0] - b[1])
    torch.testing.assert_close(-logits.shape[0] * logits.grad, rloo)
    detached = lambda samples, logits: f([s.detach() for s in samples], logits)  # noqa: E731
    out = estimator.chain(CHAIN_LOGITS.repeat(2, 1).requires_grad_(True), maps, detached)
    with pytest.raises(RuntimeError, match="not differentiable in its samples"):
        out.loss.backward()


# --- per-layer state: names, configuration, checkpoints ---------------------------------


def test_one_layer_state_keeps_its_names_and_later_layers_add_theirs():
    assert set(RLOODoubleCV(2).state_dict()) == {"alpha"}
    rodeo = set(RODEO(2).state_dict())
    assert rodeo == {"alpha", "beta", "network.increment.weight", "network.increment.bias", "network.base.weight",
                     "network.output.weight", "network.output.bias"}
    double_cv = RLOODoubleCV(2)
    double_cv.prepare_layers(3)
    assert set(double_cv.state_dict()) == {"alpha", "later_layers.0", "later_layers.1"}
    assert set(double_cv.logged_state()) == {"alpha", "layer2/alpha", "layer3/alpha"}
    two = RODEO(2)
    two.prepare_layers(2)
    assert set(two.state_dict()) == rodeo | {f"later_layers.0.{name}" for name in rodeo}
    assert set(two.logged_state()) == {"alpha", "beta", "layer2/alpha", "layer2/beta"}
    two.prepare_layers(2)  # idempotent
    assert len(two.later_layers) == 1


@pytest.mark.parametrize("make", [lambda: RLOODoubleCV(2), lambda: RODEO(2, hidden_size=8)], ids=["RLOODoubleCV", "RODEO"])
def test_a_two_layer_model_creates_every_layers_state_before_its_optimizer_and_checkpoints_it(make):
    model = BinaryVAE(estimator=make(), latent_sizes=(8, 6))
    estimator_group = model.configure_optimizers().param_groups[-1]
    assert estimator_group["name"] == "estimator"
    assert estimator_group["params"] == list(model.estimator.parameters())
    assert len(model.estimator.later_layers) == 1
    with torch.no_grad():
        for p in model.estimator.parameters():
            p.add_(torch.randn(p.shape))
    again = BinaryVAE(estimator=make(), latent_sizes=(8, 6))
    again.load_state_dict(model.state_dict())  # strict: the same names and shapes
    for a, b in zip(again.estimator.parameters(), model.estimator.parameters()):
        torch.testing.assert_close(a, b)


def test_state_created_at_the_first_call_is_announced_in_training_mode():
    maps, f = chain_model(chain_params(1))
    with pytest.warns(UserWarning, match=r"call prepare_layers\(2\) before building the optimizer"):
        RODEO(2, hidden_size=8).chain(CHAIN_LOGITS.clone().requires_grad_(True), maps, f)
    estimator = RLOODoubleCV(2).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # eval mode: no optimizer to miss the new state, no warning
        estimator.chain(CHAIN_LOGITS.clone(), maps, f)
    assert len(estimator.later_layers) == 1
