"""Data layer: file readers, sources and downloads, and the datamodule.

Models receive float32 ``[B, 784]`` batches of exact 0/1 values from
:class:`BinarizedImageDataModule`.
"""

from discrete_vi.data.datamodule import BinarizedImageDataModule
from discrete_vi.data.download import download_file, download_missing_files
from discrete_vi.data.errors import CorruptFileError, DataFilesNotFoundError, DownloadError
from discrete_vi.data.images import IMAGE_SHAPE, INPUT_SIZE, sample_binary_images
from discrete_vi.data.readers import read_amat, read_idx, read_omniglot_chardata
from discrete_vi.data.sources import DATASET_NAMES, SOURCES, default_data_root
from discrete_vi.data.splits import ImageSplits, load_splits

__all__ = [
    "BinarizedImageDataModule",
    "CorruptFileError",
    "DATASET_NAMES",
    "DataFilesNotFoundError",
    "DownloadError",
    "IMAGE_SHAPE",
    "INPUT_SIZE",
    "ImageSplits",
    "SOURCES",
    "default_data_root",
    "download_file",
    "download_missing_files",
    "load_splits",
    "read_amat",
    "read_idx",
    "read_omniglot_chardata",
    "sample_binary_images",
]
