"""The public call's contract: loss value, gradients, formulas, bad input, mixed precision."""

import math

import pytest
import torch
from helpers import ESTIMATOR_CASES, case_ids, decoder_objective, drawn_samples

from discrete_vi.bernoulli import bernoulli_log_prob, draw_bernoulli, uniform
from discrete_vi.estimators import ARM, RLOO, VIMCO, DisARM, Estimator, LocalDisARM, Reinforce, RLOODoubleCV
from discrete_vi.estimators.relax import conditional_logistic
from discrete_vi.estimators.double_cv import double_cv_terms
from discrete_vi.estimators.muprop import muprop_terms
from discrete_vi.exact import MAX_BITS, exact_objective

CASES = [case for case in ESTIMATOR_CASES if case.cost in (2, 3)]
"""Every registered estimator (and variant) at 2 and 3 evaluations of f where it accepts them."""
# Estimators whose estimate uses d f / d b from the backward pass (the rest weight f values only).
USES_F_GRADIENT = {"RLOODoubleCV", "RODEO", "StraightThrough", "GumbelSoftmaxST", "MuProp", "REBAR", "RELAX"}


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_loss_value_and_decoder_gradient(case):
    torch.manual_seed(0)
    estimator = case.make()
    decoder, f = decoder_objective()
    logits = torch.randn(5, 4, requires_grad=True)
    out = estimator(logits, f)
    k = drawn_samples(estimator)
    assert out.f_values.shape == (k, 5) and out.samples[0].shape == (k, 5, 4)
    assert set(out.samples[0].unique().tolist()) <= {0.0, 1.0}
    # The value: minus the batch mean of the training bound, -mean(f) for the ELBO,
    # -mean_B log 1/K sum_k exp f(b_k) over the bound's K samples for the multi-sample bound.
    bound = out.f_values.mean(0) if case.objective == "elbo" else torch.logsumexp(out.f_values[:estimator.n_samples], 0) - math.log(estimator.n_samples)
    torch.testing.assert_close(estimator.training_bound(out.f_values), bound)
    torch.testing.assert_close(out.loss.detach(), -bound.mean())
    out.loss.backward()
    # Decoder gradient: minus that of the batch-mean bound on the same samples
    # (ELBO: -(1/(K*B)) sum of d f / d param).
    expected = torch.autograd.grad(-estimator.training_bound(f(out.samples[0])).mean(), decoder.weight)[0]
    torch.testing.assert_close(decoder.weight.grad, expected)


def gradient_of(estimator: Estimator, logits, f, seed=3):
    torch.manual_seed(seed)
    leaf = logits.clone().requires_grad_(True)
    out = estimator(leaf, f)
    out.loss.backward()
    return out, -leaf.shape[0] * leaf.grad


def test_reinforce_follows_the_formula_and_updates_the_baseline_after():
    _, f = decoder_objective()
    logits = torch.randn(5, 4)
    estimator = Reinforce(3, baseline="ema", decay=0.9)
    with torch.no_grad():
        estimator.baseline_average.fill_(-1.0)
        estimator.baseline_steps.fill_(1.0)
    baseline = estimator.current_baseline().item()
    assert baseline == pytest.approx(-10.0)  # bias-corrected: -1 / (1 - 0.9)
    out, g = gradient_of(estimator, logits, f)
    theta = torch.sigmoid(logits)
    expected = ((out.f_values - baseline).unsqueeze(-1) * (out.samples[0] - theta)).mean(0)
    torch.testing.assert_close(g, expected)
    assert estimator.baseline_steps.item() == 2.0
    assert estimator.baseline_average.item() == pytest.approx(-0.9 + 0.1 * out.f_values.mean().item())
    estimator.eval()
    gradient_of(estimator, logits, f)
    assert estimator.baseline_steps.item() == 2.0, "evaluation must not update the baseline"


def test_rloo_follows_the_formula():
    _, f = decoder_objective()
    logits = torch.randn(5, 4)
    out, g = gradient_of(RLOO(4), logits, f)
    fv, b, theta = out.f_values, out.samples[0], torch.sigmoid(logits)
    loo = (fv.sum(0, keepdim=True) - fv) / 3
    expected = ((fv - loo).unsqueeze(-1) * (b - theta)).mean(0)
    torch.testing.assert_close(g, expected)


def test_double_cv_k2_follows_the_papers_reduced_formula():
    _, f = decoder_objective()
    logits = torch.randn(5, 4)
    estimator = RLOODoubleCV(2)
    with torch.no_grad():
        estimator.alpha.fill_(0.6)
    out, g = gradient_of(estimator, logits, f)
    b = out.samples[0].clone().requires_grad_(True)
    grads = torch.autograd.grad(f(b).sum(), b)[0]
    theta = torch.sigmoid(logits)
    c1 = 0.6 * (grads[1] * (b[0] - theta)).sum(-1)
    c2 = 0.6 * (grads[0] * (b[1] - theta)).sum(-1)
    diff = out.f_values[0] + c1 - out.f_values[1] - c2
    expected = 0.5 * diff.unsqueeze(-1) * (b[0] - b[1]) - 0.6 * grads.mean(0) * theta * (1 - theta)
    torch.testing.assert_close(g, expected.detach())


def test_double_cv_gradient_is_unchanged_by_loss_scaling():
    """A gradient scaler or accumulation multiplies the loss; the estimate must scale with it, not square."""
    _, f = decoder_objective()
    logits = torch.randn(5, 4)
    grads = []
    for scale in (1.0, 1024.0):
        estimator = RLOODoubleCV(3)
        with torch.no_grad():
            estimator.alpha.fill_(0.5)
        torch.manual_seed(1)
        leaf = logits.clone().requires_grad_(True)
        (scale * estimator(leaf, f).loss).backward()
        grads.append((leaf.grad / scale, estimator.alpha.grad / scale))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_disarm_follows_the_formula():
    _, f = decoder_objective()
    logits = torch.randn(5, 4) * 3
    out, g = gradient_of(DisARM(2), logits, f)
    b, b_tilde = out.samples[0][:2], out.samples[0][2:]
    diff = (out.f_values[:2] - out.f_values[2:]).unsqueeze(-1)
    expected = (0.5 * diff * (-1.0) ** b_tilde * (b != b_tilde) * torch.sigmoid(logits.abs())).mean(0)
    torch.testing.assert_close(g, expected)
    # b = 1[u > sigmoid(-phi)] and b~ = 1[u < sigmoid(phi)] can never be (0, 0) where theta > 1/2.
    assert not ((b == 0) & (b_tilde == 0) & (logits > 0)).any()


# --- Bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: RLOO(1), "n_samples must be >= 2"),
        (lambda: RLOODoubleCV(1), "n_samples must be >= 2"),
        (lambda: Reinforce(0), "n_samples must be >= 1"),
        (lambda: Reinforce(-3), "n_samples must be >= 1"),
        (lambda: ARM(0), "n_pairs must be >= 1"),
        (lambda: DisARM(-1), "n_pairs must be >= 1"),
        (lambda: RLOO(2.5), "n_samples must be an integer"),
        (lambda: Reinforce(2, baseline="mean"), "baseline must be one of 'none', 'ema'"),
        (lambda: Reinforce(2, baseline="ema", decay=1.0), "decay must be in"),
        (lambda: RLOODoubleCV(2, alpha_lr=0.0), "alpha_lr must be > 0"),
        (lambda: VIMCO(1), "n_samples must be >= 2"),
        (lambda: LocalDisARM(0), "n_samples must be >= 1"),
    ],
)
def test_bad_settings_raise_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
@pytest.mark.parametrize("shape", [(4,), (2, 3, 4)])
def test_logits_of_the_wrong_rank_are_refused(case, shape):
    with pytest.raises(ValueError, match=r"logits must have shape \[B, D\]"):
        case.make()(torch.zeros(shape), lambda b: b.sum(-1))


def test_integer_logits_are_refused():
    with pytest.raises(ValueError, match="floating-point"):
        RLOO(2)(torch.zeros(2, 3, dtype=torch.long), lambda b: b.sum(-1))


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
@pytest.mark.parametrize("wrong", [lambda b: b.sum(), lambda b: b.sum(-1).T, lambda b: b])
def test_f_of_the_wrong_shape_is_refused(case, wrong):
    with pytest.raises(ValueError, match=r"f must return .*shape \[K, B\]"):
        case.make()(torch.zeros(5, 3, requires_grad=True), wrong)


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_f_is_refused(case, bad):
    def f(b):
        values = b.sum(-1)
        return torch.where(torch.arange(values.shape[1]) == 1, bad, values)

    with pytest.raises(ValueError, match="non-finite"):
        case.make()(torch.zeros(5, 3, requires_grad=True), f)


def test_chain_layer_of_the_wrong_shape_is_refused():
    with pytest.raises(ValueError, match=r"layer 2 logits must have shape \[N, B, D\]"):
        RLOO(2).chain(torch.zeros(5, 3), [lambda b: b.sum(-1)], lambda s, l: s[0].sum(-1))


def test_exact_enumeration_refuses_large_models():
    with pytest.raises(ValueError, match=f"limited to {MAX_BITS} latent bits"):
        exact_objective(torch.zeros(1, MAX_BITS + 1), lambda b: b.sum(-1))


# --- Mixed precision --------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_autocast_keeps_estimator_arithmetic_in_float32(case):
    """Under bf16 autocast only the decoder rounds: the estimate stays float32 and equals the
    float32 one on the same samples up to the decoder's rounding of f."""
    _, f = decoder_objective()
    logits = torch.randn(8, 4)
    make = case.make  # the same (randomised) learned state for both runs
    out32, g32 = gradient_of(make(), logits, f, seed=11)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out16, g16 = gradient_of(make(), logits, f, seed=11)
    assert g16.dtype == torch.float32 and out16.loss.dtype == torch.float32
    assert out16.f_values.dtype == torch.float32
    torch.testing.assert_close(out16.samples[0], out32.samples[0])  # sampling is float32 either way
    f_rounding = (out16.f_values - out32.f_values).abs().max().item()
    assert f_rounding > 0, "the decoder should have run in bf16"
    # Each estimate is a weighted sum of f values with |weight| <= 1 per evaluation (2 per pair),
    # so its error is bounded by a small multiple of the decoder's rounding of f. Multi-sample:
    # a sum over the K samples of signals (differences of two log-mean-exps, each moved by at most
    # the rounding) times scores or DisARM factors of size <= 1 (this f has no direct term).
    if case.objective == "multi_sample":
        assert (g16 - g32).abs().max().item() <= 2 * case.bound_samples * f_rounding + 1e-6
    elif case.name not in USES_F_GRADIENT:
        assert (g16 - g32).abs().max().item() <= 2 * f_rounding + 1e-6
    elif case.name in ("StraightThrough", "GumbelSoftmaxST"):
        # Float32 estimates from bf16 values and gradients of f, close to float32's.
        torch.testing.assert_close(g16, g32, rtol=0.05, atol=0.05 * g32.abs().max().item())
    elif case.name == "MuProp":
        # f at the samples and the mean-field point theta in one bf16 call, and d f / d b at theta
        # from that call's bf16 backward pass: the float32 formula on this run's own values.
        theta = torch.sigmoid(logits).unsqueeze(0)
        point = theta.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            values = f(torch.cat([out16.samples[0], point]))
            (slope,) = torch.autograd.grad(values[-1].float().sum(), point)
        torch.testing.assert_close(values[:-1].float(), out16.f_values, rtol=0, atol=0)
        expected = muprop_terms(out16.f_values, values[-1:].detach().float(), out16.samples[0], theta, theta,
                                slope.float()).sum(0)
        torch.testing.assert_close(g16, expected)
    elif case.name in ("REBAR", "RELAX"):
        # d f / d s at the relaxed points from bf16 autograd, the rest in float32: the estimator's
        # own formula on this run's draws (replayed: b's uniforms, then those of z and z~).
        estimator = make()
        k = out16.samples[0].shape[0]
        torch.manual_seed(11)
        b, _ = draw_bernoulli(logits.expand(k, -1, -1))
        phi = logits.expand(k, -1, -1)
        points, tilde_slopes = conditional_logistic(torch.cat([phi, phi]), torch.cat([b, b]),
                                                    uniform((2 * k, *logits.shape), bits=16))
        points.requires_grad_(True)
        relaxed = torch.sigmoid(points / estimator.log_temperature.detach().exp())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            values = f(torch.cat([b, relaxed])).float()
        (f_slopes,) = torch.autograd.grad(values[k:].sum(), points)
        expected = estimator.layer_estimate(values[:k].detach(), values[k:].detach(), f_slopes, points, b, phi,
                                            tilde_slopes[k:], learn=False).mean(0)
        torch.testing.assert_close(out16.f_values, values[:k].detach())
        torch.testing.assert_close(g16, expected.detach())
    else:
        # Double CV and RODEO also use d f / d b from the bf16 backward pass: check the estimate
        # against the float32 formula applied to this run's own f values and gradients.
        # d f / d b as the loss's own bf16 backward pass delivers it: from -mean(f), rescaled.
        b = out16.samples[0].clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            grads = torch.autograd.grad(-f(b).float().mean(), b)[0].float() * -b.shape[0] * b.shape[1]
        estimator = make()
        if case.name == "RODEO":
            with torch.no_grad():
                expected = estimator.estimate(out16.f_values, out16.samples[0], logits, grads)
        else:
            g0, g1 = double_cv_terms(out16.f_values, out16.samples[0], torch.sigmoid(logits), grads)
            expected = g0 + estimator.alpha.detach() * g1
        torch.testing.assert_close(g16, expected)


# --- The multi-sample bound -----------------------------------------------------------------


def chain_gradient_of(estimator: Estimator, logits, log_p, seed=3):
    """One `chain` call on the VAE-like log weight f(samples, logits) = log p(x, b) - log q(b | logits)."""
    torch.manual_seed(seed)
    leaf = logits.clone().requires_grad_(True)
    out = estimator.chain(leaf, [], lambda samples, f_logits: log_p(samples[0]) - bernoulli_log_prob(samples[0], f_logits[0]))
    out.loss.backward()
    return out, -leaf.shape[0] * leaf.grad


def test_vimco_follows_the_formula_with_its_direct_term():
    """g = sum_k (L - L_{-k} - w_k) (b_k - theta): the signals with the geometric-mean
    replacement, and the direct derivative of L through f's -log q term."""
    logits = torch.randn(5, 4) * 2
    out, g = chain_gradient_of(VIMCO(3), logits, decoder_objective()[1])
    fv, b, theta = out.f_values, out.samples[0], torch.sigmoid(logits)
    bound = torch.logsumexp(fv, 0) - math.log(3)
    signals = []
    for k in range(3):
        others = torch.cat([fv[:k], fv[k + 1:]])
        replaced = torch.cat([others, others.mean(0, keepdim=True)])
        signals.append(bound - (torch.logsumexp(replaced, 0) - math.log(3)))
    weights = torch.softmax(fv, 0)
    expected = ((torch.stack(signals) - weights).unsqueeze(-1) * (b - theta)).sum(0)
    torch.testing.assert_close(g, expected)
    torch.testing.assert_close(out.loss.detach(), -bound.mean())


def test_local_disarm_follows_the_formula_with_its_direct_term():
    """g = sum_k [1/2 (L - L~_k) (-1)^{b~_k} 1[b_k != b~_k] sigmoid(|phi|) - w_k (b_k - theta)],
    the bound over the b half; b_k = 1[u > sigmoid(-phi)] and b~_k = 1[u < theta] share u."""
    logits = torch.randn(5, 4) * 3
    out, g = chain_gradient_of(LocalDisARM(3), logits, decoder_objective()[1])
    fv, samples, theta = out.f_values, out.samples[0], torch.sigmoid(logits)
    b, b_tilde = samples[:3], samples[3:]
    bound = torch.logsumexp(fv[:3], 0) - math.log(3)
    swapped = []
    for k in range(3):
        values = fv[:3].clone()
        values[k] = fv[3 + k]
        swapped.append(torch.logsumexp(values, 0) - math.log(3))
    signals = (bound - torch.stack(swapped)).unsqueeze(-1)
    weights = torch.softmax(fv[:3], 0).unsqueeze(-1)
    disarm = 0.5 * (-1.0) ** b_tilde * (b != b_tilde) * torch.sigmoid(logits.abs())
    torch.testing.assert_close(g, (signals * disarm - weights * (b - theta)).sum(0))
    torch.testing.assert_close(out.loss.detach(), -bound.mean())
    assert not ((b == 0) & (b_tilde == 0) & (logits > 0)).any()  # an antithetic pair


def test_the_single_layer_call_takes_the_direct_term_from_an_f_that_uses_the_live_logits():
    """`est(logits, f)`: an f that closes over the logits themselves (not a detached copy) gives
    the same gradient as `chain` handing f its logits."""
    logits = torch.randn(5, 4)
    _, log_p = decoder_objective()
    _, through_chain = chain_gradient_of(VIMCO(2), logits, log_p)
    torch.manual_seed(3)
    leaf = logits.clone().requires_grad_(True)
    VIMCO(2)(leaf, lambda b: log_p(b) - bernoulli_log_prob(b, leaf)).loss.backward()
    torch.testing.assert_close(-leaf.shape[0] * leaf.grad, through_chain)


def test_multi_sample_estimators_call_f_once_with_the_bound_samples_first():
    calls = []

    def f(samples, f_logits):
        calls.append(samples[0].shape)
        assert f_logits[0].requires_grad, "the multi-sample bound's f gets the logits with their graph"
        return samples[0].sum(-1)

    logits = torch.randn(5, 4, requires_grad=True)
    for estimator, rows in ((VIMCO(3), 3), (LocalDisARM(3), 6)):
        calls.clear()
        out = estimator.chain(logits, [], f)
        assert calls == [(rows, 5, 4)] and estimator.n_evaluations == rows
        assert out.f_values.shape == (rows, 5)


@pytest.mark.parametrize("cls, cost, n_samples", [(VIMCO, 4, 4), (LocalDisARM, 4, 2), (LocalDisARM, 2, 1)])
def test_multi_sample_estimators_at_equal_cost(cls, cost, n_samples):
    estimator = cls.at_cost(cost)
    assert estimator.n_samples == n_samples and estimator.n_evaluations == cost


def test_local_disarm_at_an_odd_cost_is_refused():
    with pytest.raises(ValueError, match="must be even"):
        LocalDisARM.at_cost(3)


def test_double_cv_refuses_an_f_that_is_not_differentiable_in_its_samples():
    _, f = decoder_objective()
    logits = torch.randn(5, 4, requires_grad=True)
    out = RLOODoubleCV(2)(logits, lambda b: f(b.detach()))
    with pytest.raises(RuntimeError, match="not differentiable in its samples"):
        out.loss.backward()


def test_single_layer_estimators_accept_a_one_layer_chain():
    _, f = decoder_objective()
    logits = torch.randn(5, 4)
    for estimator in (RLOODoubleCV(3), RLOO(3), DisARM(1)):
        torch.manual_seed(0)
        out = estimator.chain(logits, [], lambda samples, _logits: f(samples[0]))
        assert isinstance(out.samples, list) and out.samples[0].shape == (drawn_samples(estimator), 5, 4)
