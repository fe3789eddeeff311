"""Receptive fields, followed along the real data flow of any ``nn.Module`` (D2L 7.2.6).

For every tensor the forward pass makes, per spatial axis, three numbers in input pixels:

    size   r   the receptive field of one unit
    jump   j   the distance between neighbouring units (the effective stride)
    start  s   the input coordinate of the centre of the first unit

A window layer (kernel k, stride t, left padding p, dilation d, span e = d*(k-1)+1) maps them as

    r' = r + (e - 1) * j,    j' = j * t,    s' = s + ((e - 1) / 2 - p) * j

Elementwise operations and concatenations (ResNet's addition, Inception's and DenseNet's
concatenation) take, per axis, the largest field of their inputs. Flattening, linear layers and
adaptive pooling see the whole feature map: a window over all ``n`` positions.

The tracker hooks every module (conv, pooling and batch-norm layers apply their rule) and, through
a ``TorchFunctionMode``, every torch function called between modules (``torch.cat``, ``+``,
``F.relu``...), so branches that merge in a model's own ``forward`` are followed too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..ops.textbook.shapes import as_tuple, conv_padding

__all__ = ["Field", "FieldTracker", "window_geometry"]


@dataclass(frozen=True)
class Field:
    """Receptive field of the units of one tensor: per spatial axis (size, jump, start); ``whole`` once flattened."""

    size: tuple[float, ...]
    jump: tuple[float, ...]
    start: tuple[float, ...]
    whole: bool = False

    @classmethod
    def input(cls, spatial) -> Field:
        n = len(spatial)
        return cls((1.0,) * n, (1.0,) * n, (0.0,) * n)

    def window(self, kernel, stride, pad_before, dilation) -> Field:
        size, jump, start = [], [], []
        for r, j, s, k, t, p, d in zip(self.size, self.jump, self.start, kernel, stride, pad_before, dilation):
            span = d * (k - 1) + 1
            size.append(r + (span - 1) * j)
            jump.append(j * t)
            start.append(s + ((span - 1) / 2 - p) * j)
        return Field(tuple(size), tuple(jump), tuple(start))

    def everything(self, spatial) -> Field:
        """A unit that sees every one of ``spatial`` positions (global pooling, flatten, linear)."""
        whole = self.window(spatial, spatial, (0,) * len(spatial), (1,) * len(spatial))
        return Field(whole.size, whole.jump, whole.start, whole=True)

    def merge(self, other: Field) -> Field:
        if len(other.size) != len(self.size):
            return self if self.whole else other
        pick = [a if a[0] >= b[0] else b for a, b in zip(zip(self.size, self.jump, self.start), zip(other.size, other.jump, other.start))]
        return Field(tuple(p[0] for p in pick), tuple(p[1] for p in pick), tuple(p[2] for p in pick), self.whole or other.whole)

    def rectangle(self, index, spatial_in) -> tuple[list[tuple[float, float]], list[tuple[int, int]]]:
        """The input region behind unit ``index``: unclipped (float bounds) and clipped to the input (ints)."""
        unclipped, clipped = [], []
        for r, j, s, i, n in zip(self.size, self.jump, self.start, index, spatial_in):
            centre = s + i * j
            lo, hi = centre - (r - 1) / 2, centre + (r - 1) / 2
            unclipped.append((lo, hi))
            clipped.append((max(0, math.ceil(lo)), min(n - 1, math.floor(hi))))
        return unclipped, clipped


def window_geometry(module: nn.Module, spatial_in) -> tuple | None:
    """(kernel, stride, pad_before, dilation) of a windowed layer, or None for any other module."""
    n = len(spatial_in)
    if isinstance(module, nn.modules.conv._ConvNd):
        kernel, stride, dilation = tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation)
        pads = conv_padding(module.padding, kernel, dilation, stride)
        return kernel, stride, tuple(p[0] for p in pads), dilation
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)):
        kernel = as_tuple(module.kernel_size, n, "kernel_size")
        stride = as_tuple(module.stride if module.stride else module.kernel_size, n, "stride")
        dilation = as_tuple(getattr(module, "dilation", 1), n, "dilation")
        return kernel, stride, as_tuple(module.padding, n, "padding"), dilation
    return None


def _adaptive(module: nn.Module, field: Field, spatial_in, spatial_out) -> Field:
    """Adaptive pooling: windows of up to ceil(n/o) + 1 positions, about n/o apart; 1x1 output sees all."""
    if all(o == 1 for o in spatial_out):
        return field.everything(spatial_in)
    kernel = tuple(-(-n // o) + (1 if n % o else 0) for n, o in zip(spatial_in, spatial_out))
    stride = tuple(n / o for n, o in zip(spatial_in, spatial_out))
    return field.window(kernel, stride, (0,) * len(kernel), (1,) * len(kernel))


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)


class FieldTracker(TorchFunctionMode):
    """Attach a :class:`Field` to every tensor of one forward pass; read them with :meth:`field`.

    Use as a context manager around ``model(x)`` after :meth:`watch`-ing the model.
    """

    def __init__(self, x: torch.Tensor, spatial_dims: int):
        super().__init__()
        self.dims = spatial_dims
        self.fields: dict[int, Field] = {id(x): Field.input(x.shape[-spatial_dims:])}
        self.keep = [x]  # keep tensors alive so ids stay unique during the pass
        self.input_spatial = tuple(x.shape[-spatial_dims:])
        self._inside_rule = 0  # >0 while inside a module whose output field a rule sets
        self.handles = []

    def field(self, t: torch.Tensor) -> Field | None:
        return self.fields.get(id(t))

    def _set(self, t: torch.Tensor, f: Field) -> None:
        self.fields[id(t)] = f
        self.keep.append(t)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if self._inside_rule:
            return out
        known = [self.fields[id(t)] for t in _tensors((args, kwargs)) if id(t) in self.fields]
        if not known:
            return out
        merged = known[0]
        for f in known[1:]:
            merged = merged.merge(f)
        for t in _tensors(out):
            if t.dim() < self.dims + 1 and not merged.whole:  # spatial axes are gone: flatten, view, mean...
                source = next(s for s in _tensors((args, kwargs)) if id(s) in self.fields and s.dim() >= self.dims + 1)
                self._set(t, self.fields[id(source)].everything(tuple(source.shape[-self.dims:])))
            elif id(t) not in self.fields:
                self._set(t, merged)
        return out

    def watch(self, model: nn.Module) -> FieldTracker:
        for module in model.modules():
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))
        return self

    def _has_rule(self, module) -> bool:
        return window_geometry(module, (1,) * self.dims) is not None or isinstance(
            module, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d))

    def _pre(self, module, args):
        if self._has_rule(module):
            self._inside_rule += 1

    def _post(self, module, args, output):
        if not self._has_rule(module):
            return
        self._inside_rule -= 1
        x = next(_tensors(args), None)
        if x is None or id(x) not in self.fields or not isinstance(output, torch.Tensor):
            return
        field, spatial_in = self.fields[id(x)], tuple(x.shape[-self.dims:])
        geometry = window_geometry(module, spatial_in)
        if geometry is not None:
            self._set(output, field.window(*geometry))
        else:
            self._set(output, _adaptive(module, field, spatial_in, tuple(output.shape[-self.dims:])))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()
