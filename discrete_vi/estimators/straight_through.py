"""Biased pathwise baselines: straight-through (Bengio, Leonard & Courville 2013) and
straight-through Gumbel-softmax (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017).

Both evaluate `f` on exact Bernoulli samples `b ~ Bernoulli(theta)` (so `f`
values, the decoder's gradient and the reported ELBO are those of the true
model) and replace the zero derivative of `b` by a surrogate in the backward
pass, through the gradient `d f / d b` at `b`:

- straight-through: `d b / d phi := theta (1 - theta)`, i.e. `b + theta - sg(theta)`:
  `g = 1/K sum_k (d f / d b)(b_k) * theta (1 - theta)`;
- Gumbel-softmax straight-through: with logistic noise `L` such that
  `b = 1[phi + L > 0]`, the relaxed sample `y = sigmoid((phi + L) / tau)` gives
  `d b / d phi := y (1 - y) / tau`, i.e. `b + y - sg(y)`.

Both are biased whenever `f` is not linear in `b` (straight-through) or at
all (Gumbel-softmax: `E[y (1 - y) / tau] != theta (1 - theta)`). `f` must be
differentiable in its samples. Chains: each layer's logits are computed from
the straight-through samples of the layer above, so the surrogate derivative
flows through every layer. Cost: K evaluations of `f`, one backward pass.
"""

from __future__ import annotations

import abc
from typing import Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import LogitsLayer, check_layer_logits, draw_bernoulli
from discrete_vi.checks import check_count, check_positive
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic


class StraightThroughEstimator(Estimator):
    """Shared chain sampling; subclasses define the relaxed stand-in whose derivative replaces `b`'s."""

    supports_chains = True
    biased = True

    def __init__(self, n_samples: int = 1):
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 1)

    @abc.abstractmethod
    def relaxed(self, logits: Tensor, samples: Tensor, uniforms: Tensor) -> Tensor:
        """Float32 `[K, B, D]` stand-in, differentiable in `logits` `[K, B, D]`; its value is discarded.

        samples, uniforms: `b = 1[u < sigmoid(logits)]`, both `[K, B, D]`.
        """

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        batch_size = logits.shape[0]
        phi = logits.expand(self.n_samples, *logits.shape)
        linked, samples, detached = [], [], []
        for depth in range(len(layers) + 1):
            if depth > 0:
                phi = layers[depth - 1](linked[-1])
                check_layer_logits(phi, linked[-1], depth + 1)
            b, u = draw_bernoulli(phi)
            with float32_arithmetic(logits.device):
                soft = self.relaxed(phi.float(), b, u)
                linked.append(b + (soft - soft.detach()))  # value b exactly; derivative that of `soft`
            samples.append(b)
            detached.append(phi.detach().float())
        f_values = evaluate_objective(f, (self.n_samples, batch_size), linked, detached)
        loss = -f_values.float().mean()
        return EstimatorOutput(loss=loss, f_values=f_values.detach().float(), samples=samples)



class StraightThrough(StraightThroughEstimator):
    """Straight-through (biased): `g = 1/K sum_k (d f / d b)(b_k) * theta (1 - theta)`."""

    def __init__(self, n_samples: int = 1):
        """Straight-through with the sigmoid's derivative.

        Args:
            n_samples: K >= 1 samples per example (K evaluations of f).
        """
        super().__init__(n_samples)

    def relaxed(self, logits: Tensor, samples: Tensor, uniforms: Tensor) -> Tensor:
        return torch.sigmoid(logits)


class GumbelSoftmaxST(StraightThroughEstimator):
    """Straight-through Gumbel-softmax (biased): `b` forward, `sigmoid((phi + L) / tau)` backward."""

    def __init__(self, n_samples: int = 1, temperature: float = 1.0):
        """Straight-through Gumbel-softmax (binary Concrete) with a fixed temperature.

        Args:
            n_samples: K >= 1 samples per example (K evaluations of f).
            temperature: tau > 0 of the relaxation `sigmoid((phi + L) / tau)`; lower is
                closer to the hard sample, with a larger derivative near the threshold.
        """
        super().__init__(n_samples)
        self.temperature = check_positive("temperature", temperature)

    def relaxed(self, logits: Tensor, samples: Tensor, uniforms: Tensor) -> Tensor:
        # b = 1[u < sigmoid(phi)] = 1[phi + L > 0] with L = log(1 - u) - log(u), a logistic variable.
        noise = torch.log1p(-uniforms) - torch.log(uniforms)
        return torch.sigmoid((logits + noise) / self.temperature)

