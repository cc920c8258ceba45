"""The MNIST subset bundled with the package, so a first run needs no network.

``bundled/mnist_subset.npz`` holds the first 10,000 MNIST training digits as
uint8 grey levels ``[N, 784]`` (row-major 28x28), split in file order into
``train`` (8,000), ``val`` (1,000) and ``test`` (1,000). It is produced by
``scripts/make_mnist_subset.py`` from the original ``train-images-idx3-ubyte.gz``.

Attribution: the bundled subset is taken from the MNIST database of
handwritten digits by Yann LeCun, Corinna Cortes and Christopher J. C. Burges
(http://yann.lecun.com/exdb/mnist/), used under the Creative Commons
Attribution-Share Alike 3.0 licence (CC BY-SA 3.0,
https://creativecommons.org/licenses/by-sa/3.0/). The subset is unchanged
apart from selection and reformatting, and is shared under the same licence.
"""

from __future__ import annotations

from importlib import resources

import numpy as np

from discrete_vi.data.errors import damaged_file
from discrete_vi.data.images import INPUT_SIZE

MNIST_SUBSET_FILE = "bundled/mnist_subset.npz"
MNIST_SUBSET_SPLIT_SIZES: dict[str, int] = {"train": 8_000, "val": 1_000, "test": 1_000}


def load_mnist_subset() -> dict[str, np.ndarray]:
    """The bundled splits: ``{"train", "val", "test"}`` -> uint8 grey levels ``[N, 784]``."""
    resource = resources.files("discrete_vi.data").joinpath(MNIST_SUBSET_FILE)
    with resources.as_file(resource) as path, np.load(path) as archive:
        splits = {name: archive[name] for name in MNIST_SUBSET_SPLIT_SIZES}
    for name, size in MNIST_SUBSET_SPLIT_SIZES.items():
        if splits[name].shape != (size, INPUT_SIZE) or splits[name].dtype != np.uint8:
            raise damaged_file(
                path,
                f"split {name!r} has shape {splits[name].shape} and dtype {splits[name].dtype}, "
                f"expected ({size}, {INPUT_SIZE}) uint8",
                "reinstall discrete_vi (pip install --force-reinstall discrete-vi)",
            )
    return splits
