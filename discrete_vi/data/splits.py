"""Train/validation/test image arrays of each dataset, split as the papers use them.

- ``mnist_subset``: 8,000 / 1,000 / 1,000 grey-level images, bundled.
- ``mnist``, ``fashion_mnist``: 50,000 / 10,000 / 10,000 grey-level images.
- ``binarized_mnist``: 50,000 / 10,000 / 10,000 fixed binary images.
- ``omniglot``: 23,000 / 1,345 / 8,070 grey-level images.

MNIST and Fashion-MNIST: the last 10,000 of the 60,000 training images are
the validation split. Binarized MNIST: its published train/valid/test files.
Omniglot: the IWAE split (24,345 train / 8,070 test); the last 1,345
training images are the validation split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from discrete_vi.data.bundled import load_mnist_subset
from discrete_vi.data.errors import CorruptFileError, damaged_file
from discrete_vi.data.images import GREY_LEVELS, INPUT_SIZE
from discrete_vi.data.readers import read_amat, read_idx, read_omniglot_chardata
from discrete_vi.data.sources import BUNDLED_DATASET, data_source, locate_files, replacement_advice

_IDX_TRAIN_SIZE, _IDX_TEST_SIZE, _IDX_VAL_SIZE = 60_000, 10_000, 10_000
_OMNIGLOT_TRAIN_SIZE, _OMNIGLOT_TEST_SIZE, _OMNIGLOT_VAL_SIZE = 24_345, 8_070, 1_345
_BINARIZED_MNIST_SIZES = {"train": 50_000, "val": 10_000, "test": 10_000}


@dataclass(frozen=True)
class ImageSplits:
    """uint8 grey levels ``[N, 784]`` per split (row-major 28x28 pixels), to be
    binarized by a Bernoulli draw with P(1) = grey / 255. A fixed binarization
    (``binarized_mnist``) holds only 0 and 255, which every draw leaves as they are.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray


def load_splits(dataset: str, root: str | os.PathLike | None = None) -> ImageSplits:
    """Load ``dataset``'s splits from local files (see :mod:`discrete_vi.data.sources`).

    Raises ``ValueError`` for an unknown name,
    :class:`~discrete_vi.data.errors.DataFilesNotFoundError` if files are
    missing and :class:`~discrete_vi.data.errors.CorruptFileError` if one is damaged.
    """
    if dataset == BUNDLED_DATASET:
        subset = load_mnist_subset()
        return ImageSplits(subset["train"], subset["val"], subset["test"])
    paths = locate_files(dataset, data_source(dataset).image_roles, root)
    try:
        if dataset == "binarized_mnist":
            return _binarized_mnist_splits(paths)
        if dataset == "omniglot":
            return _omniglot_splits(paths["chardata"])
        return _idx_splits(paths)  # mnist, fashion_mnist
    except CorruptFileError as error:  # how to replace the file depends on where it lies
        if error.path is None:
            raise
        raise error.with_advice(replacement_advice(error.path)) from error.__cause__


def _idx_splits(paths: dict[str, Path]) -> ImageSplits:
    train_and_val = _flat_images(paths["train_images"], read_idx(paths["train_images"]), _IDX_TRAIN_SIZE)
    test = _flat_images(paths["test_images"], read_idx(paths["test_images"]), _IDX_TEST_SIZE)
    train_size = _IDX_TRAIN_SIZE - _IDX_VAL_SIZE
    # Copies: writable arrays that do not keep the read-only file buffers alive.
    return ImageSplits(train_and_val[:train_size].copy(), train_and_val[train_size:].copy(), test.copy())


def _binarized_mnist_splits(paths: dict[str, Path]) -> ImageSplits:
    splits = {}
    for split, size in _BINARIZED_MNIST_SIZES.items():
        path = paths[f"{split}_images"]
        splits[split] = _flat_images(path, read_amat(path), size)
        splits[split] *= GREY_LEVELS  # 0/1 -> 0/255: "on" with probability 1
    return ImageSplits(**splits)


def _omniglot_splits(path: Path) -> ImageSplits:
    train_and_val, test = (
        _flat_images(path, _grey_levels(images), size)
        for images, size in zip(read_omniglot_chardata(path), (_OMNIGLOT_TRAIN_SIZE, _OMNIGLOT_TEST_SIZE))
    )
    train_size = _OMNIGLOT_TRAIN_SIZE - _OMNIGLOT_VAL_SIZE
    return ImageSplits(train_and_val[:train_size].copy(), train_and_val[train_size:].copy(), test)


def _grey_levels(intensities: np.ndarray) -> np.ndarray:
    """Float intensities in [0, 1] -> nearest uint8 grey level (error at most 1/510)."""
    return np.rint(intensities * GREY_LEVELS).astype(np.uint8)


def _flat_images(path: Path, images: np.ndarray, expected_count: int) -> np.ndarray:
    """``images`` as ``[N, 784]``; CorruptFileError unless N == ``expected_count``."""
    if images.ndim < 2 or images.shape[0] != expected_count or images.size != expected_count * INPUT_SIZE:
        raise damaged_file(
            path, f"holds images of shape {images.shape}, expected {expected_count} images of {INPUT_SIZE} pixels"
        )
    return images.reshape(expected_count, INPUT_SIZE)
