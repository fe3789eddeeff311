"""Data sets held in memory as uint8 tensors: Fashion-MNIST, MNIST, CIFAR-10 and the user's own
image folders (``folder:PATH``).

A folder data set has one sub-folder per class (PNG, JPEG, BMP, ...; gray or RGB). If it has
``train/`` and ``test/`` (or ``val/``) sub-folders those are the splits; otherwise a seeded 1 in 10
of each class is held out for testing. Images are decoded by Pillow (by content, not by file
name), turned upright by their EXIF orientation and resized to one size so the set fits one
tensor; the set is colour (3 channels) if any of its images is colour, gray otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .formats import DataFormatError, ImageTooLargeError, read_cifar_batches, read_idx
from .sources import CIFAR_BATCHES, SPECS, DataNotFoundError, download, locate, not_found_message

__all__ = ["ImageDataset", "dataset_names", "load_dataset", "load_folder", "read_image"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ImageDataset:
    """A train and a test split, images (N, C, H, W) uint8 and labels (N,) int64, with class names."""

    name: str
    classes: list[str]
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images, labels = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if len(images) != len(labels):
                raise DataFormatError(f"{self.name} {split}: {len(images)} images but {len(labels)} labels ({self.source})")
            if len(labels) and (labels.min() < 0 or labels.max() >= len(self.classes)):
                raise DataFormatError(f"{self.name} {split}: labels must lie in 0..{len(self.classes) - 1}, got {labels.min()}..{labels.max()}")


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset` (plus ``folder:PATH``)."""
    return [*SPECS, "folder:PATH"]


def load_dataset(name: str, data_dir: str | Path | None = None, fetch: bool = True, image_size: int | None = None,
                 progress: bool = True) -> ImageDataset:
    """Load a built-in data set by name (looking where :mod:`cnnlab.data.sources` says), or ``folder:PATH``.

    ``image_size`` resizes a folder's images as they are read (they differ in size); built-in sets
    keep their native size and are resized per batch by :class:`cnnlab.data.Batches`.
    """
    if name.startswith("folder:"):
        return load_folder(name.removeprefix("folder:"), image_size=image_size)
    if name not in SPECS:
        raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(dataset_names())}")
    spec = SPECS[name]
    found = locate(spec, data_dir)
    error = None
    if found is None and fetch:
        try:
            found = download(spec, progress=progress)
        except (ConnectionError, ValueError) as err:
            error = str(err)
    if found is None:
        raise DataNotFoundError(not_found_message(spec, data_dir, error if fetch else "not attempted (fetch=False)"))
    if name == "cifar10":
        images, labels = read_cifar_batches(found, CIFAR_BATCHES)
        split = 50000 if len(images) == 60000 else len(images) - len(images) // 6
        arrays = images[:split], labels[:split], images[split:], labels[split:]
    else:
        arrays = [_read_idx_file(found, f) for f in spec.files]
        arrays[0], arrays[2] = arrays[0][:, None], arrays[2][:, None]  # (N, 1, 28, 28)
    tensors = [torch.from_numpy(np.array(a, copy=True)) for a in arrays]  # writable copies
    train_labels, test_labels = tensors[1].long(), tensors[3].long()
    return ImageDataset(name, list(spec.classes), tensors[0], train_labels, tensors[2], test_labels,
                        spec.mean, spec.std, str(found))


def _read_idx_file(folder: Path, name: str) -> np.ndarray:
    path = folder / name
    return read_idx(path if path.is_file() else folder / name.removesuffix(".gz"))


def read_image(path, channels: int, size: tuple[int, int] | None) -> torch.Tensor:
    """Decode one image (a path or a binary file object) with Pillow to (channels, H, W) uint8, resized to ``size`` (H, W) if given.

    The image is turned upright by its EXIF orientation first (as photo viewers show it).
    Raises ``DataFormatError`` naming the file when its content is not a decodable image, and
    ``ImageTooLargeError`` when it has more pixels than Pillow's decompression-bomb limit.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            img = img.convert("L" if channels == 1 else "RGB")
            if size is not None and img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.BILINEAR)
            array = np.array(img, dtype=np.uint8)  # a writable copy
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"{_name(path)}: image too large to decode ({err})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise DataFormatError(f"{_name(path)}: not a readable image ({err})") from None
    array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def _name(path) -> str:
    return str(path) if isinstance(path, (str, Path)) else "the image"


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def _is_colour(path: Path) -> bool:
    """Whether an image is colour, from its header (and palette) only."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            if img.mode == "P":  # a palette image is colour unless every palette entry is a gray
                palette = img.getpalette() or []
                return any(not (r == g == b) for r, g, b in zip(palette[0::3], palette[1::3], palette[2::3]))
            return img.mode not in GRAY_MODES
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise DataFormatError(f"{path}: not a readable image ({err})") from None


def _class_files(root: Path) -> dict[str, list[Path]]:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    return {d.name: sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) for d in classes}


def load_folder(path: str | Path, image_size: int | None = None, channels: int | None = None, seed: int = 0) -> ImageDataset:
    """Load the user's own images: ``PATH/<class>/*.png`` (or ``PATH/train/<class>``, ``PATH/test/<class>``)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise ValueError(f"folder data set: {root} is not a directory (expected one sub-folder per class)")
    test_root = next((root / s for s in ("test", "val") if (root / s).is_dir()), None)
    if (root / "train").is_dir() and test_root is not None:
        train_files, test_files = _class_files(root / "train"), _class_files(test_root)
    else:
        train_files, test_files = {}, {}
        rng = random.Random(seed)
        for cls, files in _class_files(root).items():
            files = files[:]
            rng.shuffle(files)
            held = max(1, len(files) // 10) if len(files) > 1 else 0
            test_files[cls], train_files[cls] = sorted(files[:held]), sorted(files[held:])
    classes = sorted(train_files)
    empty = [c for c in classes if not train_files[c]]
    if len(classes) < 2 or empty:
        kinds = ", ".join(sorted(IMAGE_SUFFIXES))
        raise ValueError(f"folder data set {root}: need at least 2 class sub-folders with images ({kinds}); "
                         + (f"these hold none: {', '.join(empty)}" if empty else f"found {', '.join(classes) or 'no sub-folders'}"))
    if not any(test_files.values()):
        raise ValueError(f"folder data set {root}: no test images (a class needs at least 2 images to hold one out for "
                         f"testing); add images, or give train/ and test/ sub-folders")
    all_files = [p for files in (train_files, test_files) for c in files for p in files[c]]
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(all_files[0]) as img:
            native = (img.size[1], img.size[0])
    except (UnidentifiedImageError, OSError) as err:
        raise DataFormatError(f"{all_files[0]}: not a readable image ({err})") from None
    channels = channels or (3 if any(_is_colour(p) for p in all_files) else 1)  # colour if any image is
    size = (image_size, image_size) if image_size else native

    def split(files: dict[str, list[Path]]):
        pairs = [(p, classes.index(c)) for c in classes for p in files.get(c, [])]
        images = torch.stack([read_image(p, channels, size) for p, _ in pairs]) if pairs else torch.zeros(0, channels, *size, dtype=torch.uint8)
        return images, torch.tensor([label for _, label in pairs], dtype=torch.long)

    train_images, train_labels = split(train_files)
    test_images, test_labels = split(test_files)
    scaled = train_images.float() / 255
    mean = tuple(scaled.mean((0, 2, 3)).tolist())
    std = tuple(scaled.std((0, 2, 3)).clamp_min(1e-3).tolist())
    return ImageDataset(f"folder:{root.resolve()}", classes, train_images, train_labels, test_images, test_labels, mean, std, str(root))
