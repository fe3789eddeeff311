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
``kernels/compiled_norm.py`` (``csrc/batch_norm.c``) run instead when a C compiler is at hand: the same
formulas, one read per pass, two C calls each way instead of 22 tensor calls (forward) and 23
(backward). ``kernels/tensor_norm.BatchNorm`` is the tensor route: channels-first images, half precision,
``torch.compile``, and large matrices of fewer than 8 channels (whose folded scalings beat the loops).

For float16/bfloat16 inputs the statistics and the normalisation are computed in float32 and the
result cast back (as torch does: half-precision sums of thousands of values lose the mean).
When a graph is requested (second derivatives), the backward differentiates
``reference_batch_norm`` instead (``textbook/norm.py``, ``textbook/autograd.py``).
"""

from __future__ import annotations

import torch

from . import routing
from .kernels.compiled_norm import CompiledBatchNorm, kernels
from .kernels.tensor_norm import BatchNorm
from .textbook.autograd import transformed
from .textbook.norm import reference_batch_norm

__all__ = ["batch_norm"]


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
    if f is not None and not routing._folds_narrow(input):  # a (M, C) matrix: the compiled loops (compiled_norm.py)
        return CompiledBatchNorm.apply(f, input, weight, bias, running_mean, running_var, training, momentum, eps)
    return BatchNorm.apply(input, weight, bias, running_mean, running_var, training, momentum, eps)
