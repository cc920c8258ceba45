"""What a long comparison's monitors cost: ms per training step of the papers' comparison config
(`configs/compare/doublecv_mnist_linear.yaml`: gradient variance every 250 steps with 16 draws,
a five-estimator variance basket every 1,000 steps, validation every 10^4 steps, checkpoints every
1,000 steps, scalars every 10 steps) against the same fit without them (no callbacks, no
validation, no checkpoints), as a ratio from one run.

Each fit runs in a fresh process for `--steps` steps (at least 5,000; at 10,000 one validation
falls in the window), timed from the first step after `--warmup` to the end of training, so
every monitor's time is in the total. The two alternate in `--rounds` rounds; the table gives
medians, the ratio, and what each monitor costs on its own (timed in the monitored run).

    DISCRETE_VI_DATA=/path/to/data python benchmarks/monitor_overhead.py [--steps 10000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "compare" / "doublecv_mnist_linear.yaml"
WITHOUT = ["--trainer.callbacks", "[]", "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false"]


def child(steps: int, warmup: int, workdir: str, monitored: bool) -> None:
    """In a fresh process: fit for `steps` steps and print the timings as JSON."""
    import pytorch_lightning as pl

    from discrete_vi.cli import run_cli

    class Timer(pl.Callback):
        """Wall time from step `warmup` to the end of training, and the time spent in each other
        callback's hooks and in validation (wrapped below)."""

        def __init__(self):
            self.parts = collections.Counter()
            self.start = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup and self.start is None:
                self.start = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            self.end = time.perf_counter()

    timer = Timer()
    args = ["--config", str(CONFIG), "--trainer.max_steps", str(steps), "--data.download", "false",
            "--trainer.default_root_dir", workdir, *([] if monitored else WITHOUT)]
    cli = run_cli(args, run=False)
    for callback in cli.trainer.callbacks:  # time every monitor's and checkpoint's work
        for hook in ("on_train_batch_end", "on_validation_end", "on_train_epoch_end"):
            original = getattr(callback, hook)

            def timed(*a, _original=original, _name=type(callback).__name__, **k):
                began = time.perf_counter()
                result = _original(*a, **k)
                if timer.start is not None:
                    timer.parts[_name] += time.perf_counter() - began
                return result

            setattr(callback, hook, timed)
    validation = cli.trainer.fit_loop.epoch_loop.val_loop.run

    def timed_validation(*a, **k):
        began = time.perf_counter()
        result = validation(*a, **k)
        if timer.start is not None:  # not the sanity check before training
            timer.parts["validation"] += time.perf_counter() - began
        return result

    cli.trainer.fit_loop.epoch_loop.val_loop.run = timed_validation
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    timed_steps = cli.trainer.global_step - warmup
    print(json.dumps({"ms": (timer.end - timer.start) / timed_steps * 1e3, "steps": timed_steps,
                      "parts_s": dict(timer.parts)}))


def run(steps: int, warmup: int, monitored: bool, threads: int | None) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    with tempfile.TemporaryDirectory() as workdir:
        out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps), "--warmup", str(warmup),
                              "--workdir", workdir, *(["--monitored"] if monitored else [])],
                             env=env, capture_output=True, text=True, timeout=7200)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="fix the runs' thread count (default: as shipped, tuned during training; the tuner's "
                             "choices then differ between the runs compared)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--monitored", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.steps, args.warmup, args.workdir, args.monitored)
    print(f"load average at start: {os.getloadavg()[0]:.2f}; steps={args.steps} rounds={args.rounds} "
          f"threads={args.threads or 'tuned'}", flush=True)
    results = {True: [], False: []}
    for round_ in range(args.rounds):
        for monitored in (False, True):
            measured = run(args.steps, args.warmup, monitored, args.threads)
            results[monitored].append(measured)
            print(f"round {round_ + 1}: {'with monitors' if monitored else 'without':<14} {measured['ms']:7.2f} ms/step "
                  f"over {measured['steps']} steps; parts (s): "
                  + ", ".join(f"{k} {v:.1f}" for k, v in sorted(measured["parts_s"].items())), flush=True)
    bare = statistics.median(r["ms"] for r in results[False])
    full = statistics.median(r["ms"] for r in results[True])
    print(f"\n| fit | ms/step (median of {args.rounds}) | vs without |\n|---|---|---|")
    print(f"| without monitors | {bare:.2f} | 1.00x |\n| with the config's monitors | {full:.2f} | {full / bare:.2f}x |")
    parts = collections.defaultdict(list)
    for r in results[True]:
        for name, seconds in r["parts_s"].items():
            parts[name].append(seconds / r["steps"] * 1e3)
    print("\n| monitor | ms per training step, spread over the run | share of the step without monitors |\n|---|---|---|")
    total = 0.0
    for name, values in sorted(parts.items(), key=lambda item: -statistics.median(item[1])):
        total += statistics.median(values)
        print(f"| {name} | {statistics.median(values):.3f} | {statistics.median(values) / bare * 100:.1f}% |")
    print(f"| all of them | {total:.3f} | {total / bare * 100:.1f}% (so {1 + total / bare:.2f}x, timed in the monitored run) |")


if __name__ == "__main__":
    main()
