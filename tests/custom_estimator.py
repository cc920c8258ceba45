"""An estimator defined outside the package, as the README shows: REINFORCE with a
fixed baseline, written as a small subclass of ScoreFunctionEstimator."""

from torch import Tensor

from discrete_vi.estimators.reinforce import ScoreFunctionEstimator


class FixedBaselineReinforce(ScoreFunctionEstimator):
    """`g = 1/K sum_k (f_k - c) (b_k - theta)` with a constant `c`."""

    def __init__(self, n_samples: int = 2, baseline: float = 0.0):
        super().__init__(n_samples)
        self.baseline = baseline

    def sample_weights(self, f_values: Tensor) -> Tensor:
        return (f_values - self.baseline) / self.n_samples
