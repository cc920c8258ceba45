"""Throughput of `discrete-vi fit` on a GPU for the papers' protocol: the linear VAE
(784-200, RLOO K=2, batch 100, full MNIST), 10^6 steps with an evaluation (100-sample
bound on the 10,000 validation images) every 10^4 steps.

Runs `--steps` training steps (default 20,000, two evaluations included) with each
configuration asked for, and prints steps/s over the timed window (after `--warmup`
steps, compilation excluded), the evaluation's share, and the projected wall time of
the 10^6-step protocol. The target: at least 560 steps/s (10^6 steps in 30 minutes).

    python benchmarks/gpu_throughput.py --configs eager compiled compiled-cudagraphs bf16
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch

from discrete_vi.cli import run_cli

REPO = Path(__file__).resolve().parents[1]
PROTOCOL_STEPS, EVAL_EVERY = 1_000_000, 10_000
CONFIGS = {
    "eager": [],
    "compiled": ["--model.compile", "true"],
    "compiled-cudagraphs": ["--model.compile", "true", "--model.compile_mode", "reduce-overhead"],
    "bf16": ["--trainer.precision", "bf16-mixed"],
}


class WindowTimer(pl.Callback):
    """Wall time of training from step `warmup` on, and of the validations inside that window."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = None
        self.validation_seconds = 0.0
        self._validation_start = None

    def _now(self) -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.warmup and self.start is None:
            self.start = self._now()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.start is not None:
            self.end = self._now()

    def on_validation_start(self, trainer, pl_module):
        if self.start is not None and not trainer.sanity_checking:
            self._validation_start = self._now()

    def on_validation_end(self, trainer, pl_module):
        if self._validation_start is not None:
            self.validation_seconds += self._now() - self._validation_start
            self._validation_start = None


def run(config: list[str], data_root: Path, steps: int, warmup: int, workdir: Path) -> dict:
    timer = WindowTimer(warmup)
    args = [
        "--seed_everything", "0",
        "--model.estimator", "RLOO", "--model.estimator.n_samples", "2",
        "--model.latent_sizes", "[200]", "--model.network", "linear",
        "--data.dataset", "mnist", "--data.root", str(data_root), "--data.batch_size", "100",
        "--trainer.accelerator", "gpu", "--trainer.devices", "1",
        "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
        "--trainer.val_check_interval", str(EVAL_EVERY), "--trainer.check_val_every_n_epoch", "null",
        "--trainer.log_every_n_steps", "50",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.default_root_dir", str(workdir),
        *config,
    ]
    cli = run_cli(args, run=False)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    window = timer.end - timer.start
    timed_steps = steps - warmup
    return {"steps_per_s": timed_steps / window, "validation_share": timer.validation_seconds / window}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "data" / "mnist",
                        help="folder with the four MNIST IDX .gz files")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=500)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark measures GPU throughput")
    warnings.filterwarnings("ignore")
    torch.set_float32_matmul_precision("high")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "mnist").mkdir(parents=True)
        for file in args.mnist.resolve().glob("*-ubyte.gz"):
            (root / "mnist" / file.name).symlink_to(file)
        for name in args.configs:
            results[name] = run(CONFIGS[name], root, args.steps, args.warmup, Path(tmp) / name)
    print(f"\n{torch.cuda.get_device_name()} torch={torch.__version__} steps={args.steps} warmup={args.warmup}")
    print(f"{'config':<22}{'steps/s':>9}{'eval share':>12}{'10^6 steps':>12}  target 560 steps/s")
    for name, r in results.items():
        minutes = PROTOCOL_STEPS / r["steps_per_s"] / 60
        print(f"{name:<22}{r['steps_per_s']:>9.0f}{r['validation_share']:>11.1%}{minutes:>10.1f} min"
              f"  {'met' if r['steps_per_s'] >= 560 else 'missed'}")


if __name__ == "__main__":
    main()
