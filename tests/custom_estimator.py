"""Estimators defined outside the package, as the README shows: REINFORCE with a fixed or a
learned baseline, written as small subclasses of ScoreFunctionEstimator, and one that declares
itself for one stochastic layer only."""

import torch
from torch import Tensor, nn

from discrete_vi.estimators.reinforce import ScoreFunctionEstimator


class FixedBaselineReinforce(ScoreFunctionEstimator):
    """`g = 1/K sum_k (f_k - c) (b_k - theta)` with a constant `c`."""

    def __init__(self, n_samples: int = 2, baseline: float = 0.0):
        super().__init__(n_samples)
        self.baseline = baseline

    def sample_weights(self, f_values: Tensor) -> Tensor:
        return (f_values - self.baseline) / self.n_samples


class LearnedBaselineReinforce(ScoreFunctionEstimator):
    """REINFORCE with a learned constant baseline and no learning rate of its own (`lr` is None):
    the baseline descends the squared distance to the batch mean of f at the model's rate."""

    def __init__(self, n_samples: int = 2):
        super().__init__(n_samples)
        self.baseline = nn.Parameter(torch.zeros(()))

    def sample_weights(self, f_values: Tensor) -> Tensor:
        return (f_values - self.baseline.detach()) / self.n_samples

    def chain(self, logits, layers, f):
        out = super().chain(logits, layers, f)
        fit = (out.f_values.mean() - self.baseline) ** 2
        out.loss = out.loss + fit - fit.detach()  # value unchanged, gradient for the baseline
        return out


class OneLayerReinforce(FixedBaselineReinforce):
    """REINFORCE with a fixed baseline that declares itself for one stochastic layer only
    (`supports_chains = False`): models with several layers refuse it at configuration."""

    supports_chains = False
