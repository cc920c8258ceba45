"""BinarizedImageDataModule on the bundled subset, real MNIST files, Debian's
Fashion-MNIST and a small Omniglot file; batch format and binarization."""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

import discrete_vi.data.splits as splits_module
from discrete_vi.data import BinarizedImageDataModule, DATASET_NAMES
from discrete_vi.data.bundled import load_mnist_subset
from discrete_vi.data.readers import read_idx

REPO_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_NPZ = REPO_ROOT / "discrete_vi" / "data" / "bundled" / "mnist_subset.npz"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"dataset": "cifar10"}, "unknown dataset 'cifar10'; choose one of: " + ", ".join(DATASET_NAMES)),
        ({"batch_size": 0}, "batch_size must be >= 1, got 0"),
        ({"eval_batch_size": -5}, "eval_batch_size must be >= 1, got -5"),
        ({"num_workers": -1}, "num_workers must be >= 0, got -1"),
    ],
)
def test_invalid_arguments_raise_one_clear_value_error(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        BinarizedImageDataModule(**arguments)
    assert str(caught.value) == message


def test_defaults_and_shape_properties_before_setup() -> None:
    datamodule = BinarizedImageDataModule()
    assert datamodule.dataset == "mnist_subset"
    assert (datamodule.batch_size, datamodule.eval_batch_size, datamodule.num_workers) == (100, 500, 0)
    assert datamodule.input_size == 784 and datamodule.image_shape == (28, 28)
    with pytest.raises(RuntimeError, match="after setup"):
        datamodule.train_mean


def test_jsonargparse_builds_the_datamodule_from_command_line_options() -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_class_arguments(BinarizedImageDataModule, "data")
    config = parser.parse_args(["--data.dataset", "mnist", "--data.download", "true", "--data.root", "/x"])
    datamodule = BinarizedImageDataModule(**config.data.as_dict())
    assert (datamodule.dataset, datamodule.download, datamodule.root, datamodule.seed) == ("mnist", True, "/x", 0)


def test_bundled_subset_splits_batches_and_train_mean() -> None:
    datamodule = BinarizedImageDataModule(batch_size=64, eval_batch_size=300)
    datamodule.setup("fit")
    images = datamodule.images
    assert {name: tuple(tensor.shape) for name, tensor in images.items()} == {
        "train": (8_000, 784), "val": (1_000, 784), "test": (1_000, 784)
    }
    assert all(tensor.dtype == torch.uint8 for tensor in images.values())
    assert images["train"].max() == 255 and set(images["val"].unique().tolist()) == {0, 255}
    grey = load_mnist_subset()["train"]
    assert datamodule.train_mean.dtype == torch.float32 and datamodule.train_mean.shape == (784,)
    assert torch.allclose(datamodule.train_mean, torch.from_numpy(grey.mean(axis=0) / 255).float())
    train_batches = list(datamodule.train_dataloader())
    assert len(train_batches) == 125 and train_batches[0].shape == (64, 784) and train_batches[0].dtype == torch.uint8
    assert train_batches[-1].shape == (8_000 - 124 * 64, 784)
    val_batches = list(datamodule.val_dataloader())
    assert [batch.shape[0] for batch in val_batches] == [300, 300, 300, 100]
    assert torch.equal(torch.cat(val_batches), images["val"])  # validation is not shuffled
    assert torch.equal(torch.cat(list(datamodule.test_dataloader())), images["test"])
    datamodule.setup("test")
    assert datamodule.images is images  # loaded once per instance


def _subset_script():
    """``scripts/make_mnist_subset.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location("make_mnist_subset", REPO_ROOT / "scripts" / "make_mnist_subset.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


def test_bundled_subset_is_the_first_10000_mnist_digits_and_reproducible(shared_data: Path) -> None:
    assert BUNDLED_NPZ.stat().st_size < 2_000_000
    script = _subset_script()
    splits = script.subset_splits(shared_data / "mnist")
    mnist = read_idx(shared_data / "mnist" / "train-images-idx3-ubyte.gz").reshape(-1, 784)
    assert np.array_equal(np.concatenate([splits["train"], splits["val"], splits["test"]]), mnist[:10_000])
    assert script.deterministic_npz_bytes(splits) == BUNDLED_NPZ.read_bytes()


def test_validation_and_test_binarization_is_fixed_by_the_seed() -> None:
    first, same_seed, other_seed = (BinarizedImageDataModule(seed=seed) for seed in (7, 7, 8))
    for datamodule in (first, same_seed, other_seed):
        datamodule.setup()
    grey = load_mnist_subset()
    for split in ("val", "test"):
        binary = first.images[split]
        assert torch.equal(binary, same_seed.images[split])
        assert not torch.equal(binary, other_seed.images[split])
        grey_split = torch.from_numpy(grey[split])
        assert set(binary.unique().tolist()) == {0, 255}
        assert torch.all(binary[grey_split == 0] == 0) and torch.all(binary[grey_split == 255] == 255)
        assert abs(binary.float().mean() - grey_split.float().mean()) / 255 < 0.005
    assert not torch.equal(first.images["val"], first.images["test"][: len(first.images["val"])])


class _BatchRecorder(pl.LightningModule):
    """Records what the model receives: per-epoch pixel sums of training batches, validation batches."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(784))
        self.train_pixel_sums: dict[int, torch.Tensor] = {}
        self.val_batches: list[torch.Tensor] = []
        self.batch_formats: set[tuple] = set()

    def _record_format(self, batch: torch.Tensor) -> None:
        values = tuple(sorted(batch.unique().tolist()))
        self.batch_formats.add((type(batch).__name__, batch.dtype, batch.shape[1], values))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self._record_format(batch)
        epoch = self.current_epoch
        self.train_pixel_sums[epoch] = self.train_pixel_sums.get(epoch, 0) + batch.sum(dim=0)
        return (batch * self.weight).mean()

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._record_format(batch)
        self.val_batches.append(batch.clone())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_models_receive_fresh_binary_training_images_each_epoch_and_fixed_validation() -> None:
    pl.seed_everything(3, verbose=False)
    datamodule = BinarizedImageDataModule(batch_size=2_000, eval_batch_size=1_000)
    model = _BatchRecorder()
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=datamodule)
    assert model.batch_formats == {("Tensor", torch.float32, 784, (0.0, 1.0))}
    # Whole-epoch pixel sums do not depend on the shuffling order, only on the binarization.
    first_epoch, second_epoch = model.train_pixel_sums[0], model.train_pixel_sums[1]
    assert not torch.equal(first_epoch, second_epoch)
    probabilities = datamodule.images["train"].double() / 255
    expected = probabilities.sum(dim=0)
    # Per pixel: 6 standard deviations of a sum of Bernoulli draws (+1 for pixels that never vary).
    tolerance = 6 * (probabilities * (1 - probabilities)).sum(dim=0).sqrt() + 1
    for epoch_sums in (first_epoch, second_epoch):
        assert torch.all((epoch_sums.double() - expected).abs() <= tolerance)
    assert len(model.val_batches) == 2
    assert torch.equal(model.val_batches[0], datamodule.images["val"].float() / 255)
    assert torch.equal(model.val_batches[1], model.val_batches[0])


def _write_small_binarized_mnist(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, np.ndarray]:
    """Binarized-MNIST .amat files of 40 / 10 / 10 random images under ``root``; the expected sizes shrink to match."""
    sizes = {"train": 40, "val": 10, "test": 10}
    monkeypatch.setattr(splits_module, "_BINARIZED_MNIST_SIZES", sizes)
    generator = np.random.default_rng(1)
    (root / "binarized_mnist").mkdir(parents=True)
    images = {}
    for split, size in sizes.items():
        images[split] = generator.integers(0, 2, size=(size, 784), dtype=np.uint8)
        name = {"train": "train", "val": "valid", "test": "test"}[split]
        text = "".join(" ".join(map(str, row)) + "\n" for row in images[split])
        (root / "binarized_mnist" / f"binarized_mnist_{name}.amat").write_text(text)
    return images


def test_batch_hook_without_a_trainer_gives_binary_images_fresh_only_for_dynamic_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed_images = _write_small_binarized_mnist(tmp_path, monkeypatch)
    dynamic = BinarizedImageDataModule(batch_size=100, eval_batch_size=100)
    static = BinarizedImageDataModule("binarized_mnist", root=str(tmp_path), batch_size=40, eval_batch_size=10)
    for datamodule in (dynamic, static):
        datamodule.setup()
        assert datamodule.trainer is None
        for split in ("train", "val", "test"):
            batch = next(iter(getattr(datamodule, f"{split}_dataloader")()))
            first, second = (datamodule.on_after_batch_transfer(batch, 0) for _ in range(2))
            assert first.dtype == torch.float32 and first.shape == batch.shape
            assert set(first.unique().tolist()) == {0.0, 1.0}
            fresh_draws = datamodule is dynamic and split == "train"
            assert torch.equal(first, second) != fresh_draws
            if not fresh_draws:
                assert torch.equal(first, batch.float() / 255)
    # Binarized MNIST is served as published: 0/1 pixels, held as 0/255.
    assert torch.equal(static.images["val"], torch.from_numpy(fixed_images["val"]) * 255)
    train = torch.from_numpy(fixed_images["train"]).double()
    assert torch.allclose(static.train_mean.double(), train.mean(dim=0))


def _array_bytes_held(datamodule: BinarizedImageDataModule) -> int:
    """Bytes of all tensor storages and numpy buffers referenced from the datamodule's attributes."""
    storages: dict[int, int] = {}

    def visit(value: object) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        elif isinstance(value, np.ndarray):
            base = value if value.base is None else value.base
            storages[id(base)] = base.nbytes if isinstance(base, np.ndarray) else len(base)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    for value in vars(datamodule).values():
        visit(value)
    return sum(storages.values())


def test_full_mnist_splits_shapes_values_and_memory_held(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "warm_cache"
    (root / "mnist").mkdir(parents=True)
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        os.symlink(shared_data / "mnist" / name, root / "mnist" / name)
    datamodule = BinarizedImageDataModule("mnist", root=str(root))
    started = time.perf_counter()
    datamodule.setup("fit")
    load_seconds = time.perf_counter() - started
    held = _array_bytes_held(datamodule)
    print(f"\nfull MNIST warm-cache setup: {load_seconds:.2f} s, arrays held: {held / 1e6:.1f} MB ({held} bytes)")
    assert {name: tuple(tensor.shape) for name, tensor in datamodule.images.items()} == {
        "train": (50_000, 784), "val": (10_000, 784), "test": (10_000, 784)
    }
    assert held < 100_000_000
    mnist = read_idx(shared_data / "mnist" / "train-images-idx3-ubyte.gz").reshape(-1, 784).copy()
    assert torch.equal(datamodule.images["train"], torch.from_numpy(mnist[:50_000]))
    assert torch.all(datamodule.images["val"][torch.from_numpy(mnist[50_000:]) == 255] == 255)
    assert 0.12 < datamodule.train_mean.mean().item() < 0.14


def test_fashion_mnist_loads_from_the_debian_folder(fashion_mnist_dir: Path, data_root: Path) -> None:
    datamodule = BinarizedImageDataModule("fashion_mnist")  # empty data root: found in the system folder
    datamodule.setup()
    assert {name: tuple(tensor.shape) for name, tensor in datamodule.images.items()} == {
        "train": (50_000, 784), "val": (10_000, 784), "test": (10_000, 784)
    }
    assert datamodule.images["train"].max() == 255 and set(datamodule.images["test"].unique().tolist()) == {0, 255}
    assert 0.2 < datamodule.train_mean.mean().item() < 0.4 and datamodule.train_mean.max() <= 1


def test_omniglot_splits_take_the_last_training_images_as_validation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    # A small file in the real layout; the expected sizes shrink to match (1,345 validation images kept).
    monkeypatch.setattr(splits_module, "_OMNIGLOT_TRAIN_SIZE", 1_400)
    monkeypatch.setattr(splits_module, "_OMNIGLOT_TEST_SIZE", 30)
    generator = np.random.default_rng(0)
    train, test = generator.random((784, 1_400)), generator.random((784, 30))
    (tmp_path / "omniglot").mkdir()
    scipy_io.savemat(tmp_path / "omniglot" / "chardata.mat", {"data": train, "testdata": test})
    datamodule = BinarizedImageDataModule("omniglot", root=str(tmp_path))
    datamodule.setup()
    assert {name: tuple(tensor.shape) for name, tensor in datamodule.images.items()} == {
        "train": (55, 784), "val": (1_345, 784), "test": (30, 784)
    }
    first_image = train[:, 0].reshape(28, 28, order="F").reshape(784)
    assert torch.equal(datamodule.images["train"][0], torch.from_numpy(np.rint(first_image * 255).astype(np.uint8)))
    expected_mean = train[:, :55].T.reshape(55, 28, 28).transpose(0, 2, 1).reshape(55, 784).mean(axis=0)
    assert torch.allclose(datamodule.train_mean.double(), torch.from_numpy(expected_mean), atol=1 / 510)


def test_worker_processes_are_persistent_and_serve_the_same_batches() -> None:
    datamodule = BinarizedImageDataModule(num_workers=1, eval_batch_size=1_000)
    datamodule.setup()
    loader = datamodule.val_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    assert torch.equal(next(iter(loader)), datamodule.images["val"])
    in_process = BinarizedImageDataModule()
    in_process.setup()
    assert not in_process.val_dataloader().persistent_workers


def test_subset_script_says_which_file_is_missing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        _subset_script().subset_splits(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / 'train-images-idx3-ubyte.gz'} not found: pass the folder")


def test_evaluation_batches_under_a_trainer_do_not_consume_the_training_rng():
    datamodule = BinarizedImageDataModule(dataset="mnist_subset", seed=0)
    datamodule.setup("fit")
    datamodule.trainer = pl.Trainer(logger=False, enable_progress_bar=False)  # attached, not training
    batch = next(iter(datamodule.val_dataloader()))
    state = torch.get_rng_state()
    images = datamodule.on_after_batch_transfer(batch, 0)
    assert torch.equal(torch.get_rng_state(), state)
    assert images.dtype == torch.float32 and set(images.unique().tolist()) == {0.0, 1.0}
