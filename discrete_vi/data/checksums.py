"""Recorded checksums of data files and the function that checks a file against one."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from discrete_vi.data.readers import open_data_file

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

    Raises :class:`~discrete_vi.data.errors.CorruptFileError` if the content is
    to be decompressed and the file is not valid gzip or is truncated.
    """
    hasher = hashlib.new(checksum.algorithm, usedforsecurity=False)  # integrity check only (FIPS systems)
    with open_data_file(path, gunzip=checksum.of_decompressed) as stream:
        while chunk := stream.read(_CHUNK_BYTES):
            hasher.update(chunk)
    return hasher.hexdigest()
