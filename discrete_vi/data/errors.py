"""Exceptions raised by the data layer; each message says what to do next. A leaf module:
it imports nothing from the data layer."""

from __future__ import annotations

from pathlib import Path

from discrete_vi.checks import UserError

REDOWNLOAD_ADVICE = "delete it and download it again (download=True, or --data.download true)"


class DataFilesNotFoundError(UserError, FileNotFoundError):
    """A dataset's files are in none of the folders searched."""


class DownloadError(UserError, OSError):
    """A download failed (network error, HTTP error or connection closed early)."""


class CorruptFileError(UserError, ValueError):
    """A data file exists but is damaged: bad gzip, wrong checksum, wrong format or size.

    `path` and `problem` are set for a damaged local file (`damaged_file`), so that the
    layer that knows where the file came from can give other advice (`with_advice`)."""

    def __init__(self, message: str, path: Path | None = None, problem: str | None = None):
        super().__init__(message)
        self.path, self.problem = path, problem

    def with_advice(self, advice: str) -> "CorruptFileError":
        """The same damaged file, with `advice` on how to replace it."""
        return damaged_file(self.path, self.problem, advice) if self.path is not None else self


def damaged_file(path: str | Path, problem: str, advice: str = REDOWNLOAD_ADVICE) -> CorruptFileError:
    """The one message for a damaged local data file: which file, what is wrong, how to replace it."""
    return CorruptFileError(
        f"{path}: {problem}. The file is damaged or not the expected file; {advice}.", Path(path), problem
    )
