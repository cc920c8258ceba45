"""Errors a user can cause, and the checks that raise them, in one place.

The command line turns each of these exceptions into one line on stderr and
exit status 2; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

from typing import Sequence


class ConfigurationError(ValueError):
    """A setting the user chose is invalid: a bad value, or an estimator that cannot train the model."""


class CheckpointError(ValueError):
    """A checkpoint is missing, empty, corrupt, or does not fit the configured model."""


class NonFiniteObjectiveError(ValueError):
    """The objective `f` returned nan or inf: training diverged."""


def check_count(name: str, value: int, minimum: int) -> int:
    """Return `value` if it is an integer >= `minimum`, else raise ConfigurationError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_positive(name: str, value: float | None) -> float | None:
    """Return `value` if it is None or a number > 0 (a learning rate), else raise ConfigurationError."""
    if value is not None and not value > 0:
        raise ConfigurationError(f"{name} must be > 0, got {value}")
    return value


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
