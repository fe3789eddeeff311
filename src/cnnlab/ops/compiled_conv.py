"""Stride-1 convolution through the compiled loops of ``csrc/direct_conv.c`` (built by ``compiled.py``).

The cross-correlation of ``conv.ConvNd``, summed directly instead of through a window matrix: the
input is padded once into a channels-last buffer ``xp`` (N, *S_pad, C), every kernel tap is then a
fixed offset in each sample's flattened positions, and the loops keep a block of output positions
by output channels in registers while they run over the taps and input channels:

    forward      y[q, o]     = b[o] + sum_t,c  xp[q + off_t, c] * W[t, c, o]
    grad_input   the same loops on the output gradient padded by (k-1)*d - p, with the kernel
                 flipped and its two channel axes swapped (a stride-1 transposed correlation is
                 a correlation)
    grad_weight  gW[t, c, o]  = sum_q  xp[q + off_t, c] * gy[q, o]   (a sum over positions)
    grad_bias    gy summed over positions (``sums.channel_sums``)

The window matrix (``conv.ConvNd``) copies each input value k*k times and reads the copies back for
its product; these loops read the padded input in place, so a layer costs its arithmetic and little
else (forward, 2 threads, float32, against oneDNN's direct convolution in torch: the measurements
are in ``benchmarks/results`` and the README).

Used, when the library is available, for float32 and float64 CPU tensors, groups 1, stride 1, in
training and in evaluation (``conv._use_direct``: where it measured faster); half precision, other
devices, ``torch.compile`` and torch.func keep the tensor routes. A differentiable backward
(``create_graph``) differentiates ``conv.reference_conv``, as every route does.
"""

from __future__ import annotations

import ctypes
import functools
import math

import torch

from . import compiled
from .autograd import graph_backward, unviewed, wants_graph
from .scratch import scratch
from .shapes import Pads
from .sums import channel_sums

__all__ = ["DirectConvNd", "kernels"]

_FLOAT = {torch.float32: "f32", torch.float64: "f64"}
VECTOR_BYTES = 64  # the C loops' vectors (csrc/direct_conv_body.h)
SLACK_POSITIONS = 16  # a block of output positions reads up to 14 positions past its sample's plane


class ConvShape(ctypes.Structure):
    """A convolution's sizes as ``csrc/direct_conv.c`` reads them (spatial sizes padded to 3-D with leading 1s)."""

    _fields_ = [("n", ctypes.c_int64), ("c", ctypes.c_int64), ("o", ctypes.c_int64), ("taps", ctypes.c_int64)] + [
        (name, ctypes.c_int64 * 3) for name in ("size_in", "size_out", "g_in", "g_lo")]

    @classmethod
    def of(cls, n: int, c: int, o: int, taps: int, size_in, size_out, g_in=(1,), g_lo=(0,)) -> ConvShape:
        def three(v, fill):
            return (ctypes.c_int64 * 3)(*([fill] * (3 - len(v)) + list(v)))

        return cls(n, c, o, taps, three(size_in, 1), three(size_out, 1), three(g_in, 1), three(g_lo, 0))


@functools.cache
def _typed(lib: ctypes.CDLL, suffix: str):
    forward, weight_grad = lib[f"conv_forward_{suffix}"], lib[f"conv_weight_grad_{suffix}"]
    p, shape = ctypes.c_void_p, ctypes.POINTER(ConvShape)
    forward.argtypes = [p, p, p, p, shape, p, ctypes.c_int, ctypes.c_int]
    forward.restype = None
    weight_grad.argtypes = [p, p, p, shape, p, ctypes.c_int, ctypes.c_int]
    weight_grad.restype = ctypes.c_int
    return forward, weight_grad


def kernels(x: torch.Tensor):
    """(forward, weight_grad) C functions for ``x``'s dtype, or None where the tensor routes serve ``x``."""
    if x.device.type != "cpu" or x.dtype not in _FLOAT or x.numel() == 0:
        return None
    lib = compiled.library("direct_conv")
    return None if lib is None else _typed(lib, _FLOAT[x.dtype])


def _lanes(dtype: torch.dtype) -> int:
    return VECTOR_BYTES // (4 if dtype == torch.float32 else 8)


def _vectors(o: int, lanes: int) -> int:
    """Vectors of output channels per register block: 4 (6 positions a block) where the channels fill
    them, else 2 (12 positions), else 1 (14 positions) for at most one vector's worth of channels.
    Measured forward, 2 threads: 64 channels at 7 px 4 vectors 0.89 of 2, 32 channels at 14 px 2
    vectors 0.90 of 1, 16 channels 1 vector 0.58 of 2."""
    if o % (4 * lanes) == 0:
        return 4
    return 1 if o <= lanes else 2


def _packed(weight: torch.Tensor, vectors: int, lanes: int) -> torch.Tensor:
    """(O, C, *K) -> (groups, taps, C, lanes*vectors), each group of output channels contiguous, zeros past O."""
    o, c = weight.shape[:2]
    group = lanes * vectors
    groups = -(-o // group)
    taps = weight.reshape(o, c, -1).permute(2, 1, 0)  # (T, C, O)
    packed = weight.new_zeros((taps.shape[0], c, groups * group))
    packed[..., :o] = taps
    return packed.view(taps.shape[0], c, groups, group).permute(2, 0, 1, 3).contiguous()


def _padded_bias(bias: torch.Tensor | None, vectors: int, lanes: int) -> torch.Tensor | None:
    if bias is None:
        return None
    group = lanes * vectors
    out = bias.new_zeros(-(-bias.shape[0] // group) * group)
    out[: bias.shape[0]] = bias
    return out


def _padded(x: torch.Tensor, pads: Pads, slot: str | None = None) -> torch.Tensor:
    """``x`` (N, C, *S) copied into a zero-bordered channels-last buffer (N, *S_pad, C), followed in memory
    by SLACK_POSITIONS positions and a vector of zeros (read past by the last blocks, never used). With
    ``slot``, in reused scratch memory (for a buffer that is not kept past the call)."""
    n, c, *spatial = x.shape
    padded = [s + lo + hi for s, (lo, hi) in zip(spatial, pads)]
    size = n * math.prod(padded) * c
    total = size + SLACK_POSITIONS * c + VECTOR_BYTES
    flat = scratch(slot, (total,), x) if slot else x.new_empty(total)
    out = flat[:size].view(n, *padded, c)
    for axis, (s, (lo, hi)) in enumerate(zip(spatial, pads)):  # the border only
        lead = (slice(None),) * (1 + axis)
        if lo:
            out[(*lead, slice(0, lo))] = 0
        if hi:
            out[(*lead, slice(lo + s, None))] = 0
    flat[size:].zero_()
    out[(slice(None), *(slice(lo, lo + s) for s, (lo, _) in zip(spatial, pads)))] = x.movedim(1, -1)
    return out


def _offsets(kernel, dilation, padded) -> torch.Tensor:
    """Each kernel tap's offset in a sample's flattened padded positions, scan order."""
    from .conv import _tap_offsets

    return torch.tensor(_tap_offsets(kernel, dilation, padded), dtype=torch.int64)


def _correlate(forward, xp: torch.Tensor, weight: torch.Tensor, bias, out_size, kernel, dilation) -> torch.Tensor:
    """The forward loops: xp (N, *S_pad, C) correlated with weight (O, C, *K) -> (N, *S_out, O)."""
    n, *padded, c = xp.shape
    o, lanes = weight.shape[0], _lanes(xp.dtype)
    vectors = _vectors(o, lanes)
    w = _packed(weight, vectors, lanes)
    b = _padded_bias(bias, vectors, lanes)
    offsets = _offsets(kernel, dilation, padded)
    y = xp.new_empty((n, *out_size, o))
    shape = ConvShape.of(n, c, o, len(offsets), padded, out_size)
    forward(xp.data_ptr(), w.data_ptr(), None if b is None else b.data_ptr(), y.data_ptr(), ctypes.byref(shape),
            offsets.data_ptr(), vectors, torch.get_num_threads())
    return y


class DirectConvNd(torch.autograd.Function):
    """Stride-1 cross-correlation (groups 1) by the compiled loops ``functions`` (``kernels(x)``)."""

    @staticmethod
    def forward(ctx, functions, x, weight, bias, pads: Pads, dilation):
        forward, ctx.weight_grad = functions
        kernel = tuple(weight.shape[2:])
        xp = _padded(x, pads, slot=None if ctx.needs_input_grad[2] else "conv.direct_input")  # kept for grad_w
        padded = xp.shape[1:-1]
        out_size = tuple(p - d * (k - 1) for p, k, d in zip(padded, kernel, dilation))
        y = _correlate(forward, xp, weight, bias, out_size, kernel, dilation)
        ctx.forward_loop = forward
        ctx.geometry = (pads, dilation, kernel, out_size)
        ctx.save_for_backward(x, weight, bias, xp if ctx.needs_input_grad[2] else None)
        return unviewed(y.movedim(-1, 1))  # (N, O, *S_out), channels-last; nothing saved shares it

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, xp = ctx.saved_tensors
        pads, dilation, kernel, out_size = ctx.geometry
        from .conv import _like, laid_out_like_torch, reference_conv

        if wants_graph():
            ones = (1,) * len(kernel)
            grads = graph_backward(lambda x, w, b: reference_conv(x, w, b, ones, pads, dilation, 1), (x, weight, bias),
                                   ctx.needs_input_grad[1:4], grad_out)
            return (None, *grads, None, None)
        # The output gradient bordered so that correlating it with the flipped kernel gives grad_input.
        g_pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi) for k, d, (lo, hi) in zip(kernel, dilation, pads))
        gp = _padded(grad_out, g_pads, slot="conv.direct_grad")
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            flipped = weight.flip(tuple(range(2, weight.dim()))).transpose(0, 1)  # (C, O, *K)
            grad_x = _correlate(ctx.forward_loop, gp, flipped, None, x.shape[2:], kernel, dilation).movedim(-1, 1)
        if ctx.needs_input_grad[2]:
            grad_w = _like(_weight_grad(ctx.weight_grad, xp, gp, weight, kernel, dilation, out_size, g_pads), weight)
        if ctx.needs_input_grad[3]:
            grad_b = channel_sums(grad_out)
        return None, laid_out_like_torch(grad_x, x, weight), grad_w, grad_b, None, None


def _weight_grad(loop, xp, gp, weight, kernel, dilation, out_size, g_pads) -> torch.Tensor:
    n, *padded, c = xp.shape
    o, lanes = weight.shape[0], _lanes(xp.dtype)
    vectors = 1 if o <= lanes else 2
    offsets = _offsets(kernel, dilation, padded)
    cp, op = -(-c // 8) * 8, -(-o // (lanes * vectors)) * lanes * vectors
    gw = xp.new_empty((len(offsets), cp, op))
    shape = ConvShape.of(n, c, o, len(offsets), padded, out_size, gp.shape[1:-1], tuple(lo for lo, _ in g_pads))
    if loop(xp.data_ptr(), gp.data_ptr(), gw.data_ptr(), ctypes.byref(shape), offsets.data_ptr(), vectors,
            torch.get_num_threads()):
        raise MemoryError(f"conv: no memory for the weight gradient's partial sums ({8 * gw.numel()} values)")
    return gw[:, :c, :o].permute(2, 1, 0).reshape(weight.shape)  # (T, C, O) -> (O, C, *K)
