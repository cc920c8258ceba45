"""Write the bundled MNIST subset ``discrete_vi/data/bundled/mnist_subset.npz``.

Takes the first 10,000 MNIST training digits (uint8 grey levels, [N, 784]) from
``train-images-idx3-ubyte.gz`` in SOURCE_FOLDER (default: ../shared/data/mnist
beside the repository root), after checking the file's recorded md5, and
stores them split in file order as train / val / test = 8,000 / 1,000 / 1,000
with ``np.savez_compressed``. The output is byte-for-byte deterministic: the
zip entries' timestamps are fixed. It is written atomically: an existing file
is replaced only by a complete new one.

Usage: python scripts/make_mnist_subset.py [SOURCE_FOLDER] [--output PATH]
(with discrete_vi installed, e.g. ``pip install -e .``).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
import zipfile
from pathlib import Path

import numpy as np

from discrete_vi.data.bundled import MNIST_SUBSET_FILE, MNIST_SUBSET_SPLIT_SIZES
from discrete_vi.data.checksums import compute_digest
from discrete_vi.data.download import atomic_output
from discrete_vi.data.images import INPUT_SIZE
from discrete_vi.data.readers import read_idx
from discrete_vi.data.sources import SOURCES, dataset_folder

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE_FOLDER = REPO_ROOT.parent / "shared" / "data" / "mnist"
DEFAULT_OUTPUT = REPO_ROOT / "discrete_vi" / "data" / MNIST_SUBSET_FILE
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def subset_splits(source_folder: Path) -> dict[str, np.ndarray]:
    """The first 10,000 training digits of the verified source file, split in order."""
    train_images = SOURCES["mnist"].files["train_images"]
    path = source_folder / train_images.name
    if not path.is_file():
        sys.exit(f"{path} not found: pass the folder that holds MNIST's {train_images.name}, or download it "
                 "with download_missing_files('mnist') from discrete_vi.data "
                 f"(it lands in {dataset_folder('mnist', None)}).")
    digest = compute_digest(path, train_images.checksum)
    if digest != train_images.checksum.digest:
        sys.exit(f"{path}: {train_images.checksum.algorithm} {digest} does not match the recorded "
                 f"{train_images.checksum.digest}; use an original MNIST file.")
    images = read_idx(path).reshape(-1, INPUT_SIZE)
    splits, start = {}, 0
    for name, size in MNIST_SUBSET_SPLIT_SIZES.items():
        splits[name] = images[start : start + size].copy()
        start += size
    return splits


def deterministic_npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """``np.savez_compressed`` of ``arrays`` with the zip timestamps fixed."""
    written = io.BytesIO()
    np.savez_compressed(written, **arrays)
    normalised = io.BytesIO()
    with zipfile.ZipFile(written) as source, zipfile.ZipFile(normalised, "w", zipfile.ZIP_DEFLATED) as target:
        for entry in source.infolist():
            fixed_entry = zipfile.ZipInfo(entry.filename, date_time=_FIXED_ZIP_TIME)
            fixed_entry.compress_type = zipfile.ZIP_DEFLATED
            target.writestr(fixed_entry, source.read(entry), compresslevel=9)
    return normalised.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source_folder", nargs="?", type=Path, default=DEFAULT_SOURCE_FOLDER,
                        help="folder holding MNIST's train-images-idx3-ubyte.gz")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the .npz file to write")
    args = parser.parse_args()
    content = deterministic_npz_bytes(subset_splits(args.source_folder))
    with atomic_output(args.output) as output:
        output.write(content)
    print(f"wrote {args.output}: {len(content)} bytes, sha256 {hashlib.sha256(content).hexdigest()}")


if __name__ == "__main__":
    main()
