"""The book's own code on cnnlab: ``from cnnlab import d2l`` in place of ``from d2l import torch as d2l``.

*Dive into Deep Learning* (2nd edition, PyTorch; ``d2l-en`` and ``d2l-zh`` alike), chapters "Convolutional
Neural Networks" and "Modern CNNs", call a few dozen names of its ``d2l`` package. This module gives them
with the book's signatures, return types and printed lines, so that each section runs with only its import
line changed, offline, on a CPU, with no torchvision and no download:

- data: :func:`load_data_fashion_mnist` (the book's two DataLoaders of float images in [0, 1], resized as
  ``transforms.Resize`` does when asked) from the files cnnlab already finds (``$CNNLAB_DATA``, the cache,
  Debian's ``/usr/share/datasets/fashion-mnist``);
- training: :func:`train_ch6` (Xavier init, SGD, cross-entropy, the book's two result lines) on
  :func:`cnnlab.fit`'s loop, with its live figure in Jupyter; :func:`evaluate_accuracy_gpu`,
  :func:`accuracy`, :class:`Accumulator`, :class:`Timer`, :class:`Animator`, :func:`try_gpu`;
- the chapter's helpers :func:`corr2d` (cnnlab's from-scratch cross-correlation) and the tensor aliases
  (``d2l.tensor``, ``d2l.reshape``, ``d2l.reduce_sum``, ...).

The book's layers are torch's own (``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.BatchNorm2d``). On importing this
module their convolution, pooling and batch-norm calls run on cnnlab's scratch operations
(:func:`cnnlab.scratch`, process-wide): what the reader wrote from scratch is what trains.
``d2l.use_scratch(False)`` gives torch's kernels back.

On a CPU the chapters' full sizes (AlexNet at 224 px, ResNet at 96 px) take hours. :func:`train_ch6` prints
the measured time a batch and the projected total after its first batches, with the one-line CPU recipe
where one exists; :func:`budget` (or ``CNNLAB_D2L_BUDGET=seconds``) stops training after that long and
says so, and the numbers printed are then those of the shortened run.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .nn.intercept import ScratchMode
from .ops import corr2d
from .train.report import Reporter, in_notebook

__all__ = ["Accumulator", "Animator", "Timer", "abs", "accuracy", "arange", "argmax", "astype", "budget", "concat", "corr2d",
           "cos", "evaluate_accuracy_gpu", "exp", "float32", "get_dataloader_workers", "int32", "linspace", "load_data_fashion_mnist",
           "log", "matmul", "normal", "num_gpus", "numpy", "ones", "rand", "reduce_mean", "reduce_sum", "reshape", "sin",
           "size", "stack", "tanh", "tensor", "to", "train_ch6", "transpose", "try_all_gpus", "try_gpu", "use_scratch", "zeros",
           "zeros_like", "ones_like"]

# -- the book's tensor aliases (d2l/torch.py) --------------------------------------------------------------------------
ones, zeros, tensor, arange, meshgrid = torch.ones, torch.zeros, torch.tensor, torch.arange, torch.meshgrid
sin, sinh, cos, cosh, tanh = torch.sin, torch.sinh, torch.cos, torch.cosh, torch.tanh
linspace, exp, log, normal, rand, matmul = torch.linspace, torch.exp, torch.log, torch.normal, torch.rand, torch.matmul
int32, float32, eye, stack, abs = torch.int32, torch.float32, torch.eye, torch.stack, torch.abs  # noqa: A001 (the book's name)
ones_like, zeros_like, concat, reshape = torch.ones_like, torch.zeros_like, torch.cat, torch.reshape


def numpy(x, *args, **kwargs):
    return x.detach().numpy(*args, **kwargs)


def size(x, *args, **kwargs):
    return x.numel(*args, **kwargs)


def to(x, *args, **kwargs):
    return x.to(*args, **kwargs)


def reduce_sum(x, *args, **kwargs):
    return x.sum(*args, **kwargs)


def reduce_mean(x, *args, **kwargs):
    return x.mean(*args, **kwargs)


def argmax(x, *args, **kwargs):
    return x.argmax(*args, **kwargs)


def astype(x, *args, **kwargs):
    return x.type(*args, **kwargs)


def transpose(x, *args, **kwargs):
    return x.t(*args, **kwargs)


# -- the scratch operations under torch's layers ------------------------------------------------------------------------
_MODE: ScratchMode | None = None


def use_scratch(on: bool = True) -> ScratchMode | None:
    """Route torch's convolution, pooling and batch-norm calls to cnnlab's scratch operations, process-wide
    (``on=True``, this module's default on import), or give torch's own kernels back (``on=False``).
    Returns the mode in force (its ``routed`` and ``fell_through`` counters say what ran where), or None."""
    global _MODE
    if on and _MODE is None:
        _MODE = ScratchMode()
        _MODE.__enter__()
    elif not on and _MODE is not None:
        mode, _MODE = _MODE, None
        mode.__exit__(None, None, None)
    return _MODE


# -- devices, timing, counting (the book's helpers) ----------------------------------------------------------------------
def num_gpus() -> int:
    return torch.cuda.device_count()


def try_gpu(i: int = 0) -> torch.device:
    """``cuda:i`` if it exists, else the CPU (the book's ``d2l.try_gpu``)."""
    return torch.device(f"cuda:{i}") if num_gpus() >= i + 1 else torch.device("cpu")


def try_all_gpus() -> list[torch.device]:
    return [torch.device(f"cuda:{i}") for i in range(num_gpus())] or [torch.device("cpu")]


class Timer:
    """Several running times (the book's ``d2l.Timer``): ``start()``, ``stop()`` -> seconds, ``avg()``, ``sum()``, ``cumsum()``."""

    def __init__(self):
        self.times: list[float] = []
        self.start()

    def start(self) -> None:
        self.tik = time.time()

    def stop(self) -> float:
        self.times.append(time.time() - self.tik)
        return self.times[-1]

    def avg(self) -> float:
        return sum(self.times) / len(self.times)

    def sum(self) -> float:
        return sum(self.times)

    def cumsum(self) -> list[float]:
        return np.array(self.times).cumsum().tolist()


class Accumulator:
    """Sums over ``n`` variables (the book's ``d2l.Accumulator``): ``add(*values)``, ``reset()``, ``acc[i]``."""

    def __init__(self, n: int):
        self.data = [0.0] * n

    def add(self, *args) -> None:
        self.data = [a + float(b) for a, b in zip(self.data, args)]

    def reset(self) -> None:
        self.data = [0.0] * len(self.data)

    def __getitem__(self, idx):
        return self.data[idx]


def accuracy(y_hat: torch.Tensor, y: torch.Tensor) -> float:
    """The number of correct predictions (the book's ``d2l.accuracy``: a count, not a fraction)."""
    if len(y_hat.shape) > 1 and y_hat.shape[1] > 1:
        y_hat = y_hat.argmax(axis=1)
    cmp = y_hat.type(y.dtype) == y
    return float(cmp.type(y.dtype).sum())


def evaluate_accuracy_gpu(net: nn.Module, data_iter: Iterable, device=None) -> float:
    """The accuracy of ``net`` over ``data_iter`` on ``device`` (default: the net's), in eval mode."""
    if isinstance(net, nn.Module):
        net.eval()
        if not device:
            device = next(iter(net.parameters())).device
    metric = Accumulator(2)
    with torch.no_grad():
        for X, y in data_iter:
            X = [x.to(device) for x in X] if isinstance(X, list) else X.to(device)
            y = y.to(device)
            metric.add(accuracy(net(X), y), y.numel())
    return metric[0] / metric[1]


class Animator:
    """Points added to a live figure (the book's ``d2l.Animator``): in Jupyter one figure updated in place."""

    def __init__(self, xlabel=None, ylabel=None, legend=None, xlim=None, ylim=None, xscale="linear", yscale="linear",
                 fmts=("-", "m--", "g-.", "r:"), nrows=1, ncols=1, figsize=(3.5, 2.5)):
        from .viz.plots import new_figure

        self.legend = legend or []
        self.fig = new_figure(figsize=figsize)
        axes = self.fig.subplots(nrows, ncols)
        self.axes = axes if nrows * ncols > 1 else [axes]
        self.settings = (xlabel, ylabel, xlim, ylim, xscale, yscale)
        self.X, self.Y, self.fmts = None, None, fmts
        self.handle = None

    def _configure(self) -> None:
        xlabel, ylabel, xlim, ylim, xscale, yscale = self.settings
        ax = self.axes[0]
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xscale(xscale)
        ax.set_yscale(yscale)
        if xlim:
            ax.set_xlim(xlim)
        if ylim:
            ax.set_ylim(ylim)
        if self.legend:
            ax.legend(self.legend)
        ax.grid()

    def add(self, x, y) -> None:
        if not hasattr(y, "__len__"):
            y = [y]
        n = len(y)
        if not hasattr(x, "__len__"):
            x = [x] * n
        if not self.X:
            self.X = [[] for _ in range(n)]
        if not self.Y:
            self.Y = [[] for _ in range(n)]
        for i, (a, b) in enumerate(zip(x, y)):
            if a is not None and b is not None:
                self.X[i].append(a)
                self.Y[i].append(b)
        self.axes[0].cla()
        for x_, y_, fmt in zip(self.X, self.Y, self.fmts):
            self.axes[0].plot(x_, y_, fmt)
        self._configure()
        if in_notebook():
            from IPython.display import display

            if self.handle is None:
                self.handle = display(self.fig, display_id=True)
            else:
                self.handle.update(self.fig)


# -- data ------------------------------------------------------------------------------------------------------------------
def get_dataloader_workers() -> int:
    """The book uses 4 worker processes to decode PIL images; cnnlab's images are tensors already: none needed."""
    return 0


class FashionMNIST(Dataset):
    """uint8 images (N, 1, H, W) and labels, served as the book's ``torchvision.datasets.FashionMNIST`` with
    ``ToTensor`` serves them: ``dataset[i]`` is (a float image in [0, 1], an int label). A DataLoader takes a
    whole batch at once (``__getitems__``: one indexing, not one call per image), resized by :func:`_collate`."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str]):
        self.images, self.labels, self.classes = images, labels, classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i].float().div_(255), int(self.labels[i])

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return self.images[index].float().div_(255), self.labels[index]


def _resize(x: torch.Tensor, size) -> torch.Tensor:
    """A batch of [0, 1] images resized as torchvision's ``Resize`` does a PIL image before ``ToTensor``: bilinear
    with antialiasing (PIL's filter), the result rounded to 8 bits as PIL's image holds it."""
    import torch.nn.functional as F

    with torch.no_grad():
        out = F.interpolate(x * 255, size=size, mode="bilinear", antialias=True, align_corners=False)
        return out.round_().clamp_(0, 255).div_(255)


def _collate(resize):
    def collate(batch):
        x, y = batch  # FashionMNIST.__getitems__'s (images, labels)
        return (_resize(x, resize) if resize else x), y

    return collate


def load_data_fashion_mnist(batch_size: int, resize=None, data_dir: str | None = None):
    """Fashion-MNIST as the book's two DataLoaders ``(train_iter, test_iter)``: batches of float images in
    [0, 1] of shape (B, 1, 28, 28), or (B, 1, resize, resize) resized as torchvision's ``Resize`` does, and
    labels; the training one shuffled. Read offline from where cnnlab finds the data (``data_dir``,
    ``$CNNLAB_DATA``, the cache, ``/usr/share/datasets/fashion-mnist``); no torchvision, no download."""
    from .data import load_dataset

    if resize is not None:
        sizes = (resize, resize) if isinstance(resize, int) else tuple(resize)
        if len(sizes) != 2 or not all(isinstance(s, int) and s > 0 for s in sizes):
            raise ValueError(f"resize must be a positive int or a pair of them, got {resize!r}")
        resize = sizes
    data = load_dataset("fashion-mnist", data_dir, fetch=False)
    train = FashionMNIST(data.train_images, data.train_labels, data.classes)
    test = FashionMNIST(data.test_images, data.test_labels, data.classes)
    return (DataLoader(train, batch_size, shuffle=True, num_workers=get_dataloader_workers(), collate_fn=_collate(resize)),
            DataLoader(test, batch_size, shuffle=False, num_workers=get_dataloader_workers(), collate_fn=_collate(resize)))


# -- training --------------------------------------------------------------------------------------------------------------
BUDGET_ENV = "CNNLAB_D2L_BUDGET"
_budget: float | None = None


def budget(seconds: float | None = None) -> float | None:
    """Stop every later :func:`train_ch6` after ``seconds`` of training; returns ``seconds``. With None (or
    never called), ``$CNNLAB_D2L_BUDGET`` sets the budget, if it is set. For course CI and impatient readers:
    the run stops with a line saying so, and the numbers printed are those of the shortened run."""
    global _budget
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"budget: seconds must be a positive number, got {seconds!r}")
    _budget = seconds
    return seconds


def _in_force() -> float | None:
    if _budget is not None:
        return _budget
    text = os.environ.get(BUDGET_ENV, "").strip()
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{BUDGET_ENV}={text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{BUDGET_ENV}={text!r} must be a positive number of seconds")
    return value


def _book_model(net: nn.Module) -> str | None:
    """The CPU recipe of the chapter's network ``net`` is, told by the book's own classes and first layer."""
    names = {type(m).__name__ for m in net.modules()}
    for cls, recipe in (("Residual", "resnet-cpu"), ("Inception", "googlenet-cpu"), ("DenseBlock", "densenet-cpu")):
        if cls in names:
            return recipe
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        return None
    if convs[0].kernel_size == (11, 11) and convs[0].stride == (4, 4):
        return "nin-cpu" if any(c.kernel_size == (1, 1) for c in convs) else "alexnet-cpu"
    if len(convs) >= 8 and all(c.kernel_size == (3, 3) for c in convs):
        return "vgg-cpu"
    return None


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class _Projection(Reporter):
    """After the first few batches: the measured time a batch and the projected total, with the CPU recipe. The
    first ``warm`` batches (building compiled loops, first touches of memory) are left out of the measure."""

    def __init__(self, epochs: int, recipe: str | None, after: int = 3, warm: int = 2):
        self.epochs, self.recipe, self.after, self.warm, self.done, self.base = epochs, recipe, after, warm, False, None

    def epoch_start(self, epoch: int, total: int, first: int) -> None:
        self.total = total
        self.warm = min(self.warm, max(total - self.after, 0))

    def step(self, epoch: int, step: int, sums: list[float]) -> None:
        if self.done:
            return
        if step + 1 == self.warm:
            self.base = sums[3]
        if step + 1 < min(self.warm + self.after, self.total):
            return
        self.done = True
        measured = step + 1 - (self.warm if self.base is not None else 0)
        per_batch = (sums[3] - (self.base or 0.0)) / measured
        line = (f"measured {per_batch:.3g} s a batch over {measured} batches: {self.epochs} epoch(s) of {self.total} batches "
                f"would take about {_minutes(per_batch * self.total * self.epochs)} here")
        if self.recipe and per_batch * self.total * self.epochs > 600:
            line += f"; on a CPU, `cnnlab train {self.recipe}` {_recipe_line(self.recipe)}"
        print(line, flush=True)


def _recipe_line(name: str) -> str:
    import json
    from importlib import resources

    measured = json.loads(resources.files("cnnlab.train").joinpath("recipes.json").read_text()).get(name)
    if not measured:
        return "trains the same family at 28 px (see `cnnlab train --list`)"
    return (f"reaches {measured['test_acc']:.3f} test accuracy in {_minutes(measured['train_s'])} of training at 28 px "
            f"({measured['epochs']} epochs; `cnnlab train --list`)")


def train_ch6(net: nn.Module, train_iter, test_iter, num_epochs: int, lr: float, device=None, *, out: str | None = None):
    """Train ``net`` as the book's ``train_ch6`` does: Xavier-uniform weights for every ``nn.Linear`` and
    ``nn.Conv2d``, plain SGD at ``lr``, cross-entropy, ``num_epochs`` passes over ``train_iter``, the test
    accuracy after each; prints ``training on <device>``, then ``loss ..., train acc ..., test acc ...`` and
    ``... examples/sec on <device>``. Runs on :func:`cnnlab.fit`'s loop (a run folder with checkpoints and
    metrics in ``out`` or ``runs/``; in Jupyter a live figure), stopped early by :func:`budget`.

    Returns the :class:`cnnlab.train.loop.RunResult`."""
    from .train.loop import fit

    def init_weights(m):
        if type(m) is nn.Linear or type(m) is nn.Conv2d:
            nn.init.xavier_uniform_(m.weight)

    device = torch.device(device) if device is not None else try_gpu()
    net.apply(init_weights)
    print("training on", device)
    notebook = in_notebook()
    result = fit(net, (train_iter, test_iter), epochs=num_epochs, lr=lr, optimizer="sgd", momentum=0.0, weight_decay=0.0,
                 schedule="none", label_smoothing=0.0, augment=False, normalize=False, device=device.type,
                 max_seconds=_in_force(), out=out, quiet=not notebook,
                 reporters=[_Projection(num_epochs, _book_model(net))],
                 classes=getattr(getattr(train_iter, "dataset", None), "classes", None))
    last = result.final
    if result.status == "time limit":
        print(f"stopped by the time budget ({_in_force():g} s) at epoch {last['epoch']:.2f} of {num_epochs}: "
              "the numbers below are those of this shortened run")
    print(f"loss {last['train_loss']:.3f}, train acc {last['train_acc']:.3f}, test acc {last['test_acc']:.3f}")
    rows = result.history + ([result.partial] if result.partial else [])
    examples = sum(r["examples_per_s"] * r["epoch_s"] for r in rows)
    print(f"{examples / max(sum(r['epoch_s'] for r in rows), 1e-9):.1f} examples/sec on {device}")
    return result


use_scratch(True)
