"""CPU threads: how torch's OpenMP threads wait, and how many there are.

torch's CPU build runs its parallel operations on GNU OpenMP threads. A training step of the
papers' models is hundreds of small operations, each split across the threads and ended by a
barrier. On a quiet machine two threads make the step about 1.2x faster than one; beside other
busy processes each barrier waits for a descheduled thread and the step slows 10x or more
(docs/speed.md), while one thread slows by its fair share. So:

- Idle threads spin for at most 30,000 iterations (about 0.3 ms) before they sleep:
  `GOMP_SPINCOUNT=30000`, set when the package is imported unless the environment sets
  `OMP_WAIT_POLICY` or `GOMP_SPINCOUNT` itself. GNU OpenMP's own default spins 300,000
  (a few ms), CPU time taken from other processes; sleeping at once (`OMP_WAIT_POLICY=PASSIVE`)
  costs a wake-up per operation and makes two threads slower than one. OpenMP reads this once,
  when torch loads it: a program that imports torch before discrete_vi sets it itself.
- The number of threads: `--threads N` on the command line, else `OMP_NUM_THREADS`, fixes it;
  otherwise `callbacks.ThreadTuner` keeps it at whichever of 1 and the usable cores trains
  faster as the machine's load changes (on a CPU). `discrete-vi compare --jobs N` gives each
  run `cores // N`.

This module imports nothing but the standard library (it runs before torch is imported).
"""

from __future__ import annotations

import os
from typing import MutableMapping

WAIT_POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
"""Environment variables that set how OpenMP threads wait: where the user sets either, theirs is kept."""
SPIN_COUNT = "30000"
"""Iterations an idle OpenMP thread spins before it sleeps (GNU OpenMP's default: 300,000)."""


def bounded_spinning(environ: MutableMapping[str, str] = os.environ) -> None:
    """Idle OpenMP threads spin briefly, then sleep (`GOMP_SPINCOUNT=30000`), unless `environ`
    already says how they wait. Effective only before torch is imported in this process; child
    processes inherit it."""
    if not any(variable in environ for variable in WAIT_POLICY_VARIABLES):
        environ["GOMP_SPINCOUNT"] = SPIN_COUNT


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def fixed_thread_count(requested: int | None = None, environ: MutableMapping[str, str] = os.environ) -> int | None:
    """The thread count the user fixed: `requested` (the `--threads` option), else `OMP_NUM_THREADS`;
    None where neither is given (the count is then tuned, `callbacks.ThreadTuner`)."""
    if requested is not None:
        return requested
    value = environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def threads_per_job(jobs: int, cores: int | None = None) -> int:
    """Threads per run when `jobs` runs share the machine: jobs x threads <= cores (at least 1)."""
    return max(1, (cores or usable_cores()) // max(1, jobs))
