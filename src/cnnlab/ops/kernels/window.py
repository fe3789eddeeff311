"""The window-matrix route of the convolution: the definition's four steps, made fast (``ConvNd``).

The window matrix of a large layer is built a block of samples at a time into reused memory that stays in
the CPU's cache, each block multiplied as soon as it is built; the backward pass builds it again rather
than keeping it. With few input channels it is built channels-first, plane by plane, with long contiguous
rows (a network's first layers). For stride 1 with no more outputs than inputs, the input gradient is
itself a convolution (of grad_out with the flipped kernel), with no col2im scatter. With ``G = grad_out``
as (M, C_out)::

    grad_weight = G^T @ window_matrix        (a cross-correlation of input and grad_out)
    grad_input  = col2im(G @ W)               (each window's gradient added back where it came from)
    grad_bias   = G summed over M

This route takes every layer the others do not (``ops/routing.py``): groups, half precision, a machine
without a C compiler, ``torch.compile``.
"""

from __future__ import annotations

import itertools
import math

import torch

from ..textbook.autograd import graph_backward, unviewed, wants_graph
from ..textbook.conv import col2im, kernel_matrix, reference_conv, window_matrix
from ..textbook.layout import laid_out_like_torch, like_param, memory_format_like_torch
from ..textbook.products import mm_nt
from ..textbook.scratch import scratch
from ..textbook.shapes import Pads, numel
from ..textbook.sums import channel_sums
from ..textbook.windows import offset_regions, pad_channels_last, sliding_windows, windows_overlap

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
    return col2im(grad_cols.unsqueeze(-1), (n * c, 1, *spatial), kernel, stride, pads, dilation, out_size).view(x_shape)


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
            kernels = kernel_matrix(weight, 1)[0]  # (O, K*C), a copy of the weight: kept for the backward pass
            out = _windows_times(windows, kernels, bias)  # (M, O)
            out = out.view(x.shape[0], *out_size, -1).movedim(-1, 1)  # (N, O, *S_out)
            cols = None
        else:
            cols, out_size = window_matrix(x, kernel, stride, pads, dilation, groups)  # (G, M, KC)
            w = kernel_matrix(weight, groups)  # (G, O/G, KC)
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
            return laid_out_like_torch(grad_x, x, weight), like_param(grad_w, weight), grad_b, None, None, None, None
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
        return laid_out_like_torch(grad_x, x, weight), like_param(grad_w, weight), grad_b, None, None, None, None


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
    w = kernel_matrix(weight.flip(spatial).transpose(0, 1), 1)[0]  # (C, K*O)
    size = windows.shape[1 : 1 + len(kernel)]
    return _windows_times(windows, w).view(grad_out.shape[0], *size, -1).movedim(-1, 1)  # (N, C, *S)


