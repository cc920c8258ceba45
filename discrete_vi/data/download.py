"""Downloads of dataset files with checksum verification and atomic writes.

A file is streamed into a hidden temporary file ``.<name>.<random>.part`` in
the destination folder (see :func:`atomic_output`), checked against its
recorded checksum, and only then renamed to its final name. On any failure
(network error, connection closed early, wrong checksum, Ctrl-C) the
temporary file is removed; the data search looks up exact file names only, so
a temporary name is never taken for data.
"""

from __future__ import annotations

import http.client
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from tqdm.auto import tqdm

from discrete_vi.data.checksums import Checksum, compute_digest
from discrete_vi.data.errors import CorruptFileError, DownloadError
from discrete_vi.data.sources import data_source, dataset_folder, find_local_file, search_folders

_CHUNK_BYTES = 1 << 16
_TIMEOUT_SECONDS = 60.0


def download_missing_files(
    dataset: str,
    root: str | os.PathLike | None = None,
    roles: Iterable[str] | None = None,
    mirror: str | None = None,
) -> dict[str, Path]:
    """Make ``dataset``'s files available locally, downloading those found in no searched folder.

    ``roles`` selects files (default: all the dataset's files); ``mirror``
    replaces the dataset's canonical base URL (a file's URL is
    ``mirror + "/" + name``). Downloads go to ``<root>/<dataset folder>/``.
    Returns the local path of every selected file, keyed by role. Raises
    ``ValueError`` for an unknown dataset name.
    """
    source = data_source(dataset)
    folders = search_folders(dataset, root)
    destination_folder = dataset_folder(dataset, root)
    base_url = source.base_url if mirror is None else mirror.rstrip("/") + "/"
    paths = {}
    for role in source.files if roles is None else roles:
        data_file = source.files[role]
        local = find_local_file(data_file, folders)
        if local is None:
            local = download_file(base_url + data_file.name, destination_folder / data_file.name, data_file.checksum)
        paths[role] = local
    return paths


def download_file(url: str, destination: Path, checksum: Checksum, timeout: float = _TIMEOUT_SECONDS) -> Path:
    """Download ``url`` to ``destination`` if its content matches ``checksum``.

    Raises :class:`DownloadError` if the transfer fails and
    :class:`CorruptFileError` if the bytes received do not match; in both
    cases nothing is left in the destination folder.
    """
    destination = Path(destination)
    with atomic_output(destination) as output:
        _stream_url(url, output, timeout, label=destination.name)
        output.flush()
        _verify_download(url, Path(output.name), checksum)
    return destination


@contextmanager
def atomic_output(destination: Path) -> Iterator[BinaryIO]:
    """A new hidden file ``.<name>.<random>.part`` beside ``destination``, open for
    binary writing; renamed to ``destination`` if the ``with`` block ends normally,
    removed if it raises (Ctrl-C included). Created like any file, so its mode
    follows the umask. Missing parent folders are created."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(8)}.part")
    output = open(temporary, "xb")  # "x": a new file, never someone else's
    try:
        with output:
            yield output
        os.replace(temporary, destination)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _stream_url(url: str, output: BinaryIO, timeout: float, label: str) -> None:
    """Copy the body of ``url`` to ``output`` with a progress bar; the whole body or DownloadError."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            announced = response.headers.get("Content-Length")
            expected_bytes = int(announced) if announced is not None else None
            received = 0
            with tqdm(total=expected_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=label) as progress:
                while chunk := response.read(_CHUNK_BYTES):
                    output.write(chunk)
                    received += len(chunk)
                    progress.update(len(chunk))
    except urllib.error.HTTPError as error:
        raise DownloadError(f"Downloading {url} failed: HTTP {error.code} {error.reason}.") from error
    except (OSError, http.client.HTTPException) as error:
        raise DownloadError(
            f"Downloading {url} failed: {type(error).__name__}: {error}. Check the network and try again."
        ) from error
    if expected_bytes is not None and received != expected_bytes:
        raise DownloadError(
            f"Downloading {url} failed: the connection closed after {received} of {expected_bytes} bytes. Try again."
        )


def _verify_download(url: str, path: Path, checksum: Checksum) -> None:
    """Raise CorruptFileError unless ``path`` (just downloaded from ``url``) matches ``checksum``."""
    try:
        actual = compute_digest(path, checksum)
    except CorruptFileError as error:  # the gzip problem is in the chained error
        raise _rejected_download(url, "is not a complete gzip file") from error
    if actual != checksum.digest:
        content = "decompressed content" if checksum.of_decompressed else "file"
        raise _rejected_download(
            url,
            f"does not match its recorded checksum "
            f"({checksum.algorithm} of the {content}: expected {checksum.digest}, got {actual})",
        )


def _rejected_download(url: str, problem: str) -> CorruptFileError:
    return CorruptFileError(
        f"The file downloaded from {url} {problem}. Nothing was saved; try again, or use another mirror."
    )
