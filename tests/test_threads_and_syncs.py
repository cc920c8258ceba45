"""CPU threads (who decides how many there are and how idle ones wait) and host
synchronisation in the training step (none outside logging steps; on a GPU, checked by
CUDA's own sync debug mode). Speed itself is measured in benchmarks/busy_machine.py."""

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import SMALL_EVAL, TINY

from discrete_vi.callbacks import ThreadTuner
from discrete_vi.cli import run_cli
from discrete_vi.threads import bounded_spinning, fixed_thread_count, threads_per_job, usable_cores

ROOT = Path(__file__).resolve().parents[1]


# --- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("environ, expected", [
    ({}, {"GOMP_SPINCOUNT": "30000"}),
    ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE"}),
    ({"GOMP_SPINCOUNT": "300000"}, {"GOMP_SPINCOUNT": "300000"}),
])
def test_idle_threads_spin_briefly_unless_the_user_says_how_they_wait(environ, expected):
    bounded_spinning(environ)
    assert environ == expected


def test_the_thread_count_is_the_option_then_omp_num_threads_else_tuned():
    assert fixed_thread_count(3, {"OMP_NUM_THREADS": "2"}) == 3
    assert fixed_thread_count(None, {"OMP_NUM_THREADS": "2"}) == 2
    assert fixed_thread_count(None, {"OMP_NUM_THREADS": "4,2"}) == 4  # OpenMP's nested form: the outer level
    assert fixed_thread_count(None, {}) is None
    assert usable_cores() == len(os.sched_getaffinity(0))
    assert threads_per_job(3, cores=8) == 2 and threads_per_job(4, cores=2) == 1


def run_tuner(step_seconds, steps: int, monkeypatch) -> tuple[ThreadTuner, list[int]]:
    """Drive a ThreadTuner through `steps` training steps on a fake clock: a step at n threads takes
    `step_seconds(step, n)`. Returns the tuner and the thread count of every step."""
    clock = [0.0]
    threads = [2]
    monkeypatch.setattr("discrete_vi.callbacks.time.perf_counter", lambda: clock[0])
    monkeypatch.setattr("discrete_vi.callbacks.torch.set_num_threads", lambda n: threads.__setitem__(0, n))
    tuner = ThreadTuner(max_threads=2)
    tuner.on_train_start(None, None)
    used = []
    for step in range(steps):
        tuner.on_train_batch_start(None, None, None, step)
        used.append(threads[0])
        clock[0] += step_seconds(step, threads[0])
        tuner.on_train_batch_end(None, None, None, None, step)
    return tuner, used


def test_the_tuner_keeps_two_threads_on_a_quiet_machine(monkeypatch):
    tuner, used = run_tuner(lambda step, n: 0.005 if n == 2 else 0.006, 3000, monkeypatch)
    assert tuner.current == 2 and used[-1] == 2
    assert used.count(1) <= 8 * 6, "a handful of short trials of one thread, ever rarer"


def test_the_tuner_moves_to_one_thread_when_the_machine_gets_busy(monkeypatch):
    """Quiet for 1000 steps, then busy: two threads 10x slower, one thread 1.5x."""

    def step_seconds(step, n):
        if step < 1000:
            return 0.005 if n == 2 else 0.006
        return 0.050 if n == 2 else 0.009

    tuner, used = run_tuner(step_seconds, 4000, monkeypatch)
    assert used[999] == 2 and tuner.current == 1
    switched = next(step for step in range(1000, 4000) if used[step] == 1)
    assert switched < 1000 + 2 * 8 + 1, "re-tried as soon as steps got 1.5x slower"
    later_trials = [step for step in range(switched, 4000) if used[step] == 2]
    assert len(later_trials) <= 12, "a losing trial is given up after two slow steps, and tried ever more rarely"


def child(code: str, **environ) -> str:
    """Run `code` in a fresh Python (its own OpenMP runtime) with `environ` added; its stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    env.update(environ, PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=True).stdout.strip()


def test_importing_the_package_before_torch_bounds_the_spinning():
    code = "import discrete_vi, os, torch; print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    assert child(code) == "30000 None"
    assert child(code, OMP_WAIT_POLICY="ACTIVE") == "None ACTIVE"


def test_the_command_lines_threads_option_wins_over_the_environment_and_fixes_the_count(tmp_path):
    code = ("import torch; from discrete_vi.cli import run_cli; from discrete_vi.callbacks import ThreadTuner; "
            "cli = run_cli(ARGS, run=False); "
            "print(torch.get_num_threads(), any(isinstance(c, ThreadTuner) for c in cli.trainer.callbacks))")
    args = ["--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false"]
    assert child(code.replace("ARGS", repr(args)), OMP_NUM_THREADS="1") == "1 False"
    assert child(code.replace("ARGS", repr([*args, "--threads", "2"])), OMP_NUM_THREADS="1") == "2 False"
    tuned = child(code.replace("ARGS", repr(args)))
    assert tuned.endswith("True" if usable_cores() > 1 else "False")


def test_compare_gives_its_runs_sleeping_threads_and_their_share_of_the_cores(monkeypatch):
    from discrete_vi.compare.runner import child_environment

    for name in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY"):  # importing the package set one here already
        monkeypatch.delenv(name, raising=False)
    env = child_environment(threads=1)
    assert env["OMP_NUM_THREADS"] == "1"
    assert "GOMP_SPINCOUNT" in env or "OMP_WAIT_POLICY" in env


# --- host synchronisation in the training step ---------------------------------------------

SYNCING = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")
"""The Tensor methods that copy a device's value to the host (a CUDA synchronisation)."""


class SyncCounter(pl.Callback):
    """Counts calls of the synchronising Tensor methods during each training batch (the step:
    forward, backward, optimizer step and the model's logging)."""

    def __init__(self, monkeypatch):
        self.counting, self.per_step, self.calls = False, [], collections.Counter()
        for name in SYNCING:
            original = getattr(torch.Tensor, name)

            def counted(tensor, *args, _name=name, _original=original, **kwargs):
                if self.counting:
                    self.calls[_name] += 1
                return _original(tensor, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, name, counted)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.calls.clear()
        self.counting = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.counting = False
        self.per_step.append(sum(self.calls.values()))


@pytest.mark.parametrize("estimator", ["RLOO", "RLOODoubleCV", "DisARM", "RODEO"])
def test_a_training_step_synchronises_only_on_logging_steps(estimator, monkeypatch, tmp_path):
    counter = SyncCounter(monkeypatch)
    cli = run_cli([*TINY, "--model.latent_sizes", "[20]", *SMALL_EVAL, "--model.estimator", estimator,
                   "--trainer.limit_train_batches", "12", "--trainer.log_every_n_steps", "5",
                   "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "true",
                   "--trainer.default_root_dir", str(tmp_path)], run=False)
    cli.trainer.callbacks.append(counter)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    logging_steps = {4, 9}  # global steps 4 and 9 complete a log_every_n_steps = 5 period
    assert [n for step, n in enumerate(counter.per_step) if step not in logging_steps] == [0] * 10
    assert all(counter.per_step[step] == 1 for step in logging_steps), counter.per_step  # one copy per logging step


@pytest.mark.parametrize("every", [1, 4])
def test_divergence_is_reported_at_its_first_step_within_a_logging_period(every, tmp_path, monkeypatch, capsys):
    """The objective turns nan at step 2; the run stops at the next logging step (within
    `log_every_n_steps`) and names step 2."""
    monkeypatch.chdir(tmp_path)
    seen = []

    class Steps(pl.Callback):
        def on_train_batch_end(self, trainer, *args):
            seen.append(trainer.global_step)

    with pytest.raises(SystemExit) as exit_info:
        cli = run_cli([*TINY, "--model", "custom_model.DivergingVAE", "--model.diverge_at", "2",
                       "--trainer.log_every_n_steps", str(every), "--trainer.limit_train_batches", "10"], run=False)
        cli.trainer.callbacks.append(Steps())
        from discrete_vi.console import user_errors_in_one_line

        with user_errors_in_one_line():
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert exit_info.value.code == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("discrete-vi: error:")]
    assert "diverged at step 2" in line
    assert len(seen) <= 2 + every, seen  # stopped within one logging period of step 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_cuda_training_step_does_not_synchronise(tmp_path):
    """With CUDA's sync debug mode on, a synchronising call in a non-logging step raises."""

    class SyncDebug(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            logging = (trainer.global_step + 1) % trainer.log_every_n_steps == 0
            torch.cuda.set_sync_debug_mode(0 if logging or batch_idx < 2 else "error")

        def on_train_batch_end(self, *args):
            torch.cuda.set_sync_debug_mode(0)

    for estimator in ("RLOO", "RLOODoubleCV", "DisARM"):
        cli = run_cli([*TINY, "--model.latent_sizes", "[20]", *SMALL_EVAL, "--model.estimator", estimator,
                       "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.limit_val_batches", "0",
                       "--trainer.log_every_n_steps", "50", "--trainer.limit_train_batches", "8",
                       "--trainer.default_root_dir", str(tmp_path / estimator)], run=False)
        cli.trainer.callbacks.append(SyncDebug())
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        assert cli.trainer.global_step == 8


def test_the_tuner_is_not_fooled_by_single_slow_steps(monkeypatch):
    """A busy machine whose steps are now and then 5x slower (preempted): one thread still wins."""
    noise = torch.Generator().manual_seed(0)
    slow = (torch.rand(3000, generator=noise) < 0.15).tolist()

    def step_seconds(step, n):
        return (0.050 if n == 2 else 0.009) * (5 if slow[step] else 1)

    tuner, used = run_tuner(step_seconds, 3000, monkeypatch)
    assert tuner.current == 1 and used[-1] == 1
    assert used.index(1) < 80, "chosen at the first trial"
