"""Convolution through the compiled loops of ``csrc/direct_conv.c`` (built by ``compiled.py``).

The cross-correlation of ``conv.ConvNd``, summed directly instead of through a window matrix: the
input is padded once into a channels-last buffer ``xp`` (N, *S_pad, C), every kernel tap is then a
fixed offset in each sample's flattened positions, and the loops keep a block of 7 consecutive outputs
by 32 output channels (float32 on AVX-512; 6 by 16 on AVX2, whose registers are half as wide and half as
many: ``csrc/isa.h``) in registers while they run over the taps and input channels, so the input is
read in place and never copied per tap:

    forward      y[q, o]    = b[o] + sum_t,c  xp[s*q + off_t, c] * W[t, c, o]
    grad_input   for each phase of the input positions (i = s*m + phi per axis; one phase at stride
                 1), a stride-1 correlation of the bordered output gradient with the taps that reach
                 that phase (``_phases``), by the same loops
    grad_weight  gW[t, c, o] = sum_q  xp[s*q + off_t, c] * gy[q, o]   (a sum over positions, each tile
                 of gW summed by one thread in sample order: the same bits for any thread count)
    grad_bias    gy summed over positions (``sums.channel_sums``)

Measured against torch's own (oneDNN) convolution, forward + backward, channels-last, 2 threads,
alternately, medians of 11-15: 3x3 layers at stride 1 0.95-1.36 of its time (16->32 at 28 px and
32->32 at 14 px, batch 128, 0.95; 64->64 and 128->128 at 7 px 1.04-1.36), at stride 2 1.17-1.51;
5x5 layers with 6-16 input channels 1.20-1.36. The window matrix, per-tap products and DFT these
replace ran the same layers at 1.4-3.0x torch's time (numbers in ``conv._direct_loops`` and the README).

Layers of 1-3 input channels (a network's first layer) take ``PlanarConvNd`` instead, where
``conv._planar_loops`` says so: a vector holds consecutive outputs of one row rather than output
channels, which such a layer has too few of to fill vectors with work (``csrc/planar_conv_body.h``);
its weight gradient, for an output gradient of 9 or more channels that is channels-last (or has 49+
taps, and is copied so), is ``conv_weight_grad`` above, whose tiles then run over 8 taps of the one
channel. (Channels-last results of 9 or more channels go to ``DirectConvNd`` whole.)

Used, where ``conv._direct_loops`` says so, for float32 and float64 CPU tensors of one group; half
precision, other devices, ``torch.compile`` and torch.func keep the tensor routes. A differentiable
backward (``create_graph``) differentiates ``conv.reference_conv``, as every route does.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
from typing import NamedTuple

import torch

from ..textbook.autograd import graph_backward, unviewed, wants_graph
from ..textbook.conv import reference_conv
from ..textbook.layout import laid_out_like_torch, like_param
from ..textbook.shapes import Pads
from ..textbook.sums import channel_sums
from ..textbook.windows import flat_offsets, tap_positions
from . import compiled

__all__ = ["DirectConvNd", "PlanarConvNd", "kernels"]

_FLOAT = {torch.float32: "f32", torch.float64: "f64"}


class ConvShape(ctypes.Structure):
    """A convolution's sizes as ``csrc/direct_conv.c`` reads them (spatial sizes padded to 3-D with leading 1s)."""

    _fields_ = [("n", ctypes.c_int64), ("c", ctypes.c_int64), ("o", ctypes.c_int64), ("taps", ctypes.c_int64)] + [
        (name, ctypes.c_int64 * 3) for name in ("size_in", "size_out", "stride", "g_in", "g_lo")] + [
        ("g_size", ctypes.c_int64), ("y_cf", ctypes.c_int64)] + [
        (name, ctypes.c_int64 * 3) for name in ("y_in", "y_step", "y_first")]

    @classmethod
    def of(cls, n: int, c: int, o: int, taps: int, size_in, size_out, stride, g_in=(1,), g_lo=(0,), g_size=0,
           y_cf=False, y_in=None, y_step=(1,), y_first=(0,)) -> ConvShape:
        """``y_in``, ``y_step``, ``y_first``: where the forward loops place output (od, oh, ow): at (od * step + first,
        ...) of a buffer of spatial sizes y_in (default: a y of the output's own sizes, outputs side by side)."""
        def three(v, fill):
            return (ctypes.c_int64 * 3)(*([fill] * (3 - len(v)) + list(v)))

        return cls(n, c, o, taps, three(size_in, 1), three(size_out, 1), three(stride, 1), three(g_in, 1), three(g_lo, 0), g_size,
                   int(y_cf), three(size_out if y_in is None else y_in, 1), three(y_step, 1), three(y_first, 0))


@functools.lru_cache(maxsize=1024)
def _shape(*args) -> ConvShape:
    """``ConvShape.of(*args)``, made once per geometry (the C loops only read it)."""
    return ConvShape.of(*args)


class Kernels(NamedTuple):
    """The C functions of one build for one dtype, and that build's blocking (``csrc/isa.h``)."""

    forward: ctypes._CFuncPtr
    dot: ctypes._CFuncPtr
    weight_grad: ctypes._CFuncPtr
    planar_forward: ctypes._CFuncPtr
    planar_weight_grad: ctypes._CFuncPtr
    variant: str  # avx512, avx2, neon or portable: what the build's vectors are
    lanes: int  # values of the dtype in one of its vectors
    planar_max_width: int  # output channels per block of the planar loops (2 x width accumulators)
    dot_max_channels: int  # output channels up to which _correlate takes dot products over the input channels


@functools.cache
def _typed(lib: ctypes.CDLL, suffix: str) -> Kernels:
    forward, dot, weight_grad = (lib[f"conv_{name}_{suffix}"] for name in ("forward", "forward_dot", "weight_grad"))
    planar_forward, planar_weight_grad = (lib[f"planar_{name}_{suffix}"] for name in ("forward", "weight_grad"))
    p, shape, i64, flag = ctypes.c_void_p, ctypes.POINTER(ConvShape), ctypes.c_int64, ctypes.c_int
    for function in (forward, dot):
        function.argtypes = [p, p, p, p, shape, p, ctypes.c_int]
        function.restype = None
    weight_grad.argtypes = [p, p, p, shape, p, ctypes.c_int]
    weight_grad.restype = None
    planar_forward.argtypes = [p, p, p, p, shape, p, i64, flag, ctypes.c_int]
    planar_forward.restype = None
    planar_weight_grad.argtypes = [p, p, p, shape, p, flag, ctypes.c_int]
    planar_weight_grad.restype = ctypes.c_int
    lib.conv_variant.restype = ctypes.c_char_p
    config = (ctypes.c_int64 * 5)()
    lib.conv_config(config)
    vector_bytes, _, _, planar_width, dot_channels = config
    return Kernels(forward, dot, weight_grad, planar_forward, planar_weight_grad, lib.conv_variant().decode(),
                   vector_bytes // (4 if suffix == "f32" else 8), planar_width, dot_channels)


def kernels(x: torch.Tensor) -> Kernels | None:
    """The C functions and blocking of the loaded build for ``x``'s dtype, or None where the tensor routes serve ``x``."""
    if x.device.type != "cpu" or x.dtype not in _FLOAT or x.numel() == 0:
        return None
    lib = compiled.library("direct_conv")
    return None if lib is None else _typed(lib, _FLOAT[x.dtype])


def _widths(o: int, lanes: int) -> list[int]:
    """Output channels per group of the loops: 2 vectors' worth (the register blocks of 7 outputs by 2
    vectors measured fastest), the last group one vector where no more remain (``csrc/direct_conv_body.h``)."""
    widths = [2 * lanes] * ((o - 1) // (2 * lanes))
    return widths + [2 * lanes if o - sum(widths) > lanes else lanes]


def _packed(weight: torch.Tensor, lanes: int) -> torch.Tensor:
    """(O, C, T) -> each group of output channels (``_widths``) as (T, C, width), one after the other, zeros past O."""
    o, c, t = weight.shape
    widths = _widths(o, lanes)
    if len(set(widths)) == 1 and o % widths[0] == 0:  # one copy
        return weight.reshape(len(widths), widths[0], c, t).permute(0, 3, 2, 1).contiguous()
    padded = weight.new_zeros((sum(widths), c, t))
    padded[:o] = weight
    groups, start = [], 0
    for width in widths:
        groups.append(padded[start : start + width].permute(2, 1, 0).reshape(-1))
        start += width
    return torch.cat(groups)


def _padded_bias(bias: torch.Tensor | None, lanes: int) -> torch.Tensor | None:
    """The bias with zeros to the width of the packed weights' groups (``_widths``)."""
    if bias is None:
        return None
    width = sum(_widths(bias.shape[0], lanes))
    if bias.shape[0] == width and bias.is_contiguous():
        return bias
    out = bias.new_zeros(width)
    out[: bias.shape[0]] = bias
    return out


def _padded(x: torch.Tensor, pads: Pads) -> torch.Tensor:
    """``x`` (N, C, *S) copied into a zero-bordered, contiguous channels-last buffer (N, *S_pad, C)."""
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]
    xp = torch.constant_pad_nd(x.movedim(1, -1), [0, 0, *flat])
    return xp if xp.is_contiguous() else xp.contiguous()


@functools.lru_cache(maxsize=1024)
def _flat_offsets(taps: tuple[tuple[int, ...], ...], padded: tuple[int, ...]) -> torch.Tensor:
    """Each tap's position in the padded grid as an offset into a sample's flattened positions, for the C loops."""
    return torch.tensor(flat_offsets(taps, padded), dtype=torch.int64)


def _correlate(functions, xp: torch.Tensor, weight: torch.Tensor, bias, out_size, taps, stride,
               channels_first: bool = False, into: tuple[torch.Tensor, tuple[int, ...], tuple[int, ...]] | None = None
               ) -> torch.Tensor:
    """The forward loops: xp (N, *S_pad, C) correlated with weight (O, C, T) at tap positions ``taps`` (a
    position per axis in xp's grid) and ``stride`` -> (N, *S_out, O), or (N, O, *S_out) written so by the
    loops where ``channels_first`` (a channels-first network's layout: no copy of the result afterwards). ``into`` = (y, step,
    first): write output (od, oh, ow) at (od * step + first, ...) of y, (N, *S_y, O) or (N, O, *S_y), instead (a phase of
    a strided input gradient, in place). At most ``functions.dot_max_channels`` output
    channels from input channels in whole vectors: as dot products over the input channels
    (``conv_forward_dot``: the input gradient of LeNet's 6->16 layer at batch 256, 16 -> 6, 2.02 -> 1.67 ms; of a
    3->16 layer at 32 px 2.04 -> 1.28 ms, one process each, medians of 15), else a block of outputs by output
    channels."""
    n, *padded, c = xp.shape
    o, lanes = weight.shape[0], functions.lanes
    if o <= functions.dot_max_channels and c % lanes == 0:
        forward = functions.dot
        w = weight.permute(2, 0, 1).contiguous()  # (T, O, C)
        b = None if bias is None else bias.contiguous()
    else:
        forward = functions.forward
        w = _packed(weight, lanes)
        b = _padded_bias(bias, lanes)
    offsets = _flat_offsets(taps, tuple(padded))
    if into is None:
        y, step, first = xp.new_empty((n, o, *out_size) if channels_first else (n, *out_size, o)), (1,), (0,)
    else:
        y, step, first = into
    y_in = tuple(y.shape[2:] if channels_first else y.shape[1:-1])
    shape = _shape(n, c, o, len(taps), tuple(padded), tuple(out_size), tuple(stride), (1,), (0,), 0, channels_first, y_in,
                   tuple(step), tuple(first))
    forward(xp.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), ctypes.byref(shape),
            offsets.data_ptr(), torch.get_num_threads())
    return y


@functools.lru_cache(maxsize=1024)
def _phases(kernel, stride, dilation, pads: Pads, size_in, size_out):
    """The input gradient of a strided correlation as s_1 * ... * s_d stride-1 correlations of the output
    gradient, one per phase of the input positions (i = s*m + phi on each axis): input i takes output
    i' = (i + lo - k*d) / s from tap k where that divides, so phase phi is a correlation over m with the
    taps k where (phi + lo - k*d) % s == 0, each at output offset e_k = (phi + lo - k*d) // s.

    Returns (g_pads, phases): the border of the output gradient that every phase reads inside (e_k may be
    negative, or reach past its end), and per phase (phi, size, taps, positions): its outputs' count per
    axis, its kernel taps (flat indices into the kernel) and their positions in the bordered gradient."""
    per_axis, g_pads = [], []
    for k, s, d, (lo, _), n, out in zip(kernel, stride, dilation, pads, size_in, size_out):
        axis = []
        for phi in range(s):
            taps = [(t, (phi + lo - t * d) // s) for t in range(k) if (phi + lo - t * d) % s == 0]
            axis.append((phi, -(-(n - phi) // s), taps))
        e = [e for _, _, taps in axis for _, e in taps]
        reach = [m - 1 + e for _, m, taps in axis for _, e in taps if m > 0]
        g_pads.append((max(0, -min(e, default=0)), max(0, max(reach, default=0) - (out - 1))))
        per_axis.append(axis)
    phases = []
    for combo in itertools.product(*per_axis):
        phi = tuple(p for p, _, _ in combo)
        size = tuple(m for _, m, _ in combo)
        taps, positions = [], []
        for tap in itertools.product(*(taps for _, _, taps in combo)):
            taps.append(sum(t * math.prod(kernel[a + 1 :]) for a, (t, _) in enumerate(tap)))
            positions.append(tuple(e + lo for (_, e), (lo, _) in zip(tap, g_pads)))
        phases.append((phi, size, tuple(taps), tuple(positions)))
    return tuple(g_pads), phases


class DirectConvNd(torch.autograd.Function):
    """Cross-correlation of one group by the compiled loops ``functions`` (``kernels(x)``), any stride,
    border and dilation."""

    @staticmethod
    def forward(ctx, functions, x, weight, bias, stride, pads: Pads, dilation, channels_last: bool = True):
        kernel = tuple(weight.shape[2:])
        xp = _padded(x, pads)
        padded = xp.shape[1:-1]
        out_size = tuple((p - d * (k - 1) - 1) // s + 1 for p, k, d, s in zip(padded, kernel, dilation, stride))
        y = _correlate(functions, xp, weight.reshape(*weight.shape[:2], -1), bias, out_size, tap_positions(kernel, dilation),
                       stride, channels_first=not channels_last)
        ctx.functions = functions
        ctx.geometry = (stride, pads, dilation, kernel, out_size, channels_last)
        ctx.save_for_backward(x, weight, bias, xp if ctx.needs_input_grad[2] else None)  # xp: kept for grad_w
        return unviewed(y.movedim(-1, 1)) if channels_last else y  # (N, O, *S_out); nothing saved shares it

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, xp = ctx.saved_tensors
        stride, pads, dilation, kernel, out_size, channels_last = ctx.geometry
        if wants_graph():
            return (None, *_graph_grads(ctx, grad_out), None, None, None, None)
        if ctx.needs_input_grad[1]:  # the output gradient bordered for the input gradient's correlations
            g_pads, phases = _phases(kernel, stride, dilation, pads, x.shape[2:], out_size)
            gp = _padded(grad_out, g_pads)
        else:  # the weight gradient alone (a first layer) reads it as it is, channels-last
            g_pads, gp = ((0, 0),) * len(kernel), grad_out.movedim(1, -1).contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_x = _input_grad(ctx.functions, gp, weight, x.shape, stride, phases, channels_first=not channels_last)
        if ctx.needs_input_grad[2]:
            grad_w = like_param(_weight_grad(ctx.functions, xp, gp, weight, kernel, dilation, stride, out_size, g_pads), weight)
        if ctx.needs_input_grad[3]:
            grad_b = channel_sums(grad_out)
        return None, laid_out_like_torch(grad_x, x, weight), grad_w, grad_b, None, None, None, None


def _graph_grads(ctx, grad_out):
    """A differentiable backward (``create_graph``: a gradient penalty, a Hessian): the gradients of
    ``conv.reference_conv``, the definition in plain operations, as every route's; (grad_x, grad_w, grad_b)
    from ``ctx``'s saved (x, weight, bias) and geometry."""

    x, weight, bias, _ = ctx.saved_tensors
    stride, pads, dilation = ctx.geometry[:3]
    return graph_backward(lambda x, w, b: reference_conv(x, w, b, stride, pads, dilation, 1), (x, weight, bias),
                          ctx.needs_input_grad[1:4], grad_out)


def _input_grad(functions, gp: torch.Tensor, weight: torch.Tensor, x_shape, stride, phases,
                channels_first: bool = False) -> torch.Tensor:
    """grad_x (N, C, *S), channels-last or, where ``channels_first``, channels-first: each phase's
    correlation of the bordered output gradient gp, placed at its positions (stride 1: one phase, which is
    the whole of grad_x)."""
    n, c, *spatial = x_shape
    ones = (1,) * len(spatial)
    taps = weight.transpose(0, 1).reshape(c, weight.shape[0], -1)  # (C, O, T): O in, C out; a view
    if len(phases) == 1:  # stride 1: every tap, in order
        _, size, _, positions = phases[0]
        grad_x = _correlate(functions, gp, taps, None, size, positions, ones, channels_first)
        return grad_x if channels_first else grad_x.movedim(-1, 1)
    grad_x = gp.new_empty((n, c, *spatial) if channels_first else (n, *spatial, c))
    axis = 2 if channels_first else 1  # the first spatial axis
    for phi, size, index, positions in phases:  # each phase written by the loops straight to its positions
        if not index or 0 in size:
            grad_x[(slice(None),) * axis + tuple(slice(p, None, s) for p, s in zip(phi, stride))] = 0
        else:
            _correlate(functions, gp, taps[..., list(index)], None, size, positions, ones, channels_first,
                       into=(grad_x, stride, phi))
    return grad_x if channels_first else grad_x.movedim(-1, 1)


def _weight_grad(functions: Kernels, xp, gp, weight, kernel, dilation, stride, out_size, g_pads) -> torch.Tensor:
    n, *padded, c = xp.shape
    offsets = _flat_offsets(tap_positions(kernel, dilation), tuple(padded))
    shape = _shape(n, c, weight.shape[0], len(offsets), tuple(padded), tuple(out_size), tuple(stride), tuple(gp.shape[1:-1]),
                   tuple(lo for lo, _ in g_pads), gp.numel())
    return _weight_grad_loop(functions, xp, gp, weight, offsets, shape)


def _weight_grad_loop(functions: Kernels, xl: torch.Tensor, g: torch.Tensor, weight: torch.Tensor, offsets,
                      shape) -> torch.Tensor:
    """``conv_weight_grad`` on a channels-last input xl and output gradient g, tap offsets and sizes given:
    gW (O, C, *K)."""
    o, c = weight.shape[:2]
    gw = xl.new_zeros((len(offsets), c, sum(_widths(o, functions.lanes))))
    functions.weight_grad(xl.data_ptr(), g.data_ptr(), gw.data_ptr(), ctypes.byref(shape), offsets.data_ptr(), torch.get_num_threads())
    return gw[..., :o].permute(2, 1, 0).reshape(weight.shape)  # (T, C, O) -> (O, C, *K)


# A channels-last result of more than this many channels goes to DirectConvNd instead (conv._planar_loops:
# the planar loops write such a result a value at a time); a channels-last output gradient of more channels
# goes to the channels-last loops' weight gradient (8 taps a tile for one channel) instead of the planar
# one. Weight gradient alone, 2 threads, medians of 21, planar / channels-last loops: 1->6 5x5 at batch
# 256 1.08 / 1.18 ms, 1->8 3x3 0.24 / 0.27, 1->12 5x5 0.70 / 0.47, 1->16 3x3 0.64 / 0.32, 1->32 5x5 2.63 /
# 0.78, 1->64 3x3 0.93 / 0.29, 3->16 3x3 at 32 px 0.82 / 0.64. A channels-first gradient is copied
# channels-last for them from this many taps: planar / copy and channels-last loops, 11x11/4 1->96 at 224
# px, batch 8, 4.99 / 2.64 ms, at 96 px 4.75 / 1.65; 7x7/2 1->64 at 96 px 1.94 / 1.95, at 32 px 0.57 /
# 0.38, 3->64 at 64 px 2.49 / 1.95; but 5x5 1->32 at 28 px 1.50 / 1.92 and 3x3 1->64 0.59 / 1.91.
PLANAR_MAX_CHANNELS_LAST = 8
PLANAR_WEIGHT_GRAD_COPY_MIN_TAPS = 49


@functools.lru_cache(maxsize=1024)
def _planar_layout(spatial, kernel, stride, pads: Pads, dilation):
    """How the planar loops see a convolution: (grid, positions, loop_stride, out_size).

    At stride 1 along the last axis the grid is the padded input and the positions are the taps'. At stride
    s > 1 there (a 7x7/2 or 11x11/4 first layer; 1-D and 2-D) the padded input's columns are dealt into s
    phases, column i to phase i % s at i // s, and the phases stacked as a leading axis: output column j's
    tap k then reads phase (k*d) % s at column j + (k*d) // s, a stride-1 row again, every tap at a fixed
    offset (no tap read but the kernel's own)."""
    padded = [n + lo + hi for n, (lo, hi) in zip(spatial, pads)]
    out_size = tuple((p - d * (k - 1) - 1) // s + 1 for p, k, d, s in zip(padded, kernel, dilation, stride))
    taps = tap_positions(kernel, dilation)
    s = stride[-1]
    if s == 1:
        return tuple(padded), taps, tuple(stride), out_size
    grid = (s, *padded[:-1], -(-padded[-1] // s))
    positions = tuple((t[-1] % s, *t[:-1], t[-1] // s) for t in taps)
    return grid, positions, (1, *stride[:-1], 1), (1, *out_size)


def _planar_input(x: torch.Tensor, pads: Pads, grid, lanes: int) -> torch.Tensor:
    """``x`` (N, C, *S) copied into a zero-bordered channels-first buffer (N, C, *grid) (``_planar_layout``:
    the padded input, or its columns dealt into phases), with ``lanes`` readable zeros past its end (a row's
    last vector of outputs reads up to lanes - 1 values past it)."""
    n, c, *spatial = x.shape
    flat = x.new_zeros(n * c * math.prod(grid) + lanes)
    xp = flat[: n * c * math.prod(grid)].view(n, c, *grid)
    if len(grid) == len(spatial):
        xp[(slice(None), slice(None), *(slice(lo, lo + size) for size, (lo, _) in zip(spatial, pads)))] = x
        return xp
    s, *lead, columns = grid  # the padded input, widened to whole phases, dealt column i -> (i % s, i // s)
    lo = pads[-1][0]
    flat_pads = [lo, columns * s - spatial[-1] - lo] + [p for lo_hi in reversed(pads[:-1]) for p in lo_hi]
    padded = torch.constant_pad_nd(x, flat_pads)  # (N, C, *lead, columns * s)
    xp.copy_(padded.view(n, c, *lead, columns, s).movedim(-1, 2))
    return xp


def _planar_packed(weight: torch.Tensor, width: int) -> torch.Tensor:
    """(O, C, T) -> (O/width groups, C, T, width), zeros past O."""
    o, c, t = weight.shape
    groups = -(-o // width)
    padded = weight if groups * width == o else torch.cat([weight, weight.new_zeros((groups * width - o, c, t))])
    return padded.reshape(groups, width, c, t).permute(0, 2, 3, 1).contiguous()


def _planar_width(o: int, most: int) -> int:
    """Output channels per block: as few groups of at most ``most`` (the build's planar width) as O needs,
    evened out (32 -> 3 groups of 11 on AVX-512's 12)."""
    groups = -(-o // most)
    return -(-o // groups)


class PlanarConvNd(torch.autograd.Function):
    """Cross-correlation of a layer with few input channels (a first layer) by the compiled loops with lanes
    over output positions (``csrc/planar_conv_body.h``), from a channels-first padded input
    (``_planar_layout``): any stride (along the last axis of a 1-D or 2-D layer through phases), border and
    dilation, either layout of the result. The input gradient, where one is asked for, is
    ``DirectConvNd``'s."""

    @staticmethod
    def forward(ctx, functions, x, weight, bias, stride, pads: Pads, dilation, channels_last: bool):
        kernel = tuple(weight.shape[2:])
        n, c = x.shape[:2]
        o, lanes = weight.shape[0], functions.lanes
        grid, positions, loop_stride, loop_out = _planar_layout(tuple(x.shape[2:]), kernel, stride, pads, dilation)
        xp = _planar_input(x, pads, grid, lanes)
        out_size = loop_out[len(loop_out) - len(kernel):]
        width = _planar_width(o, functions.planar_max_width)
        w = _planar_packed(weight.reshape(o, c, -1), width)
        b = None if bias is None else bias.contiguous()
        offsets = _flat_offsets(positions, grid)
        y = x.new_empty((n, *out_size, o) if channels_last else (n, o, *out_size))
        shape = _shape(n, c, o, len(offsets), grid, loop_out, loop_stride)
        functions.planar_forward(xp.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), ctypes.byref(shape),
                     offsets.data_ptr(), width, int(channels_last), torch.get_num_threads())
        ctx.functions = functions
        ctx.geometry = (stride, pads, dilation, kernel, out_size, channels_last)
        ctx.save_for_backward(x, weight, bias, xp if ctx.needs_input_grad[2] else None)
        return unviewed(y.movedim(-1, 1)) if channels_last else y  # nothing saved shares y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, xp = ctx.saved_tensors
        stride, pads, dilation, kernel, out_size, channels_last = ctx.geometry
        if wants_graph():
            return (None, *_graph_grads(ctx, grad_out), None, None, None, None)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            g_pads, phases = _phases(kernel, stride, dilation, pads, x.shape[2:], out_size)
            grad_x = _input_grad(ctx.functions, _padded(grad_out, g_pads), weight, x.shape, stride, phases,
                                 channels_first=not channels_last)
        if ctx.needs_input_grad[2]:
            grad_w = like_param(_planar_weight_grad(ctx.functions, xp, grad_out, weight, tuple(x.shape[2:]), pads, kernel, dilation,
                                               stride), weight)
        if ctx.needs_input_grad[3]:
            grad_b = channel_sums(grad_out)
        return None, laid_out_like_torch(grad_x, x, weight), grad_w, grad_b, None, None, None, None


def _planar_weight_grad(functions, xp, grad_out, weight, spatial, pads, kernel, dilation, stride) -> torch.Tensor:
    """gW (O, C, *K) from the planar input xp (``_planar_input``) and grad_out in either layout: for more
    than PLANAR_MAX_CHANNELS_LAST output channels, by the channels-last loops' weight gradient (lanes over
    output channels) where grad_out is channels-last (read in place) or the kernel has
    PLANAR_WEIGHT_GRAD_COPY_MIN_TAPS or more taps (grad_out copied channels-last), else by the planar loops."""
    n, c, *grid = xp.shape
    o = weight.shape[0]
    _, positions, loop_stride, loop_out = _planar_layout(spatial, kernel, stride, pads, dilation)
    offsets = _flat_offsets(positions, tuple(grid))
    channels_last = not grad_out.is_contiguous() and grad_out.movedim(1, -1).is_contiguous()
    shape = _shape(n, c, o, len(offsets), tuple(grid), loop_out, loop_stride, loop_out, (0,) * len(loop_out),
                   grad_out.numel())
    if o > PLANAR_MAX_CHANNELS_LAST and (channels_last or len(offsets) >= PLANAR_WEIGHT_GRAD_COPY_MIN_TAPS):
        # both channels-last: a view for one input channel, and for a channels-last grad_out
        return _weight_grad_loop(functions, xp.movedim(1, -1).contiguous(), grad_out.movedim(1, -1).contiguous(), weight,
                                 offsets, shape)
    g = grad_out if channels_last else grad_out.contiguous()
    gw = xp.new_empty(weight.shape)
    if functions.planar_weight_grad(xp.data_ptr(), g.data_ptr(), gw.data_ptr(), ctypes.byref(shape), offsets.data_ptr(), int(channels_last),
                    torch.get_num_threads()):
        raise MemoryError("the planar convolution's weight gradient could not allocate its buffers")
    return gw
