"""RLOO with double control variates (Titsias & Shi, AISTATS 2022), one stochastic layer.

With `grad_k = d f / d b` at `b = b_k`, `S_k = b_k - theta` and a learned scalar alpha:

    c_k = alpha * < 1/(K-1) sum_{j != k} grad_j , S_k >
    g   = 1/(K-1) sum_k (h_k - mean_j h_j) S_k - alpha * mean_j grad_j * theta (1 - theta),  h = f + c

`g = g0 + alpha * g1` is linear in alpha (g0 is plain RLOO). The gradients
`grad_k` come from the same backward pass that gives the decoder its gradient:
the samples pass through `_DoubleCVLink`, an identity in the forward pass
whose backward receives `d loss / d samples = -grad_k / (K * B)` (times the
loss's upstream scale, e.g. a gradient scaler's or accumulation's, which a
zero-valued probe added to the loss measures) and returns `-g / B` for the
logits and `d mean(g**2) / d alpha` for alpha. So the estimator costs K
evaluations of `f` and one backward pass, as RLOO does; the samples must
reach the loss only through `f`.

alpha starts at 0 and is learned by gradient descent on `mean(g**2)` (the
estimate's second moment, whose minimiser is the variance minimiser since
the mean does not depend on alpha), with its own learning rate `alpha_lr`
(`Estimator.lr`; the paper's code uses Adam with 1e-3). Put
`estimator.parameters()` in your optimizer with that rate; the models in
this package do so in a parameter group of their own.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from discrete_vi.bernoulli import LogitsLayer, draw_bernoulli
from discrete_vi.checks import check_count, check_positive
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic


class BackwardInputs:
    """What the backward pass needs that only exists after the forward call."""

    f_values: Tensor | None = None


def linked_estimate(logits: Tensor, n_samples: int, f: ChainObjective, link) -> EstimatorOutput:
    """The forward pass of the estimators that form `g` in the backward pass of `f` (double CV,
    RODEO): draw `n_samples` samples `[K, B, D]`, pass them through `link(samples, pending)` (an
    identity autograd Function returning the linked samples and a zero-valued probe of the loss's
    upstream scale), call `f` once on them, and hand `f`'s values to the backward pass in `pending`."""
    batch_size = logits.shape[0]
    samples, _ = draw_bernoulli(logits.expand(n_samples, *logits.shape))
    pending = BackwardInputs()
    linked, probe = link(samples, pending)
    f_values = evaluate_objective(f, (n_samples, batch_size), [linked], [logits.detach().float()])
    values = f_values.detach().float()
    pending.f_values = values
    loss = -f_values.float().mean() + probe
    return EstimatorOutput(loss=loss, f_values=values, samples=[samples])


def double_cv_terms(f_values: Tensor, samples: Tensor, theta: Tensor, grads: Tensor) -> tuple[Tensor, Tensor]:
    """The two parts of `g = g0 + alpha * g1`, each `[B, D]` float32.

    f_values: `[K, B]`; samples, grads: `[K, B, D]`; theta: `[B, D]`.
    g0 is RLOO on f; g1 is RLOO on the controls `c_k / alpha = <gbar_{-k}, S_k>`
    minus the controls' expectation `mean_k grad_k * theta (1 - theta)`.
    """
    n_samples = samples.shape[0]
    scores = samples - theta
    leave_one_out_grads = grads.sum(0, keepdim=True) - grads  # (K-1) * gbar_{-k}
    controls = (leave_one_out_grads * scores).sum(-1) / (n_samples - 1)  # [K, B]

    def rloo(values: Tensor) -> Tensor:
        centred = (values - values.mean(0, keepdim=True)) / (n_samples - 1)
        return (centred.unsqueeze(-1) * scores).sum(0)

    g1 = rloo(controls) - grads.mean(0) * (theta - theta * theta)
    return rloo(f_values), g1


class _DoubleCVLink(torch.autograd.Function):
    """Identity on the samples whose backward forms the double-CV gradient."""

    @staticmethod
    def forward(ctx, logits: Tensor, alpha: Tensor, samples: Tensor, pending: BackwardInputs):
        ctx.pending = pending
        ctx.set_materialize_grads(False)  # an output the loss does not reach gets None, not zeros
        ctx.save_for_backward(logits, alpha, samples)
        return samples.clone(), torch.zeros((), dtype=torch.float32, device=samples.device)

    @staticmethod
    def backward(ctx, grad_samples: Tensor | None, grad_probe: Tensor | None):
        logits, alpha, samples = ctx.saved_tensors
        if grad_probe is None:  # the loss was not differentiated through this estimate
            return None, None, None, None
        if grad_samples is None:
            raise RuntimeError(
                "RLOODoubleCV: f is not differentiable in its samples (no gradient reached them); use RLOO for such f"
            )
        n_samples, batch_size = samples.shape[:2]
        with float32_arithmetic(samples.device):
            scale = grad_probe.float()  # the loss's upstream scale (1 for a plain backward); no host sync
            safe_scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            grads = grad_samples.float() * (-(n_samples * batch_size) / safe_scale)
            theta = torch.sigmoid(logits.detach().float())
            g0, g1 = double_cv_terms(ctx.pending.f_values, samples, theta, grads)
            g = g0 + alpha.detach().float() * g1
            grad_logits = (g * (-scale / batch_size)).to(logits.dtype)
            grad_alpha = (torch.dot(g.flatten(), g1.flatten()) * (2.0 * scale / g.numel())).to(alpha.dtype)
        return grad_logits, grad_alpha, None, None


class RLOODoubleCV(Estimator):
    """RLOO with double control variates (Titsias & Shi 2022) for one stochastic layer; K evaluations of f.

    Args:
        n_samples: K >= 2 samples per example.
        alpha_lr: Adam learning rate of the learned coefficient alpha (the paper's code: 1e-3); exposed as `lr`.
    """

    def __init__(self, n_samples: int = 2, alpha_lr: float = 1e-3):
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 2)
        self.lr = check_positive("alpha_lr", alpha_lr)
        self.alpha = nn.Parameter(torch.zeros((), dtype=torch.float32))

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)  # one layer only
        return linked_estimate(logits, self.n_samples, f, lambda b, pending: _DoubleCVLink.apply(logits, self.alpha, b, pending))

    def logged_state(self) -> dict[str, Tensor]:
        return {"alpha": self.alpha.detach()}

