"""The tensor route of batch normalisation (``BatchNorm``): one read of the input per pass where the values
form a (M, C) matrix, the two-pass form otherwise, each with a hand-derived backward pass."""

from __future__ import annotations

import torch

from ..textbook.autograd import graph_backward, wants_graph
from ..textbook.norm import channel_view, reference_batch_norm, update_running
from ..textbook.scratch import scratch
from ..textbook.sums import FOLD_MAX, channel_sums, column_sums, fold_factor, folded


def _rows(t: torch.Tensor) -> torch.Tensor | None:
    """``t`` as a (M, C) matrix view, channels along the rows, when its memory allows (a channels-last
    image batch, or an (N, C) batch); None otherwise."""
    if t.dim() == 2:
        return t
    moved = t.movedim(1, -1)
    return moved.view(-1, t.shape[1]) if moved.is_contiguous() else None


# One-pass statistics (sum of x and of x*x) are used while mean^2 <= ONE_PASS_MAX_RATIO * var per
# channel: the cancellation in E[x^2] - mean^2 then costs at most log2(1 + 16) ~ 4 bits, below float32
# round-off over the thousands of values summed. Larger offsets take the two-pass route (x - mean first).
ONE_PASS_MAX_RATIO = 16.0


# Matrices larger than this are summed a block of rows at a time (the products of a block made and
# summed while still in cache): lenet-modern's first batch norm at batch 256 holds 25.7 MB, and making
# x*x or dy*x whole wrote and read back that much again.
PASS_BLOCK_BYTES = 2 * 2**20


def _row_blocks(rows: torch.Tensor):
    """Consecutive row slices of a (M, C) matrix, each at most PASS_BLOCK_BYTES (a multiple of 16 rows)."""
    m, c = rows.shape
    step = max(16, PASS_BLOCK_BYTES // max(1, c * rows.element_size()) // 16 * 16)
    return [slice(start, start + step) for start in range(0, m, step)]


def _in_blocks(*matrices: torch.Tensor) -> list[tuple[torch.Tensor, ...]]:
    """(M, C) matrices cut side by side into the row blocks of ``_row_blocks``; matrices of one block as
    they stand (no slices: small layers pay for every tensor call)."""
    blocks = _row_blocks(matrices[0])
    if len(blocks) == 1:
        return [matrices]
    return [tuple(t[block] for t in matrices) for block in blocks]


def _sum_and_dot(a_rows: torch.Tensor, b_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel sum(a) and sum(a * b) of two (M, C) matrices, reading each once: block by block
    (``_in_blocks``), the products in reused memory."""
    parts = _in_blocks(a_rows, b_rows)
    products = scratch("batch_norm.products", parts[0][0].shape, a_rows)
    total = dot = None
    for a, b in parts:
        into = products if a.shape[0] == products.shape[0] else products[: a.shape[0]]
        s, d = column_sums(a), column_sums(torch.mul(a, b, out=into))
        total, dot = (s, d) if total is None else (total.add_(s), dot.add_(d))
    return total, dot


# Which (M, C) matrices ``_affine`` folds: narrower than 16 channels from 2**17 values on, narrower than 32
# from 2**21. torch.addcmul of a (M, C) matrix with (C,) vectors, plain -> folded with the two repeats
# counted, us, 2 threads, medians of 270: C = 6, 8, 12 at M = 25088: 37 -> 19, 32 -> 20, 38 -> 24; at
# M = 100352: 143 -> 37, 122 -> 44, 148 -> 59; C = 16 and 24 at M = 100352: 87 -> 74, 163 -> 112; but
# at M = 6272 (any C) 1.2-2.3x slower (the repeats), and C >= 32 0.9-1.1 at any M.
AFFINE_FOLD = ((16, 1 << 17), (32, 1 << 21))  # (channels below, values from)


def affine_fold(m: int, c: int) -> int:
    return fold_factor(m, c) if any(c < below and m * c >= least for below, least in AFFINE_FOLD) else 1


class _Repeated:
    """Per-channel (C,) vectors, and the same repeated FOLD_MAX times (made once, on first use), for the
    folded matrices of ``_affine``."""

    def __init__(self, *vectors: torch.Tensor):
        self.vectors = vectors
        self.long = None

    def folded(self, k: int) -> tuple[torch.Tensor, ...]:
        if k == 1:
            return self.vectors
        if self.long is None:
            self.long = [v.repeat(FOLD_MAX) for v in self.vectors]
        return tuple(v[: k * self.vectors[0].shape[0]] for v in self.long)


def _affine(out: torch.Tensor, rows: torch.Tensor, vectors: _Repeated, extra: torch.Tensor | None = None) -> None:
    """``out = shift + rows * scale`` (+ ``extra * v``) per channel, for (M, C) matrices and ``vectors`` holding
    (scale, shift[, v]); on narrow matrices folded to (M/k, k*C) with the vectors repeated (``sums.folded``:
    a (C,) vector broadcast along C-wide rows runs C lanes at a time; which ones: AFFINE_FOLD). Only contiguous
    matrices fold (an (N, C) batch may be a transposed view)."""
    m, c = rows.shape
    k = affine_fold(m, c)
    if not (out.is_contiguous() and rows.is_contiguous() and (extra is None or extra.is_contiguous())):
        k = 1
    if k > 1:
        out, rows = folded(out, k), folded(rows, k)
        extra = None if extra is None else folded(extra, k)
    scale, shift, *v = vectors.folded(k)
    torch.addcmul(shift, rows, scale, out=out)
    if extra is not None:
        out.addcmul_(extra, v[0])


def _one_pass_statistics(rows: torch.Tensor):
    """(mean, var) from one read of the values (sum and sum of squares), or None where an offset
    channel would lose precision to cancellation (see ONE_PASS_MAX_RATIO) or a value is NaN."""
    m = rows.shape[0]
    total, squares = _sum_and_dot(rows, rows)  # fresh tensors: divided in place
    mean = total.div_(m)
    var = squares.div_(m).addcmul_(mean, mean, value=-1)
    # mean^2 <= ratio * var in every channel, as one reduction: var - mean^2 / ratio >= 0 (False for NaN)
    if not float(torch.addcmul(var, mean, mean, value=-1 / ONE_PASS_MAX_RATIO).min()) >= 0:
        return None
    return mean, var


class BatchNorm(torch.autograd.Function):
    """Normalise with given per-channel statistics; ``training`` says whether they came from this batch.

    Two routes, chosen per call. Where the values form a (M, C) matrix in memory (channels-last images,
    (N, C) features) and no channel's mean is large against its spread, every pass reads the input
    once: statistics from sums of x and x*x, y = x * scale + (bias - mean * scale) as torch's own
    kernels compute it, and the backward's sum(dy * x_hat) as sum(dy * x) - mean * sum(dy); x itself
    is saved. Otherwise the two-pass route: ``x - mean`` first (saved), then everything from it.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, training, momentum, eps):
        dims = x.dim()
        half = x.dtype in (torch.float16, torch.bfloat16)
        xa = x.float() if half else x  # statistics accumulate in float32 for half-precision inputs, as torch's do
        rows = _rows(xa)
        stats = _one_pass_statistics(rows) if training and rows is not None else None
        one_pass = rows is not None and (stats is not None or not training)
        if stats is not None:
            mean, var = stats
            m = rows.shape[0]
        elif training:  # batch statistics, two passes (exact in float64)
            m = x.numel() // x.shape[1]
            mean = channel_sums(xa) / m
            centred = xa - channel_view(mean, dims)
            var = channel_sums(centred * centred) / m
        else:
            mean, var = running_mean.to(xa.dtype), running_var.to(xa.dtype)
            if not one_pass:
                centred = xa - channel_view(mean, dims)
        if training:
            update_running(running_mean, running_var, mean, var, m, momentum)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight.to(xa.dtype)  # (C,)
        if one_pass:  # y = x * scale + (bias - mean * scale), as torch's own kernels compute it
            centred, shift = xa, -mean * scale if bias is None else torch.addcmul(bias.to(xa.dtype), mean, scale, value=-1)
        else:  # y = (x - mean) * scale + bias
            shift = torch.zeros_like(scale) if bias is None else bias.to(xa.dtype)
        if one_pass and rows is not None:  # a (M, C) matrix: folded where narrow (_affine)
            y = torch.empty_like(xa)
            _affine(_rows(y), rows, _Repeated(scale, shift))
        else:
            y = torch.addcmul(channel_view(shift, dims), centred, channel_view(scale, dims))
        ctx.training, ctx.eps, ctx.one_pass = training, eps, one_pass
        ctx.mean = mean if one_pass else None
        ctx.stats = None if training else (mean.clone(), var.clone())  # the statistics used, for a differentiable backward
        ctx.save_for_backward(centred, weight, invstd, x, bias, scale)  # centred: x itself on the one-pass route
        return y.to(x.dtype) if half else y

    @staticmethod
    def backward(ctx, grad_out):
        centred, weight, invstd, x, bias, scale = ctx.saved_tensors
        if wants_graph():
            stats = ctx.stats
            grads = graph_backward(lambda x, w, b: reference_batch_norm(x, w, b, stats, ctx.eps), (x, weight, bias),
                                   ctx.needs_input_grad[:3], grad_out)
            return (*grads, None, None, None, None, None)
        out_dtype = grad_out.dtype
        grad_out = grad_out.to(centred.dtype)
        dims = grad_out.dim()
        grad_x = grad_w = grad_b = None
        need_dot = ctx.needs_input_grad[1] or (ctx.training and ctx.needs_input_grad[0])
        g_rows = _rows(grad_out) if ctx.one_pass else None
        x_rows = _rows(centred) if ctx.one_pass else None
        if ctx.one_pass:  # centred holds x itself: sum(dy * (x - mean)) = sum(dy * x) - mean * sum(dy)
            mean = ctx.mean
            if need_dot and g_rows is not None:
                sum_dy, dy_x = _sum_and_dot(g_rows, x_rows)
            else:
                sum_dy = channel_sums(grad_out) if (ctx.needs_input_grad[2] or ctx.training or need_dot) else None
                dy_x = channel_sums(grad_out * centred) if need_dot else None
            if need_dot:
                dot = torch.addcmul(dy_x, mean, sum_dy, value=-1).mul_(invstd)
        else:
            sum_dy = channel_sums(grad_out) if (ctx.needs_input_grad[2] or ctx.training) else None
            dot = channel_sums(grad_out * centred) * invstd if need_dot else None  # sum(dy * x_hat) per channel
        if ctx.needs_input_grad[0]:
            if ctx.training:
                # dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat)), as dy*scale + centred*k1 + k0
                m = grad_out.numel() // grad_out.shape[1]
                k1 = (scale * invstd).mul_(dot).mul_(-1 / m)  # (C,) vectors: few small ops, each a dispatch
                k0 = torch.mul(scale, sum_dy).mul_(-1 / m)
                if ctx.one_pass:  # k1 * (x - mean) + k0 = k1 * x + (k0 - k1 * mean)
                    k0.addcmul_(k1, mean, value=-1)
                if g_rows is not None and x_rows is not None:  # block by block, each block's two passes in cache
                    grad_x = torch.empty_like(centred)
                    vectors = _Repeated(k1, k0, scale)  # gx = k0 + x * k1 + dy * scale
                    for gx, xb, gb in _in_blocks(_rows(grad_x), x_rows, g_rows):
                        _affine(gx, xb, vectors, extra=gb)
                else:
                    grad_x = torch.addcmul(channel_view(k0, dims), centred, channel_view(k1, dims))
                    grad_x.addcmul_(grad_out, channel_view(scale, dims))
            else:
                grad_x = grad_out * channel_view(scale, dims)
            grad_x = grad_x.to(out_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = dot.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = sum_dy.to(bias.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None


