"""Writing training scalars to Lightning's loggers without `self.log`'s per-call cost."""

from __future__ import annotations

import pytorch_lightning as pl


def write_scalars(trainer: pl.Trainer, scalars: dict[str, float], step: int) -> None:
    """Write scalars straight to every logger of `trainer` (rank 0 only, as loggers do)."""
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)


def completes_optimizer_step(trainer: pl.Trainer, batch_idx: int) -> bool:
    """Whether training batch `batch_idx` is the last one of an optimizer step (gradient accumulation)."""
    return (batch_idx + 1) % trainer.accumulate_grad_batches == 0
