"""The LightningDataModule that serves binary 28x28 images to the models."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from discrete_vi.data.download import download_missing_files
from discrete_vi.data.images import GREY_LEVELS, IMAGE_SHAPE, INPUT_SIZE, sample_binary_images
from discrete_vi.data.sources import SOURCES
from discrete_vi.data.splits import DATASET_NAMES, load_splits


class _ImageRows(Dataset):
    """Rows of a uint8 tensor ``[N, 784]``; item ``i`` is the uint8 image ``[784]``."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class BinarizedImageDataModule(pl.LightningDataModule):
    """Binary 28x28 images for VAEs and sigmoid belief nets, chosen by name.

    Datasets (``dataset``): ``mnist_subset`` (default; 8,000 / 1,000 / 1,000
    MNIST digits bundled with the package, dynamically binarized), ``mnist``
    and ``fashion_mnist`` (50,000 / 10,000 / 10,000: the last 10,000 training
    images are the validation split; dynamic), ``binarized_mnist`` (the fixed
    binarization of Larochelle & Murray, its published 50,000 / 10,000 /
    10,000 files) and ``omniglot`` (the IWAE split, 24,345 train / 8,070 test;
    the last 1,345 training images are taken as the validation split, leaving
    23,000 for training; dynamic).

    Dynamic binarization draws a fresh Bernoulli image (P(1) = grey / 255) on
    every pass over the training data, in :meth:`on_after_batch_transfer` on
    the model's device with torch's global RNG (seeded by Lightning). The
    validation and test splits are binarized once, in :meth:`setup`, with a
    ``torch.Generator`` seeded with ``seed``, so their scores are comparable
    across runs and estimators.

    Batch format: the DataLoaders yield uint8 tensors ``[B, 784]``; after the
    transfer hook every batch a model receives is a float32 tensor
    ``[B, 784]`` of exact 0/1 values (row-major 28x28 pixels, no labels).

    Files are looked up under ``root`` (default ``$DISCRETE_VI_DATA`` or
    ``~/.cache/discrete_vi``) and known system folders; with ``download=True``
    missing files are downloaded in :meth:`prepare_data`.
    """

    def __init__(
        self,
        dataset: str = "mnist_subset",
        root: str | None = None,
        download: bool = False,
        batch_size: int = 100,
        eval_batch_size: int = 500,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        """
        Args:
            dataset: one of ``mnist_subset``, ``mnist``, ``binarized_mnist``, ``fashion_mnist``, ``omniglot``.
            root: data folder holding one sub-folder per dataset; default ``$DISCRETE_VI_DATA``
                or ``~/.cache/discrete_vi``.
            download: download missing files from the canonical URLs (checksums verified).
            batch_size: training batch size.
            eval_batch_size: validation and test batch size.
            num_workers: DataLoader worker processes (0: load in the main process).
            seed: seed of the one-off binarization of the validation and test splits.
        """
        super().__init__()
        if dataset not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASET_NAMES)}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        if eval_batch_size <= 0:
            raise ValueError(f"eval_batch_size must be a positive integer, got {eval_batch_size}")
        if num_workers < 0:
            raise ValueError(f"num_workers must be 0 or more, got {num_workers}")
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._images: dict[str, torch.Tensor] | None = None
        self._train_is_binary = False
        self._train_mean: torch.Tensor | None = None

    @property
    def input_size(self) -> int:
        """Pixels per flattened image: 784."""
        return INPUT_SIZE

    @property
    def image_shape(self) -> tuple[int, int]:
        """Height and width of an image: (28, 28)."""
        return IMAGE_SHAPE

    @property
    def train_mean(self) -> torch.Tensor:
        """float32 ``[784]``: mean pixel intensity in [0, 1] over the training split
        (grey level / 255, or the 0/1 mean for ``binarized_mnist``). Needs :meth:`setup`."""
        if self._train_mean is None:
            raise RuntimeError("train_mean is known after setup(); call datamodule.setup() first.")
        return self._train_mean

    @property
    def images(self) -> dict[str, torch.Tensor]:
        """The uint8 ``[N, 784]`` tensors held per split after :meth:`setup`: ``train``
        (grey levels, or 0/1 for ``binarized_mnist``), ``val`` and ``test`` (0/1, binarized once)."""
        if self._images is None:
            raise RuntimeError("images are loaded by setup(); call datamodule.setup() first.")
        return self._images

    def prepare_data(self) -> None:
        """Download missing files if ``download`` is set; nothing else."""
        if self.download and self.dataset in SOURCES:
            download_missing_files(self.dataset, self.root, roles=_roles_needed(self.dataset))

    def setup(self, stage: str | None = None) -> None:
        """Load the splits once per instance and binarize validation and test with ``seed``."""
        if self._images is not None:
            return
        splits = load_splits(self.dataset, self.root)
        train = torch.from_numpy(splits.train)
        scale = 1.0 if splits.binary else float(GREY_LEVELS)
        self._train_mean = (train.to(torch.float64).mean(dim=0) / scale).to(torch.float32)
        if splits.binary:
            val, test = torch.from_numpy(splits.val), torch.from_numpy(splits.test)
        else:
            generator = torch.Generator().manual_seed(self.seed)
            val, test = (
                sample_binary_images(torch.from_numpy(split), generator).to(torch.uint8)
                for split in (splits.val, splits.test)
            )
        self._images = {"train": train, "val": val, "test": test}
        self._train_is_binary = splits.binary

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """uint8 ``[B, 784]`` on the device -> float32 0/1 ``[B, 784]``; a fresh draw while training."""
        training = self.trainer is not None and self.trainer.training
        if training and not self._train_is_binary:
            return sample_binary_images(batch)
        return batch.to(torch.float32)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        return DataLoader(
            _ImageRows(self.images[split]),
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )


def _roles_needed(dataset: str) -> tuple[str, ...]:
    """The files the datamodule reads for ``dataset`` (labels are not needed)."""
    return tuple(role for role in SOURCES[dataset].files if not role.endswith("_labels"))
