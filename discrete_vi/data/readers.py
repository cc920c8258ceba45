"""Readers for the standard file formats of the binary-image benchmarks.

Every reader takes a path, decompresses it first if its name ends in ``.gz``,
and raises :class:`~discrete_vi.data.errors.CorruptFileError` naming the file
if its content is not what the format promises.
"""

from __future__ import annotations

import gzip
import io
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import numpy as np

from discrete_vi.data.errors import CorruptFileError, damaged_file

_IDX_UBYTE_TYPE_CODE = 0x08
_AMAT_PIXELS_PER_LINE = 784
_AMAT_ALLOWED_BYTES = np.isin(np.arange(256), [ord(c) for c in "01 \n\r"])
_OMNIGLOT_SIDE = 28


@contextmanager
def open_data_file(path: Path, gunzip: bool) -> Iterator[BinaryIO]:
    """``path`` opened for binary reading, through gzip if ``gunzip``. A damaged or
    truncated gzip stream, met anywhere in the ``with`` block, raises CorruptFileError."""
    try:
        with (gzip.open if gunzip else open)(path, "rb") as stream:
            yield stream
    except (gzip.BadGzipFile, EOFError, zlib.error) as error:
        raise damaged_file(path, f"not a complete gzip file ({error})") from error


def read_file_bytes(path: str | Path) -> bytes:
    """The content of ``path``, gunzipped if the name ends in ``.gz``."""
    path = Path(path)
    with open_data_file(path, gunzip=path.suffix == ".gz") as stream:
        return stream.read()


def read_idx(path: str | Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (MNIST, Fashion-MNIST), ``.gz`` or plain.

    Returns a read-only uint8 array (a view of the file's bytes) whose shape is
    the one in the file's header: ``[N, 28, 28]`` for images, ``[N]`` for labels.
    """
    path = Path(path)
    content = read_file_bytes(path)
    if len(content) < 4 or content[0] != 0 or content[1] != 0:
        raise damaged_file(path, "not an IDX file (bad magic number)")
    if content[2] != _IDX_UBYTE_TYPE_CODE:
        raise damaged_file(path, f"IDX element type 0x{content[2]:02x} is not unsigned byte (0x08)")
    ndim = content[3]
    header_bytes = 4 + 4 * ndim
    if len(content) < header_bytes:
        raise damaged_file(path, "IDX header is truncated")
    shape = tuple(int(size) for size in np.frombuffer(content, dtype=">u4", count=ndim, offset=4))
    expected_bytes = header_bytes + int(np.prod(shape, dtype=np.int64))
    if len(content) != expected_bytes:
        raise damaged_file(
            path, f"IDX header announces shape {shape} ({expected_bytes} bytes) but the file has {len(content)} bytes"
        )
    return np.frombuffer(content, dtype=np.uint8, offset=header_bytes).reshape(shape)


def read_amat(path: str | Path) -> np.ndarray:
    """Read a binarized-MNIST ``.amat`` text file (or ``.amat.gz``).

    The format has one image per line: 784 values ``0``/``1`` separated by
    spaces. Returns a uint8 array ``[N, 784]`` of 0/1 values, row-major pixels.
    """
    path = Path(path)
    text = np.frombuffer(read_file_bytes(path), dtype=np.uint8)
    if not _AMAT_ALLOWED_BYTES[text].all():
        raise damaged_file(path, "contains characters other than 0, 1, spaces and newlines")
    is_digit = (text == ord("0")) | (text == ord("1"))
    if np.any(is_digit[1:] & is_digit[:-1]):
        raise damaged_file(path, "contains a value that is not a single 0 or 1")
    line_ends = np.flatnonzero(text == ord("\n"))
    if text.size and text[-1] != ord("\n"):
        line_ends = np.append(line_ends, text.size - 1)  # last line has no newline
    if line_ends.size == 0:
        raise damaged_file(path, "is empty")
    line_starts = np.concatenate(([0], line_ends[:-1] + 1))
    values_per_line = np.add.reduceat(is_digit.view(np.uint8), line_starts, dtype=np.uint32)
    if np.any(values_per_line != _AMAT_PIXELS_PER_LINE):
        bad_line = int(np.flatnonzero(values_per_line != _AMAT_PIXELS_PER_LINE)[0]) + 1
        raise damaged_file(path, f"line {bad_line} does not hold {_AMAT_PIXELS_PER_LINE} values")
    return (text[is_digit] - ord("0")).reshape(-1, _AMAT_PIXELS_PER_LINE)


def read_omniglot_chardata(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read Omniglot's ``chardata.mat`` (the IWAE paper's split), needs scipy.

    The file holds ``data`` (784 x 24,345) and ``testdata`` (784 x 8,070),
    float grey levels in [0, 1], one image per column stored column-major.
    Returns ``(train, test)``: float32 arrays ``[N, 784]`` in [0, 1] whose rows
    are the images in row-major order (``row.reshape(28, 28)`` is upright).
    """
    try:
        import scipy.io
    except ImportError as error:
        raise ImportError(
            "Reading Omniglot's chardata.mat needs scipy: pip install scipy (or pip install -e '.[omniglot]' in a checkout of discrete-vi)."
        ) from error
    path = Path(path)
    try:
        contents = scipy.io.loadmat(io.BytesIO(read_file_bytes(path)))
    except CorruptFileError:
        raise
    except Exception as error:  # scipy raises several unrelated types for a damaged file
        raise damaged_file(path, f"not a readable MATLAB file ({type(error).__name__}: {error})") from error
    return _omniglot_images(path, contents, "data"), _omniglot_images(path, contents, "testdata")


def _omniglot_images(path: Path, contents: dict, key: str) -> np.ndarray:
    """The images under ``key`` as float32 ``[N, 784]``, rows in row-major pixel order."""
    if key not in contents:
        raise damaged_file(path, f"has no variable {key!r}")
    columns = np.asarray(contents[key])
    pixels = _OMNIGLOT_SIDE * _OMNIGLOT_SIDE
    if columns.ndim != 2 or columns.shape[0] != pixels:
        raise damaged_file(path, f"{key!r} has shape {columns.shape}, expected ({pixels}, N)")
    if not np.all(np.isfinite(columns)) or columns.min(initial=0.0) < 0 or columns.max(initial=0.0) > 1:
        raise damaged_file(path, f"{key!r} has values outside [0, 1]")
    count = columns.shape[1]
    # Column n is image n flattened column-major: undo that with a transpose.
    images = columns.T.reshape(count, _OMNIGLOT_SIDE, _OMNIGLOT_SIDE).transpose(0, 2, 1)
    return np.ascontiguousarray(images.reshape(count, pixels), dtype=np.float32)
