"""Cross-correlation and convolution in 1, 2 and 3 dimensions, from scratch (D2L 7.2-7.4).

What deep learning calls "convolution" is a cross-correlation: each output value is the
sum of an input window times the kernel. One implementation serves every dimension:

    1) pad the input into a channels-last buffer          (N, *S_pad, C)
    2) view all windows of it (``sliding_windows``)        (N, *S_out, *K, C)
    3) copy the view into a window matrix                  (M, K*C),  M = N*prod(S_out)
    4) one matrix product with the kernels                 (M, K*C) @ (K*C, C_out)

The backward pass is derived by hand (``ConvNd``): with ``G = grad_out`` as (M, C_out),

    grad_weight = G^T @ window_matrix        (a cross-correlation of input and grad_out)
    grad_input  = col2im(G @ W)               (a transposed cross-correlation: each window's
                                               gradient is added back where it came from)
    grad_bias   = G summed over M

The layout is chosen by shape, because no single one is fastest everywhere (measured in
benchmarks/bench_ops.py):

    - one group, more than one tap, 1-3 input channels (a network's first layer), any stride, a
      channels-first result or one of at most 8 channels, float32/float64 on the CPU where the machine has
      a C compiler: the direct sum from a channels-first padded input (a strided last axis dealt into
      phases), by compiled loops with a vector of consecutive outputs of one row in each register
      (``compiled_conv.PlanarConvNd``, ``_planar_loops``: LeNet's 1->6 5x5 at batch 256 0.6-0.8 of torch's
      time forward + backward, where the channels-first window matrix took 1.4-1.8);
    - every other layer of one group with more than one tap, any stride, float32/float64 on the CPU
      where the machine has a C compiler: no window matrix but the direct sum, as compiled loops that
      keep a block of outputs in registers (``compiled_conv.DirectConvNd``, ``_direct_loops``; the
      input gradient is the same loops on the output gradient, one stride-1 correlation per phase of
      the input positions). In training, 5x5 or larger kernels with 32 or more input channels keep the
      DFT below, where it measured faster. The tensor routes below serve everything else (and every
      layer where the loops cannot be built, with ``CNNLAB_COMPILED=0``, in half precision, under
      ``torch.compile`` and torch.func);
    - in training, 2-D, stride 1, 25 taps or more (5x5 kernels and larger) with at least 3 input
      channels, or 3x3 kernels on 5-16 px maps with at least 8 channels and 32 samples (4 px maps:
      64 samples): no windows at all but the convolution theorem, with the transforms as matrix
      products (``fourier.FourierConv2d``): a product per frequency instead of one per kernel tap;
    - 1x1 kernels at stride 1 without padding, 8 or more input channels (groups 1): no windows, one
      product per pass on the positions as rows (``PointwiseConvNd``);
    - few input channels (< 8, groups 1): the window matrix channels-first, (N, C*K, L), built
      plane by plane with long contiguous rows (a network's first layers);
    - 16-31 input channels, stride 1, at most 9 taps, where the DFT does not take them (maps over 16 px,
      batches under 32): no window matrix at all (``ShiftedConvNd``,
      one product per kernel tap on the flattened padded image);
    - everything else: the channels-last window matrix, built a block of samples at a time into
      reused memory that stays in the CPU's cache (``BLOCK_BYTES``), each block multiplied as soon
      as it is built; the backward pass builds it again rather than keeping it. For stride 1 with
      no more outputs than inputs, grad_input is itself a convolution (of grad_out with the flipped
      kernel), with no col2im scatter.

The products run through ``products.mm_nt`` (oneDNN's matrix product for float32 on CPUs, where
torch ships it; torch.mm elsewhere).

When a graph is requested (``create_graph=True``: a gradient penalty, a Hessian), the backward
differentiates ``reference_conv``, the definition in plain operations, instead (``ops/autograd.py``),
so second and higher derivatives are exact; ordinary training steps keep the fast path.

Groups split channels into ``groups`` independent blocks (a batched product, one per
group); depthwise convolution is ``groups == in_channels``.

This file also holds the chapter's own small functions (``corr2d`` and friends), built on
the same operation.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from . import compiled_conv
from .autograd import graph_backward, reference_windows, transformed, unviewed, wants_graph
from .fourier import FourierConv2d
from .products import mm_nt
from .scratch import scratch
from .shapes import Pads, as_tuple, check_fits, conv_padding, numel
from .sums import channel_sums
from .windows import (
    flat_offsets,
    offset_regions,
    pad_channels_last,
    sliding_windows,
    tap_positions,
    unpad,
    window_offsets,
    windows_overlap,
)

__all__ = [
    "conv1d",
    "conv2d",
    "conv3d",
    "corr2d",
    "corr2d_multi_in",
    "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1",
    "convolve2d",
]

IntOrTuple = int | Sequence[int]


def _window_matrix(x: torch.Tensor, kernel: Sequence[int], stride, pads: Pads, dilation, groups: int):
    """Steps 1-3: the window matrix of ``x`` (N, C, *S), one per group: (G, M, K*C/G)."""
    xp = pad_channels_last(x, pads)  # (N, *S_pad, C)
    windows = sliding_windows(xp, kernel, stride, dilation)  # (N, *S_out, *K, C)
    n, c = x.shape[0], x.shape[1]
    out_size = tuple(windows.shape[1 : 1 + len(kernel)])
    m, kc = n * numel(out_size), numel(kernel) * (c // groups)
    if groups == 1:
        return windows.reshape(1, m, kc), out_size
    windows = windows.unflatten(-1, (groups, c // groups)).movedim(-2, 0)  # (G, N, *S_out, *K, C/G)
    return windows.reshape(groups, m, kc), out_size


def _kernel_matrix(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(C_out, C/G, *K) -> (G, C_out/G, K*C/G), columns in the window matrix's (*K, C) order."""
    o = weight.shape[0]
    return weight.movedim(1, -1).reshape(groups, o // groups, -1)


def reference_conv(x, weight, bias, stride, pads: Pads, dilation, groups: int) -> torch.Tensor:
    """The definition, in plain differentiable operations (for the differentiable backward):
    each output is a window of the padded input times the kernel, summed. (N, C, *S) -> (N, O, *S_out)."""
    kernel = tuple(weight.shape[2:])
    n, c = x.shape[:2]
    o, k = weight.shape[0], len(kernel)
    windows = reference_windows(x, pads, kernel, stride, dilation)  # (N, *S_out, *K, C)
    out_size = windows.shape[1 : 1 + k]
    cols = windows.reshape(n, -1, numel(kernel), groups, c // groups)  # (N, L, K, G, C/G)
    w = weight.reshape(groups, o // groups, c // groups, numel(kernel))  # (G, O/G, C/G, K)
    out = torch.einsum("nlkgc,gock->nlgo", cols, w).reshape(n, *out_size, o)
    if bias is not None:
        out = out + bias
    return out.movedim(-1, 1)


def _col2im(grad_cols: torch.Tensor, x_shape, kernel, stride, pads: Pads, dilation, out_size) -> torch.Tensor:
    """Add each window's gradient back onto the input positions it was read from.

    grad_cols: (N, *S_out, *K, C)  ->  returns (N, C, *S) (channels-last strides).
    """
    n, c, *spatial = x_shape
    padded = [s + lo + hi for s, (lo, hi) in zip(spatial, pads)]
    grad_xp = grad_cols.new_zeros((n, *padded, c))
    _add_windows(sliding_windows(grad_xp, kernel, stride, dilation, out_size), grad_cols, kernel, stride, dilation)
    return unpad(grad_xp, pads, spatial).movedim(-1, 1)


def _add_windows(windows: torch.Tensor, grad_cols: torch.Tensor, kernel, stride, dilation) -> None:
    """``windows += grad_cols`` for a window view (N, *S_out, *K, C) of a gradient buffer, one kernel
    offset at a time (windows that overlap share input positions, so one strided add would race)."""
    overlap = windows_overlap(kernel, stride, dilation)
    for _, index in window_offsets(kernel):
        if overlap:
            windows[index].add_(grad_cols[index])
        else:  # windows never share an input position: plain copies
            windows[index] = grad_cols[index]


# The window matrix of a large layer is built a block of samples at a time, each block used by its
# products while it is still in the CPU's cache (a block of at most BLOCK_BYTES), and never kept for
# the backward pass, which builds it again block by block. Copying a matrix larger than the cache out
# to memory and reading it back cost more than the products themselves: LeNet's 32->64 5x5 layer at
# batch 256 (an 82 MB matrix) took 38 ms forward and 87 ms backward whole, 14 and 43 ms in 5 MB blocks
# (torch: 12 and 26 ms; 2 threads, this project's machine, benchmarks/bench_ops.py).
BLOCK_BYTES = 4 * 2**20


def _sample_blocks(windows: torch.Tensor) -> list[tuple[int, int]]:
    """(start, stop) of consecutive blocks of samples whose window matrix fits in BLOCK_BYTES."""
    n = windows.shape[0]
    per_sample = max(1, windows[:1].numel() * windows.element_size())
    size = max(1, BLOCK_BYTES // per_sample)
    return [(s, min(s + size, n)) for s in range(0, n, size)]


def _block_ranges(windows: torch.Tensor) -> list[tuple[int, int]]:
    """The blocks ``_window_blocks`` cuts: all samples at once where the windows already lie in
    memory as the matrix, else ``_sample_blocks``."""
    return [(0, windows.shape[0])] if windows.is_contiguous() else _sample_blocks(windows)


def _window_blocks(windows: torch.Tensor):
    """Yield (start, stop, window matrix) per block of samples: windows (N, *S_out, *K, C) ->
    (rows, K*C) matrices, copied into one reused buffer. Where the windows already lie in memory as
    that matrix (a 1x1 stride-1 convolution of a channels-last input: the input itself), it is
    yielded as it is, with no copy."""
    kc = windows.shape[-1] * math.prod(windows.shape[1 + (windows.dim() - 2) // 2 : -1])
    if windows.is_contiguous():
        yield 0, windows.shape[0], windows.view(-1, kc)
        return
    blocks = _sample_blocks(windows)
    buffer = scratch("conv.windows", (blocks[0][1], *windows.shape[1:]), windows)
    for start, stop in blocks:
        cols = buffer[: stop - start]
        cols.copy_(windows[start:stop])
        yield start, stop, cols.view(-1, kc)


def _windows_times(windows: torch.Tensor, kernels: torch.Tensor, bias=None) -> torch.Tensor:
    """Every window times every kernel: windows (N, *S_out, *K, C), kernels (O, K*C) -> (N*L, O), block by block."""
    rows = math.prod(windows.shape[1 : 1 + (windows.dim() - 2) // 2])
    out = None
    for start, stop, cols in _window_blocks(windows):
        part = mm_nt(cols, kernels, bias)
        if start == 0 and stop == windows.shape[0]:
            return part
        if out is None:
            out = part.new_empty((windows.shape[0] * rows, part.shape[1]))
        out[start * rows : stop * rows] = part
    return out


def _planar_window_matrix(x: torch.Tensor, kernel, stride, pads: Pads, dilation):
    """The window matrix in channels-first order, (N, C*K, L), L = prod(S_out).

    Each channel plane is windowed on its own (the primitive with one channel and N*C
    images), so the copy reads long contiguous runs along the last axis: the fast layout
    when there are only a few input channels (a network's first layer).
    """
    n, c, *spatial = x.shape
    planes = pad_channels_last(x.reshape(n * c, 1, *spatial), pads)  # (N*C, *S_pad, 1)
    windows = sliding_windows(planes, kernel, stride, dilation)[..., 0]  # (N*C, *S_out, *K)
    out_size = tuple(windows.shape[1 : 1 + len(kernel)])
    d = len(kernel)
    windows = windows.permute(0, *range(d + 1, 2 * d + 1), *range(1, d + 1))  # (N*C, *K, *S_out)
    return windows.reshape(n, c * numel(kernel), numel(out_size)), out_size


def _planar_col2im(grad_cols: torch.Tensor, x_shape, kernel, stride, pads: Pads, dilation, out_size) -> torch.Tensor:
    """Channels-first col2im: grad_cols (N, C*K, L) -> (N, C, *S)."""
    n, c, *spatial = x_shape
    d = len(kernel)
    grad_cols = grad_cols.view(n * c, *kernel, *out_size).permute(0, *range(d + 1, 2 * d + 1), *range(1, d + 1))
    return _col2im(grad_cols.unsqueeze(-1), (n * c, 1, *spatial), kernel, stride, pads, dilation, out_size).view(x_shape)


# Below this many input channels (groups == 1) the window matrix is built channels-first.
PLANAR_MAX_CHANNELS = 8
# With at least this many outputs, such a layer writes a channels-last result directly, (N, L, O), and
# reads a channels-last grad_out in place (1->16 3x3 at batch 128: 0.72 -> 0.26 ms forward); with fewer,
# the per-sample products are too narrow for that (LeNet's 1->6: 0.25 -> 1.3 ms), so the result is made
# channels-first and converted.
PLANAR_MIN_ROWS_OUT = 16


class ConvNd(torch.autograd.Function):
    """Cross-correlation with a hand-derived backward pass (any number of spatial dims)."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, pads, dilation, groups):
        kernel = tuple(weight.shape[2:])
        planar = groups == 1 and x.shape[1] < PLANAR_MAX_CHANNELS
        if planar:
            cols, out_size = _planar_window_matrix(x, kernel, stride, pads, dilation)  # (N, CK, L)
            w = weight.reshape(weight.shape[0], -1)  # (O, CK)
            if memory_format_like_torch(x, weight) == torch.contiguous_format or weight.shape[0] < PLANAR_MIN_ROWS_OUT:
                out = torch.bmm(w.expand(cols.shape[0], -1, -1), cols)  # (N, O, L); bmm avoids matmul's copy of cols
                if bias is not None:
                    out += bias[:, None]
                out = out.view(x.shape[0], -1, *out_size)
            else:  # straight into the channels-last result, (N, L, O): no layout change afterwards (3x faster at 1->16)
                out = torch.bmm(cols.transpose(1, 2), w.T.expand(cols.shape[0], -1, -1))
                if bias is not None:
                    out += bias
                out = out.view(x.shape[0], *out_size, -1).movedim(-1, 1)
        elif groups == 1:  # the window matrix block by block, never kept (the backward builds it again)
            windows = sliding_windows(pad_channels_last(x, pads, slot="conv.padded"), kernel, stride, dilation)  # (N, *S_out, *K, C)
            out_size = tuple(windows.shape[1 : 1 + len(kernel)])
            kernels = _kernel_matrix(weight, 1)[0]  # (O, K*C), a copy of the weight: kept for the backward pass
            out = _windows_times(windows, kernels, bias)  # (M, O)
            out = out.view(x.shape[0], *out_size, -1).movedim(-1, 1)  # (N, O, *S_out)
            cols = None
        else:
            cols, out_size = _window_matrix(x, kernel, stride, pads, dilation, groups)  # (G, M, KC)
            w = _kernel_matrix(weight, groups)  # (G, O/G, KC)
            out = torch.bmm(cols, w.transpose(1, 2)).transpose(0, 1).reshape(cols.shape[1], -1)  # (M, O)
            if bias is not None:
                out += bias
            out = out.view(x.shape[0], *out_size, -1).movedim(-1, 1)  # (N, O, *S_out)
        ctx.geometry = (tuple(x.shape), kernel, stride, pads, dilation, groups, out_size, planar)
        ctx.cols = cols if ctx.needs_input_grad[1] else None  # reused for grad_weight
        ctx.kernels = kernels if groups == 1 and not planar else None
        ctx.save_for_backward(weight, x, bias)  # bias: only for a differentiable backward
        return unviewed(out)  # nothing saved shares out: in-place changes after the layer are safe

    @staticmethod
    def backward(ctx, grad_out):
        weight, x, bias = ctx.saved_tensors
        x_shape, kernel, stride, pads, dilation, groups, out_size, planar = ctx.geometry
        if wants_graph():
            grads = graph_backward(lambda x, w, b: reference_conv(x, w, b, stride, pads, dilation, groups), (x, weight, bias),
                                   ctx.needs_input_grad[:3], grad_out)
            return (*grads, None, None, None, None)
        n, o = x_shape[0], weight.shape[0]
        if groups == 1 and not planar:
            grad_x, grad_w = _window_backward(ctx, grad_out, x, weight)
            grad_b = channel_sums(grad_out) if ctx.needs_input_grad[2] else None
            return laid_out_like_torch(grad_x, x, weight), _like(grad_w, weight), grad_b, None, None, None, None
        g = grad_out.reshape(n, groups, o // groups, -1) if ctx.needs_input_grad[0] else None  # (N, G, O/G, L)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # grad of each window = W^T @ grad_out, in channels-first order; then col2im
            w = weight.reshape(groups, o // groups, -1)  # (G, O/G, C/G*K)
            if groups == 1:
                grad_cols = torch.bmm(w[0].T.expand(n, -1, -1), g[:, 0])  # (N, C*K, L)
            else:
                grad_cols = (w.transpose(1, 2) @ g).view(n, -1, g.shape[-1])  # (N, C*K, L)
            grad_x = _planar_col2im(grad_cols, x_shape, kernel, stride, pads, dilation, out_size)
        if ctx.needs_input_grad[1]:
            if planar and grad_out.movedim(1, -1).is_contiguous() and o >= PLANAR_MIN_ROWS_OUT:  # channels-last grad_out, in place
                g_rows = grad_out.movedim(1, -1).reshape(n, -1, o)  # (N, L, O), a view
                grad_w = torch.bmm(ctx.cols, g_rows).sum(0).T.reshape(weight.shape)  # sum over the batch of (CK, L) @ (L, O)
            elif planar:  # sum over the batch of (O, L) @ (L, C*K)
                g = grad_out.reshape(n, groups, o // groups, -1)
                grad_w = torch.bmm(g[:, 0], ctx.cols.transpose(1, 2)).sum(0).view_as(weight)
            else:  # one product per group over all M = N*L window positions: (O/G, M) @ (M, K*C/G)
                gm = grad_out.movedim(1, -1).reshape(-1, groups, o // groups).transpose(0, 1)  # (G, M, O/G)
                gw = torch.bmm(gm.transpose(1, 2), ctx.cols)  # (G, O/G, K*C/G)
                grad_w = gw.reshape(o, *kernel, -1).movedim(-1, 1)  # (O, C/G, *K)
        if ctx.needs_input_grad[2]:
            grad_b = channel_sums(grad_out)
        return laid_out_like_torch(grad_x, x, weight), _like(grad_w, weight), grad_b, None, None, None, None


def _window_backward(ctx, grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor):
    """grad_x and grad_w of the channels-last window-matrix path (groups 1), block by block.

    With G the output gradient as (M, O) and the window matrix rebuilt a block of samples at a time:
    grad_w = sum over blocks of G_b^T @ windows_b, and grad_x = col2im(G_b @ W) added block by block
    (or, for a stride-1 layer with no more outputs than inputs, a convolution of grad_out)."""
    x_shape, kernel, stride, pads, dilation, _, out_size, _ = ctx.geometry
    n, c, o = x_shape[0], x_shape[1], weight.shape[0]
    rows = numel(out_size)
    gm = grad_out.movedim(1, -1).reshape(-1, o)  # (M, O), a view for channels-last grad_out
    kernels = ctx.kernels  # (O, K*C), from the forward pass
    grad_x = grad_w = None
    by_convolution = ctx.needs_input_grad[0] and _transposed_by_convolution(c, o, stride, pads, dilation, kernel,
                                                                             n * math.prod(x_shape[2:]), n * rows)
    if by_convolution:
        grad_x = _grad_input_by_convolution(grad_out, weight, pads, dilation)
    scatter = ctx.needs_input_grad[0] and not by_convolution
    if ctx.needs_input_grad[1] or scatter:
        windows = sliding_windows(pad_channels_last(x, pads, slot="conv.padded"), kernel, stride, dilation, out_size)
        block_list = _block_ranges(windows)
        if scatter:  # each tap's window gradient, into reused memory (a fresh (rows, K*C) result costs more than
            # the product), added onto the input positions it came from (``offset_regions``: the part of each tap
            # inside the input, so the gradient needs no padded border and comes out contiguous, as torch's does);
            # the per-tap views made once (Python indexing per tap and block cost more than the adds on small layers)
            grad_xl = grad_out.new_zeros((n, *x_shape[2:], c))
            size = block_list[0][1]
            grad_cols = scratch("conv.grad_cols", (size * rows, kernels.shape[1]), gm)
            per_sample = grad_cols.view(size, *out_size, *kernel, c)
            taps_at = list(itertools.product(*(range(k) for k in kernel)))
            taps = [(grad_xl[source], per_sample[(*target[:-1], *taps_at[t], slice(None))])
                    for t, source, target, _ in offset_regions(x_shape[2:], kernel, stride, pads, dilation, out_size)]
            overlap = windows_overlap(kernel, stride, dilation)
        blocks = _window_blocks(windows) if ctx.needs_input_grad[1] else ((s, e, None) for s, e in block_list)
        for start, stop, cols in blocks:
            g = gm[start * rows : stop * rows]
            if cols is not None:
                grad_w = _add_weight_gradient(grad_w, g, cols)  # (O, K*C)
            if scatter:
                torch.mm(g, kernels, out=grad_cols[: g.shape[0]])
                count = stop - start
                for dest, source in taps:
                    if overlap:
                        dest[start:stop].add_(source[:count])
                    else:  # windows never share an input position: plain copies
                        dest[start:stop].copy_(source[:count])
    if scatter:
        grad_x = grad_xl.movedim(-1, 1)
    if grad_w is not None:
        grad_w = grad_w.view(o, *kernel, c).movedim(-1, 1)  # (O, C, *K)
    return grad_x, grad_w


def _add_weight_gradient(grad_w: torch.Tensor | None, g: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``grad_w + g^T @ cols`` for one block, g (rows, O) and cols (rows, K*C), both read transposed.

    torch.mm (MKL) reads the transposed operands in place and accumulates into grad_w; oneDNN's
    product is faster where the kernel matrix is wide and the layer narrow. Ratio oneDNN / MKL, median
    of 25 interleaved pairs, two runs, one 4 MB block: K*C = 576-800 with 12 outputs 0.71-0.85, 16-32
    outputs 0.88-1.03; K*C = 1152-2304 with 12-32 outputs 0.66-0.87, 64-128 outputs 0.87-0.95;
    K*C <= 400 or 256 outputs 0.86-1.19 (and up to 3.6 with K*C = 72-288). Whole layers, forward +
    backward, batch 128, old and new alternately (median of 21): DenseNet's 64/68/76->12 layers
    0.86-0.91, a 128->64 or 128->128 layer at 4 px 0.99 (no gain: MKL kept there), 32->12 1.00 (MKL
    both times: the control)."""
    o, kc = g.shape[1], cols.shape[1]
    if o <= 12 and kc >= 576 or o <= 32 and kc >= 1152:
        part = mm_nt(g.T, cols.T)
        return part if grad_w is None else grad_w.add_(part)
    return g.T @ cols if grad_w is None else grad_w.addmm_(g.T, cols)


def _transposed_by_convolution(c: int, o: int, stride, pads: Pads, dilation, kernel, positions: int,
                               out_positions: int) -> bool:
    """Whether the input gradient is cheaper as a convolution of the output gradient: stride 1,
    padding within the kernel's reach, and no more output than input channels, so the window matrix
    of the output gradient (M, K*O) is no larger than the (M, K*C) one col2im would scatter, and no
    scatter is needed (DenseNet's growth-rate layers, 12-32 outputs from 32-200 inputs: about 3x faster;
    as many outputs as inputs, 3x3 at 7-14 px, batch 128: 20-25% faster forward + backward, measured).
    With 25 taps or more, a window matrix up to twice the size of col2im's (its rows are the
    ``positions`` of the input, col2im's the ``out_positions``): col2im adds once per tap and block,
    which costs more (GoogLeNet's padded 5x5 branches, batch 128, forward + backward, scatter and
    convolution alternately, medians of 21, two runs: 8->16 at 14 px 0.85-0.86, 8->16 and 12->24 at
    7 px 0.73-0.85, 16->32 at 14 px 0.87-0.89, 32->64 at 7 px 0.94-0.95; with 3x3 kernels 0.84-1.08,
    four times the size 1.03-1.24; lenet-modern's unpadded 32->64 5x5 at 14 px, four times the
    size, made the whole training step 4-14% slower: the scatter kept for all of these). Since then
    2-D float training sends these 5x5 layers through the DFT (``_use_fourier``); this route still
    serves them in 1-D and 3-D, in half precision and autocast, and off the CPU.
    Not when the flipped kernel, a copy of the weight, outweighs that window matrix: a wide layer on a
    tiny map (ResNet-18's 512->512 layers at 1x1, batch 32, ``positions`` = N * prod(S) = 32 input
    positions against 512 channels) spent more on the 9.4 MB copy than col2im costs."""
    narrow = o <= c or o * positions <= 2 * c * out_positions and math.prod(kernel) >= 25
    return (narrow and 4 * c <= positions and all(s == 1 for s in stride)
            and all(lo <= d * (k - 1) and hi <= d * (k - 1) for (lo, hi), d, k in zip(pads, dilation, kernel)))


def _grad_input_by_convolution(grad_out: torch.Tensor, weight: torch.Tensor, pads: Pads, dilation) -> torch.Tensor:
    """grad_x of a stride-1 convolution: grad_out, padded by ``d*(k-1) - pad`` on each side, cross-correlated
    with the kernel flipped in space and transposed (O <-> C): one window matrix and one product.
    (N, O, *S_out) -> (N, C, *S) with channels-last strides."""
    kernel = tuple(weight.shape[2:])
    spatial = tuple(range(2, weight.dim()))
    grad_pads = tuple((d * (k - 1) - lo, d * (k - 1) - hi) for (lo, hi), d, k in zip(pads, dilation, kernel))
    ones = (1,) * len(kernel)
    windows = sliding_windows(pad_channels_last(grad_out, grad_pads, slot="conv.padded_grad"), kernel, ones, dilation)  # (N, *S, *K, O)
    w = _kernel_matrix(weight.flip(spatial).transpose(0, 1), 1)[0]  # (C, K*O)
    size = windows.shape[1 : 1 + len(kernel)]
    return _windows_times(windows, w).view(grad_out.shape[0], *size, -1).movedim(-1, 1)  # (N, C, *S)


def laid_out_like_torch(grad_x: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """``grad_x`` contiguous in the memory format torch's convolution gives its input gradient (that of its
    output, ``memory_format_like_torch``), copied only where it is not. The routes that add window
    gradients into a padded buffer, or work on flattened padded rows, end with a view of its interior,
    and a view like that made the next layer's kernel read it strided: torch's batch norm backward on an
    8x64x112x112 gradient 48 against 6 ms, its max pool backward 1.5x."""
    if grad_x is None:
        return None
    fmt = memory_format_like_torch(x, weight)
    return grad_x if grad_x.is_contiguous(memory_format=fmt) else grad_x.contiguous(memory_format=fmt)


def _like(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    """``grad`` with ``param``'s strides (autograd's gradient layout contract, which DDP checks)."""
    if grad is None or grad.stride() == param.stride():
        return grad
    return torch.empty_like(param).copy_(grad)


# A stride-1 convolution with SHIFTED_MIN_CHANNELS <= C < SHIFTED_MAX_CHANNELS inputs and at most
# SHIFTED_MAX_TAPS kernel taps skips the window matrix altogether (ShiftedConvNd), as long as the margins
# it computes and throws away cost at most SHIFTED_MAX_WASTE more work. Measured forward + backward,
# 2 threads, batch 128, channels-last, against the window matrix built in reused cache-sized blocks:
# 16->32 3x3 at 14 px 8.3 vs 12.4 ms, 16->16 at 28 px 16.4 vs 19.8 ms (shifted faster); 16->32 5x5
# 24.4 vs 21.5, 32->32 3x3 at 28 px 68.8 vs 51.5, 68->12 20.3 vs 14.2, 64->64 at 24-56 px (batch 8-16)
# 5-10% slower (window matrix faster). With fewer channels the window matrix is built channels-first
# (PLANAR_MAX_CHANNELS). Only in training: the forward pass alone (inference, evaluation) is faster
# through the window matrix, whose one product has K = k*k*C where the per-tap products have K = C. No
# grad, 2 threads, medians of 32: 16->24 3x3 at 14 px, batch 32, 464 vs 362 us; 16->32 at 28 px, batch
# 32 and 128, 1.31x and 1.40x; 24->32 at 7 px 1.52x, 24->64 at 28 px 1.53x; 16->16 at 56 px, batch 16, 0.97x.
# Whole models evaluated at batch 1024 (their evaluation batch), alternately, medians of 11: fast 0.74,
# vgg-cpu 0.79, nin-cpu 0.83 of the time with the per-tap products (0.90-0.94 at batch 256); the rest
# (no such layer in inference: noise) 0.99-1.10. Such a layer's output in training and in inference therefore
# agree to rounding (summed in another order), not bit for bit, as with the DFT below.
SHIFTED_MIN_CHANNELS = 16
SHIFTED_MAX_CHANNELS = 32
SHIFTED_MAX_TAPS = 9
SHIFTED_MAX_WASTE = 2.0


# Large kernels, and 3x3 kernels on small maps, go through the DFT (fourier.FourierConv2d) where it measured
# faster. Forward + backward, channels-last, 2 threads, the DFT route against the window-matrix paths,
# alternately in one process, medians of 15:
#   5x5 kernels, 3+ input channels: 0.48-0.82 of the time (LeNet's 6->16 at batch 256, AlexNet-CPU's 16->32
#     at 14 px, GoogLeNet-CPU's 8->16 branch, lenet-modern's 32->64, the book AlexNet's 96->256 at 27 px);
#     1-2 input channels (a first layer: its channels-first window matrix is short, no input gradient
#     is needed) 1.16-3.5.
#   3x3 kernels, batch 32 or more, 32 or more input channels, 7-16 px maps: 0.56-0.98 (7-8 px: 32->64,
#     48->12, 64->64, 256->256 0.68-0.85; 14-16 px: 40->12 0.84, 64->64 0.74-0.75, 96->96 0.79, 128->128
#     0.58, 256->256 0.56, 32->32 and 68->12 0.96-0.98). Not then with 12-16 input channels (0.9-1.5: see the
#     8-19 channel rule below, measured after the transforms were reordered), at
#     batch 8-16 (0.96-1.9: the kernels' spectra, frequencies x C x O complex values, are read for few
#     samples), on 24-56 px maps (1.2-1.9: the transforms grow with the map's side, the saving does not)
#     or on 1-4 px maps with 256-512 channels at batch 32 (1.2-2.65).
#   3x3 kernels, 20-31 input channels, 5-16 px maps, batch 32-128 (against the per-tap products of
#     ShiftedConvNd or the window matrix, whichever was faster): 0.69-0.99 over 14 shapes (24->32 at 14 px
#     0.88-0.90, 24->48 0.90, 20->20 at 16 px 0.90, 24->32 at 7 px 0.75-0.84, 24->32 at 16 px 0.99); 16
#     channels at 14 px 0.94-1.01 (not routed then; at 7 px 0.88-0.91, 12 channels 0.82: see the next rule).
#   3x3 kernels, 8-19 input channels, 7-16 px maps, batch 32-128, after the transforms took the width's half
#     spectrum first (fourier._spectra): 0.68-0.94 of the per-tap or channels-last window path, three processes
#     of each, alternately, medians of 31 (16->24 and 16->32 at 14 px 0.77-0.94, 12->24 0.86, 8->16 0.68-0.77,
#     16->16 at 7 px 0.72, 16->32 at 16 px 0.93; batch 16 and 8 0.78 and 0.88, not routed: one rule on the batch);
#     fewer than 8 channels 1.4-1.6 (the channels-first window matrix is short there); stride 2 1.5-1.8.
#   3x3 kernels on 4 px maps, 32-256 input channels: batch 64-128 0.72-0.87 (128->128 at batch 128 0.72,
#     256->256 0.72, 64->64 0.76-0.85), batch 48 0.90, batch 32 1.03-1.05; 3 px and 2 px maps at batch 128
#     0.89 and 0.94 (too close to call: not routed).
# Only for training, where the rule was measured (forward + backward: the backward pass reuses the
# forward's spectra of x and w). The forward alone, in one process alternately (median of 21): 0.77-0.87
# of the window matrix on LeNet's 6->16, AlexNet-CPU's 16->32 and lenet-modern's 32->64, 0.97-1.03 on
# GoogLeNet-CPU's 8->16 branch and a 64->64 3x3 layer at 7 px, 1.35 on the book AlexNet's 96->256; an
# earlier comparison across two benchmark runs (one in a slow phase) had said slower, and inference
# keeps the window matrix on that evidence. Measured since on whole models evaluated at batch 256 (alternately,
# medians of 11), 5x5 layers through the DFT against the window matrix: lenet 0.98, lenet-modern 1.11,
# alexnet-cpu 1.15: the window matrix stays. So such a
# layer's output in training and in inference agree to rounding (1e-16 relative in float64, about 1e-7
# in float32), not bit for bit.
FOURIER_MIN_TAPS = 25
PLANAR_LOOPS_MAX_CHANNELS = 3  # the compiled loops with lanes over positions (_planar_loops) up to this many input channels
DIRECT_MIN_OUTPUTS = 100  # the compiled loops (_direct_loops) from this many outputs (samples x positions) per stride step
DIRECT_FOURIER_BATCH_COST = 0.4  # the batch's term in the rule below


class FourierRule(NamedTuple):
    """Where the DFT keeps a training layer from the compiled loops (``_direct_loops``), for one variant of them:
    5x5+ kernels with ``min_channels`` or more input channels where (C + O) / (C * O) + DIRECT_FOURIER_BATCH_COST / N
    is below ``max_cost`` (``_fourier_amortised``), and 3x3 kernels with ``small_min_channels`` or more input and
    output channels (None: never) on the DFT's own maps (``_use_fourier``)."""

    min_channels: int
    max_cost: float
    small_min_channels: int | None


# The loops' multiply-adds per cycle halve from avx512 to avx2 while the DFT's transforms and products run on
# torch's matrix products either way, so the rule is measured per variant (forward + backward, channels-last,
# 2 threads, the DFT against the loops, ms, medians of 11, alternately):
# - avx512 (AMD EPYC Zen 5): see _fourier_amortised; 3x3 layers stay with the loops (0.48-0.80 of the tensor
#   routes' time, the DFT among them).
# - avx2 (AMD EPYC, AVX2 and FMA, no AVX-512): 5x5 layers at 7-26 px, 16-96 input channels, batch 8-256: the DFT
#   0.35-0.96 of the loops' time (96->256 at 26 px, batch 8 189 / 231, batch 32 287 / 779; 32->64 at 14 px, batch
#   64-256, 0.51-0.52; 32->32, batch 32, 7.9 / 11.8; 24->48 at 7 px 10.7 / 18.1; 16->32 at batch 128 18.3 / 25.0,
#   batch 32 8.0 / 8.3), but 16->16 at 28 px 80 / 41, 12->24 14.5 / 14.8, 8->16 and 6->16 1.1-1.25 times; 3x3 layers
#   with 64+ channels both ways 0.61-0.90 (64->64 at 7-16 px, batch 32-128, 128->128 at 4 and 12 px, 256->256 at
#   7 px), with 48 0.89-1.13, with 16-32 (or 12 out) 1.1-1.6. The portable build (16-byte vectors) takes avx2's.
FOURIER_RULES = {
    "avx512": FourierRule(min_channels=32, max_cost=0.054, small_min_channels=None),
    "avx2": FourierRule(min_channels=16, max_cost=0.10, small_min_channels=64),
    "portable": FourierRule(min_channels=16, max_cost=0.10, small_min_channels=64),
}
FOURIER_MIN_CHANNELS = 3
FOURIER_SMALL_MAP = (5, 16)  # 3x3 kernels (9-24 taps): maps of this many pixels a side ...
FOURIER_SMALL_MAP_MIN_CHANNELS = 8  # ... at least this many input channels ...
FOURIER_SMALL_MAP_MIN_BATCH = 32  # ... and samples
FOURIER_TINY_MAP = (4, 64)  # 3x3 kernels on maps of 4 px a side: from this many samples on


def _training(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a backward pass will follow this convolution (the layouts chosen for training were measured
    forward + backward)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def _use_fourier(x: torch.Tensor, weight: torch.Tensor, kernel, stride, dilation, groups: int) -> bool:
    """Whether a convolution goes through the DFT: in training (a backward pass will follow), 2-D,
    groups 1, stride and dilation 1, float32/64 on the CPU (where it was measured), outside
    ``torch.compile`` (which plans its own kernels), and a shape where it measured faster (above)."""
    if (FOURIER_MIN_TAPS is None or not _training(x, weight) or x.dim() != 4 or groups != 1 or x.device.type != "cpu"
            or x.dtype not in (torch.float32, torch.float64) or any(s != 1 for s in stride) or any(d != 1 for d in dilation)
            or torch.compiler.is_compiling()):
        return False
    taps, c = math.prod(kernel), x.shape[1]
    if taps >= FOURIER_MIN_TAPS:
        return c >= FOURIER_MIN_CHANNELS
    if taps < 9 or c < FOURIER_SMALL_MAP_MIN_CHANNELS:
        return False
    (low, high), (tiny, tiny_batch), n = FOURIER_SMALL_MAP, FOURIER_TINY_MAP, x.shape[0]
    return ((n >= FOURIER_SMALL_MAP_MIN_BATCH and all(low <= m <= high for m in x.shape[2:]))
            or (n >= tiny_batch and min(x.shape[2:]) == tiny and max(x.shape[2:]) <= high))


def _out_size(spatial, pads: Pads, kernel, stride, dilation) -> list[int]:
    """The output's spatial sizes for (before, after) borders ``pads``."""
    return [(n + lo + hi - d * (k - 1) - 1) // s + 1 for n, (lo, hi), k, s, d in zip(spatial, pads, kernel, stride, dilation)]


def _direct_loops(x: torch.Tensor, weight: torch.Tensor, kernel, stride, pads: Pads, dilation, groups: int):
    """The compiled loops' functions (``compiled_conv.kernels``) where they take the layer, else None: one
    group, more than one tap, and in training not a layer the DFT measured faster on (25+ taps with
    DIRECT_FOURIER_MIN_CHANNELS or more input channels on the DFT's maps). Asked after ``_planar_loops``,
    which takes most first layers.

    Measured forward + backward, channels-last, 2 threads, against the tensor routes (window matrix, per-tap
    products, DFT; alternately, medians of 11-15): 3x3 layers 0.48-0.79 of their time (16->32 at 28 px,
    batch 128, 9.8 against 25.9 ms; 32->32 at 14 px 0.51; 64->64 and 128->128 at 7 px 0.73-0.80; stride 2
    0.53-0.71); 5x5 layers with 6-16 input channels 0.53-0.70 of the DFT's time, with 32 channels 0.86 (14 px
    out) to 1.23 (10 px out: lenet-modern's 32->64), 48 and 96 channels 1.56 and 1.71 (the DFT keeps them);
    first layers, no input gradient: see ``_planar_loops``. Layers with few outputs for their weights (fewer than
    DIRECT_MIN_OUTPUTS samples x positions per stride step: ResNet-18's last stages at batch 32, 512->512 on
    1 px maps and 256->512 at stride 2 on 2 px) stay with the window matrix too: the loops repack the weights
    every pass (once per phase at stride 2) and measured 1.9 and 3.7x its time there, 128->256 at stride 2
    on 4 px maps 1.4x (256->256 on 2 px maps at stride 1, 128 outputs: 0.75)."""
    if groups != 1 or math.prod(kernel) == 1 or torch.compiler.is_compiling():
        return None
    if x.shape[0] * math.prod(_out_size(x.shape[2:], pads, kernel, stride, dilation)) < DIRECT_MIN_OUTPUTS * math.prod(stride):  # the weights' packing would dominate
        return None
    functions = compiled_conv.kernels(x)
    if functions is None or not _training(x, weight) or FOURIER_MIN_TAPS is None:
        return functions
    rule, (n, c), o = FOURIER_RULES.get(functions.variant, FOURIER_RULES["avx2"]), x.shape[:2], weight.shape[0]
    if math.prod(kernel) >= FOURIER_MIN_TAPS:
        keep = c >= rule.min_channels and _fourier_amortised(n, c, o, rule.max_cost)
    else:
        keep = rule.small_min_channels is not None and min(c, o) >= rule.small_min_channels
    return None if keep and _use_fourier(x, weight, kernel, stride, dilation, groups) else functions


def _fourier_amortised(n: int, c: int, o: int, max_cost: float) -> bool:
    """Whether the DFT's fixed costs are spread thinly enough for it to beat the compiled loops on a 5x5+
    layer of 32+ input channels in training: its transforms cost per sample and channel (C + O) against
    the products' C * O, and the kernels' spectra once per call, against the loops' cost per sample and
    pair of channels. Forward + backward, channels-last, 2 threads, the DFT against the loops, ms (medians
    of 10, alternately): the book AlexNet's 96->256 at 26 px, batch 8 74.1 / 51.9, batch 16 89.0 / 94.2,
    batch 32 148 / 190; lenet-modern's 32->64 at 14 px, batch 64 9.70 / 8.67, 128 14.6 / 17.9, 256 27.3 /
    28.6; 32->32 at 14 px, batch 32, 4.76 / 3.15; 64->64 at batch 32 7.63 / 9.50, 64 14.1 / 19.0; 48->64 at
    batch 64 12.0 / 15.4; 32->48 at batch 128 15.5 / 17.4. The rule gets 9 of these 11 right and the two
    others (lenet-modern at batch 64, 32->48 at 128) by 11-12%."""
    return (c + o) / (c * o) + DIRECT_FOURIER_BATCH_COST / n < max_cost


def _planar_loops(x: torch.Tensor, weight: torch.Tensor, kernel, stride, groups: int, channels_last: bool):
    """The compiled loops' functions where ``compiled_conv.PlanarConvNd`` takes the layer, else None: one
    group, more than one tap, at most PLANAR_LOOPS_MAX_CHANNELS input channels (a network's first layer),
    any stride (1-D and 2-D; a 3-D layer at stride 1 along its last axis), and a channels-first result or
    one of at most ``compiled_conv.PLANAR_MAX_CHANNELS_LAST`` channels (wider channels-last results go to
    the channels-last loops, ``_direct_loops``).

    Measured forward + backward with no input gradient (a first layer), 2 threads, alternately, medians of
    11-15, channels-last: LeNet's 1->6 5x5 at batch 256 1.64 against 4.04 ms on the channels-first window
    matrix it had before (torch 2.29); wider layers, on the channels-last loops now, against that window
    matrix: lenet-modern's 1->32 5x5 at batch 128 2.40 / 4.77 ms (torch 2.95), 1->32 3x3 1.98 / 2.66 (2.61),
    the book AlexNet's 11x11/4 at 224 px, batch 8, 4.01 / 8.13 (4.36). Channels-first, the planar loops
    against the window matrix: 0.45-0.9 of its time (LeNet's 1->6 1.45 / 4.25 ms). The planar loops against
    the channels-last loops on a channels-last result: 1->6 5x5 forward 0.73 / 1.12 ms, 1->8 0.80 / 1.13,
    1->12 1.27 / 1.14, 1->16 3x3 0.67 / 0.44 (they write such a result a value at a time). With 4-8 input
    channels the channels-last loops stay faster (LeNet's 6->16: 2.81 against 3.08 ms channels-last, 3.27
    against 3.88 channels-first)."""
    if (groups != 1 or math.prod(kernel) == 1 or x.shape[1] > PLANAR_LOOPS_MAX_CHANNELS
            or (stride[-1] != 1 and x.dim() > 4) or (channels_last and weight.shape[0] > compiled_conv.PLANAR_MAX_CHANNELS_LAST)
            or torch.compiler.is_compiling()):
        return None
    return compiled_conv.kernels(x)


def _use_shifted(x: torch.Tensor, kernel, stride, pads: Pads, dilation, groups: int) -> bool:
    taps = math.prod(kernel)
    if (groups != 1 or any(s != 1 for s in stride) or not SHIFTED_MIN_CHANNELS <= x.shape[1] < SHIFTED_MAX_CHANNELS
            or taps == 1 or taps > SHIFTED_MAX_TAPS):
        return False
    padded = [n + lo + hi for n, (lo, hi) in zip(x.shape[2:], pads)]
    out = [p - d * (k - 1) for p, k, d in zip(padded, kernel, dilation)]
    return math.prod(padded) <= SHIFTED_MAX_WASTE * math.prod(out)


class ShiftedConvNd(torch.autograd.Function):
    """Stride-1 cross-correlation as one matrix product per kernel tap, with no window matrix.

    Flatten the padded channels-last input to rows X (N*prod(S_pad), C). For tap t at row offset
    o_t the output rows are ``Y[r] = sum_t X[r + o_t] @ W_t``: each term is a contiguous slice of
    X times a (C, C_out) matrix. Rows whose position lies beyond the valid output (the right and
    bottom margins of each padded image) are computed and thrown away; that costs about
    prod(S_pad) / prod(S_out) - 1 extra work and saves copying the k-times-larger window matrix.

    Backward: with G the output gradient scattered into the same row layout (zeros at the
    margins), ``grad_W_t = X[o_t:]^T @ G`` and ``grad_X[o_t:] += G @ W_t^T``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, pads, dilation):
        n, c, *spatial = x.shape
        o, kernel = weight.shape[0], tuple(weight.shape[2:])
        xp = pad_channels_last(x, pads).contiguous()  # (N, *S_pad, C)
        padded = tuple(xp.shape[1:-1])
        out_size = tuple(p - d * (k - 1) for p, k, d in zip(padded, kernel, dilation))
        rows = xp.view(-1, c)  # (N*prod(S_pad), C)
        offsets = flat_offsets(tap_positions(kernel, dilation), padded)  # each tap's row offset
        m = rows.shape[0] - offsets[-1]  # rows that hold every valid output
        taps = weight.reshape(o, c, -1).permute(2, 1, 0).contiguous()  # (K, C, O), once (not a copy per product)
        y = rows.new_empty((rows.shape[0], o))
        if bias is None:
            torch.mm(rows[offsets[0] : offsets[0] + m], taps[0], out=y[:m])
        else:
            torch.addmm(bias, rows[offsets[0] : offsets[0] + m], taps[0], out=y[:m])
        for t, off in enumerate(offsets[1:], start=1):
            y[:m].addmm_(rows[off : off + m], taps[t])
        valid = (slice(None), *(slice(0, s) for s in out_size))
        ctx.geometry = (tuple(x.shape), kernel, pads, dilation, padded, out_size, offsets, m)
        ctx.save_for_backward(weight, xp if ctx.needs_input_grad[1] else None, x, bias)
        return unviewed(y.view(n, *padded, o)[valid].movedim(-1, 1))  # (N, O, *S_out), in y's memory (not saved)

    @staticmethod
    def backward(ctx, grad_out):
        weight, xp, x, bias = ctx.saved_tensors
        x_shape, kernel, pads, dilation, padded, out_size, offsets, m = ctx.geometry
        if wants_graph():
            ones = (1,) * len(kernel)
            grads = graph_backward(lambda x, w, b: reference_conv(x, w, b, ones, pads, dilation, 1), (x, weight, bias),
                                   ctx.needs_input_grad[:3], grad_out)
            return (*grads, None, None)
        n, c = x_shape[0], x_shape[1]
        o = weight.shape[0]
        g_rows = scratch("conv.shifted_grad", (n * math.prod(padded), o), grad_out).zero_()  # only read below
        g_rows.view(n, *padded, o)[(slice(None), *(slice(0, s) for s in out_size))] = grad_out.movedim(1, -1)
        g = g_rows[:m]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            taps_t = weight.reshape(o, c, -1).permute(2, 0, 1).contiguous()  # (K, O, C)
            gx = grad_out.new_zeros((n * math.prod(padded), c))
            for t, off in enumerate(offsets):
                gx[off : off + m].addmm_(g, taps_t[t])
            grad_x = unpad(gx.view(n, *padded, c), pads, x_shape[2:]).movedim(-1, 1)
        if ctx.needs_input_grad[1]:
            rows = xp.view(-1, c)
            gw = g.new_empty((len(offsets), c, o))  # (K, C, O)
            for t, off in enumerate(offsets):
                torch.mm(rows[off : off + m].T, g, out=gw[t])
            grad_w = gw.permute(2, 1, 0).reshape(weight.shape)
        if ctx.needs_input_grad[2]:
            grad_b = channel_sums(grad_out)
        return laid_out_like_torch(grad_x, x, weight), _like(grad_w, weight), grad_b, None, None


def _use_pointwise(x: torch.Tensor, kernel, stride, pads: Pads, groups: int) -> bool:
    """A 1x1 (1, 1x1x1) convolution at stride 1 without padding, one group, and at least
    PLANAR_MAX_CHANNELS input channels (fewer keep the channels-first window matrix): ``PointwiseConvNd``."""
    return (groups == 1 and x.shape[1] >= PLANAR_MAX_CHANNELS and all(k == 1 for k in kernel)
            and all(s == 1 for s in stride) and all(p == (0, 0) for p in pads))


class PointwiseConvNd(torch.autograd.Function):
    """A 1x1 convolution at stride 1 without padding (GoogLeNet's and NiN's 1x1 layers, DenseNet's
    bottlenecks): no windows at all, one matrix product per pass on the positions as rows.

    With X the input as (M, C) rows (M = N * prod(S); the input's own memory when it is channels-last),
    W the kernels as (O, C) and G the output gradient as (M, O)::

        Y = X @ W^T + b,   grad_X = G @ W,   grad_W = G^T @ X,   grad_b = G summed over M

    The window-matrix path reached the same three products through its general machinery: about 150 us
    more Python per forward + backward, and an input-gradient product with the flipped, re-laid-out
    kernel, which oneDNN ran slower than the kernel as stored (GoogLeNet-CPU's 56->24 at 14 px, batch 32:
    the two oneDNN products 535 against 374 us, torch.profiler). Forward + backward, channels-last, this
    path against it, alternately, medians of 41: GoogLeNet-CPU's 1x1 layers at batch 32 (24->16 and 56->24 at
    14 px, 88->32 and 112->48 at 7 px) 0.66-0.84, 88->32 at batch 128 0.84-0.89, 64->128 at 14 px 0.84,
    24->24 at 28 px, batch 128, 0.97-1.02 (a tiny layer: 0.48). With fewer than 8 input channels the
    channels-first window matrix keeps such a layer, as it keeps every layer with few channels.
    """

    @staticmethod
    def forward(ctx, x, weight, bias):
        n, c, *spatial = x.shape
        o = weight.shape[0]
        rows = x.movedim(1, -1).reshape(-1, c)  # (M, C), a view for a channels-last input
        kernels = weight.reshape(o, c)
        y = mm_nt(rows, kernels, bias)  # (M, O)
        ctx.save_for_backward(rows if ctx.needs_input_grad[1] else None, x, weight, bias)  # x, bias: a differentiable backward
        return unviewed(y.view(n, *spatial, o).movedim(-1, 1))  # (N, O, *S), channels-last; nothing saved shares it

    @staticmethod
    def backward(ctx, grad_out):
        rows, x, weight, bias = ctx.saved_tensors
        if wants_graph():
            ones, zeros = (1,) * (x.dim() - 2), ((0, 0),) * (x.dim() - 2)
            grads = graph_backward(lambda x, w, b: reference_conv(x, w, b, ones, zeros, ones, 1), (x, weight, bias),
                                   ctx.needs_input_grad[:3], grad_out)
            return grads
        n, c, *spatial = x.shape
        o = weight.shape[0]
        g = grad_out.movedim(1, -1).reshape(-1, o)  # (M, O), a view for a channels-last gradient
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = mm_nt(g, weight.reshape(o, c).T).view(n, *spatial, c).movedim(-1, 1)
        if ctx.needs_input_grad[1]:
            grad_w = _like((g.T @ rows).view(weight.shape), weight)
        if ctx.needs_input_grad[2]:
            grad_b = channel_sums(grad_out)
        return laid_out_like_torch(grad_x, x, weight), grad_w, grad_b


def _check_conv(input: torch.Tensor, weight: torch.Tensor, bias, dims: int, groups) -> None:
    name = f"conv{dims}d"
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name}: input and weight must be tensors, got {type(input).__name__} and {type(weight).__name__}")
    if input.dim() not in (dims + 1, dims + 2):
        raise ValueError(
            f"{name}: input must have {dims + 1} (unbatched) or {dims + 2} (batched) dimensions, "
            f"got shape {tuple(input.shape)}"
        )
    if weight.dim() != dims + 2:
        raise ValueError(f"{name}: weight must have {dims + 2} dimensions (C_out, C_in/groups, *kernel), got shape {tuple(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
    channels = input.shape[-dims - 1]
    if channels % groups or weight.shape[0] % groups:
        raise ValueError(
            f"{name}: groups={groups} must divide both in_channels={channels} and out_channels={weight.shape[0]}"
        )
    if weight.shape[1] * groups != channels:
        raise ValueError(
            f"{name}: input has {channels} channels but weight {tuple(weight.shape)} with groups={groups} "
            f"expects {weight.shape[1] * groups}"
        )
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{name}: bias must be a tensor of shape ({weight.shape[0]},), got {shape}")
    for other, what in ((weight, "weight"), (bias, "bias")):
        if other is not None and other.dtype != input.dtype:
            raise TypeError(f"{name}: {what} dtype {other.dtype} differs from input dtype {input.dtype}")


def _autocast(input, weight, bias):
    """Under ``torch.autocast`` a convolution runs in the autocast dtype, as torch's does (its
    "lower precision" cast policy): inputs, weight and bias are cast, the op then runs as written."""
    if not isinstance(input, torch.Tensor) or not torch.is_autocast_enabled(input.device.type):
        return input, weight, bias, False
    dtype = torch.get_autocast_dtype(input.device.type)

    def cast(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return cast(input), cast(weight), cast(bias), True


def _strides_like_channels_last(t: torch.Tensor) -> bool:
    """torch's own test for a channels-last tensor (its C++ ``is_channels_last_strides``), ambiguous
    cases (size-1 axes) falling back to channels-first as torch's do."""
    sizes, strides = t.shape, t.stride()
    if t.dim() not in (4, 5) or strides[1] == 0:
        return False
    order = (1, 3, 2, 0) if t.dim() == 4 else (1, 4, 3, 2, 0)
    low = 0
    for d in order:
        if sizes[d] == 0 or strides[d] < low or (d == 0 and low == strides[1]):
            return False
        low = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def memory_format_like_torch(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """torch's convolution returns channels-last when its input or its weight is stored so (for 3-D
    convolutions only on CUDA: its CPU kernels answer channels-first)."""
    if (x.dim() == 4 or (x.dim() == 5 and x.is_cuda)) and (_strides_like_channels_last(x) or _strides_like_channels_last(weight)):
        return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format


def _conv(input, weight, bias, stride, padding, dilation, groups, dims: int) -> torch.Tensor:
    input, weight, bias, autocast = _autocast(input, weight, bias)
    _check_conv(input, weight, bias, dims, groups)
    stride = as_tuple(stride, dims, "stride", minimum=1)
    dilation = as_tuple(dilation, dims, "dilation", minimum=1)
    kernel = tuple(weight.shape[2:])
    pads = conv_padding(padding, kernel, dilation, stride)
    unbatched = input.dim() == dims + 1
    x = input.unsqueeze(0) if unbatched else input
    check_fits(x.shape[2:], pads, kernel, dilation, f"conv{dims}d")
    if transformed(x, weight, bias):  # torch.func / forward-mode AD: the reference form, which they know
        out = reference_conv(x, weight, bias, stride, pads, dilation, groups)
        return out.squeeze(0) if unbatched else out
    if x.shape[0] == 0:  # an empty batch: an empty output, still connected to the inputs
        out_size = _out_size(x.shape[2:], pads, kernel, stride, dilation)
        link = x.sum() + weight.sum() + (bias.sum() if bias is not None else 0)
        out = x.new_zeros((0, weight.shape[0], *out_size)) + 0 * link
        return out.squeeze(0) if unbatched else out
    with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
        channels_last = memory_format_like_torch(x, weight) != torch.contiguous_format
        planar = _planar_loops(x, weight, kernel, stride, groups, channels_last)
        direct = None if planar is not None else _direct_loops(x, weight, kernel, stride, pads, dilation, groups)
        if planar is not None:
            out = compiled_conv.PlanarConvNd.apply(planar, x, weight, bias, stride, pads, dilation, channels_last)
        elif direct is not None:
            out = compiled_conv.DirectConvNd.apply(direct, x, weight, bias, stride, pads, dilation, channels_last)
        elif _use_fourier(x, weight, kernel, stride, dilation, groups):
            out = FourierConv2d.apply(x, weight, bias, stride, pads, dilation)
        elif _use_pointwise(x, kernel, stride, pads, groups):
            out = PointwiseConvNd.apply(x, weight, bias)
        elif _training(x, weight) and _use_shifted(x, kernel, stride, pads, dilation, groups):
            out = ShiftedConvNd.apply(x, weight, bias, pads, dilation)
        else:
            out = ConvNd.apply(x, weight, bias, stride, pads, dilation, groups)
    out = out.contiguous(memory_format=memory_format_like_torch(x, weight))  # a no-op when it already is
    return out.squeeze(0) if unbatched else out



def conv1d(input, weight, bias=None, stride: IntOrTuple = 1, padding: str | IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1):
    """1-D cross-correlation over sequences; same signature and results as torch.nn.functional's ``conv1d``.

    Shape:
        input (N, C_in, L) or (C_in, L); weight (C_out, C_in/groups, k); output (N, C_out, L_out) with
        ``L_out = floor((L + 2*padding - dilation*(k-1) - 1) / stride) + 1``.
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1)


def conv2d(input, weight, bias=None, stride: IntOrTuple = 1, padding: str | IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1):
    """2-D cross-correlation; same signature and results as torch.nn.functional's ``conv2d``.

    Args:
        input: (N, C_in, H, W) or unbatched (C_in, H, W).
        weight: (C_out, C_in/groups, kh, kw).
        bias: optional (C_out,).
        stride, dilation: int or (sh, sw), each >= 1.
        padding: int or (ph, pw) zeros on each side, or ``'valid'`` / ``'same'``.
        groups: split channels into this many independent blocks.

    Shape:
        output (N, C_out, H_out, W_out), ``H_out = floor((H + 2*ph - dh*(kh-1) - 1) / sh) + 1``.

    Example:
        >>> conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2)).shape
        torch.Size([1, 1, 2, 2])
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2)


def conv3d(input, weight, bias=None, stride: IntOrTuple = 1, padding: str | IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1):
    """3-D cross-correlation over volumes; same signature and results as torch.nn.functional's ``conv3d``.

    Shape:
        input (N, C_in, D, H, W) or (C_in, D, H, W); output (N, C_out, D_out, H_out, W_out), each axis
        ``floor((n + 2*p - d*(k-1) - 1) / s) + 1``.
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, 3)


# --- the chapter's own functions (D2L 7.2, 7.4) ---------------------------------------------


def _check_dims(name: str, tensor, dims: int, what: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor {what}, got shape {tuple(tensor.shape)}")


def corr2d(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Two-dimensional cross-correlation of a single-channel image (D2L 7.2.1).

    Shape:
        X (n_h, n_w), K (k_h, k_w) -> (n_h - k_h + 1, n_w - k_w + 1).

    Example:
        >>> X = torch.arange(9.).view(3, 3); K = torch.arange(4.).view(2, 2)
        >>> corr2d(X, K)
        tensor([[19., 25.],
                [37., 43.]])
    """
    _check_dims("X", X, 2, "(height, width)")
    _check_dims("K", K, 2, "(height, width)")
    return conv2d(X[None, None], K[None, None])[0, 0]


def convolve2d(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Strict (mathematical) convolution: cross-correlation with the kernel flipped on both axes."""
    _check_dims("K", K, 2, "(height, width)")
    return corr2d(X, K.flip(0, 1))


def corr2d_multi_in(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Cross-correlation summed over input channels (D2L 7.4.1): X (c, h, w), K (c, kh, kw) -> (h', w')."""
    _check_dims("X", X, 3, "(channels, height, width)")
    _check_dims("K", K, 3, "(channels, height, width)")
    return conv2d(X, K[None])[0]


def corr2d_multi_in_out(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """One multi-input cross-correlation per output channel (D2L 7.4.2): K (c_o, c_i, kh, kw) -> (c_o, h', w')."""
    _check_dims("X", X, 3, "(channels, height, width)")
    _check_dims("K", K, 4, "(out_channels, in_channels, height, width)")
    return conv2d(X, K)


def corr2d_multi_in_out_1x1(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a fully connected layer applied at every pixel (D2L 7.4.3).

    Shape:
        X (c_i, h, w), K (c_o, c_i, 1, 1) -> (c_o, h, w), computed as ``K (c_o, c_i) @ X (c_i, h*w)``.
    """
    _check_dims("X", X, 3, "(channels, height, width)")
    _check_dims("K", K, 4, "(out_channels, in_channels, 1, 1)")
    c_i, h, w = X.shape
    if tuple(K.shape[1:]) != (c_i, 1, 1):
        raise ValueError(f"K must have shape (c_o, {c_i}, 1, 1) for X with {c_i} channels, got {tuple(K.shape)}")
    Y = K.reshape(K.shape[0], c_i) @ X.reshape(c_i, h * w)  # (c_o, h*w)
    return Y.reshape(K.shape[0], h, w)
