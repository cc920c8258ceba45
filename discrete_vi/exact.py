"""Exact objectives and gradients by enumerating every binary configuration.

For small models (at most `MAX_BITS` latent bits in all) `E_q[f]` is a finite
sum, and autograd of that sum is the exact gradient: use it to test an
estimator or to measure its bias and variance. The same holds for the K-sample
bound `E[log 1/K sum_k exp f(b_k)]`, a sum over K-tuples of configurations
(`exact_bound`, `exact_chain_bound`; K times the bits count against `MAX_BITS`).

    exact = exact_gradient(logits, f)          # [B, D]; exact_gradient(logits, f, n_samples=K): the bound's
    estimate = -B * logits.grad                # after est(logits, f).loss.backward()
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import LogitsLayer, bernoulli_log_prob
from discrete_vi.checks import check_count
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
    from the logits each layer returns) and calls `f(samples, logits)` once, with
    the logits detached (as ELBO estimators give them).
    """
    samples, layer_logits, log_q = enumerate_chain(logits, layers)
    values = evaluate_objective(
        f, (log_q.shape[0], logits.shape[0]), samples, [phi.detach().float() for phi in layer_logits]
    )
    return (log_q.exp() * values.float()).sum(0)


def exact_bound(logits: Tensor, f: Objective, n_samples: int) -> Tensor:
    """The K-sample bound `E[log 1/K sum_k exp f(b_k)]`, `b_k` i.i.d. q, per example `[B]`,
    differentiable w.r.t. `logits` and `f`'s parameters. logits: `[B, D]`; f: `[N, B, D]` samples
    -> `[N, B]`, called once with all `N = 2**D` configurations."""
    return exact_chain_bound(logits, [], lambda samples, _logits: f(samples[0]), n_samples)


def exact_chain_bound(logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective, n_samples: int) -> Tensor:
    """The K-sample bound `E[log 1/K sum_k exp f(chain_k)]` over K i.i.d. chains, per example `[B]`.

    `f` is called once, on the N joint configurations of one chain, with the logits with their
    graph (as multi-sample estimators give them): `f`'s own dependence on them (a `-log q` term)
    is part of the objective. The K-tuples of configurations (`N**K` of them, so at most
    `MAX_BITS` bits in all over the K chains) are combined from these N values.
    """
    n_samples = check_count("n_samples", n_samples, 1)
    samples, layer_logits, log_q = enumerate_chain(logits, layers, copies=n_samples)
    values = evaluate_objective(f, tuple(log_q.shape), samples, [phi.float() for phi in layer_logits]).float()
    log_sum, log_prob = values, log_q
    for _ in range(n_samples - 1):  # tuples of one more sample: [N^k, B] x [N, B] -> [N^(k+1), B]
        log_sum = torch.logaddexp(log_sum.unsqueeze(1), values.unsqueeze(0)).flatten(0, 1)
        log_prob = (log_prob.unsqueeze(1) + log_q.unsqueeze(0)).flatten(0, 1)
    return (log_prob.exp() * (log_sum - math.log(n_samples))).sum(0)


def enumerate_chain(logits: Tensor, layers: Sequence[LogitsLayer], copies: int = 1
                    ) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Every joint configuration of a chain: per-layer samples `[N, B, D_l]`, per-layer logits
    `[N, B, D_l]` (with their graph) and `log q` of each configuration `[N, B]`.
    Refuses chains of more than `MAX_BITS` bits (over `copies` independent chains)."""
    check_logits(logits)
    batch_size = logits.shape[0]
    samples: list[Tensor] = []
    layer_logits: list[Tensor] = []
    log_q = torch.zeros(1, batch_size, device=logits.device)  # [N, B] over joint configurations
    for depth in range(len(layers) + 1):
        phi = logits.unsqueeze(0) if depth == 0 else layers[depth - 1](samples[-1])
        layer_logits.append(phi)
        if copies * sum(p.shape[-1] for p in layer_logits) > MAX_BITS:
            raise ValueError(f"exact enumeration is limited to {MAX_BITS} latent bits in all, the model has more"
                             + (f" ({copies} samples of the chain)" if copies > 1 else ""))
        configs = all_configurations(phi.shape[-1], logits.device)  # [C, D]
        n_before, n_configs = log_q.shape[0], configs.shape[0]
        # Each joint configuration so far is followed by every configuration of this layer:
        # [N, ...] -> [N * C, ...] by repeating rows, and this layer's configurations tiled N times.
        samples = [s.repeat_interleave(n_configs, dim=0) for s in samples]
        layer_logits = [p.repeat_interleave(n_configs, dim=0) for p in layer_logits]
        samples.append(configs.repeat(n_before, 1).unsqueeze(1).expand(-1, batch_size, -1))
        log_q = log_q.repeat_interleave(n_configs, dim=0) + bernoulli_log_prob(samples[-1], layer_logits[-1].float())
    return samples, layer_logits, log_q


def exact_gradient(logits: Tensor, f: Objective, n_samples: int | None = None) -> Tensor:
    """Exact `d E_q[f] / d logits` (or, with `n_samples` K, of the K-sample bound), `[B, D]`
    float32 (f's own parameters get no gradient)."""
    leaf = logits.detach().float().requires_grad_(True)
    objective = exact_objective(leaf, f) if n_samples is None else exact_bound(leaf, f, n_samples)
    (gradient,) = torch.autograd.grad(objective.sum(), leaf)
    return gradient
