"""Errors a user can cause, and the checks that raise them, in one place.

Every user-caused error derives from `UserError`: the command line turns one
into a single line on stderr and exit status 2; any other exception is a bug
and keeps its traceback. This module imports nothing from the package.
"""

from __future__ import annotations

import math
from typing import Sequence


class UserError(Exception):
    """The root of every error a user can cause (a setting, a file, a diverging run)."""


class ConfigurationError(UserError, ValueError):
    """A setting the user chose is invalid: a bad value, or an estimator that cannot train the model."""


class CheckpointError(UserError, ValueError):
    """A checkpoint is missing, empty, corrupt, unsafe, or does not fit the configured model."""


class NonFiniteObjectiveError(UserError, ValueError):
    """The objective `f` returned nan or inf: training diverged."""


def check_count(name: str, value: int, minimum: int) -> int:
    """Return `value` if it is an integer >= `minimum`, else raise ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_range(name: str, value: float | None, low: float = 0.0, high: float = math.inf,
                include_low: bool = False, note: str = "") -> float | None:
    """Return `value` as a float if it is None or a number in the interval from `low` to `high`
    (`low` itself only with `include_low`; `high` excluded), else raise ConfigurationError."""
    if value is None:
        return None
    if high == math.inf:
        interval = f"{'>=' if include_low else '>'} {low:g}"
    else:
        interval = f"in {'[' if include_low else '('}{low:g}, {high:g})"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be a number {interval}{note}, got {value!r}")
    if not ((low <= value if include_low else low < value) and value < high):
        raise ConfigurationError(f"{name} must be {interval}{note}, got {value!r}")
    return float(value)


def check_positive(name: str, value: float | None) -> float | None:
    """Return `value` if it is None or a number > 0 (a learning rate, a temperature), else raise ConfigurationError."""
    return check_range(name, value)


def check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    """Return `value` if it is one of `choices`, else raise ConfigurationError."""
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_sizes(name: str, sizes: Sequence[int]) -> list[int]:
    """Return `sizes` as a list if it is a non-empty list of positive integers, else raise ConfigurationError."""
    values = list(sizes)
    if not values or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in values):
        raise ConfigurationError(f"{name} must be a non-empty list of positive integers, got {sizes}")
    return values


def check_input_size(model_size: int | None, data_size: int | None, dataset: str = "the data") -> None:
    """Raise ConfigurationError unless a model's `input_size` equals the data's pixels per image
    (nothing to check where either is unknown). The one check of input sizes: the command line
    calls it before anything is written, the model's `setup` for runs built in Python."""
    if model_size is not None and data_size is not None and model_size != data_size:
        raise ConfigurationError(
            f"model.input_size is {model_size} but {dataset} has {data_size} pixels per image; "
            f"leave model.input_size unset on the command line (it is taken from the data) or set it to {data_size}"
        )
