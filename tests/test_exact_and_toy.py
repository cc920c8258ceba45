"""Exact enumeration against closed forms, and the toy-problem entry point."""

import pytest
import torch

from discrete_vi import toy
from discrete_vi.estimators import RLOO, estimators_at
from discrete_vi.exact import all_configurations, exact_chain_objective, exact_gradient, exact_objective


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
