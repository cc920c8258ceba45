"""Short trainings on a published setup, with and without each difference from the authors' code.

The setup is RODEO's Table 1 (the authors' single-layer launcher, thjashin/rodeo): nonlinear VAE
784-200-200-200 with LeakyReLU(0.3) (`--network linear`: 784-200, the double-CV paper's linear
VAE), 200 binary latents, a fixed uniform prior (`prior_lr` 0), batch 100, Adam 1e-3,
dynamically binarized MNIST (50,000 training images), the estimator at 2 evaluations of f. Each run trains
`--steps` steps and reports the train ELBO the way the authors' code logs it at that step: the
ELBO of the final parameters averaged over one pass of the (dynamically binarized) training set,
one sample per image (their `evaluate(train_ds, max_step=500)`; the expectation is the same for
any number of samples). `tail` is this project's `train_elbo` (`discrete-vi report`): the mean
of the training batches' ELBO estimates over the last 10% of steps.

What can be varied (each a list: every combination is run, for every seed):

- `--init`: `glorot` (the authors' Keras default: Glorot-uniform weights, zero biases) or
  `pytorch` (torch.nn.Linear's default);
- `--output-bias`: `zero` (the RODEO/double-CV code) or `mean` (this project's
  `init_output_bias`: the logit of the training mean, as the DisARM code's `--initialize_with_bias`);
- `--adam-eps`: Adam's epsilon for the encoder and decoder (PyTorch's default 1e-8 on a batch-mean
  loss; the authors' Keras epsilon 1e-7 on batch-summed gradients is 1e-9 on this scale);
- `--shuffle`: `full` (this project: a new permutation of the 50,000 images every epoch) or
  `buffer` (the authors' `tf.data` `shuffle(1024)`: a 1024-image buffer over the stored order).

    OMP_NUM_THREADS=1 DISCRETE_VI_DATA=/work/shared/data python benchmarks/authors_setup.py \\
        --init glorot pytorch --seeds 1 2 3 --steps 2000 --out init.jsonl

One JSON line per run goes to `--out` (appended, so an interrupted sweep keeps what it did);
the summary table (mean, standard deviation and standard error over seeds) is printed at the end.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Sampler

from discrete_vi.data.datamodule import BinarizedImageDataModule, _ImageRows
from discrete_vi.data.images import sample_binary_images
from discrete_vi.estimators import ESTIMATORS
from discrete_vi.models import BinaryVAE

PUBLISHED_2000_STEPS = {"DisARM": -146.33, "RLOODoubleCV": -147.26, "RODEO": -145.61, "ARMS": -143.07}
"""The authors' own code at step 2,000, seed 1 (issue 18's side-by-side; eval_metric/train)."""


class BufferShuffle(Sampler):
    """`tf.data`'s `shuffle(buffer)` over indices 0..n-1 in stored order, reshuffled every epoch:
    a buffer of the next `buffer` indices, from which a uniformly chosen one is emitted and
    replaced by the next index in order (torch's global random stream, so seeded runs repeat)."""

    def __init__(self, n: int, buffer: int = 1024):
        self.n, self.buffer = n, buffer

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        pool = list(range(min(self.buffer, self.n)))
        following = len(pool)
        while pool:
            pick = int(torch.randint(len(pool), ()))
            yield pool[pick]
            if following < self.n:
                pool[pick] = following
                following += 1
            else:
                pool[pick] = pool[-1]
                pool.pop()


class BufferShuffledData(BinarizedImageDataModule):
    """The data module with the authors' 1024-image shuffle buffer for training batches."""

    def train_dataloader(self) -> DataLoader:
        rows = _ImageRows(self.images["train"])
        sampler = BatchSampler(BufferShuffle(len(rows)), self.batch_size, drop_last=False)
        return DataLoader(rows, sampler=sampler, batch_size=None)


class TrainElbo(pl.Callback):
    """Keeps every step's training ELBO estimate (train/elbo); sets Adam's epsilon on the model's groups."""

    def __init__(self, adam_eps: float):
        self.adam_eps, self.values = adam_eps, []

    def on_train_start(self, trainer, pl_module) -> None:
        for group in trainer.optimizers[0].param_groups:
            if group.get("name") in ("encoder", "decoder"):
                group["eps"] = self.adam_eps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.values.append(float(trainer.callback_metrics["train/elbo"]))


@torch.no_grad()
def train_set_elbo(model: BinaryVAE, images: torch.Tensor, seed: int) -> float:
    """ELBO of the model over every training image (grey levels `[N, 784]`), each binarized once
    with a generator seeded by `seed`, one latent sample per image."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total = 0.0
    for start in range(0, images.shape[0], 1000):
        batch = sample_binary_images(images[start:start + 1000], generator)
        total += float(model.bounds(batch, 1)[0].sum())
    return total / images.shape[0]


def one_run(estimator: str, network: str, init: str, output_bias: str, adam_eps: float, shuffle: str, seed: int,
            steps: int) -> dict:
    pl.seed_everything(seed, verbose=False)
    data_class = BufferShuffledData if shuffle == "buffer" else BinarizedImageDataModule
    data = data_class(dataset="mnist", batch_size=100)
    model = BinaryVAE(estimator=ESTIMATORS[estimator].at_cost(2), network=network, latent_sizes=(200,), lr=1e-3,
                      prior_lr=0.0, init=init, init_output_bias=output_bias == "mean")
    record = TrainElbo(adam_eps)
    trainer = pl.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                         log_every_n_steps=50, callbacks=[record])
    start = time.time()
    trainer.fit(model, data)
    seconds = time.time() - start
    tail = record.values[-max(1, len(record.values) // 10):]
    return {"estimator": estimator, "network": network, "init": init, "output_bias": output_bias, "adam_eps": adam_eps, "shuffle": shuffle,
            "seed": seed, "steps": steps, "train_elbo_authors_way": train_set_elbo(model, data.images["train"], seed),
            "train_elbo_tail": statistics.fmean(tail), "seconds": round(seconds, 1)}


def summary(rows: list[dict]) -> str:
    keys = ("estimator", "network", "init", "output_bias", "adam_eps", "shuffle", "steps")
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(k, "nonlinear" if k == "network" else None) for k in keys), []).append(row)  # rows before --network were nonlinear
    lines = ["| " + " | ".join(keys) + " | n | train ELBO (authors' way) | s.e. | tail mean | published (seed 1) |",
             "|" + "---|" * (len(keys) + 5)]
    for group, members in groups.items():
        values = [m["train_elbo_authors_way"] for m in members]
        tails = [m["train_elbo_tail"] for m in members]
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        published = PUBLISHED_2000_STEPS.get(group[0]) if group[-1] == 2000 and group[1] == "nonlinear" else None
        lines.append("| " + " | ".join(map(str, group)) + f" | {len(values)} | {statistics.fmean(values):.2f} ± {sd:.2f} | "
                     f"{sd / math.sqrt(len(values)):.2f} | {statistics.fmean(tails):.2f} | {published if published else '–'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--estimator", nargs="+", default=["DisARM"], help="estimators (at 2 evaluations of f)")
    parser.add_argument("--network", nargs="+", default=["nonlinear"], choices=["nonlinear", "linear"],
                        help="nonlinear: RODEO's Table 1 network; linear: 784-200 (the double-CV paper's linear VAE)")
    parser.add_argument("--init", nargs="+", default=["glorot"], choices=["glorot", "pytorch"])
    parser.add_argument("--output-bias", nargs="+", default=["zero"], choices=["zero", "mean"])
    parser.add_argument("--adam-eps", nargs="+", type=float, default=[1e-8])
    parser.add_argument("--shuffle", nargs="+", default=["full"], choices=["full", "buffer"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file (appended)")
    parser.add_argument("--summary-only", action="store_true", help="print the table of --out, run nothing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if not args.summary_only:
        for combination in itertools.product(args.estimator, args.network, args.init, args.output_bias, args.adam_eps, args.shuffle, args.seeds):
            row = one_run(*combination, steps=args.steps)
            print(json.dumps(row), flush=True)
            with open(args.out, "a") as file:
                file.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    print(summary(rows))


if __name__ == "__main__":
    main()
