"""Running the runs of a comparison: each is `discrete-vi fit ... --ckpt_path last` (a new run,
or the interrupted one resumed from its `last.ckpt`), then `discrete-vi test` on its last
checkpoint, in processes of their own, with output in `<run folder>/run.log`.

A run folder holds `run.json` (its name, grid values and command, written before it starts)
and, once test has succeeded, `done.json` (written atomically: the marker that lets a later
call reuse the run). Runs are executed by a local pool (`run_local`, N at once) or as Ray
tasks (`run_ray`); both return one `Outcome` per run and call `progress` as runs start and end.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from discrete_vi.compare.integrity import read_json
from discrete_vi.console import option_values
from discrete_vi.runs import find_last_checkpoint
from discrete_vi.checks import ConfigurationError
from discrete_vi.threads import bounded_spinning, usable_cores

RUN_FILE = "run.json"
DONE_FILE = "done.json"
LOG_FILE = "run.log"


@dataclass
class Job:
    """What one run executes.

    Attributes:
        name: the run's name (its folder under the output folder).
        folder: the run's folder (`--trainer.default_root_dir`).
        values: its grid values.
        fit_args: the `fit` options (base, grid, shared extras), without the folder and `--ckpt_path`.
        threads: torch threads (`OMP_NUM_THREADS`) for its processes.
    """

    name: str
    folder: str
    values: dict[str, str]
    fit_args: list[str]
    threads: int = 1


@dataclass
class Outcome:
    """How a run ended: `status` is `done`, `reused` or `failed`; `seconds` the wall time of
    this call (fit + test); `message` says what failed."""

    name: str
    status: str
    log: str
    seconds: float = 0.0
    message: str = ""
    extra: dict = field(default_factory=dict)


def write_json_atomically(path: Path, data: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)


def is_done(folder: str | Path) -> bool:
    """Whether the run in `folder` finished fit and test: its `done.json` marker exists and is whole
    (a damaged one is checked again: fit resumes at its end, test runs again)."""
    return read_json(Path(folder) / DONE_FILE)[0] is not None


_children: set[subprocess.Popen] = set()
_children_lock = threading.Lock()
PARENT_VARIABLE = "DISCRETE_VI_PARENT_PID"
"""Set in a run's environment: the process that must not outlive the comparison that started it."""


def call(command: list[str], **options) -> int:
    """`subprocess.call`, with the child known to `stop_children` while it runs."""
    process = subprocess.Popen(command, **options)
    with _children_lock:
        _children.add(process)
    try:
        return process.wait()
    finally:
        with _children_lock:
            _children.discard(process)


def stop_children() -> None:
    """Stop every running child (SIGTERM: a fit stops at the end of its step), waiting up to 30 s each."""
    with _children_lock:
        running = list(_children)
    for process in running:
        process.terminate()
    for process in running:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def follow_parent() -> None:
    """In a run started by `compare` (PARENT_VARIABLE set): receive SIGTERM when the comparison's
    process ends, however it ends (Linux's parent-death signal), so no run outlives it."""
    parent = os.environ.get(PARENT_VARIABLE)
    if not parent or not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the parent ended before the signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def command_prefix() -> list[str]:
    """How to call the command line in a child process: this Python, `-m discrete_vi.cli`
    (the package the parent imported, found through the inherited environment)."""
    return [sys.executable, "-m", "discrete_vi.cli"]


def child_environment(threads: int) -> dict[str, str]:
    """The parent's environment, the package's location on PYTHONPATH (so the child imports the
    same `discrete_vi`), `threads` torch threads (OMP_NUM_THREADS, MKL_NUM_THREADS) and idle
    threads that spin briefly (`threads.bounded_spinning`, unless the user set how they wait)."""
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if package_root not in paths:
        env["PYTHONPATH"] = os.pathsep.join([package_root, *paths])
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    env[PARENT_VARIABLE] = str(os.getpid())
    bounded_spinning(env)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _last_line(log: Path) -> str:
    """The log's last line starting with `discrete-vi: error` (or its last non-empty line)."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [""])[-1][:300]


def execute(job: Job) -> Outcome:
    """Run one job to completion (or reuse it): fit (resuming its last checkpoint, if any), then
    test on `last.ckpt`, then the `done.json` marker. Never raises for a failing run: its
    Outcome says `failed` and what the log's last error line was."""
    folder = Path(job.folder)
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / LOG_FILE
    run_file = folder / RUN_FILE
    record = {"name": job.name, "values": job.values, "fit_args": job.fit_args}
    previous, damage = read_json(run_file)
    if damage:  # our own record of the run: written again from the job (a finished run's too)
        with open(log, "a") as out:
            out.write(f"\n{run_file} was damaged ({damage}); written again\n")
        write_json_atomically(run_file, record)
    if is_done(folder):
        return Outcome(job.name, "reused", str(log))
    if previous is not None:
        if previous.get("fit_args") != job.fit_args:
            return Outcome(job.name, "failed", str(log), message=(
                f"{folder} holds a run started with other options ({' '.join(previous.get('fit_args', []))}); "
                "use another --out, or delete that folder"))
    elif not damage:
        write_json_atomically(run_file, record)
    env = child_environment(job.threads)
    start = time.time()
    resumed_from = find_last_checkpoint(folder)
    fit = [*command_prefix(), "fit", *job.fit_args, "--trainer.default_root_dir", str(folder), "--ckpt_path", "last"]
    with open(log, "a") as out:
        out.write(f"\n$ {' '.join(fit)}\n")
        out.flush()
        code = call(fit, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
        last = find_last_checkpoint(folder)
        if code != 0 or last is None:
            return Outcome(job.name, "failed", str(log), time.time() - start,
                           f"fit exited with status {code}: {_last_line(log)}")
        # The classes the fit named by class path, named again: a checkpoint never chooses what is imported.
        named = [arg for option in ("--model", "--model.estimator") for value in option_values(job.fit_args, option)
                 if "." in value and not value.lstrip().startswith("{") for arg in (option, value)]
        test = [*command_prefix(), "test", "--ckpt_path", str(last), *named]
        out.write(f"\n$ {' '.join(test)}\n")
        out.flush()
        code = call(test, stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    seconds = time.time() - start
    if code != 0:
        return Outcome(job.name, "failed", str(log), seconds, f"test exited with status {code}: {_last_line(log)}")
    previous_seconds = 0.0
    timing = folder / ".seconds"
    if timing.is_file():
        previous_seconds = float(timing.read_text() or 0)
    write_json_atomically(folder / DONE_FILE, {
        **record, "checkpoint": str(last), "resumed_from": str(resumed_from) if resumed_from else None,
        "wall_seconds": previous_seconds + seconds, "threads": job.threads,
    })
    return Outcome(job.name, "done", str(log), seconds)


def execute_and_time(job: Job) -> Outcome:
    """`execute`, and add this call's wall time to the run's running total (`.seconds`), so
    that a run interrupted and resumed reports the time of all its calls."""
    outcome = execute(job)
    if outcome.status == "failed" and outcome.seconds:
        timing = Path(job.folder) / ".seconds"
        before = float(timing.read_text() or 0) if timing.is_file() else 0.0
        timing.write_text(str(before + outcome.seconds))
    return outcome


Progress = Callable[[str, Job, Outcome | None], None]


def run_local(jobs: list[Job], parallel: int, progress: Progress) -> list[Outcome]:
    """Run `jobs`, `parallel` at once, each in processes of its own; `progress("start", job,
    None)` and `progress("end", job, outcome)` as they go. Returns outcomes in job order."""

    def one(job: Job) -> Outcome:
        if not is_done(job.folder):
            progress("start", job, None)
        outcome = execute_and_time(job)
        progress("end", job, outcome)
        return outcome

    pool = ThreadPoolExecutor(max_workers=max(1, parallel))
    try:
        return list(pool.map(one, jobs))
    except BaseException:  # Ctrl-C or SIGTERM: stop the runs, then let the caller say so
        pool.shutdown(wait=False, cancel_futures=True)
        stop_children()
        raise
    finally:
        pool.shutdown(wait=True)


def run_ray(jobs: list[Job], address: str | None, progress: Progress) -> list[Outcome]:
    """Run `jobs` as Ray tasks (`address`: an existing cluster, e.g. `ray://head:10001` or
    `auto`; None: start a local Ray on this machine). Each task asks for `job.threads` CPUs,
    so Ray places no more runs on a node than its cores allow. The output folder must be
    visible to every node (a shared filesystem) for results to come back."""
    try:
        import ray
    except ImportError:
        raise ConfigurationError("--launcher ray needs Ray: pip install 'ray[default]' (or pip install -e '.[ray]' in a checkout of discrete-vi)") from None
    started_here = not ray.is_initialized()
    if started_here:
        env = child_environment(1)
        runtime_env = {"env_vars": {"PYTHONPATH": env["PYTHONPATH"]}}
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(num_cpus=usable_cores(), include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    try:
        remote = ray.remote(execute_and_time)
        pending = {}
        for job in jobs:
            if not is_done(job.folder):
                progress("start", job, None)
            pending[remote.options(num_cpus=job.threads).remote(job)] = job
        outcomes: dict[str, Outcome] = {}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            job = pending.pop(ready[0])
            try:
                outcome = ray.get(ready[0])
            except Exception as error:  # the task itself died (node lost): report, go on
                outcome = Outcome(job.name, "failed", str(Path(job.folder) / LOG_FILE), message=f"Ray task failed: {error}")
            outcomes[job.name] = outcome
            progress("end", job, outcome)
        return [outcomes[job.name] for job in jobs]
    finally:
        if started_here:
            ray.shutdown()
