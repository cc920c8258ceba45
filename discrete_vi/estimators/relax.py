"""REBAR (Tucker, Mnih, Maddison, Lawson & Sohl-Dickstein 2017) and RELAX (Grathwohl, Choi, Wu,
Roeder & Duvenaud 2018) for binary stochastic layers.

Per unit, `b = H(z)` with `z ~ Logistic(phi, 1)` (`H` the step function), and `z~` a second draw
of `z` given `b`. With a control `c(z)` that is smooth in `z`:

    g = (f(b) - c(z~)) (b - theta) + d c(z) / d phi - d c(z~) / d phi

is unbiased for any `c` (the relaxed terms' expectations cancel: `z` and `z~` have the same law
and `E[c(z~) | b]` is the part of `c` that the score can see). `d z / d phi = 1`;
`z~ = phi + log(1 - u~) - log u~` with `u~ = v theta` (b = 1) or `theta + v (1 - theta)` (b = 0),
`v ~ U(0, 1)` fixed, depends on `phi` also through `theta`:

    d z~ / d phi = theta (1 - v) / (1 - u~)   (b = 1),     v (1 - theta) / u~   (b = 0)

(dropping the `theta` path, i.e. taking 1, is the duvenaud/relax#6 bug). Controls:

    REBAR: c(z) = eta f(sigmoid(z / lambda))
    RELAX: c(z) = eta [f(sigmoid(z / lambda)) + r(phi, z)],  r(phi, z) = sum_d m(phi_d, z_d)

with `m` one small network shared by the units (`hidden_size` LeakyReLU(0.3) units), `phi`
detached (a fixed input: the identity holds for any `c` fixed at the current `phi`).

Three evaluations of `f` per sample, in one call: `f(b)`, `f(sigmoid(z / lambda))`,
`f(sigmoid(z~ / lambda))`. `d f / d s` at the two relaxed points comes from `torch.autograd.grad`
with respect to those inputs only, so no parameter's `.grad` receives anything from the relaxed
evaluations: the decoder learns from `f(b)` alone, and the loss keeps the contract (value
`-mean f(b)`, gradient `-g / B` for the logits). `z` and `z~` are both drawn from `p(z | b)` with
fresh uniforms (never 0 or 1), so `H(z) = b` exactly; `z`'s law is still `Logistic(phi, 1)`, which
is all its pathwise term needs.

Learned: `log lambda` (initial `lambda = temperature`), `eta` (initial 1) and, for RELAX, the
network, by gradient descent on the estimate's second moment `mean(g**2)` (the mean does not depend
on them, so this is the variance). Its gradient needs `d^2 f / d s^2` (through `lambda`), so `f` is
differentiated twice in training mode; the gradient is formed when the estimator is called and
handed to the parameters by the backward pass of the loss, times the loss's upstream scale (a
gradient scaler's, accumulation's). In eval mode, or without autograd, nothing is learned.

Chains (Tucker et al.'s and Grathwohl et al.'s scheme): layer `l`'s control relaxes layer `l` and
every layer below it, each lower layer `m` as `sigmoid((phi_m(s_{m-1}) + L_m) / lambda)` with the
logistic noise `L_m` of the uniforms that drew the hard `b_m`: a smooth function of `z_l` for fixed
noise independent of `z_l`, so the identity holds given that noise. Layers above `l` stay hard.
Cost `1 + 2 L` evaluations per sample for `L` layers. `lambda`, `eta` and the network are shared by
the layers; the second moment summed over layers is what they minimise.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

from discrete_vi.bernoulli import LogitsLayer, sample_chain, uniform
from discrete_vi.checks import ConfigurationError, check_count, check_positive
from discrete_vi.estimators.base import ChainObjective, Estimator, EstimatorOutput, evaluate_objective
from discrete_vi.estimators.base import float32_arithmetic, surrogate_loss

EVALUATIONS_PER_SAMPLE = 3
"""`f(b)`, `f(sigmoid(z / lambda))` and `f(sigmoid(z~ / lambda))` (one stochastic layer)."""


def conditional_logistic(logits: Tensor, samples: Tensor, uniforms: Tensor) -> tuple[Tensor, Tensor]:
    """A draw of `z ~ Logistic(phi, 1)` given `H(z) = b`, and `d z / d phi` with `b` and the uniform fixed.

    logits, samples (0/1), uniforms in (0, 1): float32, broadcast to one shape. Returns `(z, dz/dphi)`.
    """
    theta, one_minus_theta = torch.sigmoid(logits), torch.sigmoid(-logits)
    # u~ = v theta (b = 1) or theta + v (1 - theta) (b = 0); 1 - u~ formed without cancellation.
    low = torch.where(samples > 0, uniforms * theta, theta + uniforms * one_minus_theta)
    high = torch.where(samples > 0, (1 - uniforms) * theta + one_minus_theta, (1 - uniforms) * one_minus_theta)
    z = logits + torch.log(high) - torch.log(low)
    slope = torch.where(samples > 0, theta * (1 - uniforms) / high, uniforms * one_minus_theta / low)
    return z, slope


def logistic_noise(uniforms: Tensor) -> Tensor:
    """`log(1 - u) - log u`, so that `1[u < sigmoid(phi)] = H(phi + noise)`; `u = 0` (24-bit draws)
    kept finite (its bucket's midpoint)."""
    uniforms = uniforms.clamp_min(2.0**-25)
    return torch.log1p(-uniforms) - torch.log(uniforms)


class _ParameterGradients(torch.autograd.Function):
    """A zero whose backward hands precomputed gradients to the estimator's parameters, times the
    gradient the loss gives it (the loss's upstream scale: 1 for a plain backward)."""

    @staticmethod
    def forward(ctx, gradients: tuple, *params: Tensor) -> Tensor:
        ctx.gradients = gradients
        return params[0].new_zeros(())

    @staticmethod
    def backward(ctx, scale: Tensor):
        return (None, *(None if g is None else g * scale for g in ctx.gradients))


class REBAR(Estimator):
    """REBAR (Tucker et al. 2017): REINFORCE with the concrete-relaxation control `eta f(sigmoid(z / lambda))`."""

    supports_chains = True
    compile_refusal = (
        "it differentiates f twice inside the forward pass (torch.autograd.grad), which torch.compile does not trace"
    )

    def __init__(self, n_samples: int = 1, temperature: float = 0.5, control_lr: float = 1e-3):
        """REBAR with learned temperature and scale; 3 evaluations of f per sample.

        Args:
            n_samples: K >= 1 samples per example, each with its two relaxed evaluations
                (3 K evaluations of f; 1 + 2 L per sample for L stochastic layers).
            temperature: initial temperature lambda of the relaxation sigmoid(z / lambda)
                (the REBAR and RELAX authors' 0.5; the DisARM and RODEO code's RELAX: 0.1); learned as log lambda.
            control_lr: learning rate of log lambda, eta (and RELAX's network), exposed as `lr`;
                they descend the estimate's second moment mean(g^2).
        """
        super().__init__()
        self.n_samples = check_count("n_samples", n_samples, 1)
        temperature = check_positive("temperature", temperature)
        self.lr = check_positive("control_lr", control_lr)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature), dtype=torch.float32))
        self.eta = nn.Parameter(torch.ones((), dtype=torch.float32))

    @property
    def n_evaluations(self) -> int:
        return EVALUATIONS_PER_SAMPLE * self.n_samples

    @classmethod
    def at_cost(cls, n_evaluations: int, **options) -> "REBAR":
        if n_evaluations % EVALUATIONS_PER_SAMPLE:
            raise ConfigurationError(
                f"{cls.__name__} evaluates f 3 times per sample (the sample and two relaxed points): "
                f"n_evaluations must be a multiple of 3, got {n_evaluations}"
            )
        return cls(n_evaluations // EVALUATIONS_PER_SAMPLE, **options)

    def residual(self, logits: Tensor, points: Tensor) -> tuple[Tensor, Tensor] | None:
        """The learned part of the control besides `f` and its derivative in `points`
        (`[N, B]` and `[N, B, D]` from `[N, B, D]` each); none for REBAR."""
        return None

    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        self.check_chain(logits, layers)
        n, batch_size, n_layers = self.n_samples, logits.shape[0], len(layers) + 1
        hard = sample_chain(logits, layers, n)
        fixed = hard.detached_logits()
        learn = self.updates_state()
        with float32_arithmetic(logits.device):
            log_temperature = self.log_temperature if learn else self.log_temperature.detach()
            temperature = log_temperature.exp()
            points, slopes = [], []  # per layer: (z; z~) [2K, B, D_l], d z~ / d phi [K, B, D_l]
            for phi, b in zip(fixed, hard.samples):
                noise = uniform((2 * n, *b.shape[1:]), b.device, bits=16)
                z, slope = conditional_logistic(torch.cat([phi, phi]), torch.cat([b, b]), noise)
                points.append(z.requires_grad_(torch.is_grad_enabled()))
                slopes.append(slope[n:])
        blocks = [self._relaxed_block(l, hard, fixed, layers, points[l], temperature) for l in range(n_layers)]
        samples = [torch.cat([hard.samples[m], *(blk[0][m] for blk in blocks)]) for m in range(n_layers)]
        logit_inputs = [torch.cat([fixed[m], *(blk[1][m] for blk in blocks)]) for m in range(n_layers)]
        values = evaluate_objective(f, ((1 + 2 * n_layers) * n, batch_size), samples, logit_inputs)
        hard_values = values[:n]
        out_values = hard_values.detach().float()
        if not torch.is_grad_enabled():  # nothing will be differentiated: the loss's value only
            return EstimatorOutput(loss=-out_values.mean(), f_values=out_values, samples=hard.samples)
        with float32_arithmetic(logits.device):
            relaxed = values[n:].float().view(n_layers, 2 * n, batch_size)
            f_slopes = self._f_slopes(relaxed, points, learn)
            estimates = [
                self.layer_estimate(
                    out_values, relaxed[l], f_slopes[l], points[l], hard.samples[l], fixed[l], slopes[l], learn
                )
                for l in range(n_layers)
            ]
            loss = surrogate_loss(hard_values, hard.logits, [g.detach() / n for g in estimates], batch_size)
            if learn:  # sum over layers of mean(g^2), g the per-example estimate (the mean over samples)
                loss = loss + self.descent_term(sum(g.mean(0).square().mean() for g in estimates))
        return EstimatorOutput(loss=loss, f_values=out_values, samples=hard.samples)

    def descent_term(self, second_moment: Tensor) -> Tensor:
        """A zero for the loss whose backward gives each of the estimator's parameters
        `d second_moment / d param` (times the loss's scale) and nothing to anything else."""
        params = list(self.parameters())
        grads = torch.autograd.grad(second_moment, params, allow_unused=True, retain_graph=True)
        return _ParameterGradients.apply(grads, *params)

    def layer_estimate(self, f_values: Tensor, relaxed_values: Tensor, f_slopes: Tensor, points: Tensor,
                       samples: Tensor, logits: Tensor, tilde_slopes: Tensor, learn: bool) -> Tensor:
        """Per-sample estimates `[K, B, D]` (float32) for one layer, differentiable in the learned
        state if `learn`.

        f_values: `[K, B]` values of `f(b)`; relaxed_values: `[2K, B]` values of `f` at
        `sigmoid(z / lambda)` then at `sigmoid(z~ / lambda)`; f_slopes: `[2K, B, D]` their
        derivatives w.r.t. `points` (`z` then `z~`, `[2K, B, D]`); samples, logits (detached):
        `[K, B, D]`; tilde_slopes: `[K, B, D]` `d z~ / d phi`.
        """
        n = samples.shape[0]
        eta = self.eta if learn else self.eta.detach()
        control, slope = relaxed_values, f_slopes
        with torch.set_grad_enabled(learn):  # the network's graph only where it learns
            residual = self.residual(torch.cat([logits, logits]), points)
        if residual is not None:
            control, slope = control + residual[0], slope + residual[1]
        score = samples - torch.sigmoid(logits)
        return (f_values - eta * control[n:]).unsqueeze(-1) * score + eta * (slope[:n] - slope[n:] * tilde_slopes)

    @staticmethod
    def _relaxed_block(layer: int, hard, fixed: list[Tensor], layers: Sequence[LogitsLayer], points: Tensor,
                       temperature: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Inputs of `f` for layer `layer`'s `2K` relaxed rows (at `z`, then at `z~`): layers above
        hard, layer `layer` relaxed at `points`, the layers below relaxed through the layer maps
        with the noise of the hard draws. Returns per-layer samples and logits, `[2K, B, D_m]`."""
        twice = lambda t: torch.cat([t, t])  # noqa: E731
        samples = [twice(b) for b in hard.samples[:layer]]
        logit_inputs = [twice(phi) for phi in fixed[: layer + 1]]
        with float32_arithmetic(points.device):
            relaxed = torch.sigmoid(points / temperature)
        samples.append(relaxed)
        for m in range(layer + 1, len(fixed)):
            phi = layers[m - 1](relaxed).float()
            with float32_arithmetic(points.device):
                relaxed = torch.sigmoid((phi + logistic_noise(twice(hard.uniforms[m]))) / temperature)
            samples.append(relaxed)
            logit_inputs.append(phi)
        return samples, logit_inputs

    def _f_slopes(self, relaxed: Tensor, points: list[Tensor], learn: bool) -> list[Tensor]:
        """`d f / d z` at each layer's relaxed points (`[2K, B, D_l]`), through `f` only."""
        missing = "f is not differentiable in its samples (no gradient reached the relaxed inputs)"
        if not relaxed.requires_grad:
            raise ConfigurationError(f"{type(self).__name__}: {missing}; use RLOO, DisARM or ARMS for such f")
        slopes = torch.autograd.grad(relaxed.sum(), points, create_graph=learn, retain_graph=True, allow_unused=True)
        if any(s is None for s in slopes):
            raise ConfigurationError(f"{type(self).__name__}: {missing}; use RLOO, DisARM or ARMS for such f")
        return list(slopes)

    def logged_state(self) -> dict[str, Tensor]:
        return {"temperature": self.log_temperature.detach().exp(), "eta": self.eta.detach()}


class UnitResidual(nn.Module):
    """`r(phi, z) = sum_d m(phi_d, z_d)`, `m`: 2 inputs -> `hidden_size` LeakyReLU(0.3) -> 1, shared by
    the units; the output layer starts at zero."""

    def __init__(self, hidden_size: int = 137):
        super().__init__()
        self.hidden = nn.Linear(2, hidden_size)
        self.output = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.output.weight)  # r = 0 at first: RELAX starts as REBAR
        nn.init.zeros_(self.output.bias)

    def forward(self, logits: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """logits, points `[N, B, D]` -> `r` `[N, B]` and `d r / d points` `[N, B, D]`.

        The derivative is written out (`m' = sum_h w_h LeakyReLU'(a_h) A_hz`), so learning the
        network differentiates it once, not through a second backward pass; the hidden layer is
        formed elementwise (`[N, B, D, hidden]`), cheaper than a matrix product with two inputs.
        """
        weight, out_weight = self.hidden.weight, self.output.weight[0]
        pre = torch.addcmul(self.hidden.bias, logits.unsqueeze(-1), weight[:, 0])
        pre = torch.addcmul(pre, points.unsqueeze(-1), weight[:, 1])
        value = nn.functional.leaky_relu(pre, 0.3) @ out_weight
        gain = torch.where(pre > 0, 1.0, 0.3)
        slope = gain @ (out_weight * weight[:, 1])
        return value.sum(-1) + points.shape[-1] * self.output.bias[0], slope


class RELAX(REBAR):
    """RELAX (Grathwohl et al. 2018): REBAR's control plus a learned network,
    `eta [f(sigmoid(z / lambda)) + r(phi, z)]`."""

    def __init__(self, n_samples: int = 1, temperature: float = 0.5, control_lr: float = 1e-3, hidden_size: int = 137):
        """RELAX with learned temperature, scale and surrogate network; 3 evaluations of f per sample.

        Args:
            n_samples: K >= 1 samples per example, each with its two relaxed evaluations
                (3 K evaluations of f; 1 + 2 L per sample for L stochastic layers).
            temperature: initial temperature lambda of the relaxation sigmoid(z / lambda)
                (the RELAX authors' 0.5; the DisARM and RODEO code's RELAX: 0.1); learned as log lambda.
            control_lr: learning rate of log lambda, eta and the network, exposed as `lr`;
                they descend the estimate's second moment mean(g^2).
            hidden_size: hidden LeakyReLU(0.3) units of the network m(phi_d, z_d) that every unit
                shares (137, the width of the DisARM, double-CV and RODEO code's RELAX network).
        """
        super().__init__(n_samples, temperature, control_lr)
        self.hidden_size = check_count("hidden_size", hidden_size, 1)
        self.network = UnitResidual(hidden_size)

    def residual(self, logits: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        return self.network(logits, points)
