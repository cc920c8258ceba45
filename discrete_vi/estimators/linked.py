"""What double CV and RODEO share: estimators whose controls use `d f / d b`, read from the
backward pass that trains the parameters inside `f`, for one stochastic layer or a chain.

One layer: `K` i.i.d. samples `[K, B, D]`, one call of `f`.

Chains: the RODEO authors' per-layer ("local") scheme (`bernoulli.local_branches`). One base chain
`b^0 ~ q` is drawn; for each layer `l`, `K` rows keep `b^0` above `l`, draw layer `l` i.i.d. from
`q(b_l | b^0_{l-1})` and complete the layers below with independent draws. All `L K` rows go
through one call of `f`. Layer `l`'s estimate is the single-layer formula on its own `K` rows,
with that layer's learned state; it is the gradient with respect to the base chain's logits
`phi_l(b^0_{l-1})`, so it also trains the parameters of the map that computes them. The
parameters inside `f` learn from the mean over all `L K` rows (each row is a draw of `q`).

The link: the samples pass through `_ControlLink`, an identity in the forward pass whose backward
receives `d loss / d samples = -(d f / d b) / (L K B)` at every row (times the loss's upstream
scale, e.g. a gradient scaler's or accumulation's, which a zero-valued probe added to the loss
measures). From layer l's rows it reads `grad_k = d f / d b_l`, asks the estimator for every
layer's estimate `g_l` and, in training mode, for `d mean(g^2) / d param` of its learned state
(one mean over the examples and all layers' units, as in the authors' code), and returns
`-g_l / B` for layer l's logits and those derivatives for the state. So an estimate costs `K`
evaluations of `f` per layer and the one backward pass that trains the decoder; the samples
must reach the loss only through `f`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from discrete_vi.bernoulli import ChainSample, LogitsLayer, draw_bernoulli, local_branches, sample_chain
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic


@dataclass
class LayerRows:
    """What one layer's estimate is formed from, float32 and detached.

    f_values: `[K, B]`; samples and grads (`d f / d b_l` at the samples): `[K, B, D]`;
    logits: `[B, D]` (the base chain's, the same for the K rows).
    """

    f_values: Tensor
    samples: Tensor
    logits: Tensor
    grads: Tensor


class BackwardInputs:
    """What the backward pass needs that only exists after the forward call."""

    f_values: Tensor | None = None


class LinkedEstimator(Estimator):
    """An estimator whose `g` is formed in the backward pass of `f` from `d f / d b`.

    Learned state: the first layer's lives in the module itself (the names of the one-layer
    estimator), each later layer's in `later_layers[l - 2]` (layer l), created by
    `prepare_layers` (a model calls it at construction, before its optimizer exists).
    Subclasses set `later_layers` (an `nn.ModuleList` or `nn.ParameterList`) and define
    `new_layer_state` and `layer_estimates`.
    """

    supports_chains = True
    n_samples: int
    later_layers: nn.Module

    @abc.abstractmethod
    def new_layer_state(self) -> nn.Module | nn.Parameter:
        """The learned state of one more layer, at its initial values (appended to `later_layers`)."""

    @abc.abstractmethod
    def layer_estimates(self, rows: list[LayerRows], scale: Tensor, learn: bool) -> tuple[list[Tensor], list]:
        """Every layer's estimate and the gradients of the learned state.

        rows: one entry per layer, first layer first.
        scale: the loss's upstream scale (a float32 scalar tensor).
        Returns `g_l` `[B, D_l]` per layer (float32, detached) and, for each tensor of
        `self.parameters()` in order, `scale * d mean(g^2) / d param` (mean over examples and the
        units of all layers), or None (for all when `learn` is false, and for state the call
        does not use).
        """

    @property
    def n_prepared_layers(self) -> int:
        """Stochastic layers with learned state."""
        return 1 + len(self.later_layers)

    def prepare_layers(self, n_layers: int) -> None:
        super().prepare_layers(n_layers)
        device = next(self.parameters()).device
        while self.n_prepared_layers < n_layers:
            self.later_layers.append(self.new_layer_state().to(device))

    def layer_names(self) -> list[str]:
        """Prefixes of each prepared layer's logged state: "" for the first, "layer<l>/" after."""
        return [""] + [f"layer{l}/" for l in range(2, self.n_prepared_layers + 1)]

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        n_layers, k, batch_size = len(layers) + 1, self.n_samples, logits.shape[0]
        learn = self.updates_state()
        base = sample_chain(logits, layers, 1) if layers else ChainSample(logits=[logits.expand(1, *logits.shape)])
        base_logits = base.detached_logits()
        rows = local_branches(base, layers, lambda layer: draw_bernoulli(base_logits[layer].expand(k, -1, -1))[0])
        pending = BackwardInputs()
        params = list(self.parameters())
        *linked, probe = _ControlLink.apply(
            pending, self, learn, n_layers, logits, *base.logits[1:], *rows.samples, *params
        )
        f_values = evaluate_objective(f, (n_layers * k, batch_size), linked, rows.logits)
        values = f_values.detach().float()
        pending.f_values = values
        loss = -f_values.float().mean() + probe
        return EstimatorOutput(loss=loss, f_values=values, samples=rows.samples)


class _ControlLink(torch.autograd.Function):
    """Identity on every layer's samples whose backward forms each layer's estimate and the
    gradients of the estimator's learned state."""

    @staticmethod
    def forward(ctx, pending: BackwardInputs, estimator: LinkedEstimator, learn: bool, n_layers: int, *tensors: Tensor):
        ctx.pending, ctx.estimator, ctx.learn, ctx.n_layers = pending, estimator, learn, n_layers
        ctx.n_params = len(tensors) - 2 * n_layers
        ctx.set_materialize_grads(False)  # an output the loss does not reach gets None, not zeros
        samples = tensors[n_layers : 2 * n_layers]
        ctx.save_for_backward(*tensors[: 2 * n_layers])
        return (*(b.clone() for b in samples), torch.zeros((), dtype=torch.float32, device=samples[0].device))

    @staticmethod
    def backward(ctx, *grad_outputs: Tensor | None):
        n_layers, estimator = ctx.n_layers, ctx.estimator
        *grad_samples, grad_probe = grad_outputs
        nothing = (None,) * (4 + n_layers)
        if grad_probe is None:  # the loss was not differentiated through this estimate
            return (*nothing, *(None,) * (n_layers + ctx.n_params))
        if all(grad is None for grad in grad_samples):
            raise RuntimeError(
                f"{type(estimator).__name__}: f is not differentiable in its samples (no gradient reached them); "
                "use RLOO or ARMS for such f"
            )
        saved = ctx.saved_tensors
        logits, samples = saved[:n_layers], saved[n_layers:]
        n_rows, batch_size = samples[0].shape[:2]
        k = n_rows // n_layers
        with float32_arithmetic(samples[0].device):
            scale = grad_probe.float()  # the loss's upstream scale (1 for a plain backward); no host sync
            safe_scale = torch.where(scale == 0, torch.ones_like(scale), scale)
            f_values = ctx.pending.f_values.view(n_layers, k, batch_size)
            rows = []
            for layer in range(n_layers):
                block = slice(layer * k, (layer + 1) * k)
                b = samples[layer][block]
                grad = grad_samples[layer]
                # d f / d b_l at layer l's rows; f not using layer l's samples: zero, controls vanish.
                grads = torch.zeros_like(b) if grad is None else grad[block].float() * (-(n_rows * batch_size) / safe_scale)
                theta_logits = logits[layer].detach().float().view(batch_size, -1)
                rows.append(LayerRows(f_values[layer], b, theta_logits, grads))
            estimates, param_grads = estimator.layer_estimates(rows, scale, ctx.learn)
            grad_logits = [
                (g * (-scale / batch_size)).view(phi.shape).to(phi.dtype) for g, phi in zip(estimates, logits)
            ]
        return (*nothing[:4], *grad_logits, *(None,) * n_layers, *param_grads)
