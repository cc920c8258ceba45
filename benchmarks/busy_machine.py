"""ms per training step of `discrete-vi fit` on a quiet machine and beside N busy processes, for
several thread settings, as ratios from one run.

The run is the double-CV paper's linear MNIST setup (`configs/doublecv_vae_mnist_linear.yaml`:
linear VAE 784-200, RLOO + double CV K=2, batch 100) with its monitors off and no validation, so
that only training steps are timed. Each setting runs in a fresh process (OpenMP reads its
environment when torch loads it):

- `default`: `discrete-vi fit` as shipped, no thread options or variables: idle threads spin
  30,000 iterations, the thread count tuned between 1 and the cores (discrete_vi/threads.py);
- `before`: the default before threads.py: the cores' count of threads, idle threads spinning
  300,000 iterations (GNU OpenMP's default; `OMP_NUM_THREADS=<cores> GOMP_SPINCOUNT=300000`);
- `1 thread`: `OMP_NUM_THREADS=1`;
- `cores, passive`: `OMP_NUM_THREADS=<cores> OMP_WAIT_POLICY=PASSIVE` (idle threads sleep at once);
- `cores, short spin`: `OMP_NUM_THREADS=<cores>` (30,000 spins, no tuning).

Phases: quiet (nothing else started), then busy (`--busy N` CPU-bound Python processes started
here and stopped at the end). Settings alternate within each round (`--rounds`); the table gives
medians over rounds and, per setting, busy / quiet. "Quiet" means quiet apart from whatever else
the machine runs: check the load printed at the start.

    DISCRETE_VI_DATA=/path/to/data python benchmarks/busy_machine.py [--steps 300] [--rounds 3] [--busy 2]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "doublecv_vae_mnist_linear.yaml"
CORES = str(len(os.sched_getaffinity(0)))
SETTINGS = {
    "default": {},
    "before": {"OMP_NUM_THREADS": CORES, "GOMP_SPINCOUNT": "300000"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "cores, passive": {"OMP_NUM_THREADS": CORES, "OMP_WAIT_POLICY": "PASSIVE"},
    "cores, short spin": {"OMP_NUM_THREADS": CORES},
}
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def child(steps: int, warmup: int, workdir: str) -> None:
    """In a fresh process: fit for `warmup + steps` batches and print ms per timed step as JSON."""
    import pytorch_lightning as pl
    import torch

    from discrete_vi.cli import run_cli

    class StepTimer(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == warmup:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.end = time.perf_counter()

    args = ["--config", str(CONFIG), "--trainer.callbacks", "[]", "--trainer.max_steps", str(warmup + steps),
            "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false", "--trainer.log_every_n_steps", "50",
            "--data.download", "false", "--trainer.default_root_dir", workdir]
    timer = StepTimer()
    cli = run_cli(args, run=False)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    print(json.dumps({"ms": (timer.end - timer.start) / steps * 1e3, "threads": torch.get_num_threads(),
                      "wait": os.environ.get("OMP_WAIT_POLICY") or f"spin {os.environ.get('GOMP_SPINCOUNT')}"}))


def run_setting(setting: dict, steps: int, warmup: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env.update(setting, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    with tempfile.TemporaryDirectory() as workdir:
        out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps), "--warmup", str(warmup),
                              "--workdir", workdir], env=env, capture_output=True, text=True, timeout=1800)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def start_busy(n: int) -> list[subprocess.Popen]:
    """`n` CPU-bound processes (a Python loop each), in sessions of their own."""
    return [subprocess.Popen([sys.executable, "-c", "x = 0\nwhile True: x += 1"], start_new_session=True)
            for _ in range(n)]


def stop(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--busy", type=int, default=2, help="CPU-bound processes beside the run in the busy phase")
    parser.add_argument("--only", nargs="*", default=None, help="settings to run (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.steps, args.warmup, args.workdir)
    settings = {name: env for name, env in SETTINGS.items() if not args.only or name in args.only}
    print(f"load average at start: {os.getloadavg()[0]:.2f}; cores: {len(os.sched_getaffinity(0))}; "
          f"steps={args.steps} rounds={args.rounds} busy processes={args.busy}", flush=True)
    results = {phase: {name: [] for name in settings} for phase in ("quiet", "busy")}
    info = {}
    busy = []
    try:
        for phase in ("quiet", "busy"):
            if phase == "busy":
                busy = start_busy(args.busy)
                time.sleep(1.0)
            for round_ in range(args.rounds):
                for name, env in settings.items():
                    measured = run_setting(env, args.steps, args.warmup)
                    results[phase][name].append(measured["ms"])
                    info[(phase, name)] = measured["threads"]
                    print(f"{phase:<5} round {round_ + 1}: {name:<16} {measured['ms']:8.2f} ms/step "
                          f"(threads at the end {measured['threads']}, idle threads: {measured['wait']})",
                          flush=True)
    finally:
        stop(busy)
    quiet_default = statistics.median(results["quiet"]["default"]) if "default" in results["quiet"] else None
    print(f"\n| setting | threads at the end (quiet / busy) | quiet ms/step | busy ({args.busy} processes) ms/step | busy / quiet |"
          + (" quiet vs default |" if quiet_default else ""))
    print("|---|---|---|---|---|" + ("---|" if quiet_default else ""))
    for name in settings:
        quiet, loaded = statistics.median(results["quiet"][name]), statistics.median(results["busy"][name])
        row = (f"| {name} | {info[('quiet', name)]} / {info[('busy', name)]} | {quiet:.2f} | {loaded:.2f} | "
               f"{loaded / quiet:.2f}x |")
        print(row + (f" {quiet / quiet_default:.2f}x |" if quiet_default else ""))


if __name__ == "__main__":
    main()
