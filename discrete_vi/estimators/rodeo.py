"""RODEO: RLOO with discrete Stein control variates (Shi, Zhou, Hwang, Titsias & Mackey, NeurIPS 2022).

K i.i.d. samples `b_k ~ Bernoulli(theta)`, `S_k = b_k - theta`. For each sample
`k` and each other sample `j != k`, a first-order Taylor surrogate of `f` around
`b_j` gives, at any point `y`, the increment `t_kj(y) = <grad_j, y - b_j>`
(`grad_j = d f / d b` at `b_j`, from the decoder's backward pass as in double
CV). A small control network `H(t, z) -> (H0, H1)` (two scalars in, one
hidden layer of `hidden_size` LeakyReLU(0.3) units, two scalars out) is fed
`t` and `z = f_j`, and its outputs are averaged over `j != k` (the authors'
code does this for K > 2; for K = 2 there is one `j`):

    h_k(y) = mean_{j != k} H0(t_kj(y), f_j),   r_k(y) = mean_{j != k} H1(t_kj(y), f_j)

`h_k` and `r_k` depend on the other samples only. The discrete Stein operator
of random-scan Gibbs sampling on `q`, over the D one-bit-flip neighbours
`y^(i)` of `b_k` with flip probabilities `w_i = q_i(1 - b_ki)`,

    (A phi)(x) = 1/D sum_i w_i (phi(x^(i)) - phi(x)),   E_q[(A phi)(x)] = 0 for every phi,

turns them into zero-mean controls: a scalar `c_k = (A h_k)(b_k)` and a vector
`V_k = (A [r_k (y - theta)])(b_k)` (`[D]`). With learned scalars alpha, beta:

    g = 1/K sum_k [ (f_k - 1/(K-1) sum_{j != k} (f_j + alpha c_j)) S_k + beta V_k ]

Unbiased for every alpha, beta and network: given the other samples,
`c_k` and `V_k` have mean zero, and `c_j` multiplies `S_k` (a function of the
samples other than `j`) only for `j != k`.

Memory linear in D: a neighbour differs from `b_k` in one bit, so
`t_kj(y^(i)) = t_kj(b_k) + grad_ji (1 - 2 b_ki)` (`[K(K-1), B, D]`, no
`[K, B, D, D]` tensor), and with `w_i (1 - 2 b_ki) = -S_ki`

    V_kd = S_kd / D * (sum_i w_i (r_k(y^(i)) - r_k(b_k)) - r_k(y^(d))).

The network runs on `K (K-1) B (D+1)` scalar pairs (`[K(K-1), B, D+1, hidden]`
activations).

As in double CV, `g` is formed in the backward pass that trains the decoder
(`linked.py`: an identity autograd Function on the samples receives
`grad_k`, scaled with the loss's upstream scale), which returns `-g / B` for
the logits and, in training mode, `d mean(g**2) / d (alpha, beta, network)`
for the estimator's own parameters (the authors' objective; its minimiser is
the variance minimiser, the mean not depending on them). Cost: K evaluations
of `f` and the one backward pass that trains the decoder, plus the network.

Chains: the per-layer scheme of the authors' code (`linked.py`): K
evaluations per layer; each layer has its own alpha, beta and network
(`alpha`, `beta`, `network` for the first layer, `later_layers[l - 2]` for
layer l), and one `mean(g**2)` over all layers' units trains them all.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from discrete_vi.checks import check_choice, check_count, check_positive
from discrete_vi.estimators.linked import LayerRows, LinkedEstimator


class SteinControlNetwork(nn.Module):
    """`H(t, z)`: `LeakyReLU_0.3(W_t t + W_z z + a)` -> two outputs, for scalar `t`, `z`."""

    def __init__(self, hidden_size: int = 100):
        super().__init__()
        self.increment = nn.Linear(1, hidden_size)
        self.base = nn.Linear(1, hidden_size, bias=False)
        self.output = nn.Linear(hidden_size, 2)

    def forward(self, increments: Tensor, base: Tensor) -> Tensor:
        """increments `[..., N]`, base values `[...]` -> `[..., N, 2]` (one base value for N points)."""
        hidden = self.increment(increments.unsqueeze(-1)) + self.base(base.unsqueeze(-1)).unsqueeze(-2)
        return self.output(nn.functional.leaky_relu(hidden, 0.3))


def other_sample_pairs(n_samples: int, n_others: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Index pairs `(k, j = k + m mod K)`, `m = 1..n_others`, `[K * n_others]` each; k-major,
    so a `[K, n_others]` view groups them by k. `n_others = K - 1`: every other sample."""
    k = torch.arange(n_samples, device=device).repeat_interleave(n_others)
    offset = torch.arange(1, n_others + 1, device=device).repeat(n_samples)
    return k, (k + offset) % n_samples


def stein_controls(
    f_values: Tensor, samples: Tensor, logits: Tensor, grads: Tensor, network: nn.Module, n_others: int | None = None
) -> tuple[Tensor, Tensor]:
    """The two Stein controls and the raw vector control, float32.

    f_values: `[K, B]`; samples, grads: `[K, B, D]`; logits: `[B, D]`.
    n_others: expansions averaged per sample (`K - 1` by default: all other samples;
        1: only the next one, `j = k + 1 mod K`).
    Returns `c` `[K, B]` (`(A h_k)(b_k)`) and `V` `[K, B, D]` (`(A R_k)(b_k)`).
    """
    n_samples, _, n_units = samples.shape
    theta = torch.sigmoid(logits)
    scores = samples - theta
    flip = torch.where(samples > 0, torch.sigmoid(-logits), theta)  # q_i(1 - b_ki)
    n_others = n_samples - 1 if n_others is None else n_others
    k, j = other_sample_pairs(n_samples, n_others, samples.device)
    grads_j = grads[j]
    centre = (grads_j * (samples[k] - samples[j])).sum(-1)  # t_kj(b_k): [P, B]
    neighbours = centre.unsqueeze(-1) + grads_j * (1 - 2 * samples[k])  # t_kj(y^(i)): [P, B, D]
    points = torch.cat([centre.unsqueeze(-1), neighbours], -1)  # [P, B, D+1]
    outputs = network(points, f_values[j])  # [P, B, D+1, 2]
    outputs = outputs.view(n_samples, n_others, *outputs.shape[1:]).mean(1)  # [K, B, D+1, 2]
    h_centre, h_neighbours = outputs[..., 0, 0], outputs[..., 1:, 0]
    r_centre, r_neighbours = outputs[..., 0, 1], outputs[..., 1:, 1]
    c = (flip * (h_neighbours - h_centre.unsqueeze(-1))).sum(-1) / n_units
    spread = (flip * (r_neighbours - r_centre.unsqueeze(-1))).sum(-1, keepdim=True)
    v = scores * (spread - r_neighbours) / n_units
    return c, v


class SteinControlState(nn.Module):
    """A later layer's learned RODEO state: alpha and beta (both start at 0) and a control network."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros((), dtype=torch.float32))
        self.beta = nn.Parameter(torch.zeros((), dtype=torch.float32))
        self.network = SteinControlNetwork(hidden_size)


class RODEO(LinkedEstimator):
    """RODEO: RLOO plus discrete Stein control variates on a learned network; K evaluations of f (per layer for chains)."""

    def __init__(
        self,
        n_samples: int = 2,
        control_lr: float = 1e-3,
        hidden_size: int = 100,
        expansions: Literal["all", "next"] = "all",
    ):
        """RODEO with the Gibbs Stein operator and a Taylor-surrogate control network.

        Args:
            n_samples: K >= 2 i.i.d. samples per example (K evaluations of f, per layer for chains).
            control_lr: learning rate of alpha, beta and the control network (one set per
                stochastic layer), exposed as `lr` (the authors' code: Adam, 1e-3 for both groups).
            hidden_size: hidden units of the control network (the authors use 100).
            expansions: the Taylor expansions whose network outputs are averaged for sample k:
                "all" other samples (the authors' choice; network cost K (K-1) B (D+1)) or only
                the "next" one, j = k + 1 mod K (their "fast" variant; cost K B (D+1)).
                The same for K = 2.
        """
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 2)
        self.hidden_size = check_count("hidden_size", hidden_size, 1)
        self.expansions = check_choice("expansions", expansions, ("all", "next"))
        self.lr = check_positive("control_lr", control_lr)
        self.alpha = nn.Parameter(torch.zeros((), dtype=torch.float32))
        self.beta = nn.Parameter(torch.zeros((), dtype=torch.float32))
        self.network = SteinControlNetwork(hidden_size)
        self.later_layers = nn.ModuleList()  # SteinControlState of layers 2, 3, ...

    def new_layer_state(self) -> SteinControlState:
        return SteinControlState(self.hidden_size)

    def layer_state(self, layer: int) -> nn.Module:
        """The module holding `alpha`, `beta` and `network` of layer `layer` (0: the first, this one)."""
        return self if layer == 0 else self.later_layers[layer - 1]

    @property
    def n_others(self) -> int:
        """Taylor expansions averaged per sample."""
        return self.n_samples - 1 if self.expansions == "all" else 1

    def estimate(self, f_values: Tensor, samples: Tensor, logits: Tensor, grads: Tensor, layer: int = 0) -> Tensor:
        """The estimate `g` `[B, D]` (float32, differentiable in that layer's alpha, beta and network).

        f_values: `[K, B]`; samples, grads (`d f / d b` at the samples): `[K, B, D]`; logits: `[B, D]`.
        layer: whose learned state (0: the first layer's).
        """
        state = self.layer_state(layer)
        n_samples = samples.shape[0]
        c, v = stein_controls(f_values, samples, logits, grads, state.network, self.n_others)
        scores = samples - torch.sigmoid(logits)
        shifted = f_values + state.alpha * c
        baseline = (shifted.sum(0, keepdim=True) - shifted) / (n_samples - 1)  # mean over j != k of f_j + alpha c_j
        return ((f_values - baseline).unsqueeze(-1) * scores + state.beta * v).mean(0)

    def layer_estimates(self, rows: list[LayerRows], scale: Tensor, learn: bool) -> tuple[list[Tensor], list]:
        params = list(self.parameters())
        with torch.set_grad_enabled(learn):  # backward passes run without autograd unless asked
            estimates = [self.estimate(r.f_values, r.samples, r.logits, r.grads, layer=l) for l, r in enumerate(rows)]
            second_moment = torch.cat(estimates, -1).square().mean()
        if not learn:
            return estimates, [None] * len(params)
        moment_grads = torch.autograd.grad(second_moment, params, allow_unused=True)
        grads = [None if d is None else (d * scale).to(p.dtype) for d, p in zip(moment_grads, params)]
        return [g.detach() for g in estimates], grads

    def logged_state(self) -> dict[str, Tensor]:
        states = [self.layer_state(l) for l in range(self.n_prepared_layers)]
        return {f"{name}{part}": getattr(state, part).detach()
                for name, state in zip(self.layer_names(), states) for part in ("alpha", "beta")}
