"""Framework overhead: steps per second of `discrete-vi fit` against a bare PyTorch loop.

Both train the same linear binary VAE (784-200, output bias from the training
mean) with RLOO K=2, batch 100, Adam 1e-3, on full MNIST with dynamic
binarization. `discrete-vi fit` runs in-process with the progress bar on,
TensorBoard logging every step, checkpointing on; validation is switched off
so that only training steps are compared. The bare loop is plain torch code
written here (no discrete_vi code in the step). Steps are timed after
`--warmup` steps; runs alternate, the median of `--repeats` is reported, and
the ratio of each back-to-back pair (less sensitive to a shared machine's drift).

    python benchmarks/fit_overhead.py [--mnist ../shared/data/mnist] [--steps 300]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from discrete_vi.cli import run_cli
from discrete_vi.data import load_splits

REPO = Path(__file__).resolve().parents[1]


class StepTimer(pl.Callback):
    """Wall time from the start of step `warmup` to the end of the last step."""

    def __init__(self, warmup: int):
        self.warmup = warmup
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.end = time.perf_counter()
            self.steps = batch_idx - self.warmup + 1


def framework_steps_per_second(data_root: Path, steps: int, warmup: int, workdir: Path) -> float:
    timer = StepTimer(warmup)
    args = [
        "--seed_everything", "0",
        "--model", "BinaryVAE",
        "--model.estimator", "RLOO", "--model.estimator.n_samples", "2",
        "--model.latent_sizes", "[200]", "--model.network", "linear", "--model.lr", "0.001",
        "--data.dataset", "mnist", "--data.root", str(data_root), "--data.batch_size", "100",
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", str(warmup + steps),
        "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", "1",
        "--trainer.enable_progress_bar", "true",
        "--trainer.enable_model_summary", "false",
        "--trainer.logger.init_args.save_dir", str(workdir),
    ]
    cli = run_cli(args, run=False)  # build, then attach the timer and run the same fit
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.steps / (timer.end - timer.start)


def bare_steps_per_second(train_images: torch.Tensor, steps: int, warmup: int) -> float:
    """The same training math in plain torch: linear encoder/decoder, RLOO K=2."""
    torch.manual_seed(0)
    pixels, latent, batch, k = train_images.shape[1], 200, 100, 2
    mean = train_images.float().mean(0) / 255
    encoder, decoder = nn.Linear(pixels, latent), nn.Linear(latent, pixels)
    with torch.no_grad():
        decoder.bias.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)))
    prior = nn.Parameter(torch.zeros(latent))
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters(), prior], lr=1e-3)
    order = torch.randperm(train_images.shape[0])
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        index = order[step * batch : (step + 1) * batch]
        grey = train_images[index].float() / 255
        x = (torch.rand_like(grey) < grey).float()  # Bernoulli draws as the framework makes them
        logits = encoder(x)
        theta = torch.sigmoid(logits.detach())
        b = (torch.rand(k, *theta.shape) < theta).float()
        bce = nn.functional.binary_cross_entropy_with_logits
        log_px = -bce(decoder(b), x.expand(k, -1, -1), reduction="none").sum(-1)
        log_prior = -bce(prior.expand_as(b), b, reduction="none").sum(-1)
        log_q = -bce(logits.detach().expand_as(b), b, reduction="none").sum(-1)
        f = log_px + log_prior - log_q
        weights = (f.detach() - f.detach().mean(0)) / (k - 1)
        g = (weights.unsqueeze(-1) * (b - theta)).sum(0)
        loss = -(f.mean() + (g * logits).sum() / batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - start)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "data" / "mnist",
                        help="folder with the four MNIST IDX .gz files")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.steps + args.warmup > 500:
        parser.error("--steps + --warmup must be at most 500 (one epoch of 50,000 images at batch 100)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "mnist").mkdir(parents=True)
        for file in args.mnist.resolve().glob("*-ubyte.gz"):
            (root / "mnist" / file.name).symlink_to(file)
        train_images = load_splits("mnist", root).train
        train_images = torch.as_tensor(train_images)
        framework, bare = [], []
        for repeat in range(args.repeats):
            framework.append(framework_steps_per_second(root, args.steps, args.warmup, Path(tmp) / f"logs{repeat}"))
            bare.append(bare_steps_per_second(train_images, args.steps, args.warmup))
    fw, pt = statistics.median(framework), statistics.median(bare)
    print(f"\ntorch={torch.__version__} threads={torch.get_num_threads()} steps={args.steps} repeats={args.repeats}")
    print(f"{'loop':<24}{'steps/s':>10}{'ms/step':>10}{'time vs bare':>14}")
    print(f"{'bare PyTorch':<24}{pt:>10.1f}{1e3 / pt:>10.2f}{1.0:>13.2f}x")
    print(f"{'discrete-vi fit':<24}{fw:>10.1f}{1e3 / fw:>10.2f}{pt / fw:>13.2f}x")
    paired = sorted(b / f for f, b in zip(framework, bare))
    print(f"all runs (steps/s): framework {[round(v, 1) for v in framework]}, bare {[round(v, 1) for v in bare]}")
    print(f"time ratio of each back-to-back pair: {[round(r, 2) for r in paired]} (median {statistics.median(paired):.2f}x)")


if __name__ == "__main__":
    main()
