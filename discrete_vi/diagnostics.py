"""Gradient-variance diagnostics: many independent estimates at fixed parameters.

An estimator is measured in eval mode (`frozen`), so its learned state does not
change, and no parameter's `.grad` is touched. What is estimated is the gradient
of the estimator's training objective (`Estimator.training_objective`): `E[f]`
(the ELBO), or the K-sample bound `E[log 1/K sum_k exp f(b_k)]`. Units: the
variance of an estimate of `d objective / d x` is in (nats / unit of x)^2.

- `logit_estimates`: per-example estimates `g` `[B, D]` of `d objective / d logits` from one call;
- `logit_gradient_variance`: their variance over draws for a model's first layer;
- `encoder_gradient_variance`: the variance the papers plot, for the encoder's parameters.
"""

from __future__ import annotations

import contextlib
from functools import partial
from typing import Iterator, Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import LogitsLayer
from discrete_vi.checks import ConfigurationError
from discrete_vi.estimators.base import ChainObjective, Estimator


@contextlib.contextmanager
def frozen(estimator: Estimator) -> Iterator[Estimator]:
    """`estimator` in eval mode (no state update), its mode restored afterwards."""
    was_training = estimator.training
    estimator.eval()
    try:
        yield estimator
    finally:
        estimator.train(was_training)


def logit_estimates(estimator: Estimator, logits: Tensor, f: ChainObjective,
                    layers: Sequence[LogitsLayer] = ()) -> Tensor:
    """Per-example estimates `g` `[B, D]` (float32) of `d objective / d logits` at `logits` `[B, D]`
    (detached), from one call of the frozen estimator: `g = -B * d loss / d logits` (for the
    multi-sample bound this includes the direct derivative through `f`'s logits)."""
    with frozen(estimator), torch.enable_grad():
        leaf = logits.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(estimator.chain(leaf, layers, f).loss, leaf)
    return -grad.float() * leaf.shape[0]


def logit_gradient_variance(model, batch: Tensor, n_draws: int, estimator: Estimator | None = None) -> Tensor:
    """Variance of the estimate of `d objective / d phi_1` (a model's first-layer logits) over `n_draws`
    independent draws at the current parameters, averaged over units and examples: the batch
    `[B, ...]` repeated `n_draws` times in one estimator call."""
    estimator = model.estimator if estimator is None else estimator
    repeated = batch.repeat(n_draws, *([1] * (batch.dim() - 1)))
    with torch.enable_grad():
        first_logits, layers = model.stochastic_layers(repeated)
        estimates = logit_estimates(estimator, first_logits, partial(model.objective, repeated), layers)
    return estimates.view(n_draws, batch.shape[0], -1).var(0).mean()


def encoder_gradient_variance(model, batch: Tensor, n_draws: int, estimator: Estimator | None = None,
                              chunk: int = 64) -> Tensor:
    """Variance of the estimate of `d objective / d theta` for the encoder's parameters `theta`
    (`model.encoder_parameters()`), as the papers plot it: `n_draws` independent estimates of the
    gradient of the batch-mean training objective (the ELBO, or the K-sample bound for a
    multi-sample estimator) on `batch` at the current parameters, their variance per parameter
    (unbiased, over draws), averaged over parameters. Units: (nats / unit of theta)^2.

    With one stochastic layer the draws are batched: one estimator call on the batch repeated
    `chunk` times gives each draw's gradient for the logits, chained to `theta` by one batched
    vector-Jacobian product (theta reaches the loss only through the first layer's logits, also
    where f sees them); memory: chunk x parameters. With several layers each draw is its own call.
    """
    estimator = model.estimator if estimator is None else estimator
    params = model.encoder_parameters()
    if not params:
        raise ConfigurationError(f"{type(model).__name__} has no encoder parameters (encoder_parameters() is empty)")
    total, total_sq = 0.0, 0.0
    with frozen(estimator), torch.enable_grad():
        first_logits, layers = model.stochastic_layers(batch)
        if layers:
            draws = torch.stack([_encoder_draw(model, estimator, batch, first_logits, layers, params)
                                 for _ in range(n_draws)])
            return draws.var(0).mean()
        for start in range(0, n_draws, chunk):
            draws = min(chunk, n_draws - start)
            repeated = batch.repeat(draws, *([1] * (batch.dim() - 1)))
            g = logit_estimates(estimator, first_logits.repeat(draws, 1), partial(model.objective, repeated))
            # d (batch-mean objective) / d logits of each draw: g / B, chained into theta for all draws at once.
            per_draw = (g / batch.shape[0]).view(draws, *first_logits.shape).to(first_logits.dtype)
            grads = torch.autograd.grad(first_logits, params, grad_outputs=per_draw, is_grads_batched=True,
                                        retain_graph=True)
            estimates = torch.cat([g.reshape(draws, -1).double() for g in grads], 1)
            total, total_sq = total + estimates.sum(0), total_sq + estimates.square().sum(0)
    variance = (total_sq - total.square() / n_draws) / (n_draws - 1)  # unbiased, per parameter
    return variance.mean().float()


def _encoder_draw(model, estimator: Estimator, batch: Tensor, first_logits: Tensor, layers, params) -> Tensor:
    """One estimate of `d objective / d theta`, flattened `[n_params]` (one estimator call)."""
    loss = estimator.chain(first_logits, layers, partial(model.objective, batch)).loss
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return -torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for g, p in zip(grads, params)])
