"""The pointwise route of the convolution (``PointwiseConvNd``): a 1x1 layer as one product per pass."""

from __future__ import annotations

import torch

from ..textbook.autograd import graph_backward, unviewed, wants_graph
from ..textbook.conv import reference_conv
from ..textbook.layout import laid_out_like_torch, like_param
from ..textbook.products import mm_nt
from ..textbook.sums import channel_sums


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
            grad_w = like_param((g.T @ rows).view(weight.shape), weight)
        if ctx.needs_input_grad[2]:
            grad_b = channel_sums(grad_out)
        return laid_out_like_torch(grad_x, x, weight), grad_w, grad_b


