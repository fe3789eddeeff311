"""Max pooling through the compiled loops of ``csrc/max_pool.c`` (built by ``compiled.py``).

The same operation as ``pool.MaxPoolNd`` (the first maximum in scan order wins, or the last NaN;
the backward pass routes each gradient to its winner), as two loops that read memory once:

    forward   each output: scan its window, keep the maximum and its flat input position (int32)
    backward  zero grad_x, then add each output's gradient at its winner's position

so the winners are noted in the forward pass (4 bytes an output) instead of found again in the
backward. Measured forward + backward against torch's own kernel and ``MaxPoolNd``'s tensor
passes, channels-last ReLU outputs, 2 threads, the three interleaved in rotating order, medians of
40 (compiled / torch, tensor / torch): 2x2/2 pools 256x32x28x28 0.78 / 1.95, 256x64x10x10 0.91 /
2.28, 128x16x28x28 0.84 / 1.96, 128x32x14x14 1.04 / 2.30; 3x3/1 32x24x14x14 1.19 / 2.75; 3x3/2
128x32x28x28 0.91 / 2.39, 32x64x16x16 1.15 / 3.87, 128x88x14x14 1.02 / 3.30.

Used for float32 and float64 CPU tensors with 2 or more channels, 1-3 spatial axes, whenever the
library is available: channels-last as they lie, channels-first ones (8+ channels, up to 32 MB:
``pool.py``) on a channels-last copy, the results and the gradient copied back to torch's layout. Pooled one channel
at a time instead, as N*C planes, the loops spent their time on each window's bookkeeping (forward +
backward against the tensor passes, medians of 22: 64x64x56x56 2x2/2 59.8 / 47.4 ms, 256x6x28x28 4.6
/ 3.1, 64x96x54x54 3x3/2 124 / 97). Half precision, other devices, ``torch.compile`` and torch.func
transforms keep the tensor route. A
differentiable backward (``create_graph``) turns the winners into kernel offsets and differentiates
``pool.reference_max_pool`` as the tensor route does.
"""

from __future__ import annotations

import ctypes
import functools
import math

import torch

from ..textbook.autograd import graph_backward, unviewed, wants_graph
from ..textbook.pool import reference_max_pool
from ..textbook.shapes import Pads
from . import compiled

__all__ = ["CompiledMaxPoolNd", "kernels"]

_FLOAT = {torch.float32: "f32", torch.float64: "f64"}


@functools.cache
def _typed(lib: ctypes.CDLL, suffix: str):
    forward, backward = lib[f"max_pool_forward_{suffix}"], lib[f"max_pool_backward_{suffix}"]
    p = ctypes.c_void_p
    forward.argtypes = [p, p, p, ctypes.POINTER(compiled.Geometry), ctypes.c_int]
    backward.argtypes = [p, p, p, ctypes.POINTER(compiled.Geometry), ctypes.c_int]
    forward.restype = backward.restype = None
    return forward, backward


def kernels(x: torch.Tensor):
    """(forward, backward) C functions for ``x``'s dtype, or None where the tensor route serves ``x``."""
    if x.device.type != "cpu" or x.dtype not in _FLOAT or x.numel() == 0 or math.prod(x.shape[2:]) >= 2**31:
        return None
    lib = compiled.library("max_pool")
    return None if lib is None else _typed(lib, _FLOAT[x.dtype])


@functools.lru_cache(maxsize=1024)
def _geometry(n, c, spatial, out_size, kernel, stride, pads: Pads, dilation) -> compiled.Geometry:
    return compiled.Geometry.of(n, c, spatial, out_size, kernel, stride, tuple(lo for lo, _ in pads), dilation)


def offsets_of(indices: torch.Tensor, spatial, kernel, stride, pads: Pads, dilation) -> torch.Tensor:
    """Flat input positions of winners (N, *S_out, C) -> their kernel offsets (0..prod(K)-1, scan order),
    as ``pool.reference_max_pool`` takes them (the inverse of ``pool.max_indices``)."""
    out_size = indices.shape[1:-1]
    rest, offsets = indices.long(), torch.zeros_like(indices, dtype=torch.long)
    for axis in reversed(range(len(kernel))):
        position = rest % spatial[axis]
        rest = rest // spatial[axis]
        shape = [1] * indices.dim()
        shape[1 + axis] = out_size[axis]
        start = torch.arange(out_size[axis], device=indices.device).view(shape) * stride[axis] - pads[axis][0]
        offsets = offsets + (position - start) // dilation[axis] * math.prod(kernel[axis + 1 :])
    return offsets.masked_fill_(indices < 0, 0)  # a window of padding only: its first offset, which reads padding


class CompiledMaxPoolNd(torch.autograd.Function):
    """Max pooling by the compiled loops ``functions`` (``kernels(x)``); returns (y, winners) with winners
    (N, C, *S_out) int32 flat input positions, or None when neither a backward pass nor ``return_indices``
    asked for them."""

    @staticmethod
    def forward(ctx, functions, x, kernel, stride, pads: Pads, dilation, out_size, winners: bool):
        forward, ctx.backward_loop = functions  # kernels(x)
        n, c, *spatial = x.shape
        xl = x.movedim(1, -1).contiguous()  # (N, *S, C): a view when x is channels-last already
        y = xl.new_empty((n, *out_size, c))
        idx = torch.empty(y.shape, dtype=torch.int32) if winners else None
        geometry = _geometry(n, c, tuple(spatial), tuple(out_size), kernel, stride, pads, dilation)
        forward(xl.data_ptr(), y.data_ptr(), None if idx is None else idx.data_ptr(), ctypes.byref(geometry),
                torch.get_num_threads())
        ctx.geometry = (tuple(x.shape), kernel, stride, pads, dilation, out_size)
        if idx is not None:
            ctx.mark_non_differentiable(idx)
        ctx.save_for_backward(x, idx)  # idx (N, *S_out, C); x: only for a differentiable backward
        ctx.transposed = not x.movedim(1, -1).is_contiguous()  # channels-first: copied channels-last above
        if ctx.transposed:  # results in x's own layout, as torch's are
            return y.movedim(-1, 1).contiguous(), None if idx is None else idx.movedim(-1, 1).contiguous()
        return unviewed(y.movedim(-1, 1)), None if idx is None else idx.movedim(-1, 1)

    @staticmethod
    def backward(ctx, grad_y, _):
        x, idx = ctx.saved_tensors
        x_shape, kernel, stride, pads, dilation, out_size = ctx.geometry
        if wants_graph():  # the winners as kernel offsets, then the reference form's differentiable gather

            offsets = offsets_of(idx, x_shape[2:], kernel, stride, pads, dilation)
            grads = graph_backward(lambda x: reference_max_pool(x, kernel, stride, pads, dilation, out_size, offsets), (x,),
                                   ctx.needs_input_grad[1:2], grad_y)
            return None, grads[0], None, None, None, None, None, None
        backward = ctx.backward_loop
        n, c, *spatial = x_shape
        g = grad_y.movedim(1, -1).contiguous()  # (N, *S_out, C)
        grad_x = g.new_empty((n, *spatial, c))
        geometry = _geometry(n, c, tuple(spatial), tuple(out_size), kernel, stride, pads, dilation)
        backward(g.data_ptr(), idx.data_ptr(), grad_x.data_ptr(), ctypes.byref(geometry),
                 torch.get_num_threads())
        grad_x = grad_x.movedim(-1, 1)
        return None, grad_x.contiguous() if ctx.transposed else grad_x, None, None, None, None, None, None
