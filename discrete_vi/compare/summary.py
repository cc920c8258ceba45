"""What a run folder holds, read back: its grid values (`run.json`, else its `config.yaml`), every
scalar of its TensorBoard events (read with TensorBoard's EventAccumulator), whether it finished
(`done.json`) and which of its files are damaged (`integrity`); and the numbers a comparison
reports of it (`METRICS`, `summarize`), grouped by configuration (`group`).

A run is any folder holding `lightning_logs/version_N/` (the newest version is read), so runs
made by hand are read as well as `discrete-vi compare`'s.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from discrete_vi.compare.grid import short_keys, short_value
from discrete_vi.compare.integrity import events_file_problem, read_json
from discrete_vi.compare.runner import DONE_FILE, RUN_FILE
from discrete_vi.runs import LOGS_FOLDER

SEED_KEY = "seed_everything"
STRETCH = 0.1
"""The "last stretch" of a run: its last 10% of training steps (at least the last logged value)."""

METRICS = {
    # column: (what it is, higher is better)
    "train_elbo": ("final train ELBO (nats; mean of train/elbo over the last 10% of steps)", True),
    "train_bound": ("final train K-sample bound, runs on the multi-sample objective (nats; train/bound, same stretch)", True),
    "val_bound_best": ("best validation bound (val/log_likelihood, nats)", True),
    "val_bound_final": ("final validation bound (nats)", True),
    "test_elbo": ("test ELBO (nats)", True),
    "test_bound": ("test bound (test/log_likelihood, nats)", True),
    "log10_grad_variance": ("mean log10 train/grad_variance over the last 10% of steps", False),
    "steps_per_s": ("training steps per second (train/elbo event times; pauses > 10x the median step left out)", True),
    "wall_s": ("wall time of fit + test (s)", False),
}


@dataclass
class RunData:
    """What the report needs of one run: scalars as `tag -> (steps, values, wall times)`."""

    name: str
    folder: Path
    values: dict[str, str]
    seed: str
    scalars: dict[str, tuple[list[int], list[float], list[float]]] = field(default_factory=dict)
    wall_s: float | None = None
    done: bool = False
    damaged: list[str] = field(default_factory=list)
    """The run's files that are damaged, with what is wrong (`file: problem`); its numbers may be off."""

    def config_label(self, keys: list[str]) -> str:
        """The run's configuration without its seed (what runs are grouped by)."""
        labels = short_keys(keys)
        parts = [f"{labels[k]}={short_value(self.values[k])}" for k in keys if k != SEED_KEY and k in self.values]
        return " ".join(parts) or "all"


def latest_version(folder: Path) -> Path | None:
    """The newest `lightning_logs/version_N` of a run folder, or None."""
    versions = [p for p in (folder / LOGS_FOLDER).glob("version_*") if p.is_dir()]
    return max(versions, key=lambda p: int(p.name.split("_")[-1]) if p.name.split("_")[-1].isdigit() else -1) if versions else None


def read_scalars(log_dir: Path) -> dict[str, tuple[list[int], list[float], list[float]]]:
    """Every scalar of a run's folder of event files: tag -> (steps, values, wall times)."""
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 1, "tensors": 1})
    events.Reload()
    out = {}
    for tag in events.Tags()["scalars"]:
        points = events.Scalars(tag)
        out[tag] = ([p.step for p in points], [p.value for p in points], [p.wall_time for p in points])
    return out


def read_run(folder: Path) -> RunData | None:
    """A run folder's data, or None if it has no logs."""
    version = latest_version(folder)
    if version is None:
        return None
    damaged = [f"{path.relative_to(folder)}: {problem}" for path in sorted(version.glob("events.out.tfevents.*"))
               if (problem := events_file_problem(path))]
    record, problem = read_json(folder / RUN_FILE)
    damaged += [f"{RUN_FILE}: {problem}"] if problem else []
    values = {str(k): str(v) for k, v in (record or {}).get("values", {}).items()}
    config = {}
    if (version / "config.yaml").is_file():
        try:
            config = yaml.safe_load((version / "config.yaml").read_text()) or {}
        except yaml.YAMLError as error:
            damaged.append(f"{(version / 'config.yaml').relative_to(folder)}: not valid YAML ({str(error).splitlines()[0]})")
    seed = str(values.get(SEED_KEY, config.get(SEED_KEY, "")))
    if not values:  # a run made by hand: its estimator and seed
        estimator = (((config.get("model") or {}).get("init_args") or {}).get("estimator") or {})
        values = {"model.estimator": str(estimator.get("class_path", "?")) if isinstance(estimator, dict) else str(estimator),
                  SEED_KEY: seed}
    run = RunData(folder.name, folder, values, seed, read_scalars(version))
    done, problem = read_json(folder / DONE_FILE)
    run.damaged = damaged + ([f"{DONE_FILE}: {problem}"] if problem else [])
    if done is not None:
        run.done = True
        run.wall_s = done.get("wall_seconds")
    elif "train/elbo" in run.scalars and run.scalars["train/elbo"][2]:
        walls = [w for _, _, ws in run.scalars.values() for w in ws]
        run.wall_s = max(walls) - min(walls)
    return run


def find_runs(root: Path) -> list[RunData]:
    """Every run in `root` (a run folder itself, or a folder of them), by name."""
    root = Path(root)
    candidates = [root] if (root / LOGS_FOLDER).is_dir() else sorted(p for p in root.iterdir() if p.is_dir())
    return [run for run in (read_run(p) for p in candidates) if run is not None]


def tail_mean(steps: list[int], values: list[float], transform=lambda v: v) -> float:
    """Mean of `transform(value)` over the last STRETCH of the steps (at least the last point)."""
    if not steps:
        return math.nan
    cut = steps[-1] - STRETCH * (steps[-1] - steps[0])
    chosen = [transform(v) for s, v in zip(steps, values) if s >= cut] or [transform(values[-1])]
    return sum(chosen) / len(chosen)


def steps_per_second(steps: list[int], walls: list[float]) -> float:
    """Training throughput from the train/elbo events' wall times: steps over seconds between
    consecutive logged steps, leaving out pauses longer than 10x the median interval
    (validation, checkpoints, an interruption), which are not training."""
    pairs = [(s1 - s0, w1 - w0) for s0, s1, w0, w1 in zip(steps, steps[1:], walls, walls[1:]) if s1 > s0 and w1 >= w0]
    if not pairs:
        return math.nan
    per_step = sorted(dt / ds for ds, dt in pairs)
    median = per_step[len(per_step) // 2]
    kept = [(ds, dt) for ds, dt in pairs if dt <= 10 * median * ds]
    seconds = sum(dt for _, dt in kept)
    return sum(ds for ds, _ in kept) / seconds if seconds > 0 else math.nan


def last(scalars, tag) -> float:
    return scalars[tag][1][-1] if tag in scalars and scalars[tag][1] else math.nan


def summarize(run: RunData) -> dict[str, float]:
    """The metrics of one run (METRICS' columns); NaN where the run did not log them."""
    s = run.scalars
    elbo = s.get("train/elbo", ([], [], []))
    bound = s.get("train/bound", ([], [], []))
    variance = s.get("train/grad_variance", ([], [], []))
    val = s.get("val/log_likelihood", ([], [], []))
    return {
        "train_elbo": tail_mean(elbo[0], elbo[1]),
        "train_bound": tail_mean(bound[0], bound[1]),
        "val_bound_best": max(val[1]) if val[1] else math.nan,
        "val_bound_final": val[1][-1] if val[1] else math.nan,
        "test_elbo": last(s, "test/elbo"),
        "test_bound": last(s, "test/log_likelihood"),
        "log10_grad_variance": tail_mean(variance[0], variance[1], lambda v: math.log10(v) if v > 0 else math.nan),
        "steps_per_s": steps_per_second(elbo[0], elbo[2]),
        "wall_s": run.wall_s if run.wall_s is not None else math.nan,
    }


def grid_keys(runs: list[RunData]) -> list[str]:
    """Grid keys over all runs, in first-seen order."""
    keys: list[str] = []
    for run in runs:
        keys += [k for k in run.values if k not in keys]
    return keys


def group(runs: list[RunData]) -> dict[str, list[RunData]]:
    """Runs by configuration (grid values without the seed), in first-seen order."""
    keys = grid_keys(runs)
    groups: dict[str, list[RunData]] = {}
    for run in runs:
        groups.setdefault(run.config_label(keys), []).append(run)
    return groups


def mean_std(values: list[float]) -> tuple[float, float, int]:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return math.nan, math.nan, 0
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0, len(finite)
