"""Readers on the real files in ../shared/data and on small crafted files."""

from __future__ import annotations

import gzip
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from discrete_vi.data import CorruptFileError, SOURCES, read_amat, read_idx, read_omniglot_chardata
from discrete_vi.data.checksums import compute_digest


def test_read_idx_reads_real_mnist(shared_data: Path) -> None:
    folder = shared_data / "mnist"
    train_images = read_idx(folder / "train-images-idx3-ubyte.gz")
    test_images = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    train_labels = read_idx(folder / "train-labels-idx1-ubyte.gz")
    assert train_images.shape == (60_000, 28, 28) and test_images.shape == (10_000, 28, 28)
    assert train_images.dtype == np.uint8 and train_labels.dtype == np.uint8
    assert train_images.min() == 0 and train_images.max() == 255
    assert train_labels.shape == (60_000,) and set(np.unique(train_labels)) == set(range(10))
    assert train_labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first MNIST labels


def test_read_idx_accepts_uncompressed_files(shared_data: Path, tmp_path: Path) -> None:
    packed = shared_data / "mnist" / "t10k-images-idx3-ubyte.gz"
    plain = tmp_path / "t10k-images-idx3-ubyte"
    plain.write_bytes(gzip.decompress(packed.read_bytes()))
    assert np.array_equal(read_idx(plain), read_idx(packed))


def _idx_bytes(images: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, images.ndim]) + np.array(images.shape, dtype=">u4").tobytes()
    return header + images.astype(np.uint8).tobytes()


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x00\x00\x0d\x03" + bytes(12), "unsigned byte"),
        (b"\x08\x03\x00\x00" + bytes(12), "magic"),
        (_idx_bytes(np.zeros((3, 28, 28)))[:-1], r"announces shape \(3, 28, 28\)"),
        (_idx_bytes(np.zeros((3, 28, 28))) + b"\x00", r"announces shape \(3, 28, 28\)"),
    ],
    ids=["float-type", "bad-magic", "short", "long"],
)
def test_read_idx_rejects_malformed_files(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "images-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(CorruptFileError, match=problem) as caught:
        read_idx(path)
    assert str(path) in str(caught.value) and "delete it and download it again" in str(caught.value)


def test_read_idx_rejects_truncated_and_non_gzip_files(shared_data: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated-idx3-ubyte.gz"
    truncated.write_bytes((shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes()[:100_000])
    not_gzip = tmp_path / "text-idx3-ubyte.gz"
    not_gzip.write_bytes(b"<html>404 Not Found</html>")
    for path in (truncated, not_gzip):
        with pytest.raises(CorruptFileError, match="not a complete gzip file") as caught:
            read_idx(path)
        assert str(path) in str(caught.value)


def test_idx_roundtrip_keeps_pixel_order(tmp_path: Path) -> None:
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 251
    path = tmp_path / "pattern-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(images)))
    assert np.array_equal(read_idx(path), images)


def test_binarized_mnist_files_match_recorded_checksums_and_read(shared_data: Path) -> None:
    folder = shared_data / "binarized_mnist"
    expected_counts = {"train_images": 50_000, "val_images": 10_000, "test_images": 10_000}
    for role, data_file in SOURCES["binarized_mnist"].files.items():
        path = folder / (data_file.name + ".gz")
        text = gzip.decompress(path.read_bytes())
        assert hashlib.sha256(text).hexdigest() == data_file.checksum.digest
        images = read_amat(path)
        assert images.shape == (expected_counts[role], 784) and images.dtype == np.uint8
        assert set(np.unique(images)) == {0, 1}
        first_line = np.array(text.split(b"\n", 1)[0].split(), dtype=np.uint8)
        assert np.array_equal(images[0], first_line)


def test_read_amat_plain_gz_and_without_final_newline(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).integers(0, 2, size=(3, 784), dtype=np.uint8)
    text = "\n".join(" ".join(str(v) for v in row) for row in rows)
    plain, packed = tmp_path / "x.amat", tmp_path / "x.amat.gz"
    plain.write_text(text)  # no trailing newline
    packed.write_bytes(gzip.compress((text + "\r\n").encode()))
    assert np.array_equal(read_amat(plain), rows)
    assert np.array_equal(read_amat(packed), rows)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0 " * 783 + "2\n", "characters other than"),
        ("0 " * 782 + "10\n", "not a single 0 or 1"),
        ("0 " * 784 + "\n" + "0 " * 783 + "\n", "line 2 does not hold 784 values"),
        ("", "empty"),
    ],
    ids=["bad-char", "two-digit", "short-line", "empty"],
)
def test_read_amat_rejects_malformed_text(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.amat"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match=problem):
        read_amat(path)


def _write_chardata(path: Path, train: np.ndarray, test: np.ndarray) -> None:
    """Write images ``[N, 28, 28]`` in chardata.mat's layout: 784 x N, column-major images."""
    scipy_io = pytest.importorskip("scipy.io")

    def columns(images: np.ndarray) -> np.ndarray:
        return np.stack([image.reshape(784, order="F") for image in images], axis=1)

    scipy_io.savemat(path, {"data": columns(train), "testdata": columns(test), "target": np.zeros((50, 3))})


def test_read_omniglot_chardata_keeps_images_upright(tmp_path: Path) -> None:
    pattern = np.zeros((28, 28))
    pattern[2, :] = 1.0  # a horizontal bar near the top
    pattern[:, 5] = 0.5  # a vertical bar near the left
    pattern[20, 20] = 0.25  # one lower-right pixel
    train = np.stack([pattern, pattern.T])
    test = np.stack([pattern[::-1]])
    path = tmp_path / "chardata.mat"
    _write_chardata(path, train, test)
    read_train, read_test = read_omniglot_chardata(path)
    assert read_train.shape == (2, 784) and read_test.shape == (1, 784) and read_train.dtype == np.float32
    assert np.array_equal(read_train[0].reshape(28, 28), pattern)
    assert np.array_equal(read_train[1].reshape(28, 28), pattern.T)
    assert np.array_equal(read_test[0].reshape(28, 28), pattern[::-1])
    assert read_train[0].reshape(28, 28)[2].tolist() == [1.0] * 5 + [0.5] + [1.0] * 22


def test_read_omniglot_chardata_rejects_bad_files(tmp_path: Path) -> None:
    scipy_io = pytest.importorskip("scipy.io")
    wrong_shape = tmp_path / "wrong_shape.mat"
    scipy_io.savemat(wrong_shape, {"data": np.zeros((10, 3)), "testdata": np.zeros((784, 2))})
    with pytest.raises(CorruptFileError, match=r"'data' has shape \(10, 3\)"):
        read_omniglot_chardata(wrong_shape)
    not_mat = tmp_path / "chardata.mat"
    not_mat.write_bytes(b"<html>not found</html>")
    with pytest.raises(CorruptFileError, match="not a readable MATLAB file"):
        read_omniglot_chardata(not_mat)


def test_read_omniglot_without_scipy_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "scipy.io", None)  # makes `import scipy.io` fail
    with pytest.raises(ImportError, match=r"needs scipy: pip install scipy"):
        read_omniglot_chardata(tmp_path / "chardata.mat")


def test_compute_digest_of_decompressed_content_ignores_gzip_headers(tmp_path: Path) -> None:
    content = bytes(range(256)) * 100
    first, second = tmp_path / "a.gz", tmp_path / "b.gz"
    first.write_bytes(gzip.compress(content, mtime=0))
    second.write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    assert first.read_bytes() != second.read_bytes()
    checksum = SOURCES["fashion_mnist"].files["train_images"].checksum
    assert compute_digest(first, checksum) == compute_digest(second, checksum) == hashlib.sha256(content).hexdigest()


def test_debian_fashion_mnist_matches_recorded_decompressed_checksums(fashion_mnist_dir: Path) -> None:
    for data_file in SOURCES["fashion_mnist"].files.values():
        assert compute_digest(fashion_mnist_dir / data_file.name, data_file.checksum) == data_file.checksum.digest
    images = read_idx(fashion_mnist_dir / "train-images-idx3-ubyte.gz")
    assert images.shape == (60_000, 28, 28) and images.dtype == np.uint8 and images.max() == 255
