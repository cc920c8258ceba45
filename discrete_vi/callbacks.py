"""The package's callbacks: pictures and gradient variance in TensorBoard (they only log, so
they work on the global rank 0 only, where the loggers write), and `predict`'s CSV writer.
"""

from __future__ import annotations

import math
import statistics
import time
from functools import partial
from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.accelerators import CPUAccelerator
from pytorch_lightning.callbacks import BasePredictionWriter
from pytorch_lightning.loggers import TensorBoardLogger

from discrete_vi.checks import ConfigurationError, check_choice, check_count, check_positive
from discrete_vi.console import say
from discrete_vi.diagnostics import encoder_gradient_variance, logit_gradient_variance
from discrete_vi.estimators import estimator_labels, estimators_at
from discrete_vi.scalars import completes_optimizer_step, write_scalars

DEFAULT_BASKETS = {"elbo": ("RLOO", "RLOODoubleCV", "DisARM"), "multi_sample": ("VIMCO", "LocalDisARM")}
"""`EstimatorVarianceBasket`'s estimators when none are given, by the model's training objective."""


def _tensorboard(trainer: pl.Trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ImageLogger(pl.Callback):
    """After each validation epoch, log the model's `images_for_logging` of the first
    validation images (VAE: inputs, reconstructions, prior samples).

    Args:
        n_images: how many validation images to show.
    """

    def __init__(self, n_images: int = 16):
        self.n_images = check_count("n_images", n_images, 1)
        self._batch: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0 and trainer.is_global_zero:
            self._batch = batch[: self.n_images]

    def on_validation_epoch_end(self, trainer, pl_module):
        writer = _tensorboard(trainer)
        if writer is None or self._batch is None or trainer.sanity_checking or not trainer.is_global_zero:
            return
        side = int(math.isqrt(self._batch.shape[-1]))
        shape = getattr(trainer.datamodule, "image_shape", (side, side)) if trainer.datamodule else (side, side)
        for name, images in pl_module.images_for_logging(self._batch).items():
            pictures = images.detach().float().clamp(0, 1).reshape(-1, 1, *shape).cpu()
            writer.add_images(f"images/{name}", pictures, trainer.global_step)


class GradientVarianceMonitor(pl.Callback):
    """Every `every_n_steps` training steps, log `train/grad_variance`: the variance of the
    model's estimator over `n_draws` independent draws on the current batch at the current
    parameters.

    `quantity="encoder"` (default) measures it as the papers plot it: for the gradient of the
    batch-mean training objective (the ELBO, or the K-sample bound of a multi-sample model)
    w.r.t. the encoder's parameters, averaged over parameters
    (`diagnostics.encoder_gradient_variance`); `quantity="logits"` for the per-example
    gradient w.r.t. the first layer's logits, averaged over units and examples
    (`diagnostics.logit_gradient_variance`).

    Args:
        every_n_steps: optimizer steps between measurements.
        n_draws: independent estimates per measurement (>= 2).
        quantity: "encoder" or "logits".
    """

    def __init__(self, every_n_steps: int = 100, n_draws: int = 8, quantity: Literal["encoder", "logits"] = "encoder"):
        self.every_n_steps = check_count("every_n_steps", every_n_steps, 1)
        self.n_draws = check_count("n_draws", n_draws, 2)
        self.quantity = check_choice("quantity", quantity, ("encoder", "logits"))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or not completes_optimizer_step(trainer, batch_idx):
            return
        if trainer.global_step % self.every_n_steps == 0:
            measure = encoder_gradient_variance if self.quantity == "encoder" else logit_gradient_variance
            variance = measure(pl_module, batch, self.n_draws).item()
            write_scalars(trainer, {"train/grad_variance": variance}, trainer.global_step)


class EstimatorVarianceBasket(pl.Callback):
    """Every `every_n_steps` training steps, log `variance/<label>` for each estimator of a
    basket: the encoder-parameter gradient variance (`encoder_gradient_variance`) of each, at
    the current parameters of this one run, on the same batch, with as many evaluations of f
    per example as the model's own estimator. This compares estimators without the confound
    of different training trajectories (the DisARM paper's protocol).

    Labels are those of `discrete_vi.estimators.estimator_labels` (e.g. RLOO, RLOODoubleCV,
    ARM, DisARM, REBAR, Reinforce, Reinforce+EMA; VIMCO, LocalDisARM), all estimating the
    gradient of the model's training objective (a basket with another is refused before
    training); one that cannot run at the model's cost (DisARM at an odd one, REBAR at one that
    is not a multiple of 3) is left out with a note. The default basket is RLOO, RLOODoubleCV,
    DisARM for the ELBO and VIMCO, LocalDisARM for the multi-sample bound (at equal evaluations
    VIMCO's bound has 2K samples where LocalDisARM's has K, the DisARM paper's comparison). The
    basket entry of the model's own estimator class is the model's estimator itself (its
    learned state as trained). Any other entry with learned state (the double-CV alpha, a
    moving-average baseline) is a copy of its own that learns it at the current parameters
    before each measurement: `adapt_steps` updates on the current batch before the first (Adam
    at the estimator's rate times `adapt_lr_scale` for its parameters), `readapt_steps` before
    each later one, continuing from the previous measurement's state (which follows the slowly
    moving model: about a fifth of the first adaptation's cost, the largest part of the basket's).

    Args:
        estimators: labels of the basket (default: by the model's training objective, above).
        every_n_steps: optimizer steps between measurements.
        n_draws: independent estimates per estimator and measurement (>= 2).
        adapt_steps: state updates before the first measurement, for estimators with learned state.
        readapt_steps: state updates before each later measurement (default: adapt_steps // 5).
        adapt_lr_scale: multiplies the estimator's own learning rate while adapting.
    """

    def __init__(
        self,
        estimators: list[str] | None = None,
        every_n_steps: int = 1000,
        n_draws: int = 8,
        adapt_steps: int = 100,
        readapt_steps: int | None = None,
        adapt_lr_scale: float = 10.0,
    ):
        available = list(estimator_labels())
        unknown = [name for name in estimators if name not in available] if estimators is not None else []
        if unknown or estimators == []:
            raise ConfigurationError(
                f"unknown basket estimator(s) {unknown or '(none given)'}; choose from {', '.join(available)}"
            )
        self.labels = None if estimators is None else list(estimators)
        self.every_n_steps = check_count("every_n_steps", every_n_steps, 1)
        self.n_draws = check_count("n_draws", n_draws, 2)
        self.adapt_steps = check_count("adapt_steps", adapt_steps, 0)
        self.readapt_steps = check_count("readapt_steps", adapt_steps // 5 if readapt_steps is None else readapt_steps, 0)
        self.adapt_lr_scale = check_positive("adapt_lr_scale", adapt_lr_scale)
        self._basket: dict[str, torch.nn.Module] | None = None
        self._optimizers: dict[str, torch.optim.Optimizer] = {}

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.check_objective(pl_module)

    def check_objective(self, pl_module) -> None:
        """Raise ConfigurationError unless every basket estimator estimates the gradient of the
        model's training objective (choosing the default basket of that objective if none was given)."""
        objective = pl_module.training_objective
        if self.labels is None:
            self.labels = list(DEFAULT_BASKETS[objective])
        fitting = estimator_labels(objective)
        others = [label for label in self.labels if label not in fitting]
        if others:
            raise ConfigurationError(
                f"basket estimator(s) {', '.join(others)} estimate the gradient of another objective than the "
                f"model's training objective ({objective!r}); choose from {', '.join(fitting)}"
            )

    def _build(self, pl_module) -> dict:
        self.check_objective(pl_module)
        own = pl_module.estimator
        made = estimators_at(own.n_evaluations, pl_module.training_objective)
        basket = {}
        for label in self.labels:
            if label not in made:
                say(f"variance basket: {label} cannot run at {own.n_evaluations} evaluations of f (the model's estimator's cost); left out")
                continue
            candidate = made[label]
            same = type(candidate) is type(own) and candidate.config() == own.config()
            candidate.prepare_layers(pl_module.n_stochastic_layers)  # per-layer state before its optimizer
            basket[label] = own if same else candidate.to(pl_module.device)
            params = list(candidate.parameters())
            if not same and params:
                self._optimizers[label] = torch.optim.Adam(params, lr=(candidate.lr or pl_module.lr) * self.adapt_lr_scale)
        return basket

    def _adapt(self, pl_module, label: str, estimator, batch: torch.Tensor, steps: int) -> None:
        """Learn `estimator`'s state at the current model parameters on `batch` (model untouched)."""
        optimizer = self._optimizers.get(label)
        has_buffers = any(True for _ in estimator.buffers())
        if optimizer is None and not has_buffers:
            return
        estimator.train()
        with torch.enable_grad():
            first_logits, layers = pl_module.stochastic_layers(batch)
            leaf = first_logits.detach().requires_grad_(True)
            for _ in range(steps):
                loss = estimator.chain(leaf, layers, partial(pl_module.objective, batch)).loss
                if optimizer is not None:
                    optimizer.zero_grad()
                    grads = torch.autograd.grad(loss, list(estimator.parameters()), allow_unused=True)
                    for param, grad in zip(estimator.parameters(), grads):
                        param.grad = grad
                    optimizer.step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or not completes_optimizer_step(trainer, batch_idx):
            return
        if trainer.global_step % self.every_n_steps:
            return
        values = {f"variance/{label}": value for label, value in self.measure(pl_module, batch).items()}
        write_scalars(trainer, values, trainer.global_step)

    def measure(self, pl_module, batch: torch.Tensor) -> dict[str, float]:
        """Label -> encoder-parameter gradient variance of each basket estimator, at the model's
        current parameters, on `batch` (after adapting learned state)."""
        steps = self.adapt_steps if self._basket is None else self.readapt_steps
        if self._basket is None:
            self._basket = self._build(pl_module)
        values = {}
        batch = batch.detach()
        for label, estimator in self._basket.items():
            if estimator is not pl_module.estimator:
                self._adapt(pl_module, label, estimator, batch, steps)
            values[label] = encoder_gradient_variance(pl_module, batch, self.n_draws, estimator).item()
        return values


class PredictionWriter(BasePredictionWriter):
    """Writes `predict`'s per-example scores to `predictions.csv` in the run's log folder
    (`predictions_rank<R>.csv` per process under DDP) and says where.

    Columns: `example` (position in the predicted split as this process saw it), then every
    score `predict_step` returns (`elbo`, `log_likelihood`, in nats).

    Args:
        output_dir: folder for the file (default: the trainer's log folder).
    """

    def __init__(self, output_dir: str | None = None):
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir
        self.path: Path | None = None

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        columns = {name: torch.cat([batch[name].float().cpu() for batch in batches]) for name in batches[0]}
        folder = Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        name = "predictions.csv" if trainer.world_size == 1 else f"predictions_rank{trainer.global_rank}.csv"
        self.path = folder / name
        partial_file = self.path.with_name(f".{name}.partial")
        with open(partial_file, "w") as file:
            file.write(",".join(["example", *columns]) + "\n")
            rows = torch.stack(list(columns.values()), 1).tolist()
            file.writelines(f"{i}," + ",".join(f"{v:.6f}" for v in row) + "\n" for i, row in enumerate(rows))
        partial_file.replace(self.path)
        say(f"predictions for {len(rows)} examples written to {self.path}")


class ThreadTuner(pl.Callback):
    """Keeps torch's CPU thread count at whichever of 1 and `max_threads` trains faster, as the
    machine's load changes (the default on CPU when no thread count is given; `threads.py`).

    Several threads help a step of small operations only while every thread has a core: beside
    other busy processes each parallel operation waits for a descheduled thread, and a step
    slows 10x or more, where one thread slows by its fair share. So the tuner times training
    steps (the batch, forward to optimizer step), and from time to time runs a few steps at the
    other count: it keeps the faster (by more than `tolerance`), gives up a trial whose first steps
    take over 3x the current median, tries again at once if steps become 1.5x slower than when the
    count was chosen, checks a switch with another trial `period` steps later (a noisy
    measurement is undone), and waits twice as long after each lost trial (up to `max_period`). The thread count changes the order of some floating-point sums, so runs
    are bitwise reproducible only with a fixed count (`--threads N`).

    Args:
        max_threads: the other thread count tried besides 1.
        warmup: steps before the first measurement.
        trial_steps: steps timed per measurement (median).
        period: steps before the trial that checks a switch.
        max_period: the longest wait between trials.
        tolerance: relative speed-up that a trial must show to switch.
    """

    def __init__(self, max_threads: int, warmup: int = 20, trial_steps: int = 8, period: int = 64,
                 max_period: int = 8192, tolerance: float = 0.1):
        self.counts = (max(1, max_threads), 1)
        self.warmup, self.trial_steps = warmup, trial_steps
        self.base_period, self.max_period, self.tolerance = period, max_period, tolerance
        self.period, self.next_trial, self.steps = period, warmup, 0
        self.current, self.baseline, self.trial = self.counts[0], None, None
        self.recent: list[float] = []
        self._start = 0.0
        self.active = True

    def setup(self, trainer, pl_module, stage):
        """Tune only where Lightning trains on the CPU (not on a GPU, whatever `accelerator` said)."""
        self.active = isinstance(trainer.accelerator, CPUAccelerator)

    def on_train_start(self, trainer, pl_module):
        if self.active:
            torch.set_num_threads(self.current)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not self.active:
            return
        seconds = time.perf_counter() - self._start
        self.steps += 1
        if self.steps <= self.warmup:
            return
        if self.trial is not None:
            self._trial_step(seconds)
            return
        self.recent = (self.recent + [seconds])[-self.trial_steps:]
        if len(self.recent) < self.trial_steps:
            return
        median = statistics.median(self.recent)
        if self.baseline is None:
            self.baseline = median
        if self.steps >= self.next_trial or median > 1.5 * self.baseline:  # due, or the machine got busier
            self.baseline, self.trial = median, []
            torch.set_num_threads(self._other())

    def _other(self) -> int:
        return self.counts[1] if self.current == self.counts[0] else self.counts[0]

    def _trial_step(self, seconds: float) -> None:
        self.trial.append(seconds)
        lost = len(self.trial) >= 2 and statistics.median(self.trial) > 3 * self.baseline
        if not lost and len(self.trial) < self.trial_steps:
            return
        won = not lost and statistics.median(self.trial) < (1 - self.tolerance) * self.baseline
        if won:
            self.current, self.period = self._other(), self.base_period
        else:
            self.period = min(2 * self.period, self.max_period)
        torch.set_num_threads(self.current)
        self.trial, self.recent, self.baseline = None, [], None
        self.next_trial = self.steps + self.period
