"""The `Estimator` interface and the checks and arithmetic all estimators share.

Shapes: `B` examples, `D` units of a stochastic layer, `K` samples per example
(`K = 2 * n_pairs` for the antithetic estimators). Samples are float32 tensors
of exact 0/1 values, `[K, B, D]`; `f` maps them to `[K, B]`.

Each estimator estimates the gradient of one training objective
(`Estimator.training_objective`): the ELBO `E_q[f(b)]` (most of them) or the
K-sample bound `E[log 1/K sum_k exp f(b_k)]` (`"multi_sample"`: VIMCO, LocalDisARM).
"""

from __future__ import annotations

import abc
import contextlib
import functools
import inspect
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from discrete_vi.bernoulli import LogitsLayer, smallest_view
from discrete_vi.checks import ConfigurationError, NonFiniteObjectiveError

Objective = Callable[[Tensor], Tensor]
"""Single-layer objective: float samples `[K, B, D]` -> values `[K, B]`."""

ChainObjective = Callable[[list[Tensor], list[Tensor]], Tensor]
"""Chain objective: (samples `[K, B, D_l]` per layer, float32 logits `[K, B, D_l]`
per layer: detached for ELBO estimators, with their graph for multi-sample ones,
`Estimator.objective_logits`) -> values `[K, B]`."""

TrainingObjective = Literal["elbo", "multi_sample"]
"""What a model trains and an estimator estimates the gradient of: the ELBO `E_q[f(b)]`, or
the K-sample bound `E[log 1/K sum_k exp f(b_k)]` (importance weighted, Burda et al. 2016)."""


@dataclass
class EstimatorOutput:
    """What an estimator call returns.

    loss: scalar to minimise. Its value is minus the batch mean of the training
        bound (`Estimator.training_bound`): `-mean(f)` for ELBO estimators,
        `-mean_B log 1/K sum_k exp f(b_k)` for multi-sample ones. Its gradient with
        respect to the logits is `-g / B` and with respect to parameters used
        inside `f` it is minus the gradient of that batch mean on these samples
        (ELBO: `-(1 / (K * B)) * sum d f / d param`).
    f_values: `[K, B]` values of `f` on the samples (float32, detached).
    samples: the samples `f` was evaluated on, one `[K, B, D_l]` tensor per
        stochastic layer (a list of one tensor for a single layer).
    """

    loss: Tensor
    f_values: Tensor
    samples: list[Tensor]


def float32_arithmetic(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that turns autocast off so estimator arithmetic runs in float32 (nothing to do, and
    no autocast context to enter and leave each step, when autocast is off already)."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, enabled=False)


def check_logits(logits: Tensor, name: str = "logits") -> None:
    """Raise ValueError unless `logits` is a finite floating-point `[B, D]` tensor."""
    if not isinstance(logits, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape [B, D], got {type(logits).__name__}")
    if logits.dim() != 2:
        raise ValueError(
            f"{name} must have shape [B, D] (batch, units), got {list(logits.shape)}; "
            "flatten extra dimensions into D"
        )
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {logits.dtype}")
    if logits.numel() == 0:
        raise ValueError(f"{name} is empty: shape {list(logits.shape)}")


def evaluate_objective(f: Callable[..., Tensor], expected: tuple[int, int], *inputs) -> Tensor:
    """Call `f(*inputs)` once and check its result is finite with shape `expected` ([K, B])."""
    values = f(*inputs)
    if not isinstance(values, Tensor):
        raise ValueError(f"f must return a tensor of shape [K, B] = {list(expected)}, got {type(values).__name__}")
    if tuple(values.shape) != tuple(expected):
        raise ValueError(
            f"f must return one value per sample and example, shape [K, B] = {list(expected)}, "
            f"got {list(values.shape)}"
        )
    if not torch.compiler.is_compiling() and not _finite_check_deferred:  # no host sync: the caller checks
        check_finite_objective(values)
    return values


_finite_check_deferred = False


@contextlib.contextmanager
def deferred_finite_check() -> Iterator[None]:
    """Inside, estimators do not check that `f` is finite (a host synchronisation on a GPU): the
    caller checks instead (a model's training step checks the ELBO estimate on logging steps)."""
    global _finite_check_deferred
    before, _finite_check_deferred = _finite_check_deferred, True
    try:
        yield
    finally:
        _finite_check_deferred = before


def check_finite_objective(values: Tensor) -> None:
    """Raise NonFiniteObjectiveError if `values` of f (or their mean) hold nan or inf."""
    finite = torch.isfinite(values.detach())
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise NonFiniteObjectiveError(
            f"f returned {bad} non-finite values (nan or inf) out of {values.numel()}; "
            "check the model for overflow (e.g. log of 0) or lower the learning rate"
        )


def log_mean_exp(values: Tensor, dim: int = 0) -> Tensor:
    """`log 1/K sum_k exp values_k` along `dim` (K its size), computed stably."""
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def surrogate_loss(f_values: Tensor, logits: Sequence[Tensor], gradients: Sequence[Tensor], batch_size: int) -> Tensor:
    """Loss with value `-mean(f_values)`, gradient `-g_l / B` w.r.t. each `logits[l]`.

    f_values: `[K, B]` (or the per-example training bound `[B]`), differentiable
        w.r.t. parameters inside `f`.
    logits/gradients: matching tensors (`[B, D]` or `[N, B, D]`); each
        gradient is detached float32 and is summed against its logits.
    """
    linear = 0.0
    for phi, g in zip(logits, gradients):
        phi = smallest_view(phi)  # expanded first-layer logits: sum g over the samples first
        linear = linear + (g.detach().sum_to_size(phi.shape) * phi.float()).sum()
    return -(f_values.float().mean() + (linear - linear.detach()) / batch_size)


class Estimator(nn.Module, abc.ABC):
    """An estimator of `d E_q[f(b)] / d logits` for factorised Bernoulli `q` (of
    `d E[log 1/K sum_k exp f(b_k)] / d logits` for `training_objective = "multi_sample"`).

    A subclass implements one method, `chain(logits, layers, f)`, for a chain
    of stochastic layers; the single-layer call `est(logits, f)` is its
    one-layer case. `chain` starts with `self.check_chain(logits, layers)`.
    Learned state (baselines, control-variate coefficients, control networks)
    lives in the module, so it is saved in checkpoints and follows
    `.to(device)`. State updates happen only in training mode with gradients
    enabled. The math of every estimator: `docs/estimators.md`.
    """

    #: Learning rate for the estimator's own parameters (None: the model's rate).
    lr: float | None = None
    #: Whether `chain` accepts several stochastic layers.
    supports_chains: bool = False
    #: Why `torch.compile` cannot compile this estimator (None: it can).
    compile_refusal: str | None = None
    #: Whether the estimate is biased (straight-through and relaxations); unbiased ones are checked by enumeration.
    biased: bool = False
    #: The objective whose gradient this estimator estimates (a model refuses an estimator of another).
    training_objective: TrainingObjective = "elbo"

    @property
    def n_evaluations(self) -> int:
        """Evaluations of `f` per example (per layer for antithetic chains): K samples by default."""
        return self.n_samples

    def __init_subclass__(cls, **kwargs):
        """Record each estimator's constructor arguments (for `config()`), whatever subclass defines them."""
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def recording_init(self, *args, **kw):
            if "_init_arguments" not in self.__dict__:  # the outermost constructor's arguments
                bound = inspect.signature(init).bind(self, *args, **kw)
                bound.apply_defaults()
                object.__setattr__(self, "_init_arguments", dict(list(bound.arguments.items())[1:]))
            init(self, *args, **kw)

        cls.__init__ = recording_init

    def config(self) -> dict:
        """The class path and constructor arguments that rebuild this estimator (saved in checkpoints)."""
        cls = type(self)
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": dict(self._init_arguments)}

    @classmethod
    def at_cost(cls, n_evaluations: int, **options) -> "Estimator":
        """An instance that evaluates `f` `n_evaluations` times per example (default: K samples)."""
        return cls(n_evaluations, **options)

    def training_bound(self, f_values: Tensor) -> Tensor:
        """The training objective's per-example estimate `[B]` (float32; differentiable where
        `f_values` is) from the `[n_evaluations, B]` values of `f` of one call: the mean of `f`
        (ELBO), or `log 1/K sum_k exp f(b_k)` over the first `K = n_samples` rows, the samples
        of the bound (multi-sample)."""
        if self.training_objective == "elbo":
            return f_values.float().mean(0)
        return log_mean_exp(f_values[: self.n_samples].float())

    def objective_logits(self, logits: Sequence[Tensor]) -> list[Tensor]:
        """The float32 logits `f` receives. ELBO: detached, since the direct derivative of a log
        weight's `-log q(b)` term, `-(b - theta)`, has mean zero and is dropped. Multi-sample:
        with their graph, since there it does not (its mean is `-E[sum_k w_k (b_k - theta)]`,
        `w = softmax(f)`): autograd adds the direct derivative of whatever `f` does with them."""
        if self.training_objective == "elbo":
            return [phi.detach().float() for phi in logits]
        return [phi.float() for phi in logits]

    def forward(self, logits: Tensor, f: Objective) -> EstimatorOutput:
        """Estimate for one layer: logits `[B, D]`, `f`: samples `[K, B, D]` -> `[K, B]`."""
        return self.chain(logits, [], lambda samples, _logits: f(samples[0]))

    @abc.abstractmethod
    def chain(self, logits: Tensor, layers: Sequence[LogitsLayer], f: ChainObjective) -> EstimatorOutput:
        """Estimate for a chain `q(b_1 | x) q(b_2 | b_1) ...`.

        logits: `[B, D_1]` logits of the first layer.
        layers: callables mapping samples of layer l `[K, B, D_l]` to logits
            of layer l+1 `[K, B, D_{l+1}]` (their parameters learn through
            the estimator's gradient); empty for one layer.
        f: called once as `f(samples, logits)` with per-layer lists of
            `[K, B, D_l]` samples and float32 logits (`objective_logits`); returns `[K, B]`.
        """

    n_prepared_layers: float = math.inf
    """Stochastic layers this estimator has learned state for (inf: its state is not per layer)."""

    def check_chain(self, logits: Tensor, layers: Sequence[LogitsLayer]) -> None:
        """Raise ValueError unless `logits` is `[B, D]` and this estimator can train `len(layers) + 1`
        layers; create the per-layer state of layers not yet prepared (with a warning when training:
        an optimizer built before this call would miss it)."""
        check_logits(logits)
        n_layers = len(layers) + 1
        self.check_layers(n_layers)
        if n_layers > self.n_prepared_layers:
            if self.updates_state():
                warnings.warn(
                    f"{type(self).__name__} created learned state for layers {self.n_prepared_layers + 1}-{n_layers} "
                    f"at its first call on {n_layers} layers; an optimizer built before this call does not train "
                    f"it: call prepare_layers({n_layers}) before building the optimizer",
                    stacklevel=3,
                )
            self.prepare_layers(n_layers)

    def prepare_layers(self, n_layers: int) -> None:
        """Make this estimator ready to train `n_layers` stochastic layers: raise ConfigurationError
        if it cannot; estimators with per-layer learned state (`n_prepared_layers`) create it here.
        Models call it at construction; call it yourself before building an optimizer over
        `parameters()`."""
        self.check_layers(n_layers)

    def check_layers(self, n_layers: int) -> None:
        """Raise ValueError if this estimator cannot train `n_layers` stochastic layers."""
        if n_layers > 1 and not self.supports_chains:
            chains = ", ".join(sorted(cls.__name__ for cls in _subclasses(Estimator) if cls.supports_chains
                                      and cls.training_objective == self.training_objective
                                      and cls.__module__.startswith(__package__) and not inspect.isabstract(cls)))
            raise ConfigurationError(
                f"{type(self).__name__} is defined for one stochastic layer only, and the model has {n_layers}; "
                f"for several layers use one of: {chains}"
            )

    def logged_state(self) -> dict[str, Tensor]:
        """Scalars worth watching in TensorBoard (learned coefficients, baselines)."""
        return {}

    def updates_state(self) -> bool:
        """Whether this call may update learned state (training with autograd on)."""
        return self.training and torch.is_grad_enabled()

    def extra_repr(self) -> str:
        """The constructor's arguments, as recorded (`config()`)."""
        return ", ".join(f"{name}={value!r}" for name, value in self._init_arguments.items())


def _subclasses(cls: type) -> list[type]:
    """Every subclass of `cls`, at any depth."""
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_subclasses(direct))]
