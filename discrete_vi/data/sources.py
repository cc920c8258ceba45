"""Where each dataset's files come from: the one table of file names, URLs and
checksums, the data root, and the search for local copies.

Search order for a file: ``<root>/<dataset folder>/`` (``root`` defaults to
:func:`default_data_root`), then known system folders (Debian's
``/usr/share/datasets/fashion-mnist/``). Downloading (see
:mod:`discrete_vi.data.download`) writes into ``<root>/<dataset folder>/``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from discrete_vi.checks import ConfigurationError
from discrete_vi.data.checksums import Checksum
from discrete_vi.data.errors import REDOWNLOAD_ADVICE, DataFilesNotFoundError

DATA_ROOT_ENV_VAR = "DISCRETE_VI_DATA"


@dataclass(frozen=True)
class DataFile:
    """One published file: its name (at the URL and in the cache) and recorded checksum."""

    name: str
    checksum: Checksum

    @property
    def accepted_names(self) -> tuple[str, str]:
        """Local names accepted for this file: as published, and the gzipped or gunzipped name."""
        if self.name.endswith(".gz"):
            return self.name, self.name[: -len(".gz")]
        return self.name, self.name + ".gz"


@dataclass(frozen=True)
class DataSource:
    """A dataset's files, keyed by role (e.g. ``"train_images"``), and where to get them.

    ``image_roles`` are the files the datamodule reads (the images; labels are
    not needed): :func:`~discrete_vi.data.splits.load_splits` looks them up and
    the datamodule downloads them.
    """

    title: str
    folder: str  # sub-folder of the data root
    base_url: str  # a file's URL is base_url + file name
    files: Mapping[str, DataFile]
    image_roles: tuple[str, ...]
    system_folders: tuple[Path, ...] = ()
    debian_package: str | None = None  # a Debian package that installs the files in system_folders


def _md5(digest: str) -> Checksum:
    return Checksum("md5", digest)


def _sha256(digest: str, of_decompressed: bool = False) -> Checksum:
    return Checksum("sha256", digest, of_decompressed)


_IDX_FILE_NAMES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_IDX_IMAGE_ROLES = ("train_images", "test_images")  # the datamodule needs no labels


def _idx_files(**checksums: Checksum) -> dict[str, DataFile]:
    """The four MNIST-style IDX files (same names for MNIST and Fashion-MNIST), keyed by role."""
    return {role: DataFile(name, checksums[role]) for role, name in _IDX_FILE_NAMES.items()}


SOURCES: Mapping[str, DataSource] = {
    "mnist": DataSource(
        title="MNIST",
        folder="mnist",
        base_url="https://storage.googleapis.com/cvdf-datasets/mnist/",
        files=_idx_files(  # md5 of the .gz files, as published with MNIST
            train_images=_md5("f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            train_labels=_md5("d53e105ee54ea40749a09fcbcd1e9432"),
            test_images=_md5("9fb629c4189551a2d022fa330f9573f3"),
            test_labels=_md5("ec29112dd5afa0611ce80d1b7f02629c"),
        ),
        image_roles=_IDX_IMAGE_ROLES,
    ),
    "binarized_mnist": DataSource(
        title="binarized MNIST (Larochelle & Murray)",
        folder="binarized_mnist",
        base_url="http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
        files={
            # sha256 of the .amat text files (the values TensorFlow Datasets records).
            "train_images": DataFile(
                "binarized_mnist_train.amat",
                _sha256("ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d"),
            ),
            "val_images": DataFile(
                "binarized_mnist_valid.amat",
                _sha256("1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2"),
            ),
            "test_images": DataFile(
                "binarized_mnist_test.amat",
                _sha256("e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c"),
            ),
        },
        image_roles=("train_images", "val_images", "test_images"),
    ),
    "fashion_mnist": DataSource(
        title="Fashion-MNIST",
        folder="fashion_mnist",
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        files=_idx_files(  # sha256 of the DECOMPRESSED bytes: copies differ only in gzip headers
            train_images=_sha256("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", True),
            train_labels=_sha256("bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", True),
            test_images=_sha256("5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", True),
            test_labels=_sha256("0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", True),
        ),
        image_roles=_IDX_IMAGE_ROLES,
        system_folders=(Path("/usr/share/datasets/fashion-mnist"),),
        debian_package="dataset-fashion-mnist",
    ),
    "omniglot": DataSource(
        title="Omniglot (IWAE split)",
        folder="omniglot",
        base_url="https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/",
        files={"chardata": DataFile("chardata.mat", _md5("21ecaf34373511aa7691cf2e0802aa3d"))},
        image_roles=("chardata",),
    ),
}

BUNDLED_DATASET = "mnist_subset"  # bundled with the package: no files to look up or download
DatasetName = Literal["mnist_subset", "mnist", "binarized_mnist", "fashion_mnist", "omniglot"]
"""The names `BinarizedImageDataModule(dataset=...)` takes (the command line shows them as choices)."""
DATASET_NAMES: tuple[str, ...] = get_args(DatasetName)
assert set(DATASET_NAMES) == {BUNDLED_DATASET, *SOURCES}, "DatasetName must list every source"


def check_dataset_name(dataset: str) -> None:
    """Raise the one ``ValueError`` for a dataset name not in :data:`DATASET_NAMES`."""
    if dataset not in DATASET_NAMES:
        raise ConfigurationError(f"unknown dataset {dataset!r}; choose one of: {', '.join(DATASET_NAMES)}")


def data_source(dataset: str) -> DataSource:
    """The table entry of a dataset with files to look up or download.

    Raises ``ValueError`` for an unknown name (see :func:`check_dataset_name`)
    and for the bundled ``mnist_subset``, which has no files.
    """
    check_dataset_name(dataset)
    if dataset == BUNDLED_DATASET:
        raise ValueError(f"dataset {dataset!r} is bundled with the package; it has no files to look up or download")
    return SOURCES[dataset]


def default_data_root() -> Path:
    """The data root when none is given: ``$DISCRETE_VI_DATA``, else the per-user
    cache folder ``$XDG_CACHE_HOME/discrete_vi`` (``~/.cache/discrete_vi``)."""
    from_env = os.environ.get(DATA_ROOT_ENV_VAR)
    if from_env:
        return Path(from_env).expanduser()
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home).expanduser() / "discrete_vi"


def resolve_data_root(root: str | os.PathLike | None) -> Path:
    """``root`` itself if given, else :func:`default_data_root`."""
    return default_data_root() if root is None else Path(root).expanduser()


def dataset_folder(dataset: str, root: str | os.PathLike | None) -> Path:
    """The folder under the data root that holds (and receives downloads of) ``dataset``."""
    return resolve_data_root(root) / data_source(dataset).folder


def search_folders(dataset: str, root: str | os.PathLike | None) -> list[Path]:
    """The folders searched for ``dataset``'s files, in order."""
    return [dataset_folder(dataset, root), *data_source(dataset).system_folders]


def find_local_file(data_file: DataFile, folders: Iterable[Path]) -> Path | None:
    """The first existing copy of ``data_file`` (under any accepted name) in ``folders``."""
    for folder in folders:
        for name in data_file.accepted_names:
            candidate = folder / name
            if candidate.is_file():
                return candidate
    return None


def locate_files(dataset: str, roles: Iterable[str], root: str | os.PathLike | None) -> dict[str, Path]:
    """Paths of ``dataset``'s files for ``roles``; one :class:`DataFilesNotFoundError`
    naming every missing file, the folders searched and how to get the files."""
    source = data_source(dataset)
    folders = search_folders(dataset, root)
    found = {role: find_local_file(source.files[role], folders) for role in roles}
    missing = [source.files[role].name for role, path in found.items() if path is None]
    if missing:
        raise DataFilesNotFoundError(_missing_files_message(dataset, missing, folders))
    return found


def _missing_files_message(dataset: str, missing: list[str], folders: list[Path]) -> str:
    source = data_source(dataset)
    target = folders[0]
    lines = [
        f"{source.title} files not found: {', '.join(missing)} (a .gz or uncompressed copy of each is accepted).",
        "Folders searched: " + ", ".join(str(folder) for folder in folders) + ".",
        "To get them, do one of:",
        f"  - download them: BinarizedImageDataModule(dataset={dataset!r}, download=True), "
        "or --data.download true on the command line",
        f"  - copy the files into {target}",
        f"  - point to a data root that holds them in a '{source.folder}/' sub-folder: "
        f"set {DATA_ROOT_ENV_VAR}=/path/to/root or use --data.root /path/to/root",
    ]
    if source.debian_package:
        lines.append(f"  - install the system package: apt-get install {source.debian_package}")
    return "\n".join(lines)


def replacement_advice(path: Path) -> str:
    """How to replace a damaged copy of a data file, by where it lies: reinstall the Debian
    package (or put a good copy under the data root) for a system copy, else delete it and
    download it again."""
    resolved = path.resolve()
    for source in SOURCES.values():
        if any(resolved.is_relative_to(folder.resolve()) for folder in source.system_folders):
            return (
                f"it is a system copy: reinstall it (apt-get install --reinstall {source.debian_package}), "
                f"or put a good copy in the data root's '{source.folder}/' folder "
                f"({default_data_root() / source.folder} unless root / --data.root is set), which is searched first"
            )
    return REDOWNLOAD_ADVICE
