"""What the `discrete-vi` commands say on the terminal when a user's input is wrong (one line on
stderr, `discrete-vi: error: ...`, and exit status 2), and how they read raw arguments. Used by
every subcommand."""

from __future__ import annotations

import argparse
import contextlib
import sys
from typing import Iterator

from discrete_vi.checks import UserError

PROG = "discrete-vi"


def fail(message: str) -> None:
    """Print `discrete-vi: error: message` on stderr and exit with status 2."""
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def say(message: str) -> None:
    """A note for the user on stderr (`discrete-vi: message`)."""
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def user_errors_in_one_line() -> Iterator[None]:
    """Turn a `UserError` raised inside into one line and exit status 2; anything else keeps its traceback."""
    try:
        yield
    except UserError as error:
        fail(str(error))


def option_values(args: list[str], *options: str) -> list[str]:
    """Values given on the command line for any of `options` (as `--option value` or `--option=value`)."""
    values = []
    for index, arg in enumerate(args):
        if arg in options and index + 1 < len(args):
            values.append(args[index + 1])
        elif arg.startswith(tuple(f"{option}=" for option in options)):
            values.append(arg.split("=", 1)[1])
    return values


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # noqa: D401 (argparse's signature)
        fail(f"{message} (see {self.prog} --help)")
