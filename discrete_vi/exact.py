"""Exact objectives and gradients by enumerating every binary configuration.

For small models (at most `MAX_BITS` latent bits in all) `E_q[f]` is a finite
sum, and autograd of that sum is the exact gradient: use it to test an
estimator or to measure its bias and variance.

    exact = exact_gradient(logits, f)          # [B, D]
    estimate = -B * logits.grad                # after est(logits, f).loss.backward()
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import LogitsLayer, bernoulli_log_prob
from discrete_vi.estimators.base import ChainObjective, Objective, check_logits, evaluate_objective

MAX_BITS = 20


def all_configurations(n_units: int, device: torch.device | str = "cpu") -> Tensor:
    """Every binary vector of length `n_units`: float32 `[2**n_units, n_units]`."""
    codes = torch.arange(2**n_units, device=device).unsqueeze(1)
    bits = torch.arange(n_units - 1, -1, -1, device=device)
    return ((codes >> bits) & 1).float()  # row i is i in binary, most significant unit first


def exact_objective(logits: Tensor, f: Objective) -> Tensor:
    """`E_q[f(b)]` per example, `[B]`, differentiable w.r.t. `logits` and `f`'s parameters.

    logits: `[B, D]`; f: `[N, B, D]` samples -> `[N, B]`, here called once
    with all `N = 2**D` configurations.
    """
    return exact_chain_objective(logits, [], lambda samples, _logits: f(samples[0]))


def exact_chain_objective(logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> Tensor:
    """`E_q[f(b_1, ..., b_L)]` per example, `[B]`, for a chain as `Estimator.chain` takes it.

    Enumerates the joint configurations of all layers (layer widths are read
    from the logits each layer returns) and calls `f(samples, logits)` once.
    """
    check_logits(logits)
    batch_size = logits.shape[0]
    samples: list[Tensor] = []
    layer_logits: list[Tensor] = []
    log_q = torch.zeros(1, batch_size, device=logits.device)  # [N, B] over joint configurations
    for depth in range(len(layers) + 1):
        phi = logits.unsqueeze(0) if depth == 0 else layers[depth - 1](samples[-1])
        layer_logits.append(phi)
        if sum(p.shape[-1] for p in layer_logits) > MAX_BITS:
            raise ValueError(f"exact enumeration is limited to {MAX_BITS} latent bits in all, the model has more")
        configs = all_configurations(phi.shape[-1], logits.device)  # [C, D]
        n_before, n_configs = log_q.shape[0], configs.shape[0]
        # Each joint configuration so far is followed by every configuration of this layer:
        # [N, ...] -> [N * C, ...] by repeating rows, and this layer's configurations tiled N times.
        samples = [s.repeat_interleave(n_configs, dim=0) for s in samples]
        layer_logits = [p.repeat_interleave(n_configs, dim=0) for p in layer_logits]
        samples.append(configs.repeat(n_before, 1).unsqueeze(1).expand(-1, batch_size, -1))
        log_q = log_q.repeat_interleave(n_configs, dim=0) + bernoulli_log_prob(samples[-1], layer_logits[-1].float())
    values = evaluate_objective(
        f, (log_q.shape[0], batch_size), samples, [phi.detach().float() for phi in layer_logits]
    )
    return (log_q.exp() * values.float()).sum(0)


def exact_gradient(logits: Tensor, f: Objective) -> Tensor:
    """Exact `d E_q[f] / d logits`, `[B, D]` float32 (f's own parameters get no gradient)."""
    leaf = logits.detach().float().requires_grad_(True)
    (gradient,) = torch.autograd.grad(exact_objective(leaf, f).sum(), leaf)
    return gradient
