"""`BinaryLatentModule`: the training and evaluation logic shared by every model
with binary stochastic layers.

A model is a subclass that defines

- `stochastic_layers(batch)`: the logits of the first stochastic layer `[B, D_1]`
  and the networks that map each layer's samples to the next layer's logits;
- `objective(batch, samples, logits)`: `f`, one value per sample and example
  `[K, B]`, from per-layer samples `[K, B, D_l]` and detached logits
  (for a VAE, `log p(x, b) - log q(b | x)`, the log importance weight);
- optionally `parameter_groups()` (per-part learning rates) and
  `images_for_logging(batch)` (pictures for TensorBoard).

Everything else is here: the estimator call (`model.estimator`, any
`Estimator` of the model's `training_objective`: the ELBO `E_q[f]`, or the
K-sample bound `E[log 1/K sum_k exp f(b_k)]` with K the estimator's), the loss
returned to Lightning's automatic optimization (so DDP, mixed precision,
clipping and accumulation work as usual), logging (`train/elbo`, the mean of f,
and for the multi-sample objective `train/bound`, the K-sample bound trained),
and the estimator-independent evaluation: `elbo` (mean log weight) and
`log_likelihood`, the S-sample bound `log 1/S sum_s exp(f_s)` (S = 100 for
validation, 1000 for test), computed in chunks of samples sized to the cache (`eval_chunk`).
"""

from __future__ import annotations

import abc
import math
from functools import partial
from typing import Literal, get_args

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from discrete_vi.bernoulli import LogitsLayer, sample_chain
from discrete_vi.checkpoints import TRUSTED_INSTANTIATOR, check_checkpoint_fits, check_class_paths, fit_estimator_state
from discrete_vi.checkpoints import read_checkpoint
from discrete_vi.checks import ConfigurationError, NonFiniteObjectiveError, check_choice, check_count
from discrete_vi.checks import check_input_size, check_positive
from discrete_vi.estimators import RLOO, Estimator, EstimatorOutput, TrainingObjective, estimator_names
from discrete_vi.estimators.base import deferred_finite_check
from discrete_vi.scalars import completes_optimizer_step, write_scalars


CompileMode = Literal["default", "reduce-overhead", "max-autotune"]
EVAL_ROWS = 2048
"""Sample-rows (samples x examples) per evaluation chunk by default: a 784-pixel decoder's logits
then take about 6 MB. On a CPU the 100-sample bound of 10,000 images took 6.1-6.7 s at 1,000-2,500
rows against 15.5 s at 50,000 (100 samples x 500 images); on a GPU chunks are 16x larger."""

OBJECTIVE_NAMES = {"elbo": "the ELBO", "multi_sample": "the K-sample bound"}
"""How messages name each training objective."""


class BinaryLatentModule(pl.LightningModule, abc.ABC):
    """Base for models with binary stochastic layers trained by a gradient estimator.

    The constructor's arguments (the estimator's included) are saved in
    checkpoints, so `Model.load_from_checkpoint(path)` rebuilds the model.

    Args:
        estimator: the gradient estimator (default `RLOO(n_samples=2)`).
        lr: Adam learning rate of the model's parameters (subclasses may split it by part).
        val_samples: S of the S-sample bound at validation.
        test_samples: S of the S-sample bound at test and predict.
        eval_chunk: samples evaluated at once during evaluation; default (None): about
            `EVAL_ROWS` sample-rows per chunk (samples x batch), sized to the CPU's cache.
        compile: compile the training loss (the model's objective, the sampling and the
            estimator's arithmetic, forward and backward) with torch.compile; compiled on the
            first training step (tens of seconds on a CPU), then reused without recompiling.
        compile_mode: torch.compile's mode: "default", "reduce-overhead" (CUDA graphs on a GPU)
            or "max-autotune".
        training_objective: "elbo" (train E_q[f]) or "multi_sample" (train the K-sample bound
            log 1/K sum_k exp f(b_k), K the estimator's; needs an estimator of that objective:
            VIMCO, LocalDisARM).
    """

    def __init__(
        self,
        estimator: Estimator | None = None,
        lr: float = 1e-3,
        val_samples: int = 100,
        test_samples: int = 1000,
        eval_chunk: int | None = None,
        compile: bool = False,
        compile_mode: CompileMode = "default",
        training_objective: TrainingObjective = "elbo",
    ):
        super().__init__()
        if estimator is None:
            estimator = RLOO(n_samples=2)
        if not isinstance(estimator, Estimator):
            raise ConfigurationError(f"estimator must be an Estimator (e.g. RLOO, DisARM), got {type(estimator).__name__}")
        self.training_objective = check_choice("training_objective", training_objective, get_args(TrainingObjective))
        check_objective(estimator, training_objective)
        self.estimator = estimator
        self.n_stochastic_layers = 1  # set by the subclass's `check_estimator`
        self.save_hyperparameters(ignore=["estimator"])
        self.hparams["estimator"] = estimator.config()
        if "_class_path" not in self.hparams:  # built in Python: record what the command line records
            self.hparams["_class_path"] = f"{type(self).__module__}.{type(self).__qualname__}"
            self.hparams["_instantiator"] = TRUSTED_INSTANTIATOR
        self.lr = check_positive("lr", lr)
        self.val_samples = check_count("val_samples", val_samples, 1)
        self.test_samples = check_count("test_samples", test_samples, 1)
        self.eval_chunk = None if eval_chunk is None else check_count("eval_chunk", eval_chunk, 1)
        self.compile, self.compile_mode = compile, check_choice("compile_mode", compile_mode, get_args(CompileMode))
        if compile and estimator.compile_refusal:
            raise ConfigurationError(f"{type(estimator).__name__} cannot be compiled: {estimator.compile_refusal}")
        self._compiled_loss = None
        self._first_nonfinite_step: Tensor | None = None
        self.eval_metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in ("elbo", "log_likelihood")}
        )

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets `_current_fx_name` around each of the ~40 hook calls of a training step;
        # nn.Module.__setattr__'s parameter/buffer/module checks cost more than the rest of that call.
        if name in ("_current_fx_name", "_first_nonfinite_step"):
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # --- what a model defines -------------------------------------------------------

    @abc.abstractmethod
    def stochastic_layers(self, batch: Tensor) -> tuple[Tensor, list[LogitsLayer]]:
        """First layer's logits `[B, D_1]` and the maps `[K, B, D_l] -> [K, B, D_{l+1}]` below it."""

    @abc.abstractmethod
    def objective(self, batch: Tensor, samples: list[Tensor], logits: list[Tensor]) -> Tensor:
        """`f`: per-layer samples `[K, B, D_l]` and detached float32 logits (`[B, D_1]` or
        `[K, B, D_l]`, broadcastable) -> `[K, B]`. Its mean is the ELBO; its log-mean-exp
        over samples is the multi-sample bound."""

    def parameter_groups(self) -> list[dict]:
        """Optimizer parameter groups of the model (the estimator's are added by the base)."""
        return [{"params": [p for n, p in self.named_parameters() if not n.startswith("estimator.")], "lr": self.lr}]

    def images_for_logging(self, batch: Tensor) -> dict[str, Tensor]:
        """Named image batches `[N, H * W]` in [0, 1] for TensorBoard; none by default."""
        return {}

    # --- training ------------------------------------------------------------------

    def setup(self, stage: str) -> None:
        """Check that the model's `input_size` (if it has one) matches the datamodule's."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        check_input_size(getattr(self, "input_size", None), getattr(datamodule, "input_size", None))

    def check_estimator(self, n_layers: int) -> None:
        """Call from a subclass's `__init__` with the number of stochastic layers: fail at
        configuration time if the estimator cannot train them, else let it create its per-layer
        learned state (before any optimizer exists or checkpoint is loaded)."""
        self.estimator.prepare_layers(n_layers)
        self.n_stochastic_layers = n_layers

    def estimate(self, batch: Tensor) -> EstimatorOutput:
        """One estimator call on `batch`: the loss, f values and samples."""
        first_logits, layers = self.stochastic_layers(batch)
        return self.estimator.chain(first_logits, layers, partial(self.objective, batch))

    def training_loss(self, batch: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The estimator's loss on `batch` (a scalar) and the training scalars: `train/elbo` (the
        mean of f) and, for the multi-sample objective, `train/bound` (the batch mean of the
        K-sample bound trained); what `compile=True` compiles."""
        out = self.estimate(batch)
        scalars = {"train/elbo": out.f_values.mean()}
        if self.training_objective != "elbo":
            scalars["train/bound"] = -out.loss.detach()  # the loss's value is minus that bound (EstimatorOutput)
        return out.loss, scalars

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        """The estimator's loss; no host synchronisation except on logging steps (the ELBO's
        finiteness is tracked on the device and checked when the scalars are written)."""
        if self.compile and self._compiled_loss is None:
            self._compiled_loss = torch.compile(self.training_loss, mode=self.compile_mode, dynamic=False)
        with deferred_finite_check():
            loss, scalars = (self._compiled_loss or self.training_loss)(batch)
        self._track_divergence(scalars["train/elbo"])
        state = {f"estimator/{name}": value for name, value in self.estimator.logged_state().items()}
        self.log_training_scalars({**scalars, **state}, batch_idx)
        return loss

    def _track_divergence(self, elbo: Tensor) -> None:
        """Remember, on the device, the first training step whose ELBO estimate (the mean of f) is
        nan or inf: `check_divergence` reads it without a host synchronisation on every step."""
        first = self._first_nonfinite_step
        if first is None or first.device != elbo.device:
            first = torch.full((), -1, dtype=torch.long, device=elbo.device)
        self._first_nonfinite_step = torch.where(~torch.isfinite(elbo.detach()) & (first < 0), self.global_step, first)

    def check_divergence(self, step: int | None = None) -> None:
        """Raise NonFiniteObjectiveError naming the first step whose objective was not finite, if any
        (`step`: that step as already read from the device, -1 for none)."""
        if step is None:
            step = -1 if self._first_nonfinite_step is None else int(self._first_nonfinite_step)
        if step >= 0:
            raise NonFiniteObjectiveError(
                f"training diverged at step {step}: f returned non-finite values (nan or inf). Try a lower "
                "learning rate (--model.lr), gradient clipping (--trainer.gradient_clip_val 1.0), or another seed; "
                "resume from an earlier checkpoint with --ckpt_path"
            )

    def on_train_epoch_end(self) -> None:
        self.check_divergence()

    def log_training_scalars(self, scalars: dict[str, Tensor], batch_idx: int) -> None:
        """Per-step training scalars: put in `trainer.callback_metrics` on every batch, and on
        every `log_every_n_steps`-th optimizer step written to the loggers and shown on the
        progress bar (with gradient accumulation, once per optimizer step).

        This replaces `self.log` on the training hot path: Lightning's per-call bookkeeping
        costs about 2 ms on CPU, as much as a whole step of the linear VAE
        (benchmarks/fit_overhead.py). Training scalars need no reduction across processes:
        each rank's are its own and rank 0's loggers write them.
        """
        trainer = self._trainer
        if trainer is None:
            return
        values = {name: value.detach().float() for name, value in scalars.items()}
        trainer.callback_metrics.update(values)
        every = trainer.log_every_n_steps
        if not every or not completes_optimizer_step(trainer, batch_idx) or (trainer.global_step + 1) % every:
            return
        # One host synchronisation for all of them and the divergence check: a single copy to the host.
        *read, step = torch.stack([value.double() for value in [*values.values(), self._first_nonfinite_step]]).tolist()
        self.check_divergence(int(step))
        numbers = dict(zip(values, read))
        write_scalars(trainer, numbers, trainer.global_step)
        trainer.progress_bar_metrics.update({k: v for k, v in numbers.items() if k.startswith("train/")})

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of `q(b | x)` whose gradient variance the papers plot: every trainable
        parameter under `self.encoder` (a model without one overrides this)."""
        return [p for name, p in self.named_parameters() if name.startswith("encoder.") and p.requires_grad]

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """One Adam over the model's `parameter_groups()` and a group for the estimator's own
        parameters (at the estimator's rate, else the model's). Fused Adam (one kernel for all
        parameters) where torch has it for the parameters' device, else the multi-tensor one."""
        groups = self.parameter_groups()
        grouped = {id(p) for group in groups for p in group["params"]}
        left_out = [n for n, p in self.named_parameters()
                    if p.requires_grad and not n.startswith("estimator.") and id(p) not in grouped]
        if left_out:
            raise ValueError(f"parameter_groups() leaves out trainable parameters {left_out}: add them to a group")
        estimator_params = list(self.estimator.parameters())
        if estimator_params:
            groups.append({"params": estimator_params, "lr": self.estimator.lr or self.lr, "name": "estimator"})
        params = [p for group in groups for p in group["params"]]
        fused = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float64) for p in params)
        return torch.optim.Adam(groups, fused=True) if fused else torch.optim.Adam(groups, foreach=True)

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        """Drop the gradients (`zero_grad(set_to_none=True)`, Lightning's default), without the
        profiler and compiler wrappers of `Optimizer.zero_grad` (about 2% of a linear VAE's step)."""
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad = None

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Clip the model's gradients only (`--trainer.gradient_clip_val`): the estimator's own
        parameters (the double-CV alpha) descend a different objective, on another scale."""
        if not gradient_clip_val:
            return
        params = [p for group in self.parameter_groups() for p in group["params"] if p.grad is not None]
        if gradient_clip_algorithm == "value":
            nn.utils.clip_grad_value_(params, gradient_clip_val)
        else:
            nn.utils.clip_grad_norm_(params, gradient_clip_val)

    # --- evaluation ----------------------------------------------------------------

    @torch.no_grad()
    def bounds(self, batch: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
        """ELBO and `n_samples`-sample bound per example, `[B]` each, float32.

        Samples are drawn a chunk at a time and combined with a running
        log-sum-exp, so memory does not grow with `n_samples`. Runs in float32 even
        under mixed precision (bf16 rounding moves a 1000-sample bound by tenths of a nat).
        """
        with torch.autocast(device_type=batch.device.type, enabled=False):  # bounds in float32
            return self._bounds(batch.float(), n_samples)

    def _bounds(self, batch: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
        first_logits, layers = self.stochastic_layers(batch)
        total = torch.zeros(first_logits.shape[0], device=first_logits.device)
        log_sum = torch.full_like(total, -math.inf)
        size = self.eval_chunk or max(1, (EVAL_ROWS if batch.device.type == "cpu" else 16 * EVAL_ROWS) // batch.shape[0])
        for start in range(0, n_samples, size):
            chunk = min(size, n_samples - start)
            chain = sample_chain(first_logits, layers, chunk)
            log_weights = self.objective(batch, chain.samples, chain.detached_logits()).float()
            total += log_weights.sum(0)
            log_sum = torch.logaddexp(log_sum, torch.logsumexp(log_weights, 0))
        return total / n_samples, log_sum - math.log(n_samples)

    def _evaluate(self, stage: str, batch: Tensor, n_samples: int) -> None:
        elbo, log_likelihood = self.bounds(batch, n_samples)
        for name, values in (("elbo", elbo), ("log_likelihood", log_likelihood)):
            metric = self.eval_metrics[f"{stage}_{name}"]
            metric.update(values)
            self.log(f"{stage}/{name}", metric, prog_bar=name == "log_likelihood", batch_size=values.shape[0])

    def validation_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate("val", batch, self.val_samples)

    def test_step(self, batch: Tensor, batch_idx: int) -> None:
        self._evaluate("test", batch, self.test_samples)

    def predict_step(self, batch: Tensor, batch_idx: int) -> dict[str, Tensor]:
        """Per-example scores `[B]`: `elbo` and `log_likelihood` (the `test_samples` bound)."""
        elbo, log_likelihood = self.bounds(batch, self.test_samples)
        return {"elbo": elbo, "log_likelihood": log_likelihood}

    def on_test_epoch_end(self) -> None:
        self.log("test/nll", -self.eval_metrics["test_log_likelihood"].compute())

    # --- checkpoints ---------------------------------------------------------------

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=None,
                             weights_only: bool = True, **kwargs):
        """Lightning's `load_from_checkpoint`, reading weights only (a checkpoint's pickle never runs
        code, whatever torch's default), and only if the model and estimator classes it names are
        already imported (`checkpoints.check_class_paths`). `weights_only=False` loads a checkpoint
        you trust as Lightning does."""
        if weights_only:
            check_class_paths(read_checkpoint(checkpoint_path), cls, Estimator, f"checkpoint {checkpoint_path}")
        return super().load_from_checkpoint(checkpoint_path, map_location=map_location, hparams_file=hparams_file,
                                            strict=strict, weights_only=weights_only, **kwargs)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another architecture; fit the estimator's state to this model's
        estimator (`checkpoints.check_checkpoint_fits`, `checkpoints.fit_estimator_state`)."""
        check_checkpoint_fits(self, checkpoint)
        fit_estimator_state(self, checkpoint)


def check_objective(estimator: Estimator, training_objective: str) -> None:
    """Raise ConfigurationError (one line) unless `estimator` estimates the gradient of `training_objective`."""
    own = estimator.training_objective
    if own == training_objective:
        return
    name = type(estimator).__name__
    raise ConfigurationError(
        f"{name} estimates the gradient of {OBJECTIVE_NAMES[own]} and the model trains on "
        f"{OBJECTIVE_NAMES[training_objective]} (training_objective={training_objective!r}): set "
        f"training_objective={own!r} (--model.training_objective {own}), or choose an estimator of "
        f"{OBJECTIVE_NAMES[training_objective]}: {', '.join(estimator_names(training_objective))}"
    )
