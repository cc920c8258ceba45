"""The networks between stochastic layers: linear, or two hidden LeakyReLU layers."""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from discrete_vi.checks import check_choice

Network = Literal["linear", "nonlinear"]


def check_network(network: str) -> str:
    return check_choice("network", network, get_args(Network))


def make_network(in_features: int, out_features: int, network: str = "linear", hidden_size: int = 200,
                 negative_slope: float = 0.3) -> nn.Module:
    """`linear`: one affine map. `nonlinear`: two deterministic hidden layers of
    `hidden_size` units with LeakyReLU(`negative_slope`): 0.3 in the DisARM/double-CV
    papers' code and ARM's OMNIGLOT scripts, 0.1 in ARM's MNIST scripts.
    Works on any leading dimensions: `[..., in_features]` -> `[..., out_features]`."""
    if check_network(network) == "linear":
        return nn.Linear(in_features, out_features)
    return nn.Sequential(
        nn.Linear(in_features, hidden_size),
        nn.LeakyReLU(negative_slope),
        nn.Linear(hidden_size, hidden_size),
        nn.LeakyReLU(negative_slope),
        nn.Linear(hidden_size, out_features),
    )


def output_layer(network: nn.Module) -> nn.Linear:
    """The final affine map of a network made by `make_network` (for bias initialisation)."""
    return network if isinstance(network, nn.Linear) else network[-1]
