"""The networks between stochastic layers (linear, or two hidden LeakyReLU layers) and their
initialisation (`glorot`: the papers'; `pytorch`: torch's default)."""

from __future__ import annotations

from typing import Literal, get_args

from torch import nn

from discrete_vi.checks import check_choice

Network = Literal["linear", "nonlinear"]
Init = Literal["glorot", "pytorch"]
"""How affine maps start: `glorot` is Keras' default, which the ARM, DisARM, double-CV and RODEO
authors' code uses (Glorot-uniform weights, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)), zero
biases); `pytorch` is `torch.nn.Linear`'s (weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""


def check_network(network: str) -> str:
    return check_choice("network", network, get_args(Network))


def check_init(init: str) -> str:
    return check_choice("init", init, get_args(Init))


def initialise(module: nn.Module, init: str) -> nn.Module:
    """Re-initialise every `nn.Linear` inside `module` by the scheme `init` (see `Init`);
    `pytorch` leaves them as constructed. Returns `module`."""
    if check_init(init) == "glorot":
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)
    return module


def make_network(in_features: int, out_features: int, network: str = "linear", hidden_size: int = 200,
                 negative_slope: float = 0.3, init: str = "pytorch") -> nn.Module:
    """`linear`: one affine map. `nonlinear`: two deterministic hidden layers of
    `hidden_size` units with LeakyReLU(`negative_slope`): 0.3 in the DisARM/double-CV/RODEO
    papers' code and ARM's OMNIGLOT scripts, 0.1 in ARM's MNIST scripts.
    Works on any leading dimensions: `[..., in_features]` -> `[..., out_features]`.
    `init`: how the affine maps start (see `Init`)."""
    if check_network(network) == "linear":
        return initialise(nn.Linear(in_features, out_features), init)
    return initialise(nn.Sequential(
        nn.Linear(in_features, hidden_size),
        nn.LeakyReLU(negative_slope),
        nn.Linear(hidden_size, hidden_size),
        nn.LeakyReLU(negative_slope),
        nn.Linear(hidden_size, out_features),
    ), init)


def output_layer(network: nn.Module) -> nn.Linear:
    """The final affine map of a network made by `make_network` (for bias initialisation)."""
    return network if isinstance(network, nn.Linear) else network[-1]
