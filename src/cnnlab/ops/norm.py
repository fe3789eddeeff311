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
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["batch_norm"]


def _channel_view(t: torch.Tensor, dims: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ..., 1) to broadcast over an input with ``dims`` dimensions."""
    return t.view(1, -1, *([1] * (dims - 2)))


class BatchNorm(torch.autograd.Function):
    """Normalise with given per-channel statistics; ``training`` says whether they came from this batch."""

    @staticmethod
    def forward(ctx, x, weight, bias, mean, invstd, training):
        ctx.training = training
        dims = x.dim()
        x_hat = (x - _channel_view(mean, dims)) * _channel_view(invstd, dims)
        y = x_hat
        if weight is not None:
            y = y * _channel_view(weight, dims)
        if bias is not None:
            y = y + _channel_view(bias, dims)
        ctx.save_for_backward(x_hat, weight, invstd)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x_hat, weight, invstd = ctx.saved_tensors
        training = ctx.training
        dims = grad_out.dim()
        axes = [0, *range(2, dims)]
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[2]:
            grad_b = grad_out.sum(axes)
        need_xhat_sum = ctx.needs_input_grad[1] or (training and ctx.needs_input_grad[0])
        dot = (grad_out * x_hat).sum(axes) if need_xhat_sum else None  # sum(dy * x_hat) per channel
        if ctx.needs_input_grad[1]:
            grad_w = dot
        if ctx.needs_input_grad[0]:
            scale = invstd if weight is None else invstd * weight  # (C,)
            if training:
                m = grad_out.numel() // grad_out.shape[1]
                sum_dy = grad_b if grad_b is not None else grad_out.sum(axes)
                # dx = scale * (dy - mean(dy) - x_hat * mean(dy * x_hat))
                grad_x = (grad_out - _channel_view(sum_dy / m, dims) - x_hat * _channel_view(dot / m, dims)) * _channel_view(scale, dims)
            else:
                grad_x = grad_out * _channel_view(scale, dims)
        return grad_x, grad_w, grad_b, None, None, None


def _statistics(x: torch.Tensor):
    """Per-channel mean and biased variance over every axis but 1 (one pass over the data)."""
    axes = [0, *range(2, x.dim())]
    var, mean = torch.var_mean(x, dim=axes, correction=0)
    return mean, var


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training: bool = False, momentum: float = 0.1, eps: float = 1e-5):
    """Batch normalisation; same signature and results as ``torch.nn.functional.batch_norm``.

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
    if training:
        m = input.numel() // c if c else 0
        if m <= 1:
            raise ValueError(f"batch_norm: training needs more than 1 value per channel, got input shape {tuple(input.shape)}")
        with torch.no_grad():
            mean, var = _statistics(input.detach())
            if running_mean is not None:
                running_mean.mul_(1 - momentum).add_(mean.to(running_mean.dtype), alpha=momentum)
            if running_var is not None:
                running_var.mul_(1 - momentum).add_((var * (m / (m - 1))).to(running_var.dtype), alpha=momentum)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm: running_mean and running_var are required when training=False")
        mean, var = running_mean.to(input.dtype), running_var.to(input.dtype)
    invstd = torch.rsqrt(var + eps)
    return BatchNorm.apply(input, weight, bias, mean, invstd, training)
