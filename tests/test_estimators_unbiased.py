"""Every estimator's mean matches the exact gradient from enumeration (z-test).

Independent estimates come from one batched call: the logits of a few
examples are replicated `N_REPLICAS` times along the batch, and `f` has
per-example parameters, so the gradient of each replica's own parameters is
an independent estimate too.
"""

import zlib

import pytest
import torch
from stats import Z_THRESHOLD, max_z
from torch import nn

from discrete_vi.estimators import ARM, RLOO, DisARM, Reinforce, RLOODoubleCV
from discrete_vi.bernoulli import bernoulli_log_prob
from discrete_vi.estimators.reinforce import ScoreFunctionEstimator
from discrete_vi.exact import exact_chain_objective, exact_objective

N_REPLICAS = 20000

# Three examples, four units: moderate, saturated (|phi| ~ 6) and mixed logits.
LOGITS = torch.tensor(
    [
        [0.3, -1.2, 2.0, -0.5],
        [6.0, -6.0, 5.5, -6.2],
        [0.0, 0.1, -0.1, 3.0],
    ]
)


class PerExampleParams(nn.Module):
    """Parameters `[M, ...]` of a nonlinear f, one set per example."""

    def __init__(self, base: dict[str, torch.Tensor], replicas: int):
        super().__init__()
        for name, value in base.items():
            self.register_parameter(name, nn.Parameter(value.repeat(replicas, *([1] * (value.dim() - 1)))))


def single_layer_params(replicas: int) -> PerExampleParams:
    g = torch.Generator().manual_seed(1)
    base = {
        "w": torch.randn(3, 4, generator=g),
        "v": torch.randn(3, 4, generator=g),
        "c": torch.randn(3, generator=g),
    }
    return PerExampleParams(base, replicas)


def single_layer_f(p: PerExampleParams):
    """f(b) = (b.w + c)^2 - 2 softplus(b.v): [K, M, D] -> [K, M]."""
    return lambda b: ((b * p.w).sum(-1) + p.c) ** 2 - 2 * nn.functional.softplus((b * p.v).sum(-1))


def exact_single_layer():
    """Exact gradients w.r.t. the logits and f's parameters, per example."""
    logits = LOGITS.clone().requires_grad_(True)
    params = single_layer_params(1)
    objective = exact_objective(logits, single_layer_f(params)).sum()
    grads = torch.autograd.grad(objective, [logits, *params.parameters()])
    return dict(zip(["logits", "w", "v", "c"], grads))


def estimated_single_layer(estimator):
    """Per-replica estimates [N, 3, ...] of the same gradients, from the contract:
    estimate = -M * grad of the loss (M = batch size)."""
    logits = LOGITS.repeat(N_REPLICAS, 1).requires_grad_(True)
    params = single_layer_params(N_REPLICAS)
    out = estimator(logits, single_layer_f(params))
    out.loss.backward()
    batch = logits.shape[0]
    grads = {"logits": logits.grad, **{n: p.grad for n, p in params.named_parameters()}}
    return {name: (-batch * g).view(N_REPLICAS, 3, *g.shape[1:]) for name, g in grads.items()}


def trained_ema_baseline() -> Reinforce:
    """REINFORCE whose moving-average baseline is non-zero (a few training calls first)."""
    estimator = Reinforce(2, baseline="ema", decay=0.9)
    params = single_layer_params(1)
    for _ in range(5):
        estimator(LOGITS.clone().requires_grad_(True), single_layer_f(params))
    assert estimator.current_baseline().abs() > 0.1
    return estimator


def double_cv(n_samples: int, alpha: float) -> RLOODoubleCV:
    estimator = RLOODoubleCV(n_samples)
    with torch.no_grad():
        estimator.alpha.fill_(alpha)
    return estimator


SINGLE_LAYER_CASES = {
    "reinforce-K1": lambda: Reinforce(1),
    "reinforce-K3": lambda: Reinforce(3),
    "reinforce-ema-K2": trained_ema_baseline,
    "rloo-K2": lambda: RLOO(2),
    "rloo-K5": lambda: RLOO(5),
    "doublecv-K2-alpha0.8": lambda: double_cv(2, 0.8),
    "doublecv-K3-alpha-1.5": lambda: double_cv(3, -1.5),
    "doublecv-K5-alpha0.3": lambda: double_cv(5, 0.3),
    "arm-1pair": lambda: ARM(1),
    "arm-3pairs": lambda: ARM(3),
    "disarm-1pair": lambda: DisARM(1),
    "disarm-3pairs": lambda: DisARM(3),
}


@pytest.fixture(scope="module")
def exact_single():
    return exact_single_layer()


@pytest.mark.parametrize("case", sorted(SINGLE_LAYER_CASES))
def test_single_layer_estimates_are_unbiased(case, exact_single):
    torch.manual_seed(zlib.crc32(case.encode()))
    estimates = estimated_single_layer(SINGLE_LAYER_CASES[case]())
    for name, exact in exact_single.items():
        z = max_z(estimates[name], exact)
        assert z < Z_THRESHOLD, f"{case}: gradient w.r.t. {name} is off by {z:.1f} standard errors"


class LeaveNoneOutRLOO(ScoreFunctionEstimator):
    """A deliberately wrong RLOO: the baseline is the mean of ALL samples, itself included."""

    def sample_weights(self, f_values):
        return (f_values - f_values.mean(0, keepdim=True)) / self.n_samples


@pytest.mark.parametrize("n_samples", [2, 4])
def test_the_z_test_rejects_a_biased_estimator(n_samples, exact_single):
    torch.manual_seed(0)
    estimates = estimated_single_layer(LeaveNoneOutRLOO(n_samples, minimum_samples=2))
    assert max_z(estimates["logits"], exact_single["logits"]) > 3 * Z_THRESHOLD


def test_double_cv_with_alpha_zero_is_rloo():
    logits = LOGITS.clone().requires_grad_(True)
    f = single_layer_f(single_layer_params(1))
    grads = []
    for estimator in (RLOO(3), RLOODoubleCV(3)):
        torch.manual_seed(5)
        logits.grad = None
        estimator(logits, f).loss.backward()
        grads.append(logits.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


# --- Chains of two stochastic layers (3 + 3 bits) ---------------------------------


def chain_params(replicas: int) -> PerExampleParams:
    g = torch.Generator().manual_seed(2)
    base = {
        "layer_weight": torch.randn(3, 3, 3, generator=g),  # [example, in, out]
        "layer_bias": torch.randn(3, 3, generator=g),
        "w1": torch.randn(3, 3, generator=g),
        "w2": torch.randn(3, 3, generator=g),
        "c": torch.randn(3, generator=g),
    }
    return PerExampleParams(base, replicas)


CHAIN_LOGITS = LOGITS[:, :3]


def chain_model(p: PerExampleParams):
    """Layer 2 logits from b_1 and f(b_1, b_2), which also uses the detached
    logits the way a VAE's -log q term does."""

    def layer(b1):
        return torch.einsum("kmi,mij->kmj", b1, p.layer_weight) + p.layer_bias

    def f(samples, logits):
        b1, b2 = samples
        joint = (b1 * p.w1).sum(-1) + (b2 * p.w2).sum(-1) + p.c
        return torch.sin(2 * joint) + 0.5 * joint**2 - bernoulli_log_prob(b2, logits[1])

    return [layer], f


@pytest.fixture(scope="module")
def exact_chain():
    logits = CHAIN_LOGITS.clone().requires_grad_(True)
    params = chain_params(1)
    layers, f = chain_model(params)
    objective = exact_chain_objective(logits, layers, f).sum()
    names = ["logits", *(n for n, _ in params.named_parameters())]
    return dict(zip(names, torch.autograd.grad(objective, [logits, *params.parameters()])))


def with_baseline(estimator: Reinforce, value: float) -> Reinforce:
    """Set the moving-average baseline to `value` (one bias-corrected step)."""
    with torch.no_grad():
        estimator.baseline_average.fill_(value * (1 - estimator.decay))
        estimator.baseline_steps.fill_(1)
    assert estimator.current_baseline().item() == pytest.approx(value)
    return estimator


CHAIN_CASES = {
    "reinforce-K2": lambda: Reinforce(2),
    "reinforce-ema-K2": lambda: with_baseline(Reinforce(2, baseline="ema", decay=0.5), 1.5),
    "rloo-K3": lambda: RLOO(3),
    "arm-2pairs": lambda: ARM(2),
    "disarm-1pair": lambda: DisARM(1),
    "disarm-2pairs": lambda: DisARM(2),
}


@pytest.mark.parametrize("case", sorted(CHAIN_CASES))
def test_chain_estimates_are_unbiased(case, exact_chain):
    torch.manual_seed(zlib.crc32(case.encode()))
    estimator = CHAIN_CASES[case]()
    logits = CHAIN_LOGITS.repeat(N_REPLICAS, 1).requires_grad_(True)
    params = chain_params(N_REPLICAS)
    layers, f = chain_model(params)
    out = estimator.chain(logits, layers, f)
    # Antithetic estimators evaluate 2 per pair per layer; score-function ones K whole chains.
    per_layer = isinstance(estimator, (ARM, DisARM))
    assert out.f_values.shape == (estimator.n_evaluations * (2 if per_layer else 1), logits.shape[0])
    out.loss.backward()
    batch = logits.shape[0]
    grads = {"logits": logits.grad, **{n: p.grad for n, p in params.named_parameters()}}
    for name, exact in exact_chain.items():
        estimates = (-batch * grads[name]).view(N_REPLICAS, *exact.shape)
        z = max_z(estimates, exact)
        assert z < Z_THRESHOLD, f"{case}: chain gradient w.r.t. {name} is off by {z:.1f} standard errors"


def test_double_cv_refuses_chains():
    layers, f = chain_model(chain_params(1))
    with pytest.raises(ValueError, match="one stochastic layer"):
        RLOODoubleCV(2).chain(CHAIN_LOGITS.clone(), layers, f)


def test_a_user_defined_estimator_is_checked_the_same_way(exact_single):
    from custom_estimator import FixedBaselineReinforce

    torch.manual_seed(0)
    estimates = estimated_single_layer(FixedBaselineReinforce(2, baseline=1.5))
    for name, exact in exact_single.items():
        assert max_z(estimates[name], exact) < Z_THRESHOLD
