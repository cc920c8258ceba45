"""Train the quickstart model (linear VAE 784-200, bundled MNIST subset) with several
estimators for a few thousand steps through the command line, and print the
validation ELBO and 100-sample bound at the start and the end of each run.

    python benchmarks/train_check.py --steps 3000 [--estimators ARMS:2 RODEO:2 DisARM:1 ...] [--seed 0]

`NAME:N` sets the estimator's size (`n_pairs` for ARM/DisARM, else `n_samples`).
Runs go to `--root` (a temporary folder by default); one line per estimator.
"""

from __future__ import annotations

import argparse
import tempfile
import time

from discrete_vi.cli import run_cli

DEFAULT = ["DisARM:1", "RLOO:2", "ARMS:2", "RODEO:2", "ARMS:4", "StraightThrough:1", "GumbelSoftmaxST:1"]


def estimator_args(spec: str) -> list[str]:
    name, _, size = spec.partition(":")
    option = "n_pairs" if name in ("ARM", "DisARM") else "n_samples"
    return ["--model.estimator", name] + ([f"--model.estimator.{option}", size] if size else [])


def train(spec: str, steps: int, seed: int, root: str) -> dict[str, float]:
    epoch_steps = 80  # 8,000 training digits, batch 100
    args = [
        "fit",
        "--config", "configs/quickstart.yaml",
        *estimator_args(spec),
        "--seed_everything", str(seed),
        "--trainer.max_steps", str(steps),
        "--trainer.max_epochs", "-1",
        "--trainer.check_val_every_n_epoch", str(max(1, steps // epoch_steps)),  # validate at the end only
        "--trainer.log_every_n_steps", "50",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks", "[]",
        "--trainer.default_root_dir", root,
        "--trainer.logger.init_args.save_dir", root,
    ]
    start = time.perf_counter()
    cli = run_cli(args)
    seconds = time.perf_counter() - start
    metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items()}
    metrics["seconds"] = seconds
    return metrics


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--estimators", nargs="+", default=DEFAULT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None)
    args = parser.parse_args(argv)
    root = args.root or tempfile.mkdtemp(prefix="train_check_")
    rows = []
    for spec in args.estimators:
        m = train(spec, args.steps, args.seed, root)
        rows.append(
            f"{spec:<20}{m.get('train/elbo', float('nan')):>12.2f}{m.get('val/elbo', float('nan')):>12.2f}"
            f"{m.get('val/log_likelihood', float('nan')):>14.2f}{m['seconds']:>9.0f}"
        )
        print(rows[-1], flush=True)
    print(f"\nsteps={args.steps} seed={args.seed}")
    print(f"{'estimator':<20}{'train/elbo':>12}{'val/elbo':>12}{'val/log_lik':>14}{'seconds':>9}")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
