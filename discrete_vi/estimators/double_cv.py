"""RLOO with double control variates (Titsias & Shi, AISTATS 2022), for one stochastic layer or a chain.

With `grad_k = d f / d b` at `b = b_k`, `S_k = b_k - theta` and a learned scalar alpha:

    c_k = alpha * < 1/(K-1) sum_{j != k} grad_j , S_k >
    g   = 1/(K-1) sum_k (h_k - mean_j h_j) S_k - alpha * mean_j grad_j * theta (1 - theta),  h = f + c

`g = g0 + alpha * g1` is linear in alpha (g0 is plain RLOO). The gradients
`grad_k` come from the same backward pass that gives the decoder its gradient
(`linked.py`: an identity autograd Function on the samples whose backward
forms `g`, scaled with the loss's upstream scale). So the estimator costs K
evaluations of `f` and one backward pass, as RLOO does; the samples must
reach the loss only through `f`.

Chains: the per-layer scheme of the RODEO authors' code (`linked.py`): K
evaluations per layer, the formula above on each layer's rows with that
layer's own alpha (`alpha` for the first layer, `later_layers[l - 2]` for
layer l).

alpha starts at 0 and is learned by gradient descent on `mean(g**2)` (the
estimate's second moment, whose minimiser is the variance minimiser since
the mean does not depend on alpha; over a chain, one mean over all layers'
units), with its own learning rate `alpha_lr` (`Estimator.lr`; the paper's
code uses Adam with 1e-3). Put `estimator.parameters()` in your optimizer
with that rate; the models in this package do so in a parameter group of
their own.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from discrete_vi.checks import check_count, check_positive
from discrete_vi.estimators.linked import LayerRows, LinkedEstimator


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


class RLOODoubleCV(LinkedEstimator):
    """RLOO with double control variates (Titsias & Shi 2022); K evaluations of f (per layer for chains).

    Args:
        n_samples: K >= 2 samples per example (per layer for chains).
        alpha_lr: Adam learning rate of the learned coefficient alpha, one per stochastic layer
            (the paper's code: 1e-3); exposed as `lr`.
    """

    def __init__(self, n_samples: int = 2, alpha_lr: float = 1e-3):
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 2)
        self.lr = check_positive("alpha_lr", alpha_lr)
        self.alpha = nn.Parameter(torch.zeros((), dtype=torch.float32))
        self.later_layers = nn.ParameterList()  # alpha of layers 2, 3, ...

    def new_layer_state(self) -> nn.Parameter:
        return nn.Parameter(torch.zeros((), dtype=torch.float32))

    def alphas(self) -> list[nn.Parameter]:
        """alpha of every prepared layer, first layer first (the order of `parameters()`)."""
        return [self.alpha, *self.later_layers]

    def layer_estimates(self, rows: list[LayerRows], scale: Tensor, learn: bool) -> tuple[list[Tensor], list]:
        alphas = self.alphas()
        estimates, second_parts = [], []
        for alpha, layer in zip(alphas, rows):
            g0, g1 = double_cv_terms(layer.f_values, layer.samples, torch.sigmoid(layer.logits), layer.grads)
            estimates.append(g0 + alpha.detach().float() * g1)
            second_parts.append(g1)
        if not learn:
            return estimates, [None] * len(alphas)
        # mean(g^2) over all layers' units is quadratic in each alpha: d/d alpha_l = 2 <g_l, g1_l> / N.
        n_units = sum(g.numel() for g in estimates)
        grads = [
            (torch.dot(g.flatten(), g1.flatten()) * (2.0 * scale / n_units)).to(alpha.dtype)
            for g, g1, alpha in zip(estimates, second_parts, alphas)
        ]
        return estimates, grads + [None] * (len(alphas) - len(rows))

    def logged_state(self) -> dict[str, Tensor]:
        return {f"{name}alpha": alpha.detach() for name, alpha in zip(self.layer_names(), self.alphas())}
