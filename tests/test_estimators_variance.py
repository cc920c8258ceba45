"""Variance orderings at fixed parameters: on the double-CV paper's D=200 quadratic, and RODEO's on a VAE.

Two fixed points: the logits the toy run reaches after 1000 RMSprop steps
with RLOO (as in the paper's experiment), and a wide spread of logits. Each
variance is measured from N_DRAWS independent estimates (the examples of one
batched call) at the same logits and the same seed, so estimators that draw
alike (RLOO and double CV; ARM and DisARM) are compared on the same samples.
alpha is first learned at those logits, as it is during training.
"""

from functools import partial
from typing import Callable

import pytest
import torch
from torch import Tensor

from discrete_vi.data.bundled import load_mnist_subset
from discrete_vi.diagnostics import logit_gradient_variance
from discrete_vi.estimators import ARM, ARMS, RLOO, RODEO, DisARM, Reinforce, RLOODoubleCV
from discrete_vi.models import BinaryVAE
from discrete_vi.toy import gradient_estimates, quadratic_problem, train_toy

N_DRAWS = 20000
PROBLEM = quadratic_problem()


@pytest.fixture(scope="module", params=["toy-run-1000-steps", "spread"])
def logits(request):
    if request.param == "spread":  # theta from about 0.2 to 0.95
        return torch.linspace(-1.5, 3.0, PROBLEM.n_units)
    return train_toy(PROBLEM, RLOO(2), steps=1000, measure_every=10**9, n_draws=2, seed=0).final_logits


def learn_state(estimator, loss: Callable[[], Tensor], steps: int, lr: float) -> None:
    """Adam on the estimator's own parameters, `loss()` (one estimator call) per step, as in training."""
    optimizer = torch.optim.Adam(estimator.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()


def toy_loss(estimator, logits, batch: int = 100) -> Callable[[], Tensor]:
    f = PROBLEM.objective()
    return lambda: estimator(logits.expand(batch, -1).clone().requires_grad_(True), f).loss


@pytest.fixture(scope="module")
def variances(logits):
    torch.manual_seed(0)
    double_cv = RLOODoubleCV(2)
    learn_state(double_cv, toy_loss(double_cv, logits), 300, 1e-2)  # alpha at fixed logits, lr 1e-2 to be quick
    assert double_cv.alpha.item() != 0.0
    estimators = {
        "reinforce": Reinforce(2),
        "rloo": RLOO(2),
        "double_cv": double_cv,
        "arm": ARM(1),
        "disarm": DisARM(1),
        "arms": ARMS(2),
        "rloo4": RLOO(4),
        "arms4": ARMS(4),
    }
    f = PROBLEM.objective()
    out = {}
    for name, estimator in estimators.items():
        torch.manual_seed(1)
        estimates = gradient_estimates(estimator, logits, f, N_DRAWS)
        out[name] = estimates.var(0).mean().item()
    return out


def test_double_cv_with_learned_alpha_beats_rloo(variances):
    assert variances["double_cv"] < variances["rloo"], variances


def test_disarm_is_no_worse_than_arm(variances):
    assert variances["disarm"] <= variances["arm"], variances


def test_arms_is_no_worse_than_rloo_at_four_evaluations(variances):
    """The published ordering is ARMS(4) < RLOO(4). On this toy f is linear on binary vectors with a
    tiny slope and the two are equal within sampling error at both points (measured: 3.01e-10 vs
    3.00e-10 at the toy-run logits, 1.95e-10 vs 1.93e-10 at the spread ones; which one is lower
    changes with the random stream). So this checks "no worse" within three standard deviations of
    the ratio of two such variances (about 2.3% each, see the next test): 7%."""
    assert variances["arms4"] < 1.07 * variances["rloo4"], variances


def test_arms_with_two_samples_matches_disarm(variances):
    """Same distribution (tests/test_estimators_sota.py checks it sample by sample); here the
    variances agree within sampling error. The mean variance over units, from 20000 draws, has a
    relative s.d. of about 1.3-1.9% here (measured over seeds: the estimates are heavy-tailed and
    share f), so the ratio's is about 2.3%: 10% is about 4.5 of them."""
    assert abs(variances["arms"] / variances["disarm"] - 1) < 0.10, variances


def test_reinforce_without_baseline_is_the_worst(variances):
    others = [v for name, v in variances.items() if name != "reinforce"]
    assert variances["reinforce"] > 10 * max(others), variances


def test_alpha_gradient_is_the_derivative_of_the_second_moment():
    """alpha.grad = d mean(g**2) / d alpha, checked by finite differences on the same samples."""
    logits = torch.linspace(-2, 2, 12).view(3, 4)
    weights = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    f = lambda b: torch.tanh(b @ weights).sum(-1) ** 2  # noqa: E731

    def second_moment(alpha: float):
        estimator = RLOODoubleCV(3)
        with torch.no_grad():
            estimator.alpha.fill_(alpha)
        leaf = logits.clone().requires_grad_(True)
        torch.manual_seed(7)
        estimator(leaf, f).loss.backward()
        g = -leaf.shape[0] * leaf.grad
        return (g**2).mean().item(), estimator.alpha.grad.item()

    alpha, eps = 0.4, 1e-2
    _, grad = second_moment(alpha)
    finite_difference = (second_moment(alpha + eps)[0] - second_moment(alpha - eps)[0]) / (2 * eps)
    assert grad == pytest.approx(finite_difference, rel=1e-3)


# --- RODEO against RLOO and double CV (slow: RODEO's control network is learned first) ---------

# Adam steps and rate for the learned state at fixed logits. The toy's f is O(1/D), so its
# gradients are tiny and the network must grow large slopes: a high rate, many steps.
RODEO_STEPS, RODEO_LR, RODEO_DRAWS, RODEO_CHUNK = 1000, 0.1, 4000, 250


def chunked_variance(estimator, logits) -> float:
    f = PROBLEM.objective()
    torch.manual_seed(1)
    draws = [gradient_estimates(estimator, logits, f, RODEO_CHUNK) for _ in range(RODEO_DRAWS // RODEO_CHUNK)]
    return torch.cat(draws).var(0).mean().item()


@pytest.fixture(scope="module", params=[2, 4])
def rodeo_variances(request, logits):
    k = request.param
    torch.manual_seed(0)
    out = {"k": k}
    for name, estimator in {"rloo": RLOO(k), "double_cv": RLOODoubleCV(k), "rodeo": RODEO(k)}.items():
        if name == "double_cv":
            learn_state(estimator, toy_loss(estimator, logits), 300, 1e-2)
        elif name == "rodeo":
            learn_state(estimator, toy_loss(estimator, logits), RODEO_STEPS, RODEO_LR)
        out[name] = chunked_variance(estimator, logits)
    return out


@pytest.mark.slow
def test_rodeo_with_learned_controls_beats_rloo(rodeo_variances):
    assert rodeo_variances["rodeo"] < rodeo_variances["rloo"], rodeo_variances
    assert rodeo_variances["double_cv"] < rodeo_variances["rloo"], rodeo_variances


# --- RODEO against double CV on a VAE: the published ordering (11 s) --------------------------------
# On the toy above RODEO is not below double CV (measured after 1000 learning steps, e.g.
# 2.09e-10 against 1.66e-10 at K = 2 on the toy run's logits, 2.82e-10 against 1.88e-10 at K = 4):
# that toy's f is linear in b (b**2 = b) with a tiny slope. The papers report the ordering on VAEs,
# so it is checked on one.

VAE_PRETRAIN_STEPS, VAE_LEARN_STEPS, VAE_DRAWS, VAE_IMAGES = 300, 300, 1500, 4


@pytest.fixture(scope="module")
def vae_variances():
    """Variance of the first layer's per-example logit gradient (`logit_gradient_variance`, mean over
    4 fixed images and 200 units, 1500 draws each) of RLOO, double CV and RODEO at K = 2, on a linear
    VAE 784-200 trained 300 Adam steps on the bundled MNIST subset and then frozen; the estimators'
    state first learned at the frozen model (300 Adam steps: lr 1e-2 for double CV's alpha, 0.1 for RODEO's state)."""
    torch.manual_seed(0)
    images = torch.from_numpy(load_mnist_subset()["train"]).float() / 255
    sample = lambda n: torch.bernoulli(images[torch.randint(0, len(images), (n,))])  # noqa: E731
    model = BinaryVAE(estimator=RLOO(2))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(VAE_PRETRAIN_STEPS):
        optimizer.zero_grad()
        model.training_loss(sample(100))[0].backward()
        optimizer.step()
    model.requires_grad_(False)

    def vae_loss(estimator):
        def loss():
            x = sample(100)
            first_logits, layers = model.stochastic_layers(x)
            return estimator.chain(first_logits, layers, partial(model.objective, x)).loss

        return loss

    estimators = {"rloo": RLOO(2), "double_cv": RLOODoubleCV(2), "rodeo": RODEO(2)}
    learn_state(estimators["double_cv"], vae_loss(estimators["double_cv"]), VAE_LEARN_STEPS, 1e-2)
    learn_state(estimators["rodeo"], vae_loss(estimators["rodeo"]), VAE_LEARN_STEPS, 0.1)
    fixed = torch.bernoulli(images[:VAE_IMAGES], generator=torch.Generator().manual_seed(0))
    out = {}
    for name, estimator in estimators.items():
        torch.manual_seed(1)
        out[name] = logit_gradient_variance(model, fixed, VAE_DRAWS, estimator).item()
    return out


def test_rodeo_beats_double_cv_on_a_vae(vae_variances):
    """The published ordering RODEO < double CV < RLOO at K = 2. Measured: 0.47, 0.75 and 3.5; RODEO's
    variance is 0.614-0.625 of double CV's over four draw seeds (a spread of about 0.005), so the margin
    is some 75 times that spread. RODEO with unlearned state (alpha = beta = 0) is RLOO and fails it."""
    assert vae_variances["rodeo"] < vae_variances["double_cv"] < vae_variances["rloo"], vae_variances
