"""Exceptions raised by the data layer; each message says what to do next."""

from __future__ import annotations


class DataFilesNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the folders searched."""


class CorruptFileError(ValueError):
    """A data file exists but is damaged: bad gzip, wrong checksum, wrong format or size."""


class DownloadError(OSError):
    """A download failed (network error, HTTP error or connection closed early)."""
