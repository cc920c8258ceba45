"""Time per training step of `discrete-vi fit` against a bare PyTorch loop and the step's matmul floor.

All loops train the same binary VAE (784-200 binary units, `linear` or
`nonlinear` networks, output bias from the training mean) with RLOO K=2,
batch 100, Adam 1e-3, on full MNIST with dynamic binarization.

- `framework`: `discrete-vi fit` in-process, as a user runs it (progress bar on,
  TensorBoard scalars every `--log-every` steps, checkpointing on, validation off
  so that only training steps are compared);
- `framework compiled`: the same with `--model.compile true` (compile time is
  reported separately, not in ms/step);
- `bare eager`: the training math written here in plain torch, as a user would
  write it by hand (`torch.optim.Adam` with its defaults, no discrete_vi code);
- `matmul floor`: the matrix products of one bare step (shapes recorded by the
  torch profiler), timed alone.

Loops alternate in rounds (every loop once per round), each in a fresh
process (compiled code's OpenMP threads would slow the eager loops that
follow in the same process), each timed after `--warmup` steps; the table
gives the median over rounds and the median of the per-round ratios to the
bare loop, all from this one run (less sensitive to a shared machine's drift
than separate runs).

With `--alternating`, extra runs also step the framework (eager, then compiled)
and the bare loop alternately in one process (a bare step after each framework
batch) and give the median ratio of those per-step pairs. In the compiled
run the bare steps share the process with compiled code (whose OpenMP threads
may slow them, flattering that ratio): compare its bare ms with the eager run's.

    python benchmarks/fit_overhead.py [--networks linear nonlinear] [--steps 200] [--rounds 3] [--alternating]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from discrete_vi.cli import run_cli
from discrete_vi.data import load_splits
from discrete_vi.models.networks import make_network, output_layer

REPO = Path(__file__).resolve().parents[1]
BATCH, LATENT, K = 100, 200, 2


class StepTimer(pl.Callback):
    """Time from the start of training batch `warmup` to the end of the last one."""

    def __init__(self, warmup: int, clock):
        self.warmup, self.clock = warmup, clock
        self.start = self.end = 0.0
        self.steps = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.start = self.clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx >= self.warmup:
            self.end = self.clock()
            self.steps = batch_idx - self.warmup + 1


class AlternatingBareSteps(pl.Callback):
    """After each training batch of the framework, one step of a bare loop: per-step pairs in one
    process. A pair's framework time runs from one batch start to the next, less the bare step."""

    def __init__(self, bare: "BareLoop", warmup: int, clock):
        self.bare, self.warmup, self.clock = bare, warmup, clock
        self.framework_s, self.bare_s = [], []
        self.batch_start = self.last_bare = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = self.clock()
        if batch_idx > self.warmup:
            self.framework_s.append(now - self.batch_start - self.last_bare)
        self.batch_start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        start = self.clock()
        self.bare.step()
        self.last_bare = self.clock() - start
        if batch_idx >= self.warmup:
            self.bare_s.append(self.last_bare)


def fit_args(data_root: Path, network: str, batches: int, workdir: Path, log_every: int, compile: bool) -> list[str]:
    """`discrete-vi fit` as a user runs it, for `batches` training batches and no validation."""
    return [
        "--seed_everything", "0",
        "--model", "BinaryVAE", "--model.network", network, "--model.compile", str(compile).lower(),
        "--model.estimator", "RLOO", "--model.estimator.n_samples", str(K),
        "--model.latent_sizes", f"[{LATENT}]", "--model.lr", "0.001",
        "--data.dataset", "mnist", "--data.root", str(data_root), "--data.batch_size", str(BATCH),
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", str(batches),
        "--trainer.limit_val_batches", "0",
        "--trainer.log_every_n_steps", str(log_every),
        "--trainer.enable_progress_bar", "true",
        "--trainer.enable_model_summary", "false",
        "--trainer.default_root_dir", str(workdir),
    ]


def framework_ms(data_root: Path, network: str, steps: int, warmup: int, workdir: Path, clock,
                 log_every: int, compile: bool = False) -> tuple[float, float]:
    """ms per step of `discrete-vi fit`, and the seconds before the timed steps (compilation included)."""
    timer = StepTimer(warmup, clock)
    args = fit_args(data_root, network, warmup + steps, workdir, log_every, compile)
    cli = run_cli(args, run=False)  # build, then attach the timer and run the same fit
    cli.trainer.callbacks.append(timer)
    started = clock()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return (timer.end - timer.start) / timer.steps * 1e3, timer.start - started


def alternating_ms(data_root: Path, network: str, steps: int, warmup: int, workdir: Path, clock,
                   log_every: int, compile: bool) -> dict:
    """Framework and bare steps alternating in one process: medians of each and of the pair ratios."""
    bare = BareLoop(torch.as_tensor(load_splits("mnist", data_root).train), network)
    pairs = AlternatingBareSteps(bare, warmup, clock)
    cli = run_cli(fit_args(data_root, network, warmup + steps + 1, workdir, log_every, compile), run=False)
    cli.trainer.callbacks.append(pairs)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    framework, bare_s = pairs.framework_s, pairs.bare_s[: len(pairs.framework_s)]
    return {"framework": statistics.median(framework) * 1e3, "bare": statistics.median(bare_s) * 1e3,
            "ratio": statistics.median([f / b for f, b in zip(framework, bare_s)])}


class BareLoop:
    """The same training math in plain torch, written as a user would by hand."""

    def __init__(self, train_images: torch.Tensor, network: str):
        torch.manual_seed(0)
        self.images = train_images
        pixels = train_images.shape[1]
        mean = train_images.float().mean(0) / 255
        self.encoder = make_network(pixels, LATENT, network)
        self.decoder = make_network(LATENT, pixels, network)
        with torch.no_grad():
            output_layer(self.decoder).bias.copy_(torch.logit(mean.clamp(1e-3, 1 - 1e-3)))
        self.prior = nn.Parameter(torch.zeros(LATENT))
        params = [*self.encoder.parameters(), *self.decoder.parameters(), self.prior]
        self.optimizer = torch.optim.Adam(params, lr=1e-3)
        self.order = torch.randperm(train_images.shape[0])
        self.step_index = 0

    def step(self) -> None:
        index = self.order[self.step_index * BATCH : (self.step_index + 1) * BATCH]
        self.step_index = (self.step_index + 1) % (self.images.shape[0] // BATCH)
        grey = self.images[index].float() / 255
        x = (torch.rand_like(grey) < grey).float()
        logits = self.encoder(x)
        theta = torch.sigmoid(logits.detach())
        b = (torch.rand(K, *theta.shape) < theta).float()
        bce = nn.functional.binary_cross_entropy_with_logits
        log_px = -bce(self.decoder(b), x.expand(K, -1, -1), reduction="none").sum(-1)
        log_prior = -bce(self.prior.expand_as(b), b, reduction="none").sum(-1)
        log_q = -bce(logits.detach().expand_as(b), b, reduction="none").sum(-1)
        f = log_px + log_prior - log_q
        weights = (f.detach() - f.detach().mean(0)) / (K - 1)
        g = (weights.unsqueeze(-1) * (b - theta)).sum(0)
        loss = -(f.mean() + (g * logits).sum() / BATCH)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()

    def ms(self, steps: int, warmup: int, clock) -> float:
        for _ in range(warmup):
            self.step()
        start = clock()
        for _ in range(steps):
            self.step()
        return (clock() - start) / steps * 1e3


def matmul_floor(bare: BareLoop, steps: int, clock) -> tuple[float, list]:
    """ms of the matrix products of one bare step, replayed alone; and their shapes."""
    with torch.profiler.profile(record_shapes=True) as profile:
        bare.step()
    shapes = []
    for event in profile.events():
        if event.name in ("aten::mm", "aten::addmm", "aten::bmm") and event.input_shapes:
            operands = [s for s in event.input_shapes if len(s) >= 2]
            shapes.append((event.name, operands[-2], operands[-1]))
    tensors = [(torch.randn(*a), torch.randn(*b)) for _, a, b in shapes]
    run = lambda: [torch.matmul(a, b) for a, b in tensors]  # noqa: E731
    for _ in range(5):
        run()
    start = clock()
    for _ in range(steps):
        run()
    return (clock() - start) / steps * 1e3, [(a, b) for _, a, b in shapes]


def measure(loop: str, network: str, args, clock) -> dict:
    """One loop's ms/step (and seconds before the timed steps), in this process."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        (root / "mnist").mkdir(parents=True)
        for file in args.mnist.resolve().glob("*-ubyte.gz"):
            (root / "mnist" / file.name).symlink_to(file)
        if loop.startswith("alternating"):
            return alternating_ms(root, network, args.steps, args.warmup, Path(tmp) / "logs", clock, args.log_every,
                                  compile=loop == "alternating compiled")
        if loop.startswith("framework"):
            ms, before = framework_ms(root, network, args.steps, args.warmup, Path(tmp) / "logs", clock,
                                      args.log_every, compile=loop == "framework compiled")
            return {"ms": ms, "before_s": before}
        bare = BareLoop(torch.as_tensor(load_splits("mnist", root).train), network)
        ms = bare.ms(args.steps, args.warmup, clock)
        return {"ms": ms if loop == "bare eager" else matmul_floor(bare, args.steps, clock)[0]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=REPO.parent / "shared" / "data" / "mnist",
                        help="folder with the four MNIST IDX .gz files")
    parser.add_argument("--networks", nargs="+", default=["linear", "nonlinear"], choices=["linear", "nonlinear"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--log-every", type=int, default=50, help="--trainer.log_every_n_steps (Lightning's default)")
    parser.add_argument("--no-compile", action="store_true", help="leave out the compiled framework loop")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall time, or this thread's CPU time (needs --threads 1; steadier on a shared machine)")
    parser.add_argument("--alternating", action="store_true",
                        help="also alternate framework (eager, then compiled) and bare steps in one process, "
                             "step by step "
                             "(pairs immune to the machine's drift; each loop sees the other's cache traffic)")
    parser.add_argument("--one", nargs=2, metavar=("LOOP", "NETWORK"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args(argv)
    if args.steps + args.warmup > 500:
        parser.error("--steps + --warmup must be at most 500 (one epoch of 50,000 images at batch 100)")
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu measures one thread: add --threads 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    warnings.filterwarnings("ignore")
    if args.one:
        print(json.dumps(measure(*args.one, args, clock)))
        return
    loops = ["framework", *([] if args.no_compile else ["framework compiled"]), "bare eager", "matmul floor"]
    passed = [f"--mnist={args.mnist}", f"--steps={args.steps}", f"--warmup={args.warmup}",
              f"--log-every={args.log_every}", f"--clock={args.clock}",
              *([f"--threads={args.threads}"] if args.threads else [])]
    rows = []
    for network in args.networks:
        times = {loop: [] for loop in loops}
        compile_seconds = []
        for _ in range(args.rounds):
            for loop in loops:
                child = subprocess.run([sys.executable, __file__, "--one", loop, network, *passed],
                                       capture_output=True, text=True, check=True)
                result = json.loads(child.stdout.strip().splitlines()[-1])
                times[loop].append(result["ms"])
                if loop == "framework compiled":
                    compile_seconds.append(result["before_s"])
        for loop in loops:
            ratios = [t / b for t, b in zip(times[loop], times["bare eager"])]
            rows.append((network, loop, statistics.median(times[loop]), statistics.median(ratios),
                         [round(r, 2) for r in ratios]))
        if compile_seconds:
            rows.append((network, "(compile + warm-up, s)", statistics.median(compile_seconds), None,
                         [round(s, 1) for s in compile_seconds]))
    alternating = {}
    if args.alternating:
        for network in args.networks:
            for loop in ["alternating", *([] if args.no_compile else ["alternating compiled"])]:
                child = subprocess.run([sys.executable, __file__, "--one", loop, network, *passed],
                                       capture_output=True, text=True, check=True)
                alternating[network, loop] = json.loads(child.stdout.strip().splitlines()[-1])
    print(f"\ntorch={torch.__version__} threads={args.threads or torch.get_num_threads()} clock={args.clock} "
          f"steps={args.steps} warmup={args.warmup} rounds={args.rounds} log_every={args.log_every} "
          f"batch={BATCH} K={K}")
    print(f"{'network':<11}{'loop':<24}{'ms/step':>9}{'vs bare':>9}  per-round ratios")
    for network, loop, ms, ratio, ratios in rows:
        if ratio is None:
            print(f"{network:<11}{loop:<24}{ms:>9.1f}           per round: {ratios}")
        else:
            print(f"{network:<11}{loop:<24}{ms:>9.2f}{ratio:>8.2f}x  {ratios}")
    for (network, loop), result in alternating.items():
        name = ("compiled" if loop.endswith("compiled") else "framework") + " (pairs)"
        print(f"{network:<11}{name:<24}{result['framework']:>9.2f}{result['ratio']:>8.2f}x  "
              f"median of {args.steps} step pairs in one process (bare: {result['bare']:.2f} ms)")


if __name__ == "__main__":
    main()
