"""Our runs beside the published numbers: which published values (`published.PUBLISHED`) a run's
configuration matches, and the columns of `results.csv` and the section of `report.md` that
`discrete-vi report` writes from them.

A run matches a published value when its actual configuration (the `config.yaml` its fit wrote,
not its folder's name) has the same model class, `--data.dataset`, network, latent sizes and
training objective, the same estimator class at the same evaluations of f per example (its
`n_evaluations`; any, for rows that do not fix it), and the value's metric is one the report
measures. A test bound is compared like for like only at the same number of samples S; at
another S the published value is shown without a difference, and the report says why. Runs
shorter than the published ones are flagged ("2,000 of 10^6 steps").
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from discrete_vi.checkpoints import imported_class
from discrete_vi.checks import UserError
from discrete_vi.estimators import Estimator
from discrete_vi.compare.published import PUBLISHED, UNVERIFIED, PublishedValue, Setup, Table
from discrete_vi.compare.summary import group, latest_version, mean_std, summarize

TRAINING_OBJECTIVE_OPTION = "training_objective"
"""The model option naming its training objective; a model without it trains on the ELBO."""

LIGHTNING_LOG_EVERY = 50
"""Lightning's default `log_every_n_steps`."""

METRIC_NAMES = {"train_elbo": "train ELBO", "test_bound": "test bound", "test_elbo": "test ELBO"}
"""The report's metrics that published values can be (column -> words)."""


@dataclass(frozen=True)
class RunSetup:
    """A run's configuration, in the terms of `published.Setup`.

    Attributes:
        setup: model, dataset, network, latent sizes, training objective.
        estimator: the estimator's class name.
        evaluations: its evaluations of f per example (`n_evaluations`), None if it could not be built.
        test_samples: S of its test bound.
        steps: training steps it ran (the last logged step; `max_steps` once finished).
    """

    setup: Setup
    estimator: str
    evaluations: int | None
    test_samples: int | None
    steps: int | None


@dataclass(frozen=True)
class Match:
    """A published value that a run matches: whether it compares like for like (a test bound at the
    published number of samples), and what to say about it."""

    published: PublishedValue
    like_for_like: bool
    note: str = ""


def _class_and_args(spec) -> tuple[str, dict]:
    """`{class_path: a.b.C, init_args: {...}}` or `"a.b.C"` -> ("a.b.C", {...})."""
    if isinstance(spec, dict):
        return str(spec.get("class_path", "")), dict(spec.get("init_args") or {})
    return str(spec or ""), {}


def estimator_evaluations(class_path: str, init_args: dict) -> int | None:
    """The estimator's evaluations of f per example, by building it; None if it cannot be built: a
    class this program has not imported (a run's files never choose what is imported), or options
    it refuses."""
    cls = imported_class(class_path, Estimator)
    try:
        return int(cls(**init_args).n_evaluations) if cls is not None else None
    except (UserError, TypeError, ValueError):  # only means "cannot match on K"
        return None


def run_setup(run) -> RunSetup | None:
    """The configuration of a run (`summary.RunData`) from its newest `config.yaml`; None if it has none."""
    version = latest_version(Path(run.folder))
    path = version / "config.yaml" if version is not None else None
    if path is None or not path.is_file():
        return None
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    return config_setup(config, steps_run(run, config.get("trainer") or {}))


def config_setup(config: dict, steps: int | None = None) -> RunSetup:
    """A `fit` configuration (as `config.yaml` holds it) in the terms of `published.Setup`."""
    model_path, model = _class_and_args(config.get("model"))
    data = config.get("data") or {}
    data = data.get("init_args", data) if isinstance(data, dict) else {}
    estimator_path, estimator_args = _class_and_args(model.get("estimator"))
    setup = Setup(
        model=model_path.rpartition(".")[2],
        dataset=str(data.get("dataset", "")),
        network=str(model.get("network", "linear")),
        latent_sizes=tuple(int(d) for d in (model.get("latent_sizes") or ())),
        objective=str(model.get(TRAINING_OBJECTIVE_OPTION) or "elbo"),
    )
    return RunSetup(setup, estimator_path.rpartition(".")[2], estimator_evaluations(estimator_path, estimator_args),
                    model.get("test_samples"), steps)


def steps_run(run, trainer: dict) -> int | None:
    """Training steps of a run: its last logged training step + 1, or `trainer.max_steps` for a
    finished run whose last logged step is within one logging interval of it."""
    steps = (run.scalars.get("train/elbo") or ([], [], []))[0]
    if not steps:
        return None
    done = max(steps) + 1
    max_steps = trainer.get("max_steps") or -1
    every = trainer.get("log_every_n_steps") or LIGHTNING_LOG_EVERY
    if run.done and max_steps > 0 and 0 <= max_steps - done < every:
        return int(max_steps)
    return done


def matches(run: RunSetup, published: tuple[PublishedValue, ...] = PUBLISHED) -> list[Match]:
    """The published values whose setup, estimator and evaluations are the run's."""
    found = []
    for value in published:
        if value.setup != run.setup or value.estimator != run.estimator or value.metric not in METRIC_NAMES:
            continue
        if value.evaluations is not None and value.evaluations != run.evaluations:
            continue
        if value.metric == "test_bound" and value.samples is not None and value.samples != run.test_samples:
            found.append(Match(value, False, f"not like for like: ours is a {run.test_samples}-sample bound"))
        elif value.metric == "test_bound" and value.samples is None:
            found.append(Match(value, True, f"ours: a {run.test_samples}-sample bound; the published one's samples are not stated"))
        else:
            found.append(Match(value, True))
    return found


def format_steps(steps: int | None) -> str:
    """10**6 -> "10^6", 1_200_000 -> "1.2×10^6", 2000 -> "2,000", None -> "?"."""
    if steps is None:
        return "?"
    exponent = int(math.log10(steps)) if steps > 0 else 0
    if steps >= 10**5 and steps % 10**exponent == 0:
        mantissa = steps // 10**exponent
        return f"10^{exponent}" if mantissa == 1 else f"{mantissa}×10^{exponent}"
    if steps >= 10**5 and (steps * 10) % 10**exponent == 0:
        return f"{steps / 10**exponent:g}×10^{exponent}"
    return f"{steps:,}"


def steps_text(ours: list[int | None], published: int | None) -> str:
    """"2,000 of 10^6" (a range where seeds differ; the published count alone if ours is not known)."""
    known = sorted({s for s in ours if s is not None})
    if not known:
        return f"? of {format_steps(published)}"
    mine = format_steps(known[0]) if len(known) == 1 else f"{format_steps(known[0])}–{format_steps(known[-1])}"
    return f"{mine} of {format_steps(published)}"


def is_shorter(ours: list[int | None], published: int | None) -> bool:
    return published is not None and any(s is not None and s < published for s in ours)


def _round(value: float) -> float | str:
    return "" if value is None or math.isnan(value) else round(value, 4)


def csv_columns(runs: list) -> list[dict]:
    """For each run (in order), the columns `results.csv` adds: `published_<metric>` and
    `vs_published_<metric>` (ours − published, nats; blank where not like for like) for every
    metric some run matches, then `published_source` and `published_steps` (ours of theirs).
    Every run gets the same columns (blank where it matches nothing); none if no run matches."""
    found = []
    for run in runs:
        setup = run_setup(run)
        found.append((setup, matches(setup) if setup else []))
    metrics = [m for m in METRIC_NAMES if any(match.published.metric == m for _, ms in found for match in ms)]
    if not metrics:
        return [{} for _ in runs]
    rows = []
    for run, (setup, run_matches) in zip(runs, found):
        ours = summarize(run)
        row: dict = {}
        for metric in metrics:
            chosen = next((m for m in run_matches if m.published.metric == metric), None)
            row[f"published_{metric}"] = chosen.published.value if chosen else ""
            row[f"vs_published_{metric}"] = (_round(ours[metric] - chosen.published.value)
                                              if chosen and chosen.like_for_like else "")
        tables = list(dict.fromkeys(m.published.table.label for m in run_matches))
        steps = [m.published.steps for m in run_matches]
        row["published_source"] = "; ".join(tables)
        row["published_steps"] = steps_text([setup.steps], max(s or 0 for s in steps) or None) if run_matches else ""
        rows.append(row)
    return rows


def _published_text(value: PublishedValue) -> str:
    return f"{value.value:.2f}" + (f" ± {value.spread:.2f}" if value.spread is not None else "")


def markdown_section(runs: list) -> list[str]:
    """The lines of `report.md`'s section "Beside the published numbers" (none if no
    configuration of `runs` matches a published value)."""
    table_rows, tables, shorter, unlike = [], {}, set(), False
    for label, members in group(runs).items():
        setups = [run_setup(run) for run in members]
        if setups[0] is None:
            continue
        steps = [s.steps if s else None for s in setups]
        summaries = [summarize(run) for run in members]
        for match in matches(setups[0]):
            value = match.published
            tables[value.table.label] = value.table
            mean, std, n = mean_std([s[value.metric] for s in summaries])
            ours = "–" if n == 0 else (f"{mean:.2f} ± {std:.2f} (n={n})" if n > 1 else f"{mean:.2f} (n=1)")
            difference = f"{mean - value.value:+.2f}" if match.like_for_like and n else "–"
            unlike |= not match.like_for_like
            run_steps = steps_text(steps, value.steps)
            if is_shorter(steps, value.steps):
                shorter.add(run_steps)
                run_steps = f"**{run_steps}**"
            notes = "; ".join(x for x in (match.note, value.note, "" if value.checked == UNVERIFIED else value.checked) if x)
            table_rows.append(f"| {label} | {METRIC_NAMES[value.metric]} | {ours} | {_published_text(value)} | {difference} "
                              f"| {run_steps} | {value.table.label} | {notes} |")
    if not table_rows:
        return []
    lines = ["## Beside the published numbers", ""]
    if shorter:
        lines += [f"**These runs are shorter than the published ones ({'; '.join(sorted(shorter))} steps): their values "
                  "are not expected to reach the published ones; only orderings and gaps compare.**", ""]
    lines += ["| configuration | metric | ours | published | ours − published | steps (ours of published) | source | notes |",
              "|---|---|---|---|---|---|---|---|", *table_rows, "",
              "Ours: mean ± standard deviation over seeds. Published: the paper's value and its ± (below). Nats, as "
              "log-likelihoods (higher is better; the ARM paper's printed -log p(x) of 107.2 is -107.2 here); "
              "ours − published > 0: ours higher. A run matches a published row by its configuration (config.yaml: "
              "model, dataset, network, latent sizes, training objective, estimator class and its evaluations of f)."]
    if unlike:
        lines += ["A test bound at another number of samples than the published one is shown without a difference "
                  "(not like for like)."]
    lines += ["", "Sources (values transcribed from the papers; not checked against the papers' text here unless "
              "marked corroborated: see `discrete_vi/compare/published.py`):", ""]
    lines += [_table_note(table) for table in tables.values()]
    return lines + [""]


def _table_note(table: Table) -> str:
    spread = f" ±: {table.spread}." if table.spread else ""
    caveat = f" {table.caveat}" if table.caveat else ""
    return f"- **{table.label}**: {table.citation}; {table.reports}.{spread}{caveat}"
