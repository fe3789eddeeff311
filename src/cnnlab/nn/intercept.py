"""torch's own layers on cnnlab's scratch operations: ``with cnnlab.scratch(): ...``.

A network written with ``torch.nn`` (the book's code: ``nn.Conv2d``, ``nn.MaxPool2d``, ``nn.BatchNorm2d``)
calls ``torch.nn.functional``'s convolution, pooling and batch-norm functions in its forward pass. Inside
:func:`scratch` a ``TorchFunctionMode`` hands those calls to the functions of the same name and signature
in :mod:`cnnlab.ops` (written from scratch, with hand-derived backward passes), so the network trains on
what the reader wrote, unchanged::

    net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, 2), ...)
    with cnnlab.scratch(report=True):
        loss = F.cross_entropy(net(X), y)
        loss.backward()
    # scratch ops: conv2d x2, avg_pool2d x2; fell through to torch: none

Covered: ``conv1d/2d/3d``, ``max_pool1d/2d/3d`` (``return_indices`` too), ``avg_pool1d/2d/3d``,
``adaptive_avg_pool2d`` and ``batch_norm``. Every other function runs on torch unchanged; those of the same
families that cnnlab has no scratch form of (transposed convolutions, adaptive max pooling, layer and group
norm, ...) are counted as fallen through and listed with ``report=True`` (or :attr:`ScratchMode.fell_through`),
never silently replaced by something else.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable, Iterator

import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

__all__ = ["ScratchMode", "scratch"]

# torch.nn.functional's families that a reader may expect on scratch ops: a call of one of these that is
# not covered below is reported as fallen through
_FAMILY = ("conv", "pool", "norm")


def _handlers() -> dict[Callable, Callable]:
    from .. import ops

    pairs = {F.conv1d: ops.conv1d, F.conv2d: ops.conv2d, F.conv3d: ops.conv3d,
             F.max_pool1d: ops.max_pool1d, F.max_pool2d: ops.max_pool2d, F.max_pool3d: ops.max_pool3d,
             F.avg_pool1d: ops.avg_pool1d, F.avg_pool2d: ops.avg_pool2d, F.avg_pool3d: ops.avg_pool3d,
             F.adaptive_avg_pool2d: ops.adaptive_avg_pool2d, F.batch_norm: ops.batch_norm}
    # the same functions under the names torch's modules reach them by (torch.conv2d, torch._C._nn.avg_pool2d, ...)
    pairs.update({F.max_pool1d_with_indices: lambda *a, **k: ops.max_pool1d(*a, **{**k, "return_indices": True}),
                  F.max_pool2d_with_indices: lambda *a, **k: ops.max_pool2d(*a, **{**k, "return_indices": True}),
                  F.max_pool3d_with_indices: lambda *a, **k: ops.max_pool3d(*a, **{**k, "return_indices": True})})
    return pairs


def _family(func) -> str | None:
    """The name of a torch function of the conv/pool/norm families, else None."""
    name = getattr(func, "__name__", "")
    module = getattr(func, "__module__", "") or ""
    if not module.startswith("torch") or module.startswith("torch.nn.init"):
        return None
    return name if any(word in name for word in _FAMILY) and not name.startswith("_") else None


class ScratchMode(TorchFunctionMode):
    """The mode behind :func:`scratch`: counts what it routed (:attr:`routed`) and what fell through (:attr:`fell_through`)."""

    def __init__(self) -> None:
        super().__init__()
        self.handlers = _handlers()
        self.routed: Counter[str] = Counter()
        self.fell_through: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        handler = self.handlers.get(func)
        if handler is not None:
            self.routed[func.__name__.removesuffix("_with_indices")] += 1
            return handler(*args, **kwargs)
        name = _family(func)
        if name is not None:
            self.fell_through[name] += 1
        return func(*args, **kwargs)

    def report(self) -> str:
        """One line: what ran on the scratch ops and what fell through to torch."""
        def listed(counts: Counter) -> str:
            return ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())) or "none"

        return f"cnnlab.scratch: scratch ops: {listed(self.routed)}; fell through to torch (no scratch form): {listed(self.fell_through)}"


@contextlib.contextmanager
def scratch(report: bool = False) -> Iterator[ScratchMode]:
    """Within this block, torch's convolution, pooling and batch-norm calls (``nn.Conv2d``, ``F.max_pool2d``,
    ...) run on cnnlab's scratch operations; yields the :class:`ScratchMode`, which counts them.

    Args:
        report: print, when the block ends, which functions ran on the scratch ops and which of the
            conv/pool/norm families fell through to torch (no scratch form), each once with its count.

    Example::

        >>> with cnnlab.scratch(report=True):
        ...     y = torch.nn.Conv2d(1, 6, 5)(torch.randn(2, 1, 28, 28))
        cnnlab.scratch: scratch ops: conv2d x1; fell through to torch (no scratch form): none
    """
    mode = ScratchMode()
    with mode:
        try:
            yield mode
        finally:
            if report:
                print(mode.report(), flush=True)
