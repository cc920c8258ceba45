"""`discrete-vi compare` and `discrete-vi report`: their parsers and what they do.

    discrete-vi compare --config configs/quickstart.yaml \\
        --grid model.estimator=RLOO,RLOODoubleCV,DisARM --grid seed_everything=1,2,3 \\
        --out runs/my_comparison --jobs 2 -- --trainer.max_steps 20000
    discrete-vi report runs/my_comparison
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
from pathlib import Path

from discrete_vi.compare.grid import expand, parse_grid
from discrete_vi.compare.report import write_report
from discrete_vi.compare.summary import RunData, find_runs, read_run, summarize
from discrete_vi.compare.integrity import read_json
from discrete_vi.compare.runner import DONE_FILE, RUN_FILE, Job, Outcome, is_done, run_local, run_ray
from discrete_vi.console import PROG, OneLineParser, fail, user_errors_in_one_line
from discrete_vi.runs import hold_lock, release_locks
from discrete_vi.threads import threads_per_job, usable_cores


def compare_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=f"{PROG} compare",
        description=(
            "Run a grid of `discrete-vi fit` runs (then `test` on each run's last checkpoint), N at once "
            "or on a Ray cluster, and write a report (results.csv, report.md, plots) in OUT. Calling it "
            "again reuses finished runs, resumes interrupted ones from their last checkpoint and runs what "
            "is missing. Options after `--` go to every run's fit."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  discrete-vi compare --config configs/quickstart.yaml --grid model.estimator=RLOO,DisARM \\\n"
               "      --grid seed_everything=1,2,3 --out runs/cmp --jobs 2 -- --trainer.max_steps 20000",
    )
    parser.add_argument("-c", "--config", action="append", default=[], help="fit config file(s), as for `fit --config`")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="any fit option and its values (repeatable; the cross product is run). Values with "
                             "commas inside brackets stay whole, e.g. 'model.estimator=RLOO,{class_path: Reinforce, "
                             "init_args: {baseline: ema}}'")
    parser.add_argument("--out", required=True, help="folder of the comparison: one sub-folder per run, and the report")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once on this machine (torch threads per run: cores // jobs)")
    parser.add_argument("--launcher", choices=("local", "ray"), default="local",
                        help="local: a pool of processes on this machine; ray: tasks on a Ray cluster (needs Ray: pip install 'ray[default]')")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address (e.g. auto, ray://head:10001); default: start a local Ray")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: cores // jobs locally, 1 with Ray)")
    parser.add_argument("--dry-run", action="store_true", help="print the runs and their commands, run nothing")
    return parser


def report_parser() -> OneLineParser:
    parser = OneLineParser(
        prog=f"{PROG} report",
        description="Write results.csv, report.md and the plots for a folder of runs (each holding lightning_logs/).",
    )
    parser.add_argument("out", help="folder of runs (e.g. a `discrete-vi compare --out` folder)")
    return parser


def split_extra(args: list[str]) -> tuple[list[str], list[str]]:
    """Own options, and the ones after `--` (for every run's fit)."""
    if "--" in args:
        index = args.index("--")
        return args[:index], args[index + 1:]
    return args, []


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class ProgressPrinter:
    """One line per run as it starts and ends (name, final train ELBO, steps/s, wall time) and an
    overall count, on stdout."""

    def __init__(self, total: int):
        self.total, self.finished, self.failed = total, 0, 0

    def __call__(self, event: str, job: Job, outcome: Outcome | None) -> None:
        if event == "start":
            print(f"[{self.finished}/{self.total} done] start  {job.name}", flush=True)
            return
        self.finished += 1
        self.failed += outcome.status == "failed"
        count = f"[{self.finished}/{self.total} done{f', {self.failed} failed' if self.failed else ''}]"
        if outcome.status == "failed":
            print(f"{count} FAILED {job.name}: {outcome.message} (log: {outcome.log})", flush=True)
            return
        print(f"{count} {outcome.status:<6} {job.name}: {self._numbers(job, outcome)}", flush=True)

    @staticmethod
    def _numbers(job: Job, outcome: Outcome) -> str:
        run = read_run(Path(job.folder))
        if run is None:
            return "no logs"
        numbers = summarize(run)
        wall = numbers["wall_s"] if not math.isnan(numbers["wall_s"]) else outcome.seconds
        bound = "" if math.isnan(numbers["train_bound"]) else f"train bound {numbers['train_bound']:.2f}, "
        return (f"train ELBO {numbers['train_elbo']:.2f}, {bound}test bound {numbers['test_bound']:.2f}, "
                f"{numbers['steps_per_s']:.1f} steps/s, {format_seconds(wall)}")


def compare(argv: list[str]) -> int:
    own, extra = split_extra(argv)
    options = compare_parser().parse_args(own)
    if options.jobs < 1:
        fail(f"--jobs must be >= 1, got {options.jobs}")
    if options.threads is not None and options.threads < 1:
        fail(f"--threads must be >= 1, got {options.threads}")
    for config in options.config:
        if not Path(config).is_file():
            fail(f"config file {config} {'is a folder; give a YAML file' if Path(config).is_dir() else 'does not exist'}")
    with user_errors_in_one_line():
        runs = expand(parse_grid(options.grid))
    out = Path(options.out)
    base = [arg for config in options.config for arg in ("--config", str(Path(config).resolve()))]
    if options.launcher == "ray":
        threads = options.threads or 1
    else:
        threads = options.threads or threads_per_job(options.jobs)
    jobs = [Job(run.name, str(out / run.name), run.values, [*base, *run.args, *extra], threads) for run in runs]
    if options.dry_run:
        for job in jobs:
            print(f"{job.name}: discrete-vi fit {' '.join(job.fit_args)} --trainer.default_root_dir {job.folder} --ckpt_path last")
        return 0
    with user_errors_in_one_line():
        hold_lock(out, "comparison")  # one compare per --out; released when this process ends, however
    for job in jobs:
        for name in (RUN_FILE, DONE_FILE):
            damage = read_json(Path(job.folder) / name)[1]
            if damage:
                print(f"{PROG} compare: {Path(job.folder) / name} is damaged ({damage}); the run is checked again",
                      file=sys.stderr)
    reused = sum(is_done(job.folder) for job in jobs)
    where = (f"Ray ({options.ray_address or 'local'})" if options.launcher == "ray"
             else f"{options.jobs} at once, {threads} torch thread(s) each, {usable_cores()} cores")
    print(f"{PROG} compare: {len(jobs)} runs ({reused} finished already) in {out}, {where}", flush=True)
    progress = ProgressPrinter(len(jobs))
    signal.signal(signal.SIGTERM, _interrupt)  # stopped like Ctrl-C: the runs are stopped too
    try:
        return run_and_report(jobs, options, out, progress)
    except KeyboardInterrupt:
        print(f"{PROG} compare: interrupted; finished runs are kept and the others resume from their last "
              "checkpoint when you run the same command again", file=sys.stderr)
        return 130
    finally:
        release_locks()


def run_and_report(jobs: list[Job], options, out: Path, progress: "ProgressPrinter") -> int:
    """Run the jobs (locally or on Ray), then write the report; 1 if a run failed."""
    start = time.time()
    if options.launcher == "ray":
        with user_errors_in_one_line():
            outcomes = run_ray(jobs, options.ray_address, progress)
    else:
        outcomes = run_local(jobs, options.jobs, progress)
    failed = [o for o in outcomes if o.status == "failed"]
    print(f"{PROG} compare: {len(outcomes) - len(failed)} of {len(outcomes)} runs finished "
          f"({sum(o.status == 'reused' for o in outcomes)} reused) in {format_seconds(time.time() - start)}", flush=True)
    write_and_say(out)
    if failed:
        print(f"{PROG} compare: {len(failed)} run(s) failed:", file=sys.stderr)
        for outcome in failed:
            print(f"  {outcome.name}: {outcome.message}\n    log: {outcome.log}", file=sys.stderr)
        return 1
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def write_and_say(out: Path, runs: list[RunData] | None = None) -> None:
    """Write the report of the runs under `out` (`runs`: already read) and say what was written."""
    runs, written = write_report(out, runs=runs)
    for run in runs:
        for problem in run.damaged:
            print(f"{PROG} report: {run.folder / problem.split(': ', 1)[0]} is damaged ({problem.split(': ', 1)[1]}); "
                  "its row is marked", file=sys.stderr)
    print(f"{PROG} report: {len(runs)} runs -> {', '.join(str(p) for p in written)}", flush=True)


def report(argv: list[str]) -> int:
    options = report_parser().parse_args(argv)
    out = Path(options.out)
    if not out.is_dir():
        fail(f"{out} is not a folder of runs")
    runs = find_runs(out)
    if not runs:
        fail(f"no runs in {out}: expected sub-folders holding lightning_logs/ (or {out}/lightning_logs itself)")
    write_and_say(out, runs)
    return 0


SUBCOMMANDS = {"compare": compare, "report": report}
