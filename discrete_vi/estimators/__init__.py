"""Gradient estimators for binary stochastic layers.

    from discrete_vi.estimators import RLOO
    est = RLOO(n_samples=4)
    out = est(logits, f)   # logits [B, D]; f: samples [K, B, D] -> [K, B]
    out.loss.backward()

`ESTIMATORS` lists every estimator by its command-line name. See
`base.Estimator` for the contract and `docs/estimators.md` for the math.
"""

from discrete_vi.estimators.arm import ARM, DisARM
from discrete_vi.estimators.arms import ARMS
from discrete_vi.estimators.base import Estimator, EstimatorOutput
from discrete_vi.estimators.double_cv import RLOODoubleCV
from discrete_vi.estimators.reinforce import RLOO, Reinforce
from discrete_vi.estimators.relax import RELAX, REBAR
from discrete_vi.estimators.rodeo import RODEO
from discrete_vi.estimators.straight_through import GumbelSoftmaxST, StraightThrough

ESTIMATORS: dict[str, type[Estimator]] = {
    "Reinforce": Reinforce,
    "RLOO": RLOO,
    "RLOODoubleCV": RLOODoubleCV,
    "ARM": ARM,
    "DisARM": DisARM,
    "ARMS": ARMS,
    "RODEO": RODEO,
    "REBAR": REBAR,
    "RELAX": RELAX,
    "StraightThrough": StraightThrough,
    "GumbelSoftmaxST": GumbelSoftmaxST,
}
"""Every estimator shipped with the package, by the name `--model.estimator` takes."""

VARIANTS: dict[str, tuple[str, dict]] = {"Reinforce+EMA": ("Reinforce", {"baseline": "ema"})}
"""Settings worth comparing on their own (label -> estimator name, options)."""


def estimators_at(n_evaluations: int) -> dict[str, Estimator]:
    """A fresh instance of every estimator (and variant) evaluating `f` `n_evaluations` times
    per example (an even number, for the antithetic pairs), by label: for comparisons at equal cost."""
    labels = {name: (name, {}) for name in ESTIMATORS}
    labels.update(VARIANTS)
    return {label: ESTIMATORS[name].at_cost(n_evaluations, **options) for label, (name, options) in labels.items()}


__all__ = ["ESTIMATORS", "VARIANTS", "Estimator", "EstimatorOutput", "estimators_at", *ESTIMATORS]
