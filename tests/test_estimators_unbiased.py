"""Every registered estimator's mean matches the exact gradient from enumeration (z-test), for one
layer and for chains; deliberately broken variants are caught by the same test.

Independent estimates come from batched calls: the logits of a few examples are replicated
`N_REPLICAS` times along the batch, and `f` has per-example parameters, so the gradient of
each replica's own parameters is an independent estimate too. Cases come from the registry
(`helpers.ESTIMATOR_CASES`), learned state randomised away from initialisation, each checked
against the oracle of its training objective: the ELBO, or the K-sample bound (enumerating
K-tuples; its problem's f has a -log q term, whose direct derivative the bound's gradient needs).
"""

import zlib

import pytest
import torch
from helpers import (
    CHAIN_CASES,
    CHAIN_LOGITS,
    LOGITS,
    N_REPLICAS,
    UNBIASED_CASES,
    Z_THRESHOLD,
    case_ids,
    chain_model,
    chain_params,
    drawn_samples,
    estimated,
    estimated_chain,
    estimated_multi_sample,
    exact_multi_sample_gradients,
    estimated_single_layer,
    max_z,
    single_layer_f,
    single_layer_params,
)

from discrete_vi.estimators import ARMS, RLOO, RODEO, VIMCO, LocalDisARM, Reinforce, RLOODoubleCV
from discrete_vi.estimators.multi_sample import log_mean_exp, swapped_log_mean_exp
from discrete_vi.estimators.reinforce import ScoreFunctionEstimator
from discrete_vi.estimators.rodeo import other_sample_pairs, stein_controls


@pytest.mark.parametrize("case", UNBIASED_CASES, ids=case_ids(UNBIASED_CASES))
def test_single_layer_estimates_are_unbiased(case, exact_for):
    torch.manual_seed(zlib.crc32(case.id.encode()))
    estimator = case.make()
    state = {n: p.detach().clone() for n, p in estimator.named_parameters()}
    estimates = estimated(case, estimator)
    for name, exact in exact_for(case).items():
        z = max_z(estimates[name], exact)
        assert z < Z_THRESHOLD, f"{case.id}: gradient w.r.t. {name} is off by {z:.1f} standard errors"
    for n, p in estimator.named_parameters():  # the test ran at the randomised state, which learns
        assert torch.equal(p, state[n])
        assert p.grad is not None and torch.isfinite(p.grad).all(), f"{case.id}: {n} got no gradient in training mode"


# RODEO's control network (100 hidden units) on K (K-1) pairs per layer makes its chain cases at
# K >= 4 take 25-70 s each on one CPU thread (measured): slow. K = 2, 3 run by default, and
# tests/test_estimators_chains.py checks RODEO on two and three layers.
CHAIN_PARAMS = [pytest.param(case, marks=pytest.mark.slow) if case.name == "RODEO" and case.cost >= 4 else case
                for case in CHAIN_CASES]


@pytest.mark.parametrize("case", CHAIN_PARAMS, ids=case_ids(CHAIN_CASES))
def test_chain_estimates_are_unbiased(case, exact_for):
    torch.manual_seed(zlib.crc32(case.id.encode()))
    estimator = case.make(n_layers=2)
    out, estimates = estimated_chain(estimator, chunks=case.cost)
    assert out.f_values.shape[1] == 3 * (N_REPLICAS // case.cost) and out.f_values.shape[0] % drawn_samples(estimator) == 0
    for name, exact in exact_for(case, chain=True).items():
        z = max_z(estimates[name], exact)
        assert z < Z_THRESHOLD, f"{case.id}: chain gradient w.r.t. {name} is off by {z:.1f} standard errors"


@pytest.mark.parametrize("make", [lambda: LocalDisARM(2)], ids=["LocalDisARM"])
def test_single_layer_estimators_refuse_chains(make):
    layers, f = chain_model(chain_params(1))
    with pytest.raises(ValueError, match="one stochastic layer"):
        make().chain(CHAIN_LOGITS.clone(), layers, f)


def test_a_user_defined_estimator_is_checked_the_same_way(exact_single):
    from custom_estimator import FixedBaselineReinforce

    torch.manual_seed(0)
    estimates = estimated_single_layer(FixedBaselineReinforce(2, baseline=1.5))
    for name, exact in exact_single.items():
        assert max_z(estimates[name], exact) < Z_THRESHOLD


# --- the same test rejects deliberately broken estimators ------------------------------------


class LeaveNoneOutRLOO(ScoreFunctionEstimator):
    """A deliberately wrong RLOO: the baseline is the mean of ALL samples, itself included."""

    def sample_weights(self, f_values):
        return (f_values - f_values.mean(0, keepdim=True)) / self.n_samples


class UncorrectedRODEO(RODEO):
    """Deliberately wrong: the vector control r_k(b_k) (b_k - theta) without the Stein operator,
    i.e. a control variate whose expectation is not subtracted."""

    def estimate(self, f_values, samples, logits, grads, layer=0):
        state = self.layer_state(layer)
        n_samples = samples.shape[0]
        c, _ = stein_controls(f_values, samples, logits, grads, state.network)
        scores = samples - torch.sigmoid(logits)
        k, j = other_sample_pairs(n_samples, n_samples - 1, samples.device)
        centre = (grads[j] * (samples[k] - samples[j])).sum(-1, keepdim=True)  # t_kj(b_k)
        r_centre = state.network(centre, f_values[j])[..., 0, 1].view(n_samples, n_samples - 1, -1).mean(1)
        shifted = f_values + state.alpha * c
        baseline = (shifted.sum(0, keepdim=True) - shifted) / (n_samples - 1)
        return ((f_values - baseline).unsqueeze(-1) * scores + state.beta * r_centre.unsqueeze(-1) * scores).mean(0)


def uncorrected_rodeo(n_samples: int) -> RODEO:
    torch.manual_seed(0)
    reference = RODEO(n_samples, hidden_size=16)
    estimator = UncorrectedRODEO(n_samples, hidden_size=16)
    with torch.no_grad():
        reference.alpha.fill_(0.9)
        reference.beta.fill_(-1.3)
        for p in reference.network.parameters():
            p.add_(torch.randn(p.shape))
    estimator.load_state_dict(reference.state_dict())
    return estimator


@pytest.fixture
def undebiased_arms(monkeypatch):
    """ARMS deliberately wrong: RLOO on the copula samples without the factor lambda."""
    monkeypatch.setattr("discrete_vi.estimators.arms.arms_debias", lambda logits, n_samples: torch.ones_like(logits))
    return ARMS


@pytest.mark.parametrize("n_samples", [2, 4])
def test_the_z_test_rejects_a_leave_none_out_rloo(n_samples, exact_single):
    torch.manual_seed(0)
    estimates = estimated_single_layer(LeaveNoneOutRLOO(n_samples, minimum_samples=2))
    assert max_z(estimates["logits"], exact_single["logits"]) > 3 * Z_THRESHOLD


@pytest.mark.parametrize("n_samples", [2, 3])
def test_the_z_test_rejects_arms_without_its_factor(n_samples, undebiased_arms, exact_single):
    torch.manual_seed(zlib.crc32(f"arms-K{n_samples}-no-debias".encode()))
    estimates = estimated_single_layer(undebiased_arms(n_samples))
    assert max_z(estimates["logits"], exact_single["logits"]) > 2 * Z_THRESHOLD


@pytest.mark.parametrize("n_samples", [2, 3])
def test_the_z_test_rejects_rodeo_with_an_uncorrected_control(n_samples, exact_single):
    torch.manual_seed(zlib.crc32(f"rodeo-K{n_samples}-uncorrected-control".encode()))
    estimates = estimated_single_layer(uncorrected_rodeo(n_samples))
    assert max_z(estimates["logits"], exact_single["logits"]) > 2 * Z_THRESHOLD


class VIMCOWithoutDirectTerm(VIMCO):
    """Deliberately wrong: f gets detached logits, so the direct derivative of the bound through
    f's -log q term, -sum_k w_k (b_k - theta), is missing (harmless for the ELBO, not here)."""

    def objective_logits(self, logits):
        return [phi.detach().float() for phi in logits]


class LeaveNoneOutVIMCO(VIMCO):
    """Deliberately wrong: sample k's replacement is the mean of ALL f values, f_k included, so
    the baseline L_{-k} depends on b_k."""

    def sample_weights(self, f_values):
        return log_mean_exp(f_values) - swapped_log_mean_exp(f_values, f_values.mean(0, keepdim=True).expand_as(f_values))


class ArithmeticMeanVIMCO(VIMCO):
    """Not broken: VIMCO's other baseline (Mnih & Rezende 2016), f_k replaced by the log of the
    arithmetic mean of the other samples' weights; it still ignores b_k, so it is unbiased."""

    def sample_weights(self, f_values):
        n = f_values.shape[0]
        others = torch.stack([torch.cat([f_values[:k], f_values[k + 1:]]) for k in range(n)])  # [K, K-1, B]
        return log_mean_exp(f_values) - swapped_log_mean_exp(f_values, log_mean_exp(others, 1))


class LocalDisARMWithoutDirectTerm(LocalDisARM):
    """Deliberately wrong: f gets detached logits (no direct derivative of the bound)."""

    def objective_logits(self, logits):
        return [phi.detach().float() for phi in logits]


@pytest.mark.parametrize("make, n_samples", [(VIMCOWithoutDirectTerm, 2), (VIMCOWithoutDirectTerm, 3),
                                             (LeaveNoneOutVIMCO, 2), (LeaveNoneOutVIMCO, 3),
                                             (LocalDisARMWithoutDirectTerm, 2)],
                         ids=["VIMCO-no-direct-term-K2", "VIMCO-no-direct-term-K3", "VIMCO-leave-none-out-K2",
                              "VIMCO-leave-none-out-K3", "LocalDisARM-no-direct-term-K2"])
def test_the_z_test_rejects_broken_multi_sample_estimators(make, n_samples):
    torch.manual_seed(zlib.crc32(f"{make.__name__}-K{n_samples}".encode()))
    estimates = estimated_multi_sample(make(n_samples))
    assert max_z(estimates["logits"], exact_multi_sample_gradients(n_samples)["logits"]) > 3 * Z_THRESHOLD


@pytest.mark.parametrize("n_samples", [2, 3])
def test_vimco_with_the_arithmetic_mean_baseline_is_also_unbiased(n_samples):
    """The z-test does not reject every change: VIMCO's other leave-one-out baseline passes it."""
    torch.manual_seed(zlib.crc32(f"vimco-arithmetic-K{n_samples}".encode()))
    estimates = estimated_multi_sample(ArithmeticMeanVIMCO(n_samples))
    for name, exact in exact_multi_sample_gradients(n_samples).items():
        assert max_z(estimates[name], exact) < Z_THRESHOLD, name


# --- special cases ---------------------------------------------------------------------------


@pytest.mark.parametrize("zero_controls", [RLOODoubleCV(3), RODEO(3)], ids=["RLOODoubleCV", "RODEO"])
def test_controls_at_zero_are_rloo(zero_controls):
    """alpha = 0 (and beta = 0): double CV and RODEO give RLOO's estimate on the same samples."""
    logits = LOGITS.clone().requires_grad_(True)
    f = single_layer_f(single_layer_params(1))
    grads = []
    for estimator in (RLOO(3), zero_controls):
        torch.manual_seed(5)
        logits.grad = None
        estimator(logits, f).loss.backward()
        grads.append(logits.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_a_trained_moving_average_baseline_keeps_reinforce_unbiased(exact_single):
    """REINFORCE whose baseline was learned by a few training calls (not only randomised)."""
    estimator = Reinforce(2, baseline="ema", decay=0.9)
    params = single_layer_params(1)
    for _ in range(5):
        estimator(LOGITS.clone().requires_grad_(True), single_layer_f(params))
    assert estimator.current_baseline().abs() > 0.1
    torch.manual_seed(zlib.crc32(b"reinforce-ema-K2"))
    estimates = estimated_single_layer(estimator)
    for name, exact in exact_single.items():
        assert max_z(estimates[name], exact) < Z_THRESHOLD, name
