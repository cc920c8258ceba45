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
`Estimator`), the loss returned to Lightning's automatic optimization (so DDP,
mixed precision, clipping and accumulation work as usual), logging, and the
estimator-independent evaluation: `elbo` (mean log weight) and
`log_likelihood`, the S-sample bound `log 1/S sum_s exp(f_s)` (S = 100 for
validation, 1000 for test), computed in chunks of `eval_chunk` samples.
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
from discrete_vi.checks import CheckpointError, ConfigurationError, check_choice, check_count, check_positive
from discrete_vi.estimators import RLOO, Estimator, EstimatorOutput
from discrete_vi.estimators.base import check_finite_objective
from discrete_vi.scalars import completes_optimizer_step, write_scalars


CompileMode = Literal["default", "reduce-overhead", "max-autotune"]


class BinaryLatentModule(pl.LightningModule, abc.ABC):
    """Base for models with binary stochastic layers trained by a gradient estimator.

    The constructor's arguments (the estimator's included) are saved in
    checkpoints, so `Model.load_from_checkpoint(path)` rebuilds the model.

    Args:
        estimator: the gradient estimator (default `RLOO(n_samples=2)`).
        lr: Adam learning rate of the model's parameters (subclasses may split it by part).
        val_samples: S of the S-sample bound at validation.
        test_samples: S of the S-sample bound at test and predict.
        eval_chunk: samples evaluated at once during evaluation (bounds memory).
        compile: compile the training loss (the model's objective, the sampling and the
            estimator's arithmetic, forward and backward) with torch.compile; compiled on the
            first training step (tens of seconds on a CPU), then reused without recompiling.
        compile_mode: torch.compile's mode: "default", "reduce-overhead" (CUDA graphs on a GPU)
            or "max-autotune".
    """

    def __init__(
        self,
        estimator: Estimator | None = None,
        lr: float = 1e-3,
        val_samples: int = 100,
        test_samples: int = 1000,
        eval_chunk: int = 100,
        compile: bool = False,
        compile_mode: CompileMode = "default",
    ):
        super().__init__()
        if estimator is None:
            estimator = RLOO(n_samples=2)
        if not isinstance(estimator, Estimator):
            raise ConfigurationError(f"estimator must be an Estimator (e.g. RLOO, DisARM), got {type(estimator).__name__}")
        self.estimator = estimator
        self.save_hyperparameters(ignore=["estimator"])
        self.hparams["estimator"] = estimator.config()
        if "_class_path" not in self.hparams:  # built in Python: record what the command line records
            self.hparams["_class_path"] = f"{type(self).__module__}.{type(self).__qualname__}"
            self.hparams["_instantiator"] = "pytorch_lightning.cli.instantiate_module"
        self.lr = check_positive("lr", lr)
        self.val_samples = check_count("val_samples", val_samples, 1)
        self.test_samples = check_count("test_samples", test_samples, 1)
        self.eval_chunk = check_count("eval_chunk", eval_chunk, 1)
        self.compile, self.compile_mode = compile, check_choice("compile_mode", compile_mode, get_args(CompileMode))
        if compile and estimator.compile_refusal:
            raise ConfigurationError(f"{type(estimator).__name__} cannot be compiled: {estimator.compile_refusal}")
        self._compiled_loss = None
        self.eval_metrics = nn.ModuleDict(
            {f"{stage}_{name}": MeanMetric() for stage in ("val", "test") for name in ("elbo", "log_likelihood")}
        )

    def __setattr__(self, name: str, value) -> None:
        # Lightning sets `_current_fx_name` around each of the ~40 hook calls of a training step;
        # nn.Module.__setattr__'s parameter/buffer/module checks cost more than the rest of that call.
        if name == "_current_fx_name":
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
        data_size = getattr(datamodule, "input_size", None)
        model_size = getattr(self, "input_size", None)
        if data_size is not None and model_size is not None and data_size != model_size:
            raise ConfigurationError(
                f"model input_size is {model_size} but the data has {data_size} pixels per image; "
                f"set the model's input_size to {data_size}"
            )

    def check_estimator(self, n_layers: int) -> None:
        """Call from a subclass's `__init__`: fail at configuration time if the estimator cannot train it."""
        self.estimator.check_layers(n_layers)

    def estimate(self, batch: Tensor) -> EstimatorOutput:
        """One estimator call on `batch`: the loss, f values and samples."""
        first_logits, layers = self.stochastic_layers(batch)
        return self._call_estimator(batch, first_logits, layers)

    def _call_estimator(self, batch: Tensor, first_logits: Tensor, layers: list[LogitsLayer]) -> EstimatorOutput:
        return self.estimator.chain(first_logits, layers, partial(self.objective, batch))

    def training_loss(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """The estimator's loss on `batch` (a scalar) and the ELBO estimate (the mean of f); what
        `compile=True` compiles."""
        out = self.estimate(batch)
        return out.loss, out.f_values.mean()

    def training_step(self, batch: Tensor, batch_idx: int) -> Tensor:
        if self.compile:
            if self._compiled_loss is None:
                self._compiled_loss = torch.compile(self.training_loss, mode=self.compile_mode, dynamic=False)
            loss, elbo = self._compiled_loss(batch)
            check_finite_objective(elbo)  # the compiled graph has no host sync: check here
        else:
            loss, elbo = self.training_loss(batch)
        state = {f"estimator/{name}": value for name, value in self.estimator.logged_state().items()}
        self.log_training_scalars({"train/elbo": elbo, **state}, batch_idx)
        return loss

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
        numbers = {name: value.item() for name, value in values.items()}
        write_scalars(trainer, numbers, trainer.global_step)
        trainer.progress_bar_metrics.update({k: v for k, v in numbers.items() if k.startswith("train/")})

    def gradient_variance(self, batch: Tensor, n_draws: int) -> Tensor:
        """Variance of the estimate of `d E[f] / d phi_1` (first-layer logits) over `n_draws`
        independent draws at the current parameters, averaged over units and examples.

        The batch is repeated `n_draws` times in one estimator call (eval mode, so no
        estimator state changes); no parameter gradient is touched.
        """
        repeated = batch.repeat(n_draws, *([1] * (batch.dim() - 1)))
        was_training = self.estimator.training
        self.estimator.eval()
        try:
            with torch.enable_grad():
                first_logits, layers = self.stochastic_layers(repeated)
                leaf = first_logits.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self._call_estimator(repeated, leaf, layers).loss, leaf)
        finally:
            self.estimator.train(was_training)
        estimates = -grad.float() * leaf.shape[0]
        return estimates.view(n_draws, batch.shape[0], -1).var(0).mean()

    def encoder_parameters(self) -> list[nn.Parameter]:
        """The parameters of `q(b | x)` whose gradient variance the papers plot: every trainable
        parameter under `self.encoder` (a model without one overrides this)."""
        return [p for name, p in self.named_parameters() if name.startswith("encoder.") and p.requires_grad]

    def encoder_gradient_variance(
        self, batch: Tensor, n_draws: int, estimator: Estimator | None = None, chunk: int = 64
    ) -> Tensor:
        """Variance of the estimate of `d ELBO / d theta` for the encoder's parameters `theta`
        (`encoder_parameters()`), as the papers plot it: `n_draws` independent estimates of the
        gradient of the batch-mean ELBO on `batch` at the current parameters, their variance per
        parameter (unbiased, over draws), averaged over parameters. Units: (nats / unit of theta)^2.

        `estimator` (default: the model's) is called in eval mode, so its learned state does not
        change; no `.grad` is touched. With one stochastic layer the draws are batched: one
        estimator call on the batch repeated `n_draws` times gives each draw's gradient for the
        logits, chained to `theta` by one batched vector-Jacobian product (f sees detached
        logits, so theta reaches the loss only through the logits). With several layers each
        draw is its own estimator call. `chunk` draws are batched at once (memory: chunk x parameters).
        """
        estimator = self.estimator if estimator is None else estimator
        params = self.encoder_parameters()
        if not params:
            raise ConfigurationError(f"{type(self).__name__} has no encoder parameters (encoder_parameters() is empty)")
        was_training = estimator.training
        estimator.eval()
        try:
            with torch.enable_grad():
                first_logits, layers = self.stochastic_layers(batch)
                if layers:
                    draws = [self._draw_gradient(estimator, batch, first_logits, layers, params) for _ in range(n_draws)]
                    estimates = torch.stack(draws)
                    return estimates.var(0).mean()
                total, total_sq = 0.0, 0.0
                for start in range(0, n_draws, chunk):  # memory: chunk x n_params
                    draws = min(chunk, n_draws - start)
                    repeated = batch.repeat(draws, *([1] * (batch.dim() - 1)))
                    leaf = first_logits.detach().repeat(draws, 1).requires_grad_(True)
                    loss = estimator.chain(leaf, [], partial(self.objective, repeated)).loss
                    (grad,) = torch.autograd.grad(loss, leaf)
                    per_draw = (grad * draws).view(draws, *first_logits.shape).to(first_logits.dtype)
                    grads = torch.autograd.grad(first_logits, params, grad_outputs=per_draw, is_grads_batched=True,
                                                retain_graph=True)
                    estimates = -torch.cat([g.reshape(draws, -1).double() for g in grads], 1)
                    total, total_sq = total + estimates.sum(0), total_sq + estimates.square().sum(0)
        finally:
            estimator.train(was_training)
        variance = (total_sq - total.square() / n_draws) / (n_draws - 1)  # unbiased, per parameter
        return variance.mean().float()

    def _draw_gradient(self, estimator, batch, first_logits, layers, params) -> Tensor:
        """One estimate of `d ELBO / d theta`, flattened `[n_params]` (one estimator call)."""
        loss = estimator.chain(first_logits, layers, partial(self.objective, batch)).loss
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        return -torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).float() for g, p in zip(grads, params)])

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

        Samples are drawn `eval_chunk` at a time and combined with a running
        log-sum-exp, so memory does not grow with `n_samples`. Runs in float32 even
        under mixed precision (bf16 rounding moves a 1000-sample bound by tenths of a nat).
        """
        with torch.autocast(device_type=batch.device.type, enabled=False):  # bounds in float32
            return self._bounds(batch.float(), n_samples)

    def _bounds(self, batch: Tensor, n_samples: int) -> tuple[Tensor, Tensor]:
        first_logits, layers = self.stochastic_layers(batch)
        total = torch.zeros(first_logits.shape[0], device=first_logits.device)
        log_sum = torch.full_like(total, -math.inf)
        for start in range(0, n_samples, self.eval_chunk):
            chunk = min(self.eval_chunk, n_samples - start)
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

    def check_checkpoint_fits(self, checkpoint: dict, source: str = "the checkpoint") -> None:
        """Raise CheckpointError unless the checkpoint's model weights (not the estimator's state)
        have exactly this model's names and shapes."""
        state = checkpoint.get("state_dict", {})
        own = {k: v for k, v in self.state_dict().items() if not k.startswith("estimator.")}
        theirs = {k: v for k, v in state.items() if not k.startswith("estimator.")}
        problems = [f"{k} is missing" for k in own if k not in theirs]
        problems += [f"{k} is not in this model" for k in theirs if k not in own]
        problems += [
            f"{k} has shape {list(theirs[k].shape)} there, {list(v.shape)} here"
            for k, v in own.items() if k in theirs and tuple(theirs[k].shape) != tuple(v.shape)
        ]
        if problems:
            more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
            saved = checkpoint.get("hyper_parameters", {}).get("_class_path", "another model")
            raise CheckpointError(
                f"{source} holds a model of another architecture ({saved}): {'; '.join(problems[:2])}{more}. "
                "Give no model options to use the checkpoint's own configuration, or the same ones as its run"
            )

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Refuse a checkpoint of another architecture (CheckpointError). Evaluating a checkpoint does
        not need its estimator: drop estimator state that the configured estimator does not have
        (e.g. a double-CV alpha when testing with RLOO)."""
        self.check_checkpoint_fits(checkpoint)
        state = checkpoint.get("state_dict", {})
        own = {f"estimator.{k}": v for k, v in self.estimator.state_dict().items()}
        foreign = sorted(k for k in state if k.startswith("estimator.") and (k not in own or state[k].shape != own[k].shape))
        missing = sorted(k for k in own if k not in state or k in foreign)
        if foreign or missing:
            for key in foreign:
                del state[key]
            for key in missing:
                state[key] = own[key]
            pl.utilities.rank_zero_warn(
                f"the checkpoint's estimator state does not fit {type(self.estimator).__name__}: "
                f"ignored {foreign or 'nothing'}, kept as initialised {missing or 'nothing'}. "
                "Evaluation does not use the estimator; to resume training, configure the same "
                "model.estimator as the run that saved the checkpoint."
            )
