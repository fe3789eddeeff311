"""Layers that hold parameters and call cnnlab's operations (or torch's).

Each class subclasses its ``torch.nn`` namesake, so constructor arguments, parameter
names, ``state_dict`` keys and default initialisation are torch's own: weights move
between the two backends and to plain PyTorch unchanged. Only ``forward`` differs:

    backend="scratch"  ->  cnnlab.ops (this project's operations, the default)
    backend="torch"    ->  torch.nn.functional (oneDNN / cuDNN kernels)
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .. import ops

__all__ = [
    "BACKENDS",
    "AdaptiveAvgPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "check_backend",
]

BACKENDS = ("scratch", "torch")


def check_backend(backend: str) -> str:
    """Return ``backend`` if it is known, else raise ``ValueError`` listing the choices."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend


class _Backend:
    """Mixin: stores the backend and shows it in the module's repr."""

    backend: str

    def _set_backend(self, backend: str) -> None:
        self.backend = check_backend(backend)

    def extra_repr(self) -> str:  # type: ignore[override]
        return f"{super().extra_repr()}, backend={self.backend!r}"


# --- convolution -----------------------------------------------------------------------------


class _ConvMixin(_Backend):
    _scratch_op = None  # set per dimension

    def _conv_forward(self, input, weight, bias):  # torch's hook, called by forward()
        if self.backend == "torch":
            return super()._conv_forward(input, weight, bias)
        op = type(self)._scratch_op
        if self.padding_mode != "zeros":  # torch pads explicitly for these modes, then convolves unpadded
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return op(input, weight, bias, self.stride, 0, self.dilation, self.groups)
        return op(input, weight, bias, self.stride, self.padding, self.dilation, self.groups)


class Conv1d(_ConvMixin, nn.Conv1d):
    """``torch.nn.Conv1d`` with a choice of backend (default: cnnlab's own ``conv1d``)."""

    _scratch_op = staticmethod(ops.conv1d)

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)


class Conv2d(_ConvMixin, nn.Conv2d):
    """``torch.nn.Conv2d`` with a choice of backend (default: cnnlab's own ``conv2d``).

    Shape:
        (N, C_in, H, W) -> (N, C_out, H_out, W_out), ``H_out = floor((H + 2p - d*(k-1) - 1)/s) + 1``.

    Example:
        >>> layer = Conv2d(1, 6, kernel_size=5, padding=2)
        >>> layer(torch.zeros(1, 1, 28, 28)).shape
        torch.Size([1, 6, 28, 28])
    """

    _scratch_op = staticmethod(ops.conv2d)

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)


class Conv3d(_ConvMixin, nn.Conv3d):
    """``torch.nn.Conv3d`` with a choice of backend (default: cnnlab's own ``conv3d``)."""

    _scratch_op = staticmethod(ops.conv3d)

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)


# --- pooling ---------------------------------------------------------------------------------


class _MaxPoolMixin(_Backend):
    _scratch_op = None
    _torch_op = None

    def forward(self, input):
        op = type(self)._torch_op if self.backend == "torch" else type(self)._scratch_op
        return op(input, self.kernel_size, self.stride, self.padding, self.dilation,
                  ceil_mode=self.ceil_mode, return_indices=self.return_indices)


def _max_pool_class(name: str, base: type, scratch, torch_op) -> type:
    def __init__(self, *args, backend: str = "scratch", **kwargs):
        base.__init__(self, *args, **kwargs)
        self._set_backend(backend)

    doc = f"``torch.nn.{name}`` with a choice of backend (default: cnnlab's own ``{scratch.__name__}``)."
    return type(name, (_MaxPoolMixin, base), {"__init__": __init__, "__doc__": doc, "__module__": __name__,
                                               "_scratch_op": staticmethod(scratch), "_torch_op": staticmethod(torch_op)})


MaxPool1d = _max_pool_class("MaxPool1d", nn.MaxPool1d, ops.max_pool1d, F.max_pool1d)
MaxPool2d = _max_pool_class("MaxPool2d", nn.MaxPool2d, ops.max_pool2d, F.max_pool2d)
MaxPool3d = _max_pool_class("MaxPool3d", nn.MaxPool3d, ops.max_pool3d, F.max_pool3d)


class AvgPool1d(_Backend, nn.AvgPool1d):
    """``torch.nn.AvgPool1d`` with a choice of backend (default: cnnlab's own ``avg_pool1d``)."""

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        op = F.avg_pool1d if self.backend == "torch" else ops.avg_pool1d
        return op(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)


class AvgPool2d(_Backend, nn.AvgPool2d):
    """``torch.nn.AvgPool2d`` with a choice of backend (default: cnnlab's own ``avg_pool2d``)."""

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        op = F.avg_pool2d if self.backend == "torch" else ops.avg_pool2d
        return op(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.divisor_override)


class AvgPool3d(_Backend, nn.AvgPool3d):
    """``torch.nn.AvgPool3d`` with a choice of backend (default: cnnlab's own ``avg_pool3d``)."""

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        op = F.avg_pool3d if self.backend == "torch" else ops.avg_pool3d
        return op(input, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(_Backend, nn.AdaptiveAvgPool2d):
    """``torch.nn.AdaptiveAvgPool2d`` with a choice of backend (default: cnnlab's own)."""

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)

    def forward(self, input):
        op = F.adaptive_avg_pool2d if self.backend == "torch" else ops.adaptive_avg_pool2d
        return op(input, self.output_size)


# --- batch normalisation ---------------------------------------------------------------------


class _BatchNormMixin(_Backend):
    def forward(self, input):
        if self.backend == "torch":
            return super().forward(input)
        self._check_input_dim(input)
        # The bookkeeping of torch.nn.modules.batchnorm._BatchNorm.forward, then cnnlab's op.
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        return ops.batch_norm(input, self.running_mean if track else None, self.running_var if track else None,
                              self.weight, self.bias, use_batch_stats, factor, self.eps)


class BatchNorm1d(_BatchNormMixin, nn.BatchNorm1d):
    """``torch.nn.BatchNorm1d`` with a choice of backend (default: cnnlab's own ``batch_norm``).

    Statistics over the batch (input (N, C)) or batch and length (input (N, C, L)).
    """

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)


class BatchNorm2d(_BatchNormMixin, nn.BatchNorm2d):
    """``torch.nn.BatchNorm2d`` with a choice of backend: statistics over (N, H, W) per channel."""

    def __init__(self, *args, backend: str = "scratch", **kwargs):
        super().__init__(*args, **kwargs)
        self._set_backend(backend)
