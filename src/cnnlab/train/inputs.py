"""What ``fit`` trains on: a data set by name, tensors, or the user's own Dataset/DataLoader.

Every kind becomes a :class:`TrainInputs`: two batch sources with ``epoch(epoch, start_step)``
yielding ``(x, y, global_count)`` and ``len()``, the class names and the image shape the
model sees, and what the run folder records about the data.

    "fashion-mnist", "folder:PATH", ...   cnnlab's in-memory batches (exact resume, augmentation, DDP)
    (X, y) uint8 tensors                   the same batches; a seeded 1 in 10 held out for testing
    ((X, y), (X_test, y_test))             the same, with the given test split
    float tensors, a Dataset, a pair of    a DataLoader, shuffled from torch's generator seeded by
    Datasets, (train_loader, test_loader)  (seed, epoch): a resumed epoch sees the same batches
                                           as long as the loader's randomness comes from torch's
                                           default generator (its sampler and workers do)

Bad data (a Dataset yielding something that is not an (image, label) pair, images that are not
(C, H, W), labels that are not integers) is one ``TypeError``/``ValueError`` before training, and so is
data whose training or test part would come out empty (a ``--subset`` smaller than the number of
classes, a single example to split): an accuracy on no test images is not 0, it does not exist.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from ..data import Batches, ImageDataset, load_dataset
from ..data.loader import step_seed

__all__ = ["LoaderBatches", "TrainInputs", "describe_data", "is_named_data"]


@dataclass
class TrainInputs:
    name: str  # recorded as the run's data set: a name tools can load again, or a description
    source: str
    classes: list[str]
    image_shape: tuple[int, int, int]  # (C, H, W) as the model sees it
    train: Batches | LoaderBatches
    test: Batches | LoaderBatches
    n_train: int
    n_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalize: bool


def is_named_data(data) -> bool:
    return isinstance(data, str)


def describe_data(data) -> str:
    """What the run folder records for data given as Python objects."""
    if isinstance(data, (tuple, list)) and data and isinstance(data[0], (torch.Tensor, tuple, list)):
        return "tensors"  # (X, y) or ((X, y), (X_test, y_test))
    first = data[0] if isinstance(data, (tuple, list)) and data else data
    inner = getattr(first, "dataset", None)
    kind = type(first).__name__ + (f"({type(inner).__name__})" if inner is not None else "")
    return f"python:{kind}"


class LoaderBatches:
    """A DataLoader seen as cnnlab batches: seeded per epoch, moved to the device, checked."""

    def __init__(self, loader, seed: int, device, channels_last: bool, what: str):
        self.loader, self.seed, self.device, self.channels_last, self.what = loader, seed, device, channels_last, what

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor, int]]:
        torch.manual_seed(step_seed(self.seed, epoch))  # the sampler's order and the workers' seeds
        for step, batch in enumerate(self.loader):
            if step < start_step:
                continue
            x, y = split_batch(batch, self.what)
            x = x.to(self.device)
            if self.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            yield x, y.to(self.device), len(y)


def split_batch(batch, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images, labels) from a loader's batch, images float in [0, 1] if they came as uint8."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2 or not all(isinstance(t, torch.Tensor) for t in batch):
        got = type(batch).__name__ + (f" of {len(batch)} {', '.join(type(t).__name__ for t in batch)}"
                                      if isinstance(batch, (tuple, list)) else "")
        raise TypeError(f"{what} yields {got}; expected (images, labels): a tensor (B, C, H, W) and a tensor (B,) of class indices")
    x, y = batch
    if x.dim() != 4:
        raise ValueError(f"{what} yields images of shape {tuple(x.shape)}; expected (B, C, H, W)")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype == torch.bool or len(y) != len(x):
        raise ValueError(f"{what} yields labels of shape {tuple(y.shape)} and dtype {y.dtype}; expected ({len(x)},) integer class indices")
    if x.dtype == torch.uint8:
        x = x.float().div_(255)
    elif not x.dtype.is_floating_point:
        raise ValueError(f"{what} yields images of dtype {x.dtype}; expected uint8 (0..255) or floating point")
    return x, y.long()


# --- building -----------------------------------------------------------------------------------------


def from_name(config, dist, device, image_size_of, progress: bool) -> TrainInputs:
    """A data set by name: cnnlab's in-memory batches."""
    if dist.main:
        data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size, progress=progress)
    dist.barrier()
    if not dist.main:
        data = load_dataset(config.dataset, config.data_dir, fetch=False, image_size=config.image_size)
    if config.subset:
        data = _subset(data, config.subset, config.seed)
    return from_image_dataset(data, config, dist, device, image_size_of(data))


def from_image_dataset(data: ImageDataset, config, dist, device, image_size: int) -> TrainInputs:
    check_split(len(data.train_labels), len(data.test_labels), f"the data set {data.name}", None,
                "give a data set with both training and test images")
    pad = 0 if not config.augment else (2 if image_size <= 32 and data.image_shape[-1] <= 28 else 4)
    common = {"mean": data.mean, "std": data.std, "normalize": config.normalize, "device": device, "image_size": image_size,
              "channels_last": config.channels_last, "rank": dist.rank, "world_size": dist.world_size}
    train = Batches(data.train_images, data.train_labels, config.batch_size, shuffle=True, seed=config.seed,
                    augment_pad=pad, flip=config.augment, **common)
    test = Batches(data.test_images, data.test_labels, config.eval_batch_size, **common)
    return TrainInputs(data.name, data.source, list(data.classes), (data.image_shape[0], image_size, image_size), train, test,
                       len(data.train_labels), len(data.test_labels), tuple(data.mean), tuple(data.std), config.normalize)


def _subset(data: ImageDataset, n: int, seed: int) -> ImageDataset:
    """A seeded random ``n`` training images and ``max(ceil(n / 6), classes)`` test images (the 60k/10k
    proportion, at least one a class), both stratified: the classes take turns, so every class has a training
    and a test image. ValueError where ``n`` is smaller than the number of classes."""
    classes = len(data.classes)
    if n < classes:
        raise ValueError(f"subset {n} is too small: {data.name} has {classes} classes, and a subset gives each class at "
                         f"least one training and one test image, so it needs at least {classes} (with {n} training images "
                         f"the test part would get {-(-n // 6)}); use a subset of {classes} or more (--subset {classes}, subset={classes})")
    gen = torch.Generator().manual_seed(seed)
    train = _stratified(data.train_labels, n, gen)
    test = _stratified(data.test_labels, max(-(-n // 6), classes), gen)
    return dataclasses.replace(data, train_images=data.train_images[train], train_labels=data.train_labels[train],
                               test_images=data.test_images[test], test_labels=data.test_labels[test],
                               source=f"{data.source}, a seeded random subset")


def _stratified(labels: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` seeded random indices of ``labels`` with the classes taking turns (class by class, each class's
    own examples in random order), so that ``n`` >= the number of classes holds every class that has examples."""
    order = torch.randperm(len(labels), generator=gen)
    shuffled = labels[order]
    rank = torch.empty_like(order)  # each example's place among its class's examples, in the shuffled order
    for c in shuffled.unique():
        where = (shuffled == c).nonzero().squeeze(1)
        rank[where] = torch.arange(len(where))
    turns = torch.argsort(rank * (int(labels.max()) + 1) + shuffled, stable=True)  # every class's first, then seconds, ...
    return order[turns[:n]]


def check_split(n_train: int, n_test: int, given: str, smallest: int | None, separate: str) -> None:
    """ValueError, before anything is trained or written, where the training or the test part is empty:
    naming what was ``given``, both parts' sizes, the ``smallest`` size that works and the way to give a
    ``separate`` test set."""
    if n_train > 0 and n_test > 0:
        return
    empty = "training" if n_train == 0 else "test"
    fix = f"give at least {smallest} examples, or {separate}" if smallest else separate
    raise ValueError(f"{given}: the {empty} part would be empty ({n_train} training and {n_test} test examples), and an "
                     f"accuracy on no {empty} images does not exist; {fix}")


def from_objects(data, config, dist, device, classes: list[str] | None) -> TrainInputs:
    """Tensors, Datasets or DataLoaders given in Python."""
    if dist.enabled:
        raise ValueError("data given as Python objects trains in one process; for torchrun/DDP give a data set name")
    name = describe_data(data)
    pair = isinstance(data, (tuple, list)) and len(data) == 2
    # (X, y) tensors
    if pair and all(isinstance(t, torch.Tensor) for t in data):
        data = _hold_out_tensors(*data, seed=config.seed)
    # ((X, y), (X_test, y_test))
    if pair and all(isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(t, torch.Tensor) for t in p) for p in data):
        (x, y), (xt, yt) = data
        _check_tensors(x, y, "the training tensors")
        _check_tensors(xt, yt, "the test tensors")
        names = classes or [str(i) for i in range(int(max(y.max(), yt.max())) + 1)]
        if x.dtype == torch.uint8:  # cnnlab's own batches: exact resume and augmentation
            image = ImageDataset(name, names, x, y.long(), xt, yt.long(), (0.0,) * x.shape[1], (1.0,) * x.shape[1], "tensors")
            return from_image_dataset(image, dataclasses.replace(config, normalize=False), dist, device, x.shape[-1])
        data = (TensorDataset(x, y), TensorDataset(xt, yt))
    # a Dataset: hold out a seeded 1 in 10
    if isinstance(data, Dataset):
        n = len(data)
        held = max(1, n // 10)
        check_split(n - held, held, f"a Dataset of {n} example{'s' * (n != 1)}", 2,
                    "give the test set apart: fit(model, (train_dataset, test_dataset))")
        gen = torch.Generator().manual_seed(config.seed)
        data = tuple(torch.utils.data.random_split(data, [n - held, held], generator=gen))
    if not (pair or isinstance(data, tuple)) or len(data) != 2:
        raise TypeError(f"data must be a data set name, 'folder:PATH', (images, labels) tensors, a Dataset, or a pair "
                        f"(train, test) of Datasets or DataLoaders; got {type(data).__name__}")
    train_src, test_src = data
    check_split(_size(train_src), _size(test_src), "the (train, test) data given", None,
                "give both a training and a test set with at least one example each")
    train = _loader(train_src, config.batch_size, True, "the training data")
    test = _loader(test_src, config.eval_batch_size, False, "the test data")
    x, _ = split_batch(next(iter(train)), "the training data")
    split_batch(next(iter(test)), "the test data")
    names = classes or _classes_of(train_src) or _classes_of(test_src)
    if names is None:
        raise ValueError("cannot tell the classes of this data; pass classes=[...] to fit (names, one per class)")
    shape = tuple(x.shape[1:])
    return TrainInputs(name, "data given in Python", names, shape,
                       LoaderBatches(train, config.seed, device, config.channels_last, "the training data"),
                       LoaderBatches(test, config.seed, device, config.channels_last, "the test data"),
                       _count(train), _count(test), (0.0,) * shape[0], (1.0,) * shape[0], False)


def _loader(source, batch_size: int, shuffle: bool, what: str):
    if isinstance(source, DataLoader):
        return source
    if isinstance(source, Dataset):
        return DataLoader(source, batch_size=batch_size, shuffle=shuffle)
    raise TypeError(f"{what} must be a torch Dataset or DataLoader, got {type(source).__name__}")


def _size(source) -> int:
    """Examples in a Dataset or DataLoader; 1 where it cannot tell (an iterable without a length: checked when read)."""
    try:
        return len(getattr(source, "dataset", source))
    except TypeError:
        return 1


def _count(loader) -> int:
    try:
        return len(loader.dataset)
    except (AttributeError, TypeError):
        return len(loader) * (loader.batch_size or 1)


def _classes_of(source) -> list[str] | None:
    dataset = getattr(source, "dataset", source)
    while isinstance(dataset, torch.utils.data.Subset):
        dataset = dataset.dataset
    names = getattr(dataset, "classes", None)
    if names:
        return [str(c) for c in names]
    if isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2:
        return [str(i) for i in range(int(dataset.tensors[1].max()) + 1)]
    return None


def _check_tensors(x: torch.Tensor, y: torch.Tensor, what: str) -> None:
    if x.dim() != 4 or y.dim() != 1 or len(x) != len(y):
        raise ValueError(f"{what} must be images (N, C, H, W) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise ValueError(f"{what}: labels must be integer class indices, got dtype {y.dtype}")


def _hold_out_tensors(x: torch.Tensor, y: torch.Tensor, seed: int):
    _check_tensors(x, y, "the tensors")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    held = max(1, len(y) // 10)
    check_split(len(y) - held, held, f"(images, labels) tensors of {len(y)} example{'s' * (len(y) != 1)}", 2,
                "give the test set apart: fit(model, ((X, y), (X_test, y_test)))")
    return (x[order[held:]], y[order[held:]]), (x[order[:held]], y[order[:held]])
