"""Run by test_ddp.py as `python tests/ddp_check.py OUT_DIR`: a 2-process CPU DDP fit of a
double-CV VAE whose callback records, per rank, the batches it saw and its final parameters."""

import sys
from pathlib import Path

import pytorch_lightning as pl
import torch

from discrete_vi.cli import run_cli


class RecordRank(pl.Callback):
    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.batch_sums: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batch_sums.append(batch.sum().item())

    def on_train_end(self, trainer, pl_module):
        record = {
            "batch_sums": self.batch_sums,
            "alpha": pl_module.estimator.alpha.detach().clone(),
            "encoder": pl_module.encoder[0].weight.detach().clone(),
            "world_size": trainer.world_size,
        }
        torch.save(record, self.out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    out = sys.argv[1]
    run_cli([
        "fit", "--seed_everything", "0",
        "--model", "BinaryVAE", "--model.latent_sizes", "[30]", "--model.estimator", "RLOODoubleCV",
        "--model.estimator.alpha_lr", "0.05",
        "--model.val_samples", "5", "--data.batch_size", "25",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.limit_val_batches", "2",
        "--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
        "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", out,
        "--trainer.callbacks+=ddp_check.RecordRank", f"--trainer.callbacks.out_dir={out}",
    ])
