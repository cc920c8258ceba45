"""NVIL: neural variational inference and learning (Mnih & Gregor, ICML 2014).

REINFORCE whose learning signal `f(b)` is centred by an input-dependent baseline
`C(phi)` (a network of the layer's detached logits, never of the sample) and a
running mean `c` of what the baseline leaves, the baseline learning on the
signal normalised by a running standard deviation. Per layer, with
`S_k = b_k - theta`, the running moments `c`, `v` (buffers) and `n = max(1, sqrt(v))`:

    r_k = f_k - c - C(phi)                 (the centred signal, [K, B])
    g   = 1/K sum_k r_k S_k
    J   = mean_{k, B} (r_k / n)^2          (the baseline's squared error, n held fixed)

`c`, `n` and `C` do not depend on the samples `b_k` (layer l's logits depend on
the layers above it only), so `g` is unbiased for any baseline weights and any
running moments. The baseline network learns by descending `J` (its own
parameters only: `C` sees detached logits and `f`'s values enter detached, and
the model's loss reaches the network only through `J - sg(J)`, whose value is 0),
in the same backward pass that trains the model, so gradient scalers and
accumulation scale it like every other gradient. After the estimate is formed,
in training mode only:

    c <- decay c + (1 - decay) mean_{k, B}(f - C),   v <- decay v + (1 - decay) var_{k, B}(f - C)

(the paper's decay 0.8; both start at 0). The paper also divides the signal
of the model's gradient by `n` (an adaptive step size); `normalise_gradient`
does so, and the estimate is then unbiased for the gradient divided by `n`.

Chains: one baseline (network and moments) per layer, on that layer's logits,
all with the global signal `f`. They are created when the estimator learns
how many layers it trains (`prepare_layers`, which a model calls at
configuration time, before its optimizer is built; or the first `chain` call).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from discrete_vi.bernoulli import LogitsLayer, sample_chain, smallest_view
from discrete_vi.checks import check_count, check_positive, check_range
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic, surrogate_loss


class LogitsBaselineNetwork(nn.Module):
    """`net(phi) = w . tanh(W fold(phi) + a) + w0`: one hidden layer of tanh units on a layer's
    logits, one scalar per example. `fold` fits logits of any width D to the input width: they
    fill it in order (zero-padded), and unit d of a wider layer adds onto input `d mod width`.
    The output layer starts at zero (C = 0)."""

    def __init__(self, input_width: int, hidden_size: int):
        super().__init__()
        self.hidden = nn.Linear(input_width, hidden_size)
        self.output = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)

    def forward(self, logits: Tensor) -> Tensor:
        """logits `[..., D]` -> `[...]`."""
        width, units = self.hidden.in_features, logits.shape[-1]
        if units != width:
            padded = nn.functional.pad(logits, (0, -units % width))
            logits = padded.view(*logits.shape[:-1], -1, width).sum(-2)
        return self.output(torch.tanh(self.hidden(logits))).squeeze(-1)


class LayerBaseline(nn.Module):
    """One stochastic layer's baseline network and the running mean and variance of `f - C`."""

    def __init__(self, input_width: int, hidden_size: int):
        super().__init__()
        self.network = LogitsBaselineNetwork(input_width, hidden_size)
        self.register_buffer("signal_mean", torch.zeros((), dtype=torch.float32))
        self.register_buffer("signal_variance", torch.zeros((), dtype=torch.float32))

    def scale(self) -> Tensor:
        """`n = max(1, sqrt(v))` (a negative `v`, which no update produces, counts as 0)."""
        return self.signal_variance.clamp_min(1.0).sqrt()

    def update(self, residual: Tensor, decay: float) -> None:
        """Move the running moments towards the mean and (population) variance of `residual` `[K, B]`.

        New tensors, not in-place updates: the backward pass of the same step reads the old moments
        (the baseline's squared error divides by `n`), and a compiled step recomputes `n` there from
        the buffer, so an in-place update would leak into it."""
        self.signal_mean = decay * self.signal_mean + (1.0 - decay) * residual.mean()
        self.signal_variance = decay * self.signal_variance + (1.0 - decay) * residual.var(correction=0)


class NVIL(Estimator):
    """NVIL (Mnih & Gregor 2014): REINFORCE with a learned baseline network and running signal moments.

    `g = 1/K sum_k (f_k - c - C(phi)) (b_k - theta)`, K evaluations of f; the baseline network
    `C` (a function of the layer's logits, never of the sample) learns by squared error.

    Args:
        n_samples: K >= 1 samples per example; every sample's signal is centred by the same
            baseline (C depends on the example, not the sample).
        baseline_lr: Adam learning rate of the baseline networks, exposed as `lr` (default 1e-3:
            10x the ARM paper's model rate, as the REBAR authors' NVIL code sets it).
        hidden_size: tanh units of the baseline network's hidden layer (the paper: 100).
        input_width: the baseline network's inputs: a layer's logits fill them in order,
            zero-padded; a wider layer's unit d adds onto input d mod input_width.
        decay: decay of the running mean and variance of the signal per training step (the paper: 0.8).
        normalise_gradient: also divide the model's gradient signal by max(1, sqrt(v)), as the
            paper does (an adaptive step size; the estimate is then of the gradient divided by
            that number, not of the gradient itself).
    """

    supports_chains = True

    def __init__(
        self,
        n_samples: int = 1,
        baseline_lr: float = 1e-3,
        hidden_size: int = 100,
        input_width: int = 200,
        decay: float = 0.8,
        normalise_gradient: bool = False,
    ):
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 1)
        self.lr = check_positive("baseline_lr", baseline_lr)
        self.hidden_size = check_count("hidden_size", hidden_size, 1)
        self.input_width = check_count("input_width", input_width, 1)
        self.decay = check_range("decay", decay, 0.0, 1.0, include_low=True)
        self.normalise_gradient = bool(normalise_gradient)
        self.baselines = nn.ModuleList([LayerBaseline(input_width, hidden_size)])

    @property
    def n_prepared_layers(self) -> int:
        return len(self.baselines)

    def prepare_layers(self, n_layers: int) -> None:
        """Also create the baselines of layers it has none for yet (on the estimator's device)."""
        super().prepare_layers(n_layers)
        device = self.baselines[0].signal_mean.device
        while len(self.baselines) < n_layers:
            self.baselines.append(LayerBaseline(self.input_width, self.hidden_size).to(device))

    def layer_estimate(self, baseline: LayerBaseline, values: Tensor, samples: Tensor, logits: Tensor) -> tuple[Tensor, Tensor]:
        """One layer's per-sample terms of `g` `[K, B, D]` and its centred signal `r = f - c - C(phi)`
        `[K, B]` (differentiable in the baseline network only).

        values: `[K, B]` f values (float32, detached); samples: `[K, B, D]`; logits (detached,
        float32): `[1, B, D]` for the first layer, `[K, B, D]` for later ones. The baseline sees the
        logits only: a baseline that saw the sample would bias the estimate.
        """
        centred = values - baseline.signal_mean - baseline.network(logits)
        weights = centred.detach() / (self.n_samples * baseline.scale() if self.normalise_gradient else self.n_samples)
        return weights.unsqueeze(-1) * (samples - torch.sigmoid(logits)), centred

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        batch_size = logits.shape[0]
        sample = sample_chain(logits, layers, self.n_samples)
        detached = sample.detached_logits()
        f_values = evaluate_objective(f, (self.n_samples, batch_size), sample.samples, detached)
        learn = self.updates_state()
        with float32_arithmetic(logits.device):
            values = f_values.detach().float()
            gradients, centred = [], []
            for baseline, b, phi in zip(self.baselines, sample.samples, detached):
                # first layer: [1, B, D] (its logits are the same for every sample); later: [K, B, D]
                terms, signal = self.layer_estimate(baseline, values, b, smallest_view(phi))
                gradients.append(terms)
                centred.append(signal)
            loss = surrogate_loss(f_values, sample.logits, gradients, batch_size)
            if learn:
                squared_error = sum((r / baseline.scale()).square().mean() for baseline, r in zip(self.baselines, centred))
                loss = loss + (squared_error - squared_error.detach())
                with torch.no_grad():
                    for baseline, r in zip(self.baselines, centred):
                        baseline.update(r + baseline.signal_mean, self.decay)  # f - C
        return EstimatorOutput(loss=loss, f_values=values, samples=sample.samples)

    def logged_state(self) -> dict[str, Tensor]:
        state = {}
        for number, baseline in enumerate(self.baselines, 1):
            suffix = "" if number == 1 else f"_{number}"
            state[f"signal_mean{suffix}"] = baseline.signal_mean.detach()
            state[f"signal_std{suffix}"] = baseline.signal_variance.detach().clamp_min(0).sqrt()
        return state
