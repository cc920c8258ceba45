"""Gradient estimators for binary stochastic layers.

    from discrete_vi.estimators import RLOO
    est = RLOO(n_samples=4)
    out = est(logits, f)   # logits [B, D]; f: samples [K, B, D] -> [K, B]
    out.loss.backward()

`ESTIMATORS` lists every estimator by its command-line name; each estimates the gradient of
one training objective (`Estimator.training_objective`): the ELBO, or the K-sample bound
(VIMCO, LocalDisARM). See `base.Estimator` for the contract and `docs/estimators.md` for the math.
"""

from discrete_vi.checks import ConfigurationError
from discrete_vi.estimators.arm import ARM, DisARM
from discrete_vi.estimators.arms import ARMS
from discrete_vi.estimators.base import Estimator, EstimatorOutput, TrainingObjective
from discrete_vi.estimators.double_cv import RLOODoubleCV
from discrete_vi.estimators.muprop import MuProp
from discrete_vi.estimators.nvil import NVIL
from discrete_vi.estimators.multi_sample import VIMCO, LocalDisARM
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
    "NVIL": NVIL,
    "MuProp": MuProp,
    "REBAR": REBAR,
    "RELAX": RELAX,
    "StraightThrough": StraightThrough,
    "GumbelSoftmaxST": GumbelSoftmaxST,
    "VIMCO": VIMCO,
    "LocalDisARM": LocalDisARM,
}
"""Every estimator shipped with the package, by the name `--model.estimator` takes."""

VARIANTS: dict[str, tuple[str, dict]] = {"Reinforce+EMA": ("Reinforce", {"baseline": "ema"})}
"""Settings worth comparing on their own (label -> estimator name, options)."""


def estimator_labels(training_objective: TrainingObjective | None = None) -> dict[str, tuple[str, dict]]:
    """Every estimator and variant (of `training_objective`, if given): label -> (estimator name, options)."""
    labels = {name: (name, {}) for name in ESTIMATORS} | VARIANTS
    return {label: (name, options) for label, (name, options) in labels.items()
            if training_objective in (None, ESTIMATORS[name].training_objective)}


def estimators_at(n_evaluations: int, training_objective: TrainingObjective | None = None) -> dict[str, Estimator]:
    """A fresh instance of every estimator (and variant; of `training_objective`, if given) that
    evaluates `f` `n_evaluations` times per example, by label, for comparisons at equal cost; those
    that cannot are left out (ARM and DisARM at an odd cost, REBAR and RELAX at one that is not a
    multiple of 3, RLOO at 1)."""
    made = {}
    for label, (name, options) in estimator_labels(training_objective).items():
        try:
            made[label] = ESTIMATORS[name].at_cost(n_evaluations, **options)
        except ConfigurationError:
            continue
    return made


def estimator_names(training_objective: TrainingObjective) -> list[str]:
    """The registered estimators of one training objective, by name."""
    return [name for name, cls in ESTIMATORS.items() if cls.training_objective == training_objective]


__all__ = ["ESTIMATORS", "VARIANTS", "Estimator", "EstimatorOutput", "TrainingObjective", "estimator_labels",
           "estimator_names", "estimators_at", *ESTIMATORS]
