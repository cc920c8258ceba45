"""The LightningDataModule that serves binary 28x28 images to the models."""

from __future__ import annotations

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from discrete_vi.data.download import download_missing_files
from discrete_vi.data.images import GREY_LEVELS, IMAGE_SHAPE, INPUT_SIZE, sample_binary_images
from discrete_vi.checks import check_count
from discrete_vi.data.sources import BUNDLED_DATASET, DatasetName, check_dataset_name, data_source
from discrete_vi.data.splits import load_splits


class _ImageRows(Dataset):
    """Rows of a uint8 tensor ``[N, 784]``, fetched a batch at a time: item ``indices``
    (a list of row numbers, from a ``BatchSampler``) is the uint8 batch ``[len(indices), 784]``
    (one indexing operation instead of one fetch per image and a collate)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, indices: list[int]) -> torch.Tensor:
        return self.images.index_select(0, torch.as_tensor(indices))  # 2x faster than images[indices]


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

    Binarization: every split is held as uint8 grey levels and every batch
    goes through one Bernoulli draw per pixel with P(1) = grey / 255, in
    :meth:`on_after_batch_transfer` on the model's device. Dynamic training
    images therefore get a fresh draw on every pass. The validation and test
    splits (and all of ``binarized_mnist``) hold only 0 and 255, so their draw
    is fixed: validation and test are binarized once, in :meth:`setup`, with a
    ``torch.Generator`` seeded with ``seed``, and their scores are comparable
    across runs and estimators. Training draws use torch's global RNG: they are
    reproducible only when the run is seeded (``pl.seed_everything`` or
    ``--seed_everything`` on the command line).

    Batch format: the DataLoaders yield uint8 tensors ``[B, 784]``; after the
    transfer hook every batch is a float32 tensor ``[B, 784]`` of exact 0/1
    values (row-major 28x28 pixels, no labels). The Trainer calls the hook;
    a loop without one calls ``datamodule.on_after_batch_transfer(batch, 0)``.

    Files are looked up under ``root`` (default ``$DISCRETE_VI_DATA`` or
    ``~/.cache/discrete_vi``) and known system folders; with ``download=True``
    missing files are downloaded in :meth:`prepare_data` (called by
    :meth:`setup` as well, so a ``setup()`` alone downloads too).
    """

    def __init__(
        self,
        dataset: DatasetName = "mnist_subset",
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
        check_dataset_name(dataset)
        check_count("batch_size", batch_size, 1)
        check_count("eval_batch_size", eval_batch_size, 1)
        check_count("num_workers", num_workers, 0)
        self.save_hyperparameters()
        self.dataset = dataset
        self.root = root
        self.download = download
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._images: dict[str, torch.Tensor] | None = None
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
        """float32 ``[784]``: mean pixel intensity (grey level / 255, in [0, 1]) over the
        training split. Needs :meth:`setup`."""
        if self._train_mean is None:
            raise RuntimeError("train_mean is known after setup(); call datamodule.setup() first.")
        return self._train_mean

    @property
    def images(self) -> dict[str, torch.Tensor]:
        """The uint8 grey levels ``[N, 784]`` held per split after :meth:`setup`: ``train``
        as read (0/255 for ``binarized_mnist``), ``val`` and ``test`` binarized once to 0/255."""
        if self._images is None:
            raise RuntimeError("images are loaded by setup(); call datamodule.setup() first.")
        return self._images

    def prepare_data(self) -> None:
        """Download missing files if ``download`` is set (files already present are kept); nothing else."""
        if self.download and self.dataset != BUNDLED_DATASET:
            download_missing_files(self.dataset, self.root, roles=data_source(self.dataset).image_roles)

    def setup(self, stage: str | None = None) -> None:
        """Load the splits once per instance (downloading first if ``download`` is set)
        and binarize validation and test with ``seed``."""
        if self._images is not None:
            return
        self.prepare_data()
        splits = load_splits(self.dataset, self.root)
        # Summed in float64 chunk by chunk: no float copy of the training set.
        self._train_mean = torch.from_numpy(splits.train.mean(axis=0, dtype=np.float64) / GREY_LEVELS).float()
        generator = torch.Generator().manual_seed(self.seed)
        val, test = (
            (sample_binary_images(torch.from_numpy(split), generator) * GREY_LEVELS).to(torch.uint8)
            for split in (splits.val, splits.test)
        )
        self._images = {"train": torch.from_numpy(splits.train), "val": val, "test": test}

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test split, in order (``discrete-vi predict`` scores each test image)."""
        return self.test_dataloader()

    def transfer_batch_to_device(self, batch: torch.Tensor, device: torch.device, dataloader_idx: int) -> torch.Tensor:
        """The uint8 batch ``[B, 784]`` to ``device`` with one ``.to`` (Lightning's generic walk over
        collections costs more than the batch itself on a CPU)."""
        return batch.to(device, non_blocking=True)

    def on_after_batch_transfer(self, batch: torch.Tensor, dataloader_idx: int) -> torch.Tensor:
        """uint8 ``[B, 784]`` on the device -> float32 0/1 ``[B, 784]``.

        Training batches get one Bernoulli draw per pixel (fresh for grey levels,
        fixed for 0/255 pixels). Validation and test images are stored as 0/255
        and are only converted when a Trainer evaluates, so evaluation never
        consumes the training random stream; without a Trainer every batch is drawn.
        """
        if self.trainer is not None and not self.trainer.training:
            return batch.to(torch.float32) / GREY_LEVELS
        return sample_binary_images(batch)

    def _loader(self, split: str, batch_size: int, shuffle: bool) -> DataLoader:
        rows = _ImageRows(self.images[split])
        order = RandomSampler(rows) if shuffle else SequentialSampler(rows)
        return DataLoader(
            rows,
            sampler=BatchSampler(order, batch_size, drop_last=False),
            batch_size=None,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )
