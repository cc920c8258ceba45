"""Score-function estimators: REINFORCE (optionally with a moving-average
baseline) and REINFORCE leave-one-out (RLOO).

Both weight every sample's score `b_k - theta` by one number per sample and
example, `w_k` (`[K, B]`), so `g = sum_k w_k * (b_k - theta)`; over a chain
every layer's score gets the same weight. VIMCO (`multi_sample.py`) is of the
same family, for the K-sample bound.
"""

from __future__ import annotations

import abc
from typing import Literal, Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import LogitsLayer, sample_chain, smallest_view
from discrete_vi.checks import check_choice, check_count, check_range
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic, surrogate_loss


class ScoreFunctionEstimator(Estimator):
    """Shared sampling and surrogate for estimators of the form `g = sum_k w_k (b_k - theta)`
    (plus, for the multi-sample bound, the direct derivative of `f` in the logits it is given)."""

    supports_chains = True

    def __init__(self, n_samples: int, minimum_samples: int = 1):
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, minimum_samples)

    @abc.abstractmethod
    def sample_weights(self, f_values: Tensor) -> Tensor:
        """Float32 `[K, B]` f values -> `[K, B]` weights of the samples' scores."""

    def update_state(self, f_values: Tensor) -> None:
        """Called with the `[K, B]` f values after the gradient is formed (training only)."""

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        batch_size = logits.shape[0]
        sample = sample_chain(logits, layers, self.n_samples)
        inputs = self.objective_logits(sample.logits)
        detached = [phi.detach() for phi in inputs]
        f_values = evaluate_objective(f, (self.n_samples, batch_size), sample.samples, inputs)
        with float32_arithmetic(logits.device):
            values = f_values.detach().float()
            weights = self.sample_weights(values).unsqueeze(-1)
            gradients = [weights * (b - torch.sigmoid(smallest_view(phi))) for b, phi in zip(sample.samples, detached)]
            loss = surrogate_loss(self.training_bound(f_values), sample.logits, gradients, batch_size)
            if self.updates_state():
                self.update_state(values)
        return EstimatorOutput(loss=loss, f_values=values, samples=sample.samples)


class Reinforce(ScoreFunctionEstimator):
    """REINFORCE: `g = 1/K sum_k (f_k - c) (b_k - theta)`; K evaluations of f.

    Args:
        n_samples: K >= 1 samples per example.
        baseline: "none" (c = 0) or "ema": c is a bias-corrected exponential moving average of
            past batch means of f, updated after each gradient is formed (never from the current samples).
        decay: the moving average's decay per training step, in (0, 1).
    """

    def __init__(self, n_samples: int = 1, baseline: Literal["none", "ema"] = "none", decay: float = 0.99):
        super().__init__(n_samples)
        check_choice("baseline", baseline, ("none", "ema"))
        self.baseline = baseline
        self.decay = check_range("decay", decay, 0.0, 1.0)
        self.register_buffer("baseline_average", torch.zeros((), dtype=torch.float32))
        self.register_buffer("baseline_steps", torch.zeros((), dtype=torch.long))  # integer: exact in any precision

    def current_baseline(self) -> Tensor:
        """The baseline c (a float32 scalar): 0 before any update or without baseline."""
        if self.baseline == "none":
            return torch.zeros((), device=self.baseline_average.device)
        correction = 1.0 - self.decay**self.baseline_steps
        return torch.where(self.baseline_steps > 0, self.baseline_average / correction.clamp_min(1e-12), 0.0)

    def sample_weights(self, f_values: Tensor) -> Tensor:
        return (f_values - self.current_baseline()) / self.n_samples

    def update_state(self, f_values: Tensor) -> None:
        if self.baseline == "ema":
            self.baseline_average.mul_(self.decay).add_((1.0 - self.decay) * f_values.mean())
            self.baseline_steps.add_(1)

    def logged_state(self) -> dict[str, Tensor]:
        return {"baseline": self.current_baseline()} if self.baseline == "ema" else {}



class RLOO(ScoreFunctionEstimator):
    """REINFORCE leave-one-out: `g = 1/(K-1) sum_k (f_k - mean_j f_j) (b_k - theta)`; K evaluations of f.

    Args:
        n_samples: K >= 2 samples per example.
    """

    def __init__(self, n_samples: int = 2):
        super().__init__(n_samples, minimum_samples=2)

    def sample_weights(self, f_values: Tensor) -> Tensor:
        return (f_values - f_values.mean(0, keepdim=True)) / (self.n_samples - 1)

