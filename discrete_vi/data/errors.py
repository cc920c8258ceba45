"""Exceptions raised by the data layer; each message says what to do next."""

from __future__ import annotations

from pathlib import Path


class DataFilesNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the folders searched."""


class CorruptFileError(ValueError):
    """A data file exists but is damaged: bad gzip, wrong checksum, wrong format or size."""


class DownloadError(OSError):
    """A download failed (network error, HTTP error or connection closed early)."""


def corrupt_file_error(path: str | Path, problem: str) -> CorruptFileError:
    """The one message for a damaged local data file: which file, what is wrong, and how
    to replace it, which depends on where the file lies (see ``replacement_advice``)."""
    # Imported here: sources imports this module for DataFilesNotFoundError.
    from discrete_vi.data.sources import replacement_advice

    return CorruptFileError(
        f"{path}: {problem}. The file is damaged or not the expected file; {replacement_advice(Path(path))}."
    )
