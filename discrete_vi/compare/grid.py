"""The grid of a comparison: `--grid KEY=V1,V2,...` options, their cross product, run names."""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field

import yaml

from discrete_vi.checks import UserError


class GridError(UserError, ValueError):
    """A `--grid` option a user wrote wrong (reported in one line, exit status 2)."""


@dataclass(frozen=True)
class Run:
    """One point of the grid.

    Attributes:
        name: folder name under the comparison's output folder (readable, unique in the grid).
        values: grid key -> value, in the order the keys were given.
        args: the `fit` options that set them (`--key value` pairs).
    """

    name: str
    values: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()


def split_values(text: str) -> list[str]:
    """Split at commas outside brackets and braces, so inline configurations stay whole:
    `RLOO,{class_path: Reinforce, init_args: {baseline: ema}}` -> two values."""
    values, depth, current = [], 0, []
    for char in text:
        if char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        if char == "," and depth == 0:
            values.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    values.append("".join(current).strip())
    return values


def parse_grid(specs: list[str]) -> list[tuple[str, list[str]]]:
    """`["model.estimator=RLOO,DisARM", "seed_everything=1,2"]` -> `[(key, values), ...]`."""
    grid: list[tuple[str, list[str]]] = []
    for spec in specs:
        key, sep, rest = spec.partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key or not rest.strip():
            raise GridError(f"--grid {spec!r}: write KEY=V1,V2,... (e.g. --grid model.estimator=RLOO,DisARM)")
        if not re.fullmatch(r"[A-Za-z_][\w.]*", key):
            raise GridError(f"--grid {spec!r}: {key!r} is not an option name (e.g. model.estimator, seed_everything)")
        values = split_values(rest)
        if any(not v for v in values):
            raise GridError(f"--grid {spec!r}: empty value (a stray comma?)")
        if len(set(values)) != len(values):
            raise GridError(f"--grid {spec!r}: a value is repeated")
        if key in (k for k, _ in grid):
            raise GridError(f"--grid {key}= given twice; put all its values in one --grid")
        grid.append((key, values))
    return grid


def short_value(value: str) -> str:
    """A readable, file-name-safe form of a value: class paths by class name, inline
    configurations as `Class-option=value`."""
    text = value
    if value.lstrip().startswith("{"):
        try:
            loaded = yaml.safe_load(value)
        except yaml.YAMLError:
            loaded = None
        if isinstance(loaded, dict):
            head = str(loaded.get("class_path", "")).rpartition(".")[2]
            options = loaded.get("init_args") or {k: v for k, v in loaded.items() if k != "class_path"}
            text = "-".join([head, *(f"{k}={v}" for k, v in options.items())] if head else [f"{k}={v}" for k, v in options.items()])
    elif re.fullmatch(r"[\w.]+", value) and "." in value and not re.fullmatch(r"[\d.eE+-]+", value):
        text = value.rpartition(".")[2]
    return re.sub(r"[^\w.=+-]+", "-", text).strip("-") or "value"


def short_keys(keys: list[str]) -> dict[str, str]:
    """Key -> label: the last dotted component (`seed_everything` -> `seed`), or the whole key
    where two keys would share a label."""
    labels = {key: "seed" if key == "seed_everything" else key.rpartition(".")[2] for key in keys}
    clashes = {label for label in labels.values() if list(labels.values()).count(label) > 1}
    return {key: key if label in clashes else label for key, label in labels.items()}


def expand(grid: list[tuple[str, list[str]]]) -> list[Run]:
    """The cross product of the grid, in order (last key fastest), with unique names such as
    `estimator=RLOO_seed=1`. An empty grid is one run named `run`."""
    if not grid:
        return [Run("run")]
    keys = [key for key, _ in grid]
    labels = short_keys(keys)
    runs, seen = [], set()
    for combination in itertools.product(*(values for _, values in grid)):
        values = dict(zip(keys, combination))
        name = "_".join(f"{labels[k]}={short_value(v)}" for k, v in values.items())
        if name in seen:
            raise GridError(f"two grid points would share the run folder {name!r}; give values that differ in their names")
        seen.add(name)
        args = tuple(arg for k, v in values.items() for arg in (f"--{k}", v))
        runs.append(Run(name, values, args))
    return runs
