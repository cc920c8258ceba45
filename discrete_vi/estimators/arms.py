"""ARMS: antithetic REINFORCE with K mutually antithetic samples (Dimitriev & Zhou, ICML 2021).

The K samples of each unit are drawn through the Dirichlet copula: with
`e_1..e_K` i.i.d. Exp(1) and `d = e / sum(e)` (uniform on the simplex),
`u_k = (1 - d_k)^(K-1)` is exactly U(0, 1) for every k, and the K uniforms are
negatively dependent. A unit with `theta < 1/2` takes `b_k = 1[u_k < theta]`;
one with `theta >= 1/2` takes `b_k = 1[1 - u_k < theta]`, so the rarer outcome
is the one spread across samples. Units (and examples) are independent.

Every sample is marginally Bernoulli(theta), but the samples are dependent, so
RLOO over them is biased by a known factor per unit: with
`P11 = P(b_i = b_j = 1)` for two different samples,
`E[(f_k - mean_{j != k} f_j)(b_k - theta)] = (theta - P11) / (theta (1 - theta)) * dE[f]/dphi`.
ARMS rescales each unit by the inverse:

    g = lambda(theta) * 1/(K-1) * sum_k (f_k - mean_j f_j) (b_k - theta),
    lambda = theta (1 - theta) / (theta - P11),

and `theta - P11 = m - C(m)` with `m = min(theta, 1 - theta) = sigmoid(-|phi|)`
and `C(m) = max(0, 2 m^(1/(K-1)) - 1)^(K-1)` the copula's P(u_i < m, u_j < m).
K = 2 gives an exact antithetic pair and `lambda = sigmoid(|phi|)`: DisARM.

Chains: per layer, as ARM and DisARM (the ARM paper's scheme): one base chain
is drawn; for layer l its K copula samples share the base chain above l, and
each of them is completed below l with independent draws. That layer's
estimate uses the K values of `f`: the argument above only needs
`E[f_k | layer-l samples] = F(b_{l,k})` and the per-unit copula, both of which
hold. Cost: K evaluations per layer, all in one call of `f`.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from discrete_vi.bernoulli import LogitsLayer, local_branches, sample_chain
from discrete_vi.checks import check_count
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic, surrogate_loss


def dirichlet_copula_uniforms(shape: Sequence[int], device: torch.device) -> Tensor:
    """Uniforms `[K, ...]` with exact U(0, 1) marginals, mutually antithetic along dim 0 (float32).

    `u_k = (sum_{j != k} e_j / sum_j e_j)^(K-1)`, `e` i.i.d. Exp(1); the
    leave-one-out sums are formed from prefix and suffix sums, without the
    cancellation of `1 - d_k`.
    """
    n = shape[0]
    e = torch.empty(tuple(shape), device=device).exponential_()
    zero = torch.zeros_like(e[:1])
    before = torch.cat([zero, e[:-1].cumsum(0)])  # sum_{j < k} e_j
    after = torch.cat([e[1:].flip(0).cumsum(0).flip(0), zero])  # sum_{j > k} e_j
    others = before + after
    total = (others[:1] + e[:1]).clamp_min(torch.finfo(torch.float32).tiny)
    return (others / total) ** (n - 1)


def arms_samples(logits: Tensor, n_samples: int) -> Tensor:
    """K mutually antithetic Bernoulli samples `[K, B, D]` (float32 0/1) for logits `[B, D]`."""
    phi = logits.detach().float()
    u = dirichlet_copula_uniforms((n_samples, *phi.shape), phi.device)
    rare = torch.sigmoid(-phi.abs())  # m = min(theta, 1 - theta)
    # theta < 1/2: b = 1[u < theta]; theta >= 1/2: b = 1[1 - u < theta] = not 1[u < 1 - theta].
    return ((u < rare) != (phi >= 0)).float()


def arms_debias(logits: Tensor, n_samples: int) -> Tensor:
    """`lambda = theta (1 - theta) / (theta - P(b_i = b_j = 1))`, `[B, D]` float32, in [1/2, 1]."""
    rare = torch.sigmoid(-logits.detach().float().abs())
    both_rare = torch.relu(2 * rare ** (1.0 / (n_samples - 1)) - 1) ** (n_samples - 1)  # C(m)
    # theta (1 - theta) / (m - C(m)) = (1 - m) / (1 - C(m) / m); C(m) = 0 unless m > 2^-(K-1).
    return (1 - rare) / (1 - both_rare / rare.clamp_min(torch.finfo(torch.float32).tiny))


def arms_gradient(f_values: Tensor, samples: Tensor, logits: Tensor) -> Tensor:
    """The ARMS estimate `[B, D]` from f values `[K, B]`, copula samples `[K, B, D]` and logits `[B, D]`."""
    n_samples = samples.shape[0]
    theta = torch.sigmoid(logits)
    centred = (f_values - f_values.mean(0, keepdim=True)) / (n_samples - 1)
    g = (centred.unsqueeze(-1) * (samples - theta)).sum(0)
    return g * arms_debias(logits, n_samples)


class ARMS(Estimator):
    """ARMS (Dimitriev & Zhou 2021): RLOO over K mutually antithetic samples, rescaled per unit.

    K = 2 is DisARM. For chains, K samples per layer (K evaluations per layer).
    """

    supports_chains = True

    def __init__(self, n_samples: int = 2):
        """ARMS with the Dirichlet copula.

        Args:
            n_samples: K >= 2 mutually antithetic samples per example (K evaluations of f per layer).
        """
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 2)

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        k, batch_size, n_layers = self.n_samples, logits.shape[0], len(layers) + 1
        base = sample_chain(logits, layers, 1)  # logits keep their graph: [1, B, D_l]
        base_logits = base.detached_logits()
        rows = local_branches(base, layers, lambda layer: arms_samples(base_logits[layer][0], k))
        f_values = evaluate_objective(f, (k * n_layers, batch_size), rows.samples, rows.logits)
        with float32_arithmetic(logits.device):
            values = f_values.detach().float().view(n_layers, k, batch_size)
            gradients = [
                arms_gradient(values[l], rows.samples[l][l * k : (l + 1) * k], base_logits[l][0]).unsqueeze(0)
                for l in range(n_layers)
            ]
            loss = surrogate_loss(f_values, base.logits, gradients, batch_size)
        return EstimatorOutput(loss=loss, f_values=values.view(-1, batch_size), samples=rows.samples)
