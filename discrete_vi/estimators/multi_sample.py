"""Estimators for the K-sample bound `L = log 1/K sum_k exp f(b_k)` (`training_objective =
"multi_sample"`): VIMCO (Mnih & Rezende 2016) and the DisARM paper's multi-sample estimator
(Dong, Mnih & Tucker 2020; `local-disarm` in the authors' code).

The gradient of `E[L]` w.r.t. the logits has two parts: the score part, which each estimator
forms from values of `f` only, and the direct derivative of `L` through `f`'s own dependence on
the logits (a VAE's `-log q(b | x)` term): `sum_k w_k d f_k / d phi = -sum_k w_k (b_k - theta)`,
`w = softmax_k(f)`. Unlike for the ELBO, its mean is not zero, so `f` is given the logits with
their graph (`Estimator.objective_logits`) and the loss keeps `L`'s own graph: autograd adds
the direct part, and gives the parameters inside `f` `sum_k w_k d f_k / d param`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import LogitsLayer, sample_chain
from discrete_vi.checks import check_count
from discrete_vi.estimators.arm import antithetic_partner, disarm_weights, pairs_at_cost
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic, log_mean_exp, surrogate_loss
from discrete_vi.estimators.reinforce import ScoreFunctionEstimator


def swapped_log_mean_exp(values: Tensor, replacements: Tensor) -> Tensor:
    """`[K, B]` values and replacements -> `[K, B]`: entry k is the log-mean-exp of `values` with
    its k-th entry replaced by `replacements_k`, `log 1/K (sum_{j != k} exp v_j + exp r_k)`."""
    n = values.shape[0]
    diagonal = torch.eye(n, dtype=torch.bool, device=values.device).unsqueeze(-1)  # [K, K, 1]
    swapped = torch.where(diagonal, replacements.unsqueeze(1), values.unsqueeze(0))  # [k, j, B]
    return log_mean_exp(swapped, 1)


def vimco_signals(f_values: Tensor) -> Tensor:
    """VIMCO's per-sample learning signals `[K, B]` from `[K, B]` values of f (K >= 2):
    `L - L_{-k}`, with `L_{-k}` the bound with `f_k` replaced by the geometric mean of the others'
    weights (the arithmetic mean of the other `f_j`), which does not depend on sample k."""
    n = f_values.shape[0]
    others_mean = (f_values.sum(0, keepdim=True) - f_values) / (n - 1)
    return log_mean_exp(f_values) - swapped_log_mean_exp(f_values, others_mean)


class VIMCO(ScoreFunctionEstimator):
    """VIMCO (Mnih & Rezende 2016) for the K-sample bound `L = log 1/K sum_k exp f(b_k)`:
    `g = sum_k (L - L_{-k}) (b_k - theta) + direct derivative of L`, with `L_{-k}` the bound with
    `f_k` replaced by the mean of the other `f_j`; K evaluations of f, K i.i.d. whole chains.

    Args:
        n_samples: K >= 2 samples in the bound.
    """

    training_objective = "multi_sample"

    def __init__(self, n_samples: int = 2):
        super().__init__(n_samples, minimum_samples=2)

    def sample_weights(self, f_values: Tensor) -> Tensor:
        return vimco_signals(f_values)


class LocalDisARM(Estimator):
    """The DisARM paper's multi-sample estimator (`local-disarm` in the authors' code), one
    stochastic layer: each of the K samples `b_k` of the bound comes with its antithetic partner
    `b~_k`, and DisARM is applied to `L` as a function of `b_k`, the other samples fixed:
    `g = sum_k 1/2 (L - L~_k) (-1)^{b~_k} 1[b_k != b~_k] sigmoid(|phi|) + direct derivative of L`,
    `L~_k` the bound with `b_k` swapped for `b~_k`. 2K evaluations of f; the bound (value and the
    gradient of parameters inside f) is over the `b` half.

    Args:
        n_samples: K >= 1 samples in the bound (antithetic pairs; 2K evaluations of f).
    """

    training_objective = "multi_sample"

    def __init__(self, n_samples: int = 1):
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 1)

    @property
    def n_evaluations(self) -> int:
        return 2 * self.n_samples

    @classmethod
    def at_cost(cls, n_evaluations: int, **options) -> "LocalDisARM":
        return cls(pairs_at_cost(cls, n_evaluations), **options)

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        n, batch_size = self.n_samples, logits.shape[0]
        base = sample_chain(logits, layers, n)  # b~ = 1[u < theta]: [K, B, D]
        phi = base.detached_logits()[0]
        b_tilde = base.samples[0]
        b = antithetic_partner(base.uniforms[0], phi)
        samples = torch.cat([b, b_tilde])  # rows 0..K-1: the bound's samples; K..2K-1: their partners
        f_values = evaluate_objective(f, (2 * n, batch_size), [samples],
                                      self.objective_logits([logits.expand(2 * n, *logits.shape)]))
        with float32_arithmetic(logits.device):
            values = f_values.detach().float()
            swapped = swapped_log_mean_exp(values[:n], values[n:])  # L~_k
            signals = (log_mean_exp(values[:n]) - swapped).unsqueeze(-1)  # [K, B, 1]
            gradient = (signals * disarm_weights(phi, b, b_tilde)).sum(0)
            loss = surrogate_loss(self.training_bound(f_values), [logits], [gradient], batch_size)
        return EstimatorOutput(loss=loss, f_values=values, samples=[samples])
