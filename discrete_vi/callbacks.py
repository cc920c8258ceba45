"""Callbacks that put more than scalars in TensorBoard: pictures and gradient variance.

They only log, so they do their work on the global rank 0 only (where the loggers write).
"""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from discrete_vi.checks import check_count
from discrete_vi.scalars import completes_optimizer_step, write_scalars


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
    estimator's gradient for the first layer's logits over `n_draws` draws on the current
    batch at the current parameters (`BinaryLatentModule.gradient_variance`).

    Args:
        every_n_steps: optimizer steps between measurements.
        n_draws: independent estimates per measurement (>= 2).
    """

    def __init__(self, every_n_steps: int = 100, n_draws: int = 8):
        self.every_n_steps = check_count("every_n_steps", every_n_steps, 1)
        self.n_draws = check_count("n_draws", n_draws, 2)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if not trainer.is_global_zero or not completes_optimizer_step(trainer, batch_idx):
            return
        if trainer.global_step % self.every_n_steps == 0:
            variance = pl_module.gradient_variance(batch, self.n_draws).item()
            write_scalars(trainer, {"train/grad_variance": variance}, trainer.global_step)
