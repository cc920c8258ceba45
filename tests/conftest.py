"""Fixtures shared by the test modules (what they are built from: helpers.py)."""

import discrete_vi  # noqa: F401 (first: its thread settings apply before torch is loaded, as for users)
import pytest
import torch
from helpers import (
    CHAIN_LOGITS,
    LOGITS,
    chain_model,
    chain_params,
    exact_chain_bound_gradients,
    exact_multi_sample_gradients,
    single_layer_f,
    single_layer_params,
)

from discrete_vi.exact import exact_chain_objective, exact_objective


@pytest.fixture(autouse=True)
def seeded_draws():
    """Every test starts from the same random state, whatever ran before it: a draw that a test
    leaves unseeded is the same on every run (a test that needs other draws seeds them itself)."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def exact_single() -> dict[str, torch.Tensor]:
    """Exact gradients of the single-layer problem w.r.t. the logits and f's parameters, per example."""
    logits = LOGITS.clone().requires_grad_(True)
    params = single_layer_params(1)
    objective = exact_objective(logits, single_layer_f(params)).sum()
    grads = torch.autograd.grad(objective, [logits, *params.parameters()])
    return dict(zip(["logits", "w", "v", "c"], grads))


def exact_chain_gradients(n_layers: int) -> dict[str, torch.Tensor]:
    """Exact gradients of the chain problem w.r.t. the first logits and every parameter."""
    logits = CHAIN_LOGITS.clone().requires_grad_(True)
    params = chain_params(1, n_layers)
    layers, f = chain_model(params)
    objective = exact_chain_objective(logits, layers, f).sum()
    names = ["logits", *(n for n, _ in params.named_parameters())]
    return dict(zip(names, torch.autograd.grad(objective, [logits, *params.parameters()])))


@pytest.fixture(scope="session")
def exact_chain() -> dict[str, torch.Tensor]:
    """Exact gradients of the two-layer chain w.r.t. the first logits and every parameter."""
    return exact_chain_gradients(2)


@pytest.fixture(scope="session")
def exact_chain3() -> dict[str, torch.Tensor]:
    """Exact gradients of the three-layer chain (9 bits) w.r.t. the first logits and every parameter."""
    return exact_chain_gradients(3)


@pytest.fixture(scope="session")
def exact_for(exact_single, exact_chain):
    """The exact gradients a case's estimates are compared with: `exact_for(case, chain=False)`,
    by the case's training objective (and K for the K-sample bound)."""

    def exact(case, chain: bool = False) -> dict[str, torch.Tensor]:
        if case.objective == "elbo":
            return exact_chain if chain else exact_single
        return (exact_chain_bound_gradients if chain else exact_multi_sample_gradients)(case.bound_samples)

    return exact
