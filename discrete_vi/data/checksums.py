"""Recorded checksums of data files and the function that checks a file against one."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

from discrete_vi.data.errors import CorruptFileError

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Checksum:
    """A recorded digest of a file.

    ``algorithm`` is a :mod:`hashlib` name (``"md5"`` or ``"sha256"``). When
    ``of_decompressed`` is true the digest is of the gunzipped content, so that
    re-gzipped copies with other gzip headers (e.g. Debian's Fashion-MNIST)
    still match; the file itself must then be gzip-compressed.
    """

    algorithm: str
    digest: str
    of_decompressed: bool = False


def compute_digest(path: Path, checksum: Checksum) -> str:
    """Hex digest of ``path`` (or of its gunzipped content) with ``checksum.algorithm``.

    Raises :class:`CorruptFileError` if the content is to be decompressed and
    the file is not valid gzip or is truncated.
    """
    hasher = hashlib.new(checksum.algorithm)
    try:
        opener = gzip.open if checksum.of_decompressed else open
        with opener(path, "rb") as stream:
            while chunk := stream.read(_CHUNK_BYTES):
                hasher.update(chunk)
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise CorruptFileError(
            f"{path} is not a complete gzip file ({error}). Delete it and download it again."
        ) from error
    return hasher.hexdigest()
