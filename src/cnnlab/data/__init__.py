"""cnnlab.data: read, find, download and batch image data sets (see sources.py for where data is looked for)."""

from .datasets import ImageDataset, dataset_names, load_dataset, load_folder, read_image
from .formats import DataFormatError, ImageTooLargeError, read_cifar_batches, read_idx
from .loader import Batches, preprocess
from .sources import SPECS, DataNotFoundError, download, locate, search_dirs

__all__ = [
    "SPECS",
    "Batches",
    "DataFormatError",
    "ImageTooLargeError",
    "DataNotFoundError",
    "ImageDataset",
    "dataset_names",
    "download",
    "load_dataset",
    "load_folder",
    "locate",
    "preprocess",
    "read_cifar_batches",
    "read_idx",
    "read_image",
    "search_dirs",
]
