"""Batch normalisation as the book defines it, in plain tensor operations (D2L 8.5): the reference form
and the running estimates' update, which every route shares."""

from __future__ import annotations

import torch


def channel_view(t: torch.Tensor, dims: int) -> torch.Tensor:
    """(C,) -> (1, C, 1, ..., 1) to broadcast over an input with ``dims`` dimensions."""
    return t.view(1, -1, *([1] * (dims - 2)))




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
        mean, var = (channel_view(t.to(xa.dtype), dims) for t in stats)
    y = (xa - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * channel_view(weight.to(xa.dtype), dims)
    if bias is not None:
        y = y + channel_view(bias.to(xa.dtype), dims)
    return y.to(x.dtype)


def update_running(running_mean, running_var, mean, var, m: int, momentum: float) -> None:
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


