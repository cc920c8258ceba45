"""Exact enumeration against closed forms, and the toy-problem entry point."""

import pytest
import torch

from discrete_vi import toy
from discrete_vi.estimators import RLOO, estimators_at
from discrete_vi.bernoulli import bernoulli_log_prob
from discrete_vi.exact import (
    MAX_BITS,
    all_configurations,
    exact_bound,
    exact_chain_bound,
    exact_chain_objective,
    exact_gradient,
    exact_objective,
)


def test_all_configurations_lists_each_binary_vector_once():
    configs = all_configurations(3)
    assert configs.shape == (8, 3)
    assert len({tuple(row.tolist()) for row in configs}) == 8


def test_exact_objective_matches_the_closed_form_of_the_quadratic():
    logits = torch.randn(4, 6, requires_grad=True)
    f = toy.quadratic_objective(0.3)
    torch.testing.assert_close(exact_objective(logits, f), toy.quadratic_expectation(logits, 0.3))
    theta = torch.sigmoid(logits)
    closed_form = (1 - 2 * 0.3) * theta * (1 - theta) / 6  # d/dphi of mean_d E (b_d - t)^2
    torch.testing.assert_close(exact_gradient(logits, f), closed_form.detach())


def test_single_unit_exact_gradient_is_the_arm_papers_formula():
    logits = torch.tensor([[0.7]])
    for p0 in (0.49, 0.499, 0.501, 0.51):
        theta = torch.sigmoid(logits)
        expected = (1 - 2 * p0) * theta * (1 - theta)
        torch.testing.assert_close(exact_gradient(logits, toy.single_unit_problem(p0).objective()), expected)


def test_exact_chain_objective_matches_a_hand_computed_two_layer_sum():
    """Layer 2 copies layer 1's bit with logit +-3: E[b1 + 2 b2] summed by hand."""
    logits = torch.tensor([[0.4]])
    layer = lambda b1: 6 * b1 - 3  # noqa: E731
    value = exact_chain_objective(logits, [layer], lambda s, l: s[0][..., 0] + 2 * s[1][..., 0])
    p1 = torch.sigmoid(torch.tensor(0.4))
    p2_given = {0: torch.sigmoid(torch.tensor(-3.0)), 1: torch.sigmoid(torch.tensor(3.0))}
    expected = p1 * (1 + 2 * p2_given[1]) + (1 - p1) * (2 * p2_given[0])
    torch.testing.assert_close(value, expected.view(1))


def test_exact_bound_of_one_unit_is_the_sum_over_pairs_by_hand():
    """K = 2 samples of one unit: the four pairs (b1, b2), each weighed by q(b1) q(b2)."""
    logits = torch.tensor([[0.8], [-1.5]])
    f = lambda b: 3.0 * b[..., 0] - 1.0  # noqa: E731
    theta = torch.sigmoid(logits[:, 0])
    value = {0: torch.tensor(-1.0), 1: torch.tensor(2.0)}
    prob = {0: 1 - theta, 1: theta}
    expected = sum(prob[b1] * prob[b2] * torch.log((value[b1].exp() + value[b2].exp()) / 2) for b1 in (0, 1) for b2 in (0, 1))
    torch.testing.assert_close(exact_bound(logits, f, 2), expected)


def test_the_one_sample_bound_is_the_elbo_and_the_bound_grows_with_k():
    logits = torch.randn(3, 4)
    f = toy.quadratic_objective(0.3)
    torch.testing.assert_close(exact_bound(logits, lambda b: 10 * f(b), 1), exact_objective(logits, lambda b: 10 * f(b)))
    torch.testing.assert_close(exact_gradient(logits, f, n_samples=1), exact_gradient(logits, f))
    bounds = [exact_bound(logits, lambda b: 10 * f(b), k) for k in (1, 2, 3)]
    assert (bounds[0] < bounds[1]).all() and (bounds[1] < bounds[2]).all()


def test_exact_chain_bound_differentiates_f_through_the_logits_it_is_given():
    """For a log weight f = h(b) - log q(b), the bound's gradient includes the direct derivative
    of -log q: with K = 1 (the ELBO) it has mean zero, so both oracles agree; the tuple sum is
    checked against finite differences for K = 2."""
    logits = torch.tensor([[0.4, -0.9, 1.7]])
    h = lambda b: (b * torch.tensor([1.0, -2.0, 0.5])).sum(-1) ** 2  # noqa: E731
    f = lambda samples, q_logits: h(samples[0]) - bernoulli_log_prob(samples[0], q_logits[0])  # noqa: E731
    leaf = logits.clone().requires_grad_(True)
    elbo = torch.autograd.grad(exact_chain_objective(leaf, [], f).sum(), leaf)[0]
    one = torch.autograd.grad(exact_chain_bound(leaf, [], f, 1).sum(), leaf)[0]
    torch.testing.assert_close(one, elbo)
    two = torch.autograd.grad(exact_chain_bound(leaf, [], f, 2).sum(), leaf)[0]
    step = 1e-2  # float32 enumeration: central differences to about 1e-4 relative
    for d in range(3):
        shift = torch.zeros_like(logits)
        shift[0, d] = step
        numeric = (exact_chain_bound(logits + shift, [], f, 2) - exact_chain_bound(logits - shift, [], f, 2)) / (2 * step)
        torch.testing.assert_close(two[0, d], numeric[0], rtol=2e-3, atol=1e-5)


def test_exact_bound_refuses_more_than_max_bits_over_the_samples():
    with pytest.raises(ValueError, match=f"limited to {MAX_BITS} latent bits.*4 samples"):
        exact_bound(torch.zeros(1, 6), lambda b: b.sum(-1), 4)


def test_toy_entry_point_prints_a_table_and_writes_a_plot(tmp_path, capsys):
    plot = tmp_path / "toy.png"
    results = toy.main(["quadratic", "--steps", "20", "--measure-every", "10", "--draws", "200", "--plot", str(plot)])
    printed = capsys.readouterr().out
    assert set(results) == set(estimators_at(2, "elbo"))  # the toys are E[f] problems
    for name in results:
        assert name in printed
    assert all(h.steps == [0, 10, 20] for h in results.values())
    assert plot.exists() or "matplotlib is not installed" in printed


def test_toy_training_maximises_the_single_unit_objective():
    problem = toy.single_unit_problem(0.49)
    history = toy.train_toy(problem, RLOO(2), steps=300, lr=0.1, measure_every=100, n_draws=100)
    # Starting at phi = 0 the loss is -E[f] = -(0.49^2 + 0.51^2) / 2; training pushes theta -> 1.
    assert history.final_loss < -0.2501
    assert history.final_logits.item() > 0.5


def test_toy_rejects_bad_arguments():
    with pytest.raises(SystemExit):
        toy.main(["quadratic", "--steps", "0"])
