"""The per-tap products route of the convolution (``ShiftedConvNd``): one matrix product per kernel tap."""

from __future__ import annotations

import math

import torch

from ..textbook.autograd import graph_backward, unviewed, wants_graph
from ..textbook.conv import reference_conv
from ..textbook.layout import laid_out_like_torch, like_param
from ..textbook.scratch import scratch
from ..textbook.sums import channel_sums
from ..textbook.windows import flat_offsets, pad_channels_last, tap_positions, unpad


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
        return laid_out_like_torch(grad_x, x, weight), like_param(grad_w, weight), grad_b, None, None


