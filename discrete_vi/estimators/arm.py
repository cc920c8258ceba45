"""Antithetic estimators: ARM (Yin & Zhou 2019) and DisARM (Dong, Mnih & Tucker 2020).

One uniform `u` gives the pair `b = 1[u > sigmoid(-phi)]`, `b~ = 1[u < theta]`;
both are marginally Bernoulli(theta), so the parameters inside `f` learn from
the mean over both. With `n` pairs the estimates are averaged over pairs.

Chains (the ARM paper's per-layer scheme): `n` base chains are drawn with
`b_l = 1[u_l < theta_l]`. For each layer `l`, the pair at `l` keeps the base
chain above it, and each branch is completed by sampling the layers below
(the two branches share the completion's uniforms: common random numbers,
which keeps each branch an exact sample and lowers the variance of the
difference). Cost: 2 evaluations per layer per pair, all in one call of `f`.
"""

from __future__ import annotations

import abc
from typing import Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import ChainSample, LogitsLayer, complete_chain, sample_chain
from discrete_vi.checks import ConfigurationError, check_count
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic, surrogate_loss


def antithetic_partner(uniforms: Tensor, logits: Tensor) -> Tensor:
    """`b = 1[u > sigmoid(-phi)]`, the antithetic partner of the sample `1[u < sigmoid(phi)]` drawn
    from the same uniforms (float32 0/1, no graph); uniforms and logits broadcast."""
    with torch.no_grad():
        return (uniforms > torch.sigmoid(-logits.detach().float())).float()


def disarm_weights(logits: Tensor, b: Tensor, b_tilde: Tensor) -> Tensor:
    """DisARM's per-unit factor `1/2 (-1)^{b~} 1[b != b~] sigmoid(|phi|) = 1/2 (b - b~) sigmoid(|phi|)`,
    which multiplies the pair's difference of `f`."""
    return 0.5 * (b - b_tilde) * torch.sigmoid(logits.abs())


def pairs_at_cost(cls: type, n_evaluations: int) -> int:
    """Antithetic pairs at `n_evaluations` evaluations of f (2 per pair); ConfigurationError if odd."""
    if n_evaluations % 2:
        raise ConfigurationError(f"{cls.__name__} evaluates f twice per pair: n_evaluations must be even, got {n_evaluations}")
    return n_evaluations // 2


def _twice(tensors: list[Tensor]) -> list[Tensor]:
    """Each tensor repeated along dim 0: `[n, ...]` -> `[2n, ...]`."""
    return [torch.cat([t, t]) for t in tensors]


class AntitheticEstimator(Estimator):
    """Shared pair construction; subclasses define the per-pair gradient."""

    supports_chains = True

    def __init__(self, n_pairs: int = 1):
        super().__init__()
        self.n_pairs = check_count("n_pairs", n_pairs, 1)

    @property
    def n_evaluations(self) -> int:
        return 2 * self.n_pairs

    @classmethod
    def at_cost(cls, n_evaluations: int, **options) -> "AntitheticEstimator":
        return cls(pairs_at_cost(cls, n_evaluations), **options)

    @abc.abstractmethod
    def pair_gradient(self, f_difference: Tensor, logits: Tensor, uniforms: Tensor, b: Tensor, b_tilde: Tensor) -> Tensor:
        """Per-pair estimate `[n, B, D]` (float32).

        f_difference: `[n, B, 1]` values `f(b) - f(b~)`.
        logits, uniforms, b, b_tilde: `[n, B, D]`; `b = 1[u > sigmoid(-phi)]`,
        `b_tilde = 1[u < sigmoid(phi)]`.
        """

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        n, batch_size, n_layers = self.n_pairs, logits.shape[0], len(layers) + 1
        base = sample_chain(logits, layers, n)
        base_logits = base.detached_logits()
        branches = []  # per layer l: chain of 2n rows, [b-branch; b~-branch]
        antithetic = []  # per layer l: b = 1[u > sigmoid(-phi)], [n, B, D_l]
        with torch.no_grad():
            for layer in range(n_layers):
                b = antithetic_partner(base.uniforms[layer], base_logits[layer])
                antithetic.append(b)
                pair = ChainSample(
                    logits=_twice(base_logits[: layer + 1]),
                    samples=_twice(base.samples[:layer]) + [torch.cat([b, base.samples[layer]])],
                )
                branches.append(complete_chain(pair, layers, tie_halves=True))
        samples = [torch.cat([c.samples[l] for c in branches]) for l in range(n_layers)]
        detached = [torch.cat([c.logits[l] for c in branches]).float() for l in range(n_layers)]
        f_values = evaluate_objective(f, (2 * n * n_layers, batch_size), samples, detached)
        with float32_arithmetic(logits.device):
            values = f_values.detach().float()
            pairs = values.view(n_layers, 2, n, batch_size, 1)
            gradients = [
                self.pair_gradient(
                    pairs[l, 0] - pairs[l, 1], base_logits[l], base.uniforms[l], antithetic[l], base.samples[l]
                )
                / n
                for l in range(n_layers)
            ]
            loss = surrogate_loss(f_values, base.logits, gradients, batch_size)
        return EstimatorOutput(loss=loss, f_values=values, samples=samples)



class ARM(AntitheticEstimator):
    """Augment-REINFORCE-Merge (Yin & Zhou 2019): `g = (f(b) - f(b~)) (u - 1/2)`, averaged over pairs.

    Args:
        n_pairs: antithetic pairs per example (2 evaluations of f each, per layer for chains).
    """

    def pair_gradient(self, f_difference, logits, uniforms, b, b_tilde):
        return f_difference * (uniforms - 0.5)


class DisARM(AntitheticEstimator):
    """DisARM (Dong, Mnih & Tucker 2020): `g = 1/2 (f(b) - f(b~)) (-1)^{b~} 1[b != b~] sigmoid(|phi|)`, averaged over pairs.

    Args:
        n_pairs: antithetic pairs per example (2 evaluations of f each, per layer for chains).
    """

    def pair_gradient(self, f_difference, logits, uniforms, b, b_tilde):
        return f_difference * disarm_weights(logits, b, b_tilde)
