"""Whether a run's files are whole: TensorBoard event files checked record by record against their
CRC32C checksums (TensorBoard's reader stops reading a file at its first damaged or truncated
record without a word, so the numbers after it are silently missing), and JSON files that parse.

An event file is a sequence of TFRecords: `length` (uint64, little-endian), the masked CRC32C of
those 8 bytes (uint32), `length` bytes of data, the masked CRC32C of the data (uint32). The
checksums of records that share a length are computed together with numpy (`SHARED_LENGTH`).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c as tensorboard_masked_crc32c


def _crc32c_table() -> np.ndarray:
    """The byte table of CRC-32C (Castagnoli, reflected polynomial 0x82F63B78)."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


_TABLE = _crc32c_table()


SHARED_LENGTH = 8
"""Records of a length at least this many share are checksummed together with numpy (one pass per
byte position for all of them); the others, such as images, one by one with TensorBoard's function
(per byte in Python, but without numpy's per-call cost)."""


def masked_crc32c(blobs: list[bytes]) -> np.ndarray:
    """TFRecord's masked CRC32C of each of `blobs`, `[len(blobs)]` uint32."""
    out = np.zeros(len(blobs), dtype=np.uint32)
    by_length: dict[int, list[int]] = {}
    for index, blob in enumerate(blobs):
        by_length.setdefault(len(blob), []).append(index)
    for length, indices in by_length.items():
        if len(indices) < SHARED_LENGTH:
            out[indices] = [tensorboard_masked_crc32c(blobs[i]) for i in indices]
            continue
        data = np.frombuffer(b"".join(blobs[i] for i in indices), dtype=np.uint8).reshape(len(indices), length)
        crc = np.full(len(indices), 0xFFFFFFFF, dtype=np.uint32)
        for column in range(length):
            crc = _TABLE[(crc ^ data[:, column]) & 0xFF] ^ (crc >> 8)
        crc ^= np.uint32(0xFFFFFFFF)
        rotated = ((crc >> 15) | (crc << 17)).astype(np.uint64)
        out[indices] = ((rotated + 0xA282EAD8) & 0xFFFFFFFF).astype(np.uint32)
    return out


def events_file_problem(path: Path) -> str | None:
    """What is wrong with a TensorBoard event file (truncated, or a record whose checksum does not
    match), or None if every record is whole."""
    content = Path(path).read_bytes()
    headers, header_crcs, datas, data_crcs = [], [], [], []
    offset = 0
    while offset < len(content):
        if offset + 12 > len(content):
            return f"truncated after {len(datas)} records"
        (length,), (header_crc,) = struct.unpack_from("<Q", content, offset), struct.unpack_from("<I", content, offset + 8)
        end = offset + 12 + length + 4
        if end > len(content):
            if masked_crc32c([content[offset:offset + 8]])[0] != header_crc:
                return f"record {len(datas) + 1}'s length fails its checksum"
            return f"truncated after {len(datas)} records"
        headers.append(content[offset:offset + 8])
        header_crcs.append(header_crc)
        datas.append(content[offset + 12:end - 4])
        data_crcs.append(struct.unpack_from("<I", content, end - 4)[0])
        offset = end
    bad = np.flatnonzero((masked_crc32c(headers) != np.asarray(header_crcs, dtype=np.uint32))
                         | (masked_crc32c(datas) != np.asarray(data_crcs, dtype=np.uint32)))
    if bad.size:
        return f"{bad.size} of {len(datas)} records fail their checksum (the first: record {int(bad[0]) + 1})"
    return None


def read_json(path: Path) -> tuple[dict | None, str | None]:
    """A JSON object file's content and None, or None and what is wrong with it (missing: both None)."""
    if not path.is_file():
        return None, None
    try:
        content = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return None, f"not valid JSON ({error})"
    if not isinstance(content, dict):
        return None, "not a JSON object"
    return content, None
