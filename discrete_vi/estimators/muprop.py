"""MuProp (Gu, Levine, Sutskever & Mnih, ICLR 2016): REINFORCE with the first-order Taylor
expansion of `f` around the mean-field point as its control variate.

One layer: with `m = theta = sigmoid(phi)` (the mean-field point, a constant given
the example), `a = d f / d b` at `b = m` (f treated as a function of real `b`) and
`S_k = b_k - theta`, the control `h(b) = f(m) + a . (b - m)` has the analytic
expectation `E[h(b) S_d] = a_d theta_d (1 - theta_d)` (the scores of different
units are independent with mean zero, `E[S_d^2] = theta_d (1 - theta_d)`), so

    g = 1/K sum_k [f(b_k) - f(m) - a . (b_k - m)] S_k  +  a * theta (1 - theta)

is unbiased for any `m`, `a` that do not depend on the samples.

Chains (the papers' codes): one deterministic mean-field pass through the
layers, `m_1 = sigmoid(phi_1)`, `m_l = sigmoid(layer_l(m_{l-1}))`, and
`a_l = d f(m) / d m_l`, the total derivative through the mean-field pass below
layer l. Layer l's signal subtracts its own term only,

    g_l = 1/K sum_k {[f(b_k) - f(m) - a_l . (b_lk - m_l)] S_lk + a_l * theta_lk (1 - theta_lk)}

with `theta_lk` the layer's probabilities given sample k's layers above. `m` and
`a_l` are fixed given the example and `E[S_lk | layers above] = 0`, so each
layer's estimate is unbiased with the global signal `f`.

Cost: `f` is called once on the K samples and the mean-field point stacked
(K + 1 evaluations), plus one extra backward pass through that call for `a`
(`torch.autograd.grad`, which touches no parameter's `.grad`). The loss holds
`f` at the K samples only, so parameters inside `f` (and the layer maps) learn
from the hard samples alone; the mean-field row only supplies constants.
`f` must be differentiable in its samples.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import LogitsLayer, check_layer_logits, sample_chain, smallest_view
from discrete_vi.checks import ConfigurationError, check_count
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic, surrogate_loss


def mean_field_chain(logits: Tensor, layers: Sequence[LogitsLayer]) -> tuple[list[Tensor], list[Tensor]]:
    """The deterministic mean-field pass from first-layer logits `[B, D_1]`: per layer, the points
    `m_l` `[1, B, D_l]` (float32; the first a leaf that requires grad where autograd is on, the
    others functions of it through the layer maps) and their detached float32 logits `[1, B, D_l]`."""
    phi = logits.detach().float().unsqueeze(0)
    points = [torch.sigmoid(phi).requires_grad_(torch.is_grad_enabled())]
    point_logits = [phi]
    for number, layer in enumerate(layers, 2):
        phi = layer(points[-1])
        check_layer_logits(phi, points[-1], number)
        point_logits.append(phi.detach().float())
        points.append(torch.sigmoid(phi.float()))
    return points, point_logits


def slopes_at(value: Tensor, points: list[Tensor]) -> list[Tensor]:
    """`d value / d m_l` for every mean-field point `m_l` (float32, detached; zeros where `value`
    does not depend on a layer). ConfigurationError if `f` is not differentiable in its samples."""
    grads = None
    if value.requires_grad:
        grads = torch.autograd.grad(value, points, retain_graph=True, allow_unused=True)
    if grads is None or all(grad is None for grad in grads):
        raise ConfigurationError(
            "MuProp needs d f / d b at the mean-field point, but f is not differentiable in its samples "
            "(no gradient reached them); use NVIL, RLOO or DisARM for such f"
        )
    return [torch.zeros_like(m) if grad is None else grad.detach().float() for grad, m in zip(grads, points)]


def muprop_terms(f_values: Tensor, f_centre: Tensor, samples: Tensor, point: Tensor, theta: Tensor,
                 slope: Tensor) -> Tensor:
    """One layer's per-sample terms `[K, B, D]` (float32) of MuProp's estimate, whose sum over K is `g`:
    `1/K {[f_k - f(m) - a . (b_k - m)] (b_k - theta_k) + a * theta_k (1 - theta_k)}`.

    f_values: `[K, B]` at the samples; f_centre: `[1, B]` at the mean-field point; samples:
    `[K, B, D]`; point `m`, slope `a`: `[1, B, D]`; theta: `[1, B, D]` or `[K, B, D]`.
    """
    signal = f_values - f_centre - (slope * (samples - point)).sum(-1)
    return (signal.unsqueeze(-1) * (samples - theta) + slope * theta * (1 - theta)) / samples.shape[0]


class MuProp(Estimator):
    """MuProp (Gu et al. 2016): REINFORCE with a Taylor control variate at the mean-field point.

    The first-order expansion of f around `sigmoid(logits)` is subtracted and its expectation
    added back; K + 1 evaluations of f (the samples and the mean-field point, in one call).

    Args:
        n_samples: K >= 1 samples per example (f is also evaluated once at the mean-field point).
    """

    supports_chains = True

    def __init__(self, n_samples: int = 1):
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 1)

    @property
    def n_evaluations(self) -> int:
        return self.n_samples + 1

    @classmethod
    def at_cost(cls, n_evaluations: int, **options) -> "MuProp":
        if n_evaluations < 2:
            raise ConfigurationError(
                f"MuProp evaluates f at K >= 1 samples and once at the mean-field point: "
                f"n_evaluations must be >= 2, got {n_evaluations}"
            )
        return cls(n_evaluations - 1, **options)

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        n_samples, batch_size = self.n_samples, logits.shape[0]
        sample = sample_chain(logits, layers, n_samples)
        detached = sample.detached_logits()
        points, point_logits = mean_field_chain(logits, layers)
        stacked = [torch.cat([b, m.to(b.dtype)]) for b, m in zip(sample.samples, points)]
        stacked_logits = [detached[0][:1].expand(n_samples + 1, -1, -1)]  # the first layer's, shared
        stacked_logits += [torch.cat([phi, mf]) for phi, mf in zip(detached[1:], point_logits[1:])]
        f_values = evaluate_objective(f, (n_samples + 1, batch_size), stacked, stacked_logits)
        if torch.is_grad_enabled():
            slopes = slopes_at(f_values[n_samples].float().sum(), points)
        else:  # no estimate is wanted
            slopes = [torch.zeros_like(m) for m in points]
        with float32_arithmetic(logits.device):
            values = f_values.detach().float()
            hard, centre = values[:n_samples], values[n_samples:]
            gradients = [
                muprop_terms(hard, centre, b, m.detach(), torch.sigmoid(smallest_view(phi)), a)
                for b, phi, m, a in zip(sample.samples, detached, points, slopes)
            ]
            loss = surrogate_loss(f_values[:n_samples], sample.logits, gradients, batch_size)
        return EstimatorOutput(loss=loss, f_values=hard, samples=sample.samples)
