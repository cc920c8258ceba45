"""Unbiased gradient estimators for binary stochastic layers.

    from discrete_vi.estimators import RLOO
    est = RLOO(n_samples=4)
    out = est(logits, f)   # logits [B, D]; f: samples [K, B, D] -> [K, B]
    out.loss.backward()

See `base.Estimator` for the contract and `../docs` (estimators.md) for the math.
"""

from discrete_vi.estimators.arm import ARM, DisARM
from discrete_vi.estimators.base import Estimator, EstimatorOutput
from discrete_vi.estimators.double_cv import RLOODoubleCV
from discrete_vi.estimators.reinforce import RLOO, Reinforce

__all__ = ["ARM", "DisARM", "Estimator", "EstimatorOutput", "RLOO", "RLOODoubleCV", "Reinforce"]
