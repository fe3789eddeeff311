"""Batch normalisation with a hand-derived backward pass (D2L 8.5, Ioffe & Szegedy 2015).

Per channel ``c``, over the batch and every spatial position (``m`` values)::

    mean = sum(x) / m,   var = sum((x - mean)^2) / m          (training statistics)
    x_hat = (x - mean) / sqrt(var + eps),   y = weight * x_hat + bias

The running estimates move towards the batch statistics, the variance unbiased (``m-1``)
as torch does::

    running = (1 - momentum) * running + momentum * statistic

Backward in training mode (three reductions per channel)::

    dx_hat = dy * weight
    dx = (dx_hat - mean(dx_hat) - x_hat * mean(dx_hat * x_hat)) / sqrt(var + eps)
    dweight = sum(dy * x_hat),   dbias = sum(dy)

In inference mode the statistics are constants: ``dx = dy * weight / sqrt(running_var + eps)``.

How it is computed (``BatchNorm``): where the values lie in memory as a (M, C) matrix (channels-last
images, (N, C) features), every pass reads the input once (sums of x and x*x; sums of dy and dy*x;
on large batches a 2 MB block of rows at a time, see PASS_BLOCK_BYTES), as long as no channel's
mean is more than 4 standard deviations from zero, where that cancellation would cost float32 digits; otherwise, and for channels-first images, the two-pass form above. Memory
traffic is what this layer waits for: on fast's 16-channel 28x28 layer at batch 128 the one-pass
form took 2.5-5.0 ms forward + backward against 6.3 ms (torch: 1.6-4 ms; this machine is noisy).

Where the values form a (M, C) matrix in float32/float64 on the CPU, the compiled loops of
``compiled_norm.py`` (``csrc/batch_norm.c``) run instead when a C compiler is at hand: the same
formulas, one read per pass, two C calls each way instead of 22 tensor calls (forward) and 23
(backward). ``BatchNorm`` here is the tensor route: channels-first images, half precision,
``torch.compile``, and large matrices of fewer than 8 channels (whose folded scalings beat the loops).

For float16/bfloat16 inputs the statistics and the normalisation are computed in float32 and the
result cast back (as torch does: half-precision sums of thousands of values lose the mean).
When a graph is requested (second derivatives), the backward differentiates
``reference_batch_norm`` instead (``ops/autograd.py``).
"""

from __future__ import annotations

import torch

from .autograd import graph_backward, transformed, wants_graph
from .compiled_norm import CompiledBatchNorm, kernels
from .scratch import scratch
from .sums import FOLD_MAX, channel_sums, column_sums, fold_factor, folded

__all__ = ["batch_norm"]


def _channel_view(t: torch.Tensor, dims: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ..., 1) to broadcast over an input with ``dims`` dimensions."""
    return t.view(1, -1, *([1] * (dims - 2)))


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


def _affine_fold(m: int, c: int) -> int:
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
    k = _affine_fold(m, c)
    if not (out.is_contiguous() and rows.is_contiguous() and (extra is None or extra.is_contiguous())):
        k = 1
    if k > 1:
        out, rows = folded(out, k), folded(rows, k)
        extra = None if extra is None else folded(extra, k)
    scale, shift, *v = vectors.folded(k)
    torch.addcmul(shift, rows, scale, out=out)
    if extra is not None:
        out.addcmul_(extra, v[0])


# Large matrices of fewer channels than this keep the tensor route, whose scalings fold (AFFINE_FOLD) where
# the compiled loops run C lanes at a time. Forward + backward, channels-last, ms, compiled / tensor / torch,
# medians of 55: 256x6x28x28 2.17 / 1.81 / 8.8, 256x4x28x28 1.84 / 1.27 / 5.7; with 8 or more channels
# the loops win: 32x8x28x28 0.38 / 0.44 / 0.62, 256x12x28x28 3.0 / 3.7 / 16.3, 256x16x28x28 2.7 / 4.6 / 2.4.
COMPILED_MIN_CHANNELS_FOLDED = 8


def _folds_narrow(x: torch.Tensor) -> bool:
    c = x.shape[1]
    return c < COMPILED_MIN_CHANNELS_FOLDED and _affine_fold(x.numel() // c, c) > 1


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
            centred = xa - _channel_view(mean, dims)
            var = channel_sums(centred * centred) / m
        else:
            mean, var = running_mean.to(xa.dtype), running_var.to(xa.dtype)
            if not one_pass:
                centred = xa - _channel_view(mean, dims)
        if training:
            _update_running(running_mean, running_var, mean, var, m, momentum)
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
            y = torch.addcmul(_channel_view(shift, dims), centred, _channel_view(scale, dims))
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
                    grad_x = torch.addcmul(_channel_view(k0, dims), centred, _channel_view(k1, dims))
                    grad_x.addcmul_(grad_out, _channel_view(scale, dims))
            else:
                grad_x = grad_out * _channel_view(scale, dims)
            grad_x = grad_x.to(out_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = dot.to(weight.dtype)
        if ctx.needs_input_grad[2]:
            grad_b = sum_dy.to(bias.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None, None


def reference_batch_norm(x, weight, bias, stats, eps: float) -> torch.Tensor:
    """The definition in plain differentiable operations: batch statistics when ``stats`` is None,
    else the given (mean, var); float32 accumulation for half-precision inputs."""
    dims = x.dim()
    xa = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
    axes = [0, *range(2, dims)]
    if stats is None:
        mean = xa.mean(axes, keepdim=True)
        var = ((xa - mean) ** 2).mean(axes, keepdim=True)
    else:
        mean, var = (_channel_view(t.to(xa.dtype), dims) for t in stats)
    y = (xa - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * _channel_view(weight.to(xa.dtype), dims)
    if bias is not None:
        y = y + _channel_view(bias.to(xa.dtype), dims)
    return y.to(x.dtype)


def _update_running(running_mean, running_var, mean, var, m: int, momentum: float) -> None:
    """running = (1 - momentum) * running + momentum * statistic; the variance unbiased (m - 1). One
    ``lerp`` for both estimates (exact at momentum 0 and 1, as torch's ``lerp`` is)."""
    running, targets = [], []
    if running_mean is not None:
        running.append(running_mean)
        targets.append(mean.to(running_mean.dtype))
    if running_var is not None:
        running.append(running_var)
        targets.append((var * (m / (m - 1))).to(running_var.dtype))
    if running:
        torch._foreach_lerp_(running, targets, momentum)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5):
    """Batch normalisation; same signature and results as torch.nn.functional's ``batch_norm``.

    Args:
        input: (N, C) or (N, C, *S).
        running_mean, running_var: (C,) estimates, updated in place when ``training``; may be
            ``None`` when training (then batch statistics only).
        weight, bias: optional (C,) scale and shift.
        training: use batch statistics (and update the running ones) instead of the running ones.
        momentum: weight of the new statistic in the running estimate.
        eps: added to the variance for numerical stability.

    Shape:
        output has the input's shape.
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"batch_norm: input must be a tensor, got {type(input).__name__}")
    if input.dim() < 2:
        raise ValueError(f"batch_norm: input must have at least 2 dimensions (N, C, ...), got shape {tuple(input.shape)}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is not None and (not isinstance(t, torch.Tensor) or tuple(t.shape) != (c,)):
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"batch_norm: {name} must have shape ({c},) for an input with {c} channels, got {shape}")
    if eps <= 0:
        raise ValueError(f"batch_norm: eps must be > 0, got {eps}")
    if input.numel() == 0:  # an empty batch: an empty output (torch's answer), still connected to the inputs
        link = sum(t.sum() for t in (weight, bias) if t is not None)
        return input * 1 + 0 * link
    if training:
        m = input.numel() // c if c else 0
        if m <= 1:
            raise ValueError(f"batch_norm: training needs more than 1 value per channel, got input shape {tuple(input.shape)}")
    elif running_mean is None or running_var is None:
        raise ValueError("batch_norm: running_mean and running_var are required when training=False")
    if transformed(input, weight, bias):  # torch.func / forward-mode AD: the reference form
        if training and (running_mean is not None or running_var is not None):
            if transformed(input):
                raise ValueError("batch_norm: under torch.func transforms, training mode cannot update running statistics "
                                 "(as with torch's own); use eval mode, or running_mean=running_var=None "
                                 "(BatchNorm(track_running_stats=False))")
        stats = None if training else (running_mean, running_var)
        return reference_batch_norm(input, weight, bias, stats, eps)
    f = kernels(input)
    if f is not None and not _folds_narrow(input):  # a (M, C) matrix: the compiled loops (compiled_norm.py)
        return CompiledBatchNorm.apply(f, input, weight, bias, running_mean, running_var, training, momentum, eps)
    return BatchNorm.apply(input, weight, bias, running_mean, running_var, training, momentum, eps)
