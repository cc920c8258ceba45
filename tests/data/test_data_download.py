"""Downloads against a real local HTTP server: checksums, atomic writes, clean failures."""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
from pathlib import Path

import pytest

import discrete_vi.data.download as download_module
from discrete_vi.data import (
    DATASET_NAMES,
    SOURCES,
    BinarizedImageDataModule,
    CorruptFileError,
    DataFilesNotFoundError,
    DownloadError,
    download_file,
    download_missing_files,
    read_amat,
    read_idx,
)
from discrete_vi.data.sources import locate_files


def _serve_mnist_file(shared_data: Path, served: Path, name: str) -> bytes:
    content = (shared_data / "mnist" / name).read_bytes()
    (served / name).write_bytes(content)
    return content


def _all_entries(folder: Path) -> list[str]:
    """Every name in ``folder`` (hidden temporary files included); [] if it does not exist."""
    return sorted(path.name for path in folder.iterdir()) if folder.exists() else []


def test_download_lands_verified_files_that_read(shared_data: Path, file_server, data_root: Path) -> None:
    served, url = file_server.folder, file_server.url
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        _serve_mnist_file(shared_data, served, name)
    previous_umask = os.umask(0o027)
    try:
        paths = download_missing_files("mnist", roles=["test_images", "test_labels"], mirror=url)
    finally:
        os.umask(previous_umask)
    assert paths == {
        "test_images": data_root / "mnist" / "t10k-images-idx3-ubyte.gz",
        "test_labels": data_root / "mnist" / "t10k-labels-idx1-ubyte.gz",
    }
    assert _all_entries(data_root / "mnist") == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]
    assert read_idx(paths["test_images"]).shape == (10_000, 28, 28)
    assert read_idx(paths["test_labels"]).shape == (10_000,)
    assert paths["test_images"].stat().st_mode & 0o777 == 0o640  # 0o666 less the umask, like any new file


def test_files_already_present_are_not_downloaded_again(shared_data: Path, file_server, data_root: Path) -> None:
    url = file_server.url  # serves nothing: a download attempt would fail with HTTP 404
    (data_root / "mnist").mkdir(parents=True)
    plain_copy = data_root / "mnist" / "t10k-labels-idx1-ubyte"
    plain_copy.write_bytes(gzip.decompress((shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert download_missing_files("mnist", roles=["test_labels"], mirror=url) == {"test_labels": plain_copy}


def test_binarized_mnist_download_verifies_the_amat_text(shared_data: Path, file_server, data_root: Path) -> None:
    served, url = file_server.folder, file_server.url
    name = "binarized_mnist_valid.amat"
    with gzip.open(shared_data / "binarized_mnist" / (name + ".gz")) as packed, open(served / name, "wb") as plain:
        shutil.copyfileobj(packed, plain)
    path = download_missing_files("binarized_mnist", roles=["val_images"], mirror=url)["val_images"]
    assert path == data_root / "binarized_mnist" / name
    assert read_amat(path).shape == (10_000, 784)


def test_fashion_mnist_download_checks_decompressed_content(fashion_mnist_dir: Path, file_server, tmp_path: Path) -> None:
    served, url = file_server.folder, file_server.url
    name = "t10k-labels-idx1-ubyte.gz"
    content = gzip.decompress((fashion_mnist_dir / name).read_bytes())
    (served / name).write_bytes(gzip.compress(content, mtime=1))  # other gzip header than Debian's and Zalando's
    destination = tmp_path / "fashion" / name
    download_file(url + name, destination, SOURCES["fashion_mnist"].files["test_labels"].checksum)
    assert gzip.decompress(destination.read_bytes()) == content
    # A truncated gzip fails the decompressed-content check with a clear message.
    (served / "short.gz").write_bytes((served / name).read_bytes()[:-20])
    with pytest.raises(CorruptFileError, match="short.gz is not a complete gzip file. Nothing was saved"):
        download_file(url + "short.gz", tmp_path / "other" / name, SOURCES["fashion_mnist"].files["test_labels"].checksum)
    assert _all_entries(tmp_path / "other") == []


@pytest.mark.parametrize("damage", ["truncated", "corrupted"])
def test_damaged_download_is_rejected_and_leaves_nothing(
    shared_data: Path, file_server, data_root: Path, damage: str
) -> None:
    served, url = file_server.folder, file_server.url
    name = "t10k-images-idx3-ubyte.gz"
    content = bytearray(_serve_mnist_file(shared_data, served, name))
    if damage == "truncated":
        content = content[: len(content) // 3]
    else:
        content[len(content) // 2] ^= 0xFF
    (served / name).write_bytes(bytes(content))
    with pytest.raises(CorruptFileError, match="does not match its recorded checksum") as caught:
        download_missing_files("mnist", roles=["test_images"], mirror=url)
    assert url + name in str(caught.value) and "Nothing was saved" in str(caught.value)
    assert _all_entries(data_root / "mnist") == []


def test_interrupted_download_leaves_nothing_and_a_retry_succeeds(
    shared_data: Path, file_server, data_root: Path
) -> None:
    served, url = file_server.folder, file_server.url
    name = "t10k-images-idx3-ubyte.gz"
    _serve_mnist_file(shared_data, served, name)
    with pytest.raises(DownloadError, match=r"closed after \d+ of \d+ bytes"):
        download_missing_files("mnist", roles=["test_images"], mirror=file_server.cut_url)
    assert _all_entries(data_root / "mnist") == []
    with pytest.raises(DataFilesNotFoundError):
        locate_files("mnist", ["test_images"], root=None)
    path = download_missing_files("mnist", roles=["test_images"], mirror=url)["test_images"]
    assert read_idx(path).shape == (10_000, 28, 28)


def test_exception_mid_stream_removes_the_temporary_file(
    shared_data: Path, file_server, data_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, url = file_server.folder, file_server.url
    name = "t10k-images-idx3-ubyte.gz"
    _serve_mnist_file(shared_data, served, name)
    seen_partial_files = []

    class InterruptingProgressBar:
        def __init__(self, **kwargs) -> None:
            pass

        def __enter__(self):
            return self

        def __exit__(self, *exc_info) -> None:
            pass

        def update(self, count: int) -> None:
            seen_partial_files.extend(_all_entries(data_root / "mnist"))
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during the transfer

    monkeypatch.setattr(download_module, "tqdm", InterruptingProgressBar)
    with pytest.raises(KeyboardInterrupt):
        download_missing_files("mnist", roles=["test_images"], mirror=url)
    assert len(seen_partial_files) == 1 and seen_partial_files[0].startswith(".") and seen_partial_files[0].endswith(".part")
    assert _all_entries(data_root / "mnist") == []


def test_stale_temporary_file_is_not_taken_for_data(data_root: Path) -> None:
    folder = data_root / "mnist"
    folder.mkdir(parents=True)
    (folder / ".t10k-images-idx3-ubyte.gz.abc123.part").write_bytes(b"partial")
    with pytest.raises(DataFilesNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        locate_files("mnist", ["test_images"], root=None)


def test_http_error_is_a_download_error(file_server, data_root: Path) -> None:
    url = file_server.url
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_missing_files("mnist", roles=["test_labels"], mirror=url)
    assert _all_entries(data_root / "mnist") == []


def test_datamodule_setup_alone_downloads_the_image_files_then_loads(
    shared_data: Path, file_server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    served, url = file_server.folder, file_server.url
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        _serve_mnist_file(shared_data, served, name)
    monkeypatch.setitem(SOURCES, "mnist", dataclasses.replace(SOURCES["mnist"], base_url=url))
    root = tmp_path / "config_root"
    datamodule = BinarizedImageDataModule("mnist", root=str(root), download=True)
    datamodule.setup("fit")  # as from Python, without the Trainer's prepare_data()
    assert _all_entries(root / "mnist") == ["t10k-images-idx3-ubyte.gz", "train-images-idx3-ubyte.gz"]
    assert datamodule.images["train"].shape == (50_000, 784)
    file_server.folder.rename(tmp_path / "unserved")  # a second download would now fail with HTTP 404
    datamodule.prepare_data()  # idempotent: the files are present, nothing is fetched


@pytest.mark.parametrize("dataset", ["cifar10", "mnist_subset"])
def test_download_of_a_dataset_without_files_is_a_clear_value_error(dataset: str) -> None:
    message = {
        "cifar10": "unknown dataset 'cifar10'; choose one of: " + ", ".join(DATASET_NAMES),
        "mnist_subset": "dataset 'mnist_subset' is bundled with the package; it has no files to look up or download",
    }[dataset]
    with pytest.raises(ValueError) as caught:
        download_missing_files(dataset)
    assert str(caught.value) == message


def test_missing_files_error_names_files_folders_and_remedies(
    fashion_mnist_system_folder: Path, data_root: Path
) -> None:
    absent_system_folder = fashion_mnist_system_folder
    with pytest.raises(DataFilesNotFoundError) as caught:
        BinarizedImageDataModule("fashion_mnist").setup()
    message = str(caught.value)
    assert isinstance(caught.value, FileNotFoundError)
    for expected in (
        "train-images-idx3-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        str(data_root / "fashion_mnist"),
        str(absent_system_folder),
        "download=True",
        "--data.download true",
        "DISCRETE_VI_DATA",
        "apt-get install dataset-fashion-mnist",
    ):
        assert expected in message
    assert "labels" not in message  # the datamodule does not need the label files


def test_damaged_file_advice_depends_on_where_the_file_lies(fashion_mnist_system_folder: Path, data_root: Path) -> None:
    system_folder = fashion_mnist_system_folder
    damaged = gzip.compress(b"\x00\x00\x08\x03" + bytes(12))  # an IDX header announcing no images
    system_folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"):
        (system_folder / name).write_bytes(damaged)
    with pytest.raises(CorruptFileError) as caught:
        BinarizedImageDataModule("fashion_mnist").setup()
    message = str(caught.value)
    assert str(system_folder / "train-images-idx3-ubyte.gz") in message and "delete it" not in message
    assert "apt-get install --reinstall dataset-fashion-mnist" in message
    assert str(data_root / "fashion_mnist") in message and "searched first" in message
    # The same damaged file under the data root, which is searched first: delete it and download it again.
    (data_root / "fashion_mnist").mkdir(parents=True)
    (data_root / "fashion_mnist" / "train-images-idx3-ubyte.gz").write_bytes(damaged)
    with pytest.raises(CorruptFileError) as caught:
        BinarizedImageDataModule("fashion_mnist").setup()
    message = str(caught.value)
    assert str(data_root / "fashion_mnist" / "train-images-idx3-ubyte.gz") in message
    assert "delete it and download it again (download=True, or --data.download true)" in message
    assert "reinstall" not in message


def test_no_download_without_permission(data_root: Path) -> None:
    with pytest.raises(DataFilesNotFoundError):
        datamodule = BinarizedImageDataModule("mnist")
        datamodule.prepare_data()
        datamodule.setup()
    assert not (data_root / "mnist").exists()
