"""ARMS, RODEO and the biased straight-through baselines: what is particular to each.

Same z-test as tests/test_estimators_unbiased.py (many independent estimates in
one batched call, per-example parameters inside f). Learned state is set to
random values away from initialisation: unbiasedness must not depend on it.
"""

import zlib

import pytest
import torch
from helpers import (
    second_moment_run,
    CHAIN_LOGITS,
    LOGITS,
    N_REPLICAS,
    Z_THRESHOLD,
    chain_model,
    chain_params,
    estimated_single_layer,
    max_z,
    single_layer_params,
)

from discrete_vi.estimators import ARMS, ESTIMATORS, RLOO, RODEO, DisARM, GumbelSoftmaxST, StraightThrough
from discrete_vi.estimators.arms import arms_debias, arms_samples
from discrete_vi.estimators.rodeo import stein_controls
from discrete_vi.exact import exact_objective


def randomised_rodeo(n_samples: int, seed: int = 0, hidden_size: int = 16, expansions: str = "all") -> RODEO:
    """RODEO with alpha, beta and the control network moved well away from their initial values."""
    estimator = RODEO(n_samples, hidden_size=hidden_size, expansions=expansions)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        estimator.alpha.fill_(0.9)
        estimator.beta.fill_(-1.3)
        for p in estimator.network.parameters():
            p.add_(torch.randn(p.shape, generator=g))
    return estimator


def test_rodeo_with_the_next_expansion_only_is_unbiased(exact_single):
    torch.manual_seed(zlib.crc32(b"rodeo-K4-next"))
    estimates = estimated_single_layer(randomised_rodeo(4, seed=3, expansions="next"))
    for name, exact in exact_single.items():
        z = max_z(estimates[name], exact)
        assert z < Z_THRESHOLD, f"RODEO K=4 next: gradient w.r.t. {name} is off by {z:.1f} standard errors"


# --- ARMS: the copula and the K = 2 case ------------------------------------------


def test_arms_samples_have_bernoulli_marginals_and_the_stated_pair_probability():
    torch.manual_seed(0)
    phi = torch.tensor([-6.0, -1.0, -0.2, 0.0, 0.4, 2.0, 6.0])
    n = 40000
    for k in (2, 3, 5):
        b = arms_samples(phi.expand(n, -1), k)  # [K, n, D]
        theta = torch.sigmoid(phi)
        marginal_z = (b.mean(1) - theta).abs() / (theta * (1 - theta) / n).sqrt()
        assert marginal_z.max() < Z_THRESHOLD, (k, b.mean(1), theta)
        both = b[0] * b[1]
        p11 = theta - theta * (1 - theta) / arms_debias(phi, k)  # lambda = theta (1 - theta) / (theta - P11)
        pair_z = (both.mean(0) - p11).abs() / (both.std(0) / n**0.5).clamp_min(1e-4)
        assert pair_z.max() < Z_THRESHOLD, (k, both.mean(0), p11)


def test_arms_with_two_samples_is_disarm():
    """K = 2: the copula gives the antithetic pair, lambda = sigmoid(|phi|), and the estimate is DisARM's."""
    torch.manual_seed(0)
    logits = torch.randn(64, 5) * 3
    w = torch.randn(5)
    f = lambda b: torch.tanh(b @ w.unsqueeze(-1)).squeeze(-1) * 3 + b.sum(-1) ** 2  # noqa: E731
    torch.testing.assert_close(arms_debias(logits, 2), torch.sigmoid(logits.abs()))
    leaf = logits.clone().requires_grad_(True)
    out = ARMS(2)(leaf, f)
    out.loss.backward()
    b1, b2 = out.samples[0]
    # The pair is antithetic: 1[u < theta] and 1[1 - u < theta]: never both the rarer value.
    rare = torch.where(logits < 0, 1.0, 0.0)
    assert not ((b1 == rare) & (b2 == rare)).any()
    diff = (out.f_values[0] - out.f_values[1]).unsqueeze(-1)
    disarm = 0.5 * diff * (-1.0) ** b2 * (b1 != b2) * torch.sigmoid(logits.abs())
    torch.testing.assert_close(-logits.shape[0] * leaf.grad, disarm)


def test_arms_with_two_samples_has_disarms_variance():
    """Same distribution of estimates: the variances agree within sampling error (F-test bound)."""
    logits = torch.tensor([[0.3, -1.2, 2.0, -0.5, 4.0]])
    w = torch.tensor([1.0, -2.0, 0.5, 1.5, -1.0])
    f = lambda b: (b @ w) ** 2 + torch.sin(3 * b.sum(-1))  # noqa: E731
    n = 50000
    variances = []
    for estimator in (ARMS(2), DisARM(1)):
        torch.manual_seed(3)
        leaf = logits.expand(n, -1).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(estimator(leaf, f).loss, leaf)
        variances.append((grad * n).var(0))
    ratio = variances[0] / variances[1]
    assert ((ratio - 1).abs() < 0.05).all(), ratio  # ~ 6 standard errors of a variance ratio at n = 50000


# --- RODEO: reduces to RLOO, learns by its second moment --------------------------


def small_decoder_f(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weights = torch.randn(4, 6, generator=g)
    return lambda b: torch.tanh(b @ weights).sum(-1) ** 2 - b.sum(-1)


def test_rodeo_with_zero_alpha_and_beta_is_rloo():
    logits = torch.randn(5, 4)
    f = small_decoder_f()
    grads = []
    for estimator in (RLOO(3), RODEO(3)):
        torch.manual_seed(5)
        leaf = logits.clone().requires_grad_(True)
        estimator(leaf, f).loss.backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_rodeo_parameter_gradients_are_those_of_the_second_moment():
    """Each parameter's gradient is d mean(g**2) / d param: finite differences on the same samples."""
    logits = torch.linspace(-2, 2, 12).view(3, 4)
    f = small_decoder_f(1)
    torch.manual_seed(0)
    reference = randomised_rodeo(3, seed=4)

    def run(name=None, delta=0.0):
        return second_moment_run(lambda: RODEO(3, hidden_size=16), reference.state_dict(), logits, f, name, delta)

    _, grads = run()
    # g is linear in alpha, beta and the output bias, so mean(g**2) is quadratic in them and a central
    # difference is exact at any step: a wide one keeps float32 rounding out of the difference.
    steps = {"alpha": 0.5, "beta": 0.5, "network.output.bias": 0.5}
    for name in ("alpha", "beta", "network.increment.weight", "network.base.weight", "network.output.bias"):
        eps = steps.get(name, 1e-2)
        fd = (run(name, eps)[0] - run(name, -eps)[0]) / (2 * eps)
        assert grads[name] == pytest.approx(fd, rel=2e-2, abs=1e-5), name


def test_rodeo_learns_nothing_in_eval_mode_and_scales_with_the_loss():
    logits = torch.randn(5, 4)
    f = small_decoder_f(2)
    results = []
    for scale in (1.0, 512.0):
        torch.manual_seed(1)
        estimator = randomised_rodeo(2)
        leaf = logits.clone().requires_grad_(True)
        (scale * estimator(leaf, f).loss).backward()
        results.append((leaf.grad / scale, estimator.alpha.grad / scale, estimator.network.output.weight.grad / scale))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    estimator = randomised_rodeo(2).eval()
    leaf = logits.clone().requires_grad_(True)
    estimator(leaf, f).loss.backward()
    assert leaf.grad is not None and all(p.grad is None for p in estimator.parameters())


def test_rodeo_refuses_an_f_that_is_not_differentiable_in_its_samples():
    f = small_decoder_f()
    out = RODEO(2)(torch.randn(5, 4, requires_grad=True), lambda b: f(b.detach()))
    with pytest.raises(RuntimeError, match="not differentiable in its samples"):
        out.loss.backward()


def test_rodeo_memory_is_linear_in_the_units():
    """No [K, B, D, D] tensor: the largest saved activation is [K(K-1), B, D+1, hidden]."""
    estimator = RODEO(2, hidden_size=8)
    logits = torch.zeros(3, 300)
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        c, v = stein_controls(torch.zeros(2, 3), torch.ones(2, 3, 300), logits, torch.ones(2, 3, 300), estimator.network)
        (c.sum() + v.sum()).backward()
    assert max(sizes) <= 2 * 3 * 301 * 8 < 2 * 3 * 300 * 300


# --- The biased baselines: bias measured against enumeration -----------------------


def linear_f(p):
    return lambda b: (b * p.w).sum(-1) + p.c


@pytest.fixture(scope="module")
def exact_linear():
    logits = LOGITS.clone().requires_grad_(True)
    params = single_layer_params(1)
    objective = exact_objective(logits, linear_f(params)).sum()
    return torch.autograd.grad(objective, logits)[0]


def linear_estimates(estimator):
    logits = LOGITS.repeat(N_REPLICAS, 1).requires_grad_(True)
    params = single_layer_params(N_REPLICAS)
    estimator(logits, linear_f(params)).loss.backward()
    return (-logits.shape[0] * logits.grad).view(N_REPLICAS, 3, -1)


@pytest.mark.parametrize(
    "name, make",
    [("st", lambda: StraightThrough()), ("gs-tau1", lambda: GumbelSoftmaxST(temperature=1.0)),
     ("gs-tau0.5", lambda: GumbelSoftmaxST(2, temperature=0.5))],
)
def test_biased_estimators_are_measurably_biased(name, make, exact_single):
    estimator = make()
    assert estimator.biased and ESTIMATORS[type(estimator).__name__].biased
    torch.manual_seed(zlib.crc32(name.encode()))
    estimates = estimated_single_layer(estimator)
    z = max_z(estimates["logits"], exact_single["logits"])
    assert z > 3 * Z_THRESHOLD, f"{name}: logit gradient only {z:.1f} standard errors from exact"
    bias = (estimates["logits"].mean(0) - exact_single["logits"]).abs().max().item()
    assert bias > 0.01 * exact_single["logits"].abs().max().item()  # ST: ~2%, GS: more
    # The decoder's parameters get the pathwise gradient at exact samples: unbiased.
    for name_param in ("w", "v", "c"):
        assert max_z(estimates[name_param], exact_single[name_param]) < Z_THRESHOLD


def test_straight_through_is_exact_for_linear_f_and_gumbel_softmax_is_not(exact_linear):
    torch.manual_seed(0)
    # Noise-free for linear f: every straight-through estimate is w * theta (1 - theta), the exact gradient.
    estimates = linear_estimates(StraightThrough())
    torch.testing.assert_close(estimates, exact_linear.expand_as(estimates))
    torch.manual_seed(0)
    assert max_z(linear_estimates(GumbelSoftmaxST(temperature=1.0)), exact_linear) > 3 * Z_THRESHOLD


def test_unbiased_estimators_are_marked_unbiased():
    assert {name for name, cls in ESTIMATORS.items() if cls.biased} == {"StraightThrough", "GumbelSoftmaxST"}


@pytest.mark.parametrize("make", [StraightThrough, lambda: GumbelSoftmaxST(2, temperature=0.7), lambda: ARMS(3)])
def test_chains_train_every_layer(make):
    params = chain_params(2)
    layers, f = chain_model(params)
    logits = CHAIN_LOGITS.repeat(2, 1).requires_grad_(True)
    torch.manual_seed(0)
    out = make().chain(logits, layers, f)
    out.loss.backward()
    assert all(set(s.unique().tolist()) <= {0.0, 1.0} for s in out.samples)
    assert logits.grad.abs().sum() > 0 and params.layer_weight.grad.abs().sum() > 0


def test_bad_settings_raise_clear_errors():
    for make, message in [
        (lambda: ARMS(1), "n_samples must be >= 2"),
        (lambda: RODEO(1), "n_samples must be >= 2"),
        (lambda: RODEO(2, control_lr=0), "control_lr must be > 0"),
        (lambda: RODEO(2, hidden_size=0), "hidden_size must be >= 1"),
        (lambda: RODEO(2, expansions="some"), "expansions must be one of 'all', 'next'"),
        (lambda: StraightThrough(0), "n_samples must be >= 1"),
        (lambda: GumbelSoftmaxST(temperature=0.0), "temperature must be > 0"),
        (lambda: GumbelSoftmaxST(temperature=-1), "temperature must be > 0"),
        (lambda: GumbelSoftmaxST(temperature="hot"), "temperature must be a number > 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            make()


def test_rodeo_exposes_its_learning_rate_and_state():
    estimator = RODEO(2, control_lr=3e-3)
    assert estimator.lr == 3e-3
    assert set(estimator.logged_state()) == {"alpha", "beta"}
    assert {n for n, _ in estimator.state_dict().items()} >= {"alpha", "beta", "network.output.weight"}
