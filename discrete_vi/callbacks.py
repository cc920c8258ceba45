"""Callbacks that put more than scalars in TensorBoard: pictures and gradient variance."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from discrete_vi.estimators.base import check_count
from discrete_vi.models.base import completes_optimizer_step, write_scalars


def _tensorboard(trainer: pl.Trainer):
    """The SummaryWriter of the trainer's TensorBoard logger, or None."""
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class ImageLogger(pl.Callback):
    """After each validation epoch, log the model's `images_for_logging` of the first
    `n_images` validation images (VAE: inputs, reconstructions, prior samples)."""

    def __init__(self, n_images: int = 16):
        self.n_images = check_count("n_images", n_images, 1)
        self._batch: torch.Tensor | None = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if batch_idx == 0:
            self._batch = batch[: self.n_images]

    def on_validation_epoch_end(self, trainer, pl_module):
        writer = _tensorboard(trainer)
        if writer is None or self._batch is None or trainer.sanity_checking:
            return
        side = int(math.isqrt(self._batch.shape[-1]))
        shape = getattr(trainer.datamodule, "image_shape", (side, side)) if trainer.datamodule else (side, side)
        for name, images in pl_module.images_for_logging(self._batch).items():
            pictures = images.detach().float().clamp(0, 1).reshape(-1, 1, *shape).cpu()
            writer.add_images(f"images/{name}", pictures, trainer.global_step)


class GradientVarianceMonitor(pl.Callback):
    """Every `every_n_steps` training steps, log `train/grad_variance`: the variance of the
    estimator's gradient for the first layer's logits over `n_draws` draws on the current
    batch at the current parameters (`BinaryLatentModule.gradient_variance`)."""

    def __init__(self, every_n_steps: int = 100, n_draws: int = 8):
        self.every_n_steps = check_count("every_n_steps", every_n_steps, 1)
        self.n_draws = check_count("n_draws", n_draws, 2)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if completes_optimizer_step(trainer, batch_idx) and trainer.global_step % self.every_n_steps == 0:
            variance = pl_module.gradient_variance(batch, self.n_draws).item()
            write_scalars(trainer, {"train/grad_variance": variance}, trainer.global_step)
