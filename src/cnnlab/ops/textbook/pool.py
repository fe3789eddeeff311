"""Pooling as the book defines it, in plain tensor operations (D2L 7.5): the reference forms and torch's indices.

Max pooling takes each window's maximum, and its gradient goes to the window's first maximum in scan
order (the last NaN, where there is one), as torch picks it; average pooling divides each window's sum by
its element count, counted as torch counts it; adaptive average pooling's windows are the averaging
matrices' rows. These are what the fast routes (``ops/kernels``) compute, and what the double backward,
torch.func and forward-mode AD run.
"""

from __future__ import annotations

import math

import torch

from .autograd import reference_windows
from .shapes import Pads
from .windows import window_offsets


def winner_dtype(x: torch.Tensor) -> torch.dtype:
    """Offset numbers are stored as floats: x's own for float32/64 (exact to 2**24 offsets), float32 for half."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def winner_offsets(windows: torch.Tensor, kernel, best: torch.Tensor) -> torch.Tensor:
    """Kernel-offset index (0..prod(K)-1) of each window's winner, as torch picks it: the first
    maximum in scan order, or the last NaN. (N, *S_out, C) int64, like ``best``."""
    if best.isnan().any():
        return nan_winners(windows, kernel, best).long()
    winners = torch.zeros(best.shape, dtype=torch.long, device=best.device)
    unclaimed = torch.ones(best.shape, dtype=torch.bool, device=best.device)
    for i, index in window_offsets(kernel):
        hit = (windows[index] == best) & unclaimed
        winners.masked_fill_(hit, i)
        unclaimed &= ~hit
    return winners


def reference_max_pool(x, kernel, stride, pads: Pads, dilation, out_size, winners: torch.Tensor | None) -> torch.Tensor:
    """The window's value at its winner, in plain differentiable operations (a gather)."""
    d = len(kernel)
    windows = reference_windows(x, pads, kernel, stride, dilation, out_size, float("-inf"))  # (N, *S_out, *K, C)
    flat = windows.reshape(*windows.shape[: 1 + d], -1, windows.shape[-1])  # (N, *S_out, prod(K), C)
    if winners is None:  # under torch.func: the first maximum, as argmax finds it
        winners = flat.argmax(-2)
    return flat.gather(-2, winners.unsqueeze(-2)).squeeze(-2).movedim(-1, 1)


def max_indices(x_shape, kernel, stride, pads: Pads, dilation, winners: torch.Tensor) -> torch.Tensor:
    """torch's ``return_indices``: each winner's flat position in its (unpadded) input plane, (N, C, *S_out)."""
    spatial = x_shape[2:]
    out_size = winners.shape[1:-1]
    index = torch.zeros_like(winners)
    rest = winners
    for axis in reversed(range(len(kernel))):
        tap = rest % kernel[axis]
        rest = rest // kernel[axis]
        shape = [1] * winners.dim()
        shape[1 + axis] = out_size[axis]
        start = torch.arange(out_size[axis], device=winners.device).view(shape) * stride[axis] - pads[axis][0]
        position = start + tap * dilation[axis]
        index = index + position * math.prod(spatial[axis + 1 :])
    return index.movedim(-1, 1)


def nan_winners(windows: torch.Tensor, kernel, best: torch.Tensor) -> torch.Tensor:
    """Offset index of each window's winner exactly as torch scans: a later value wins when it
    is larger or NaN (so the last NaN). Returns an int tensor shaped like ``best``."""
    winners = torch.zeros(best.shape, dtype=torch.int32, device=best.device)
    running = None
    for i, index in window_offsets(kernel):
        v = windows[index]
        if running is None:
            running = v.clone()
            continue
        take = (v > running) | v.isnan()
        running = torch.where(take, v, running)
        winners.masked_fill_(take, i)
    return winners


def avg_divisor(spatial, kernel, stride, pad, out_size, count_include_pad, like: torch.Tensor) -> torch.Tensor:
    """Per-output-position element count of each window, as torch's ``avg_pool`` counts it.

    With ``count_include_pad`` a window counts its padding zeros but not the part that
    ceil_mode lets hang past the right padding; without it, only real input elements.
    Returns a tensor of shape (*S_out, 1), broadcastable over (N, *S_out, C).
    """
    divisor = like.new_ones(())
    for axis, (n, k, s, p, o) in enumerate(zip(spatial, kernel, stride, pad, out_size)):
        start = torch.arange(o, device=like.device) * s - p
        end = torch.clamp(start + k, max=n + p)
        if not count_include_pad:
            start, end = start.clamp(min=0), end.clamp(max=n)
        count = (end - start).to(like.dtype)
        shape = [1] * len(out_size)
        shape[axis] = o
        divisor = divisor * count.view(shape)
    return divisor.unsqueeze(-1)




def reference_avg_pool(x, kernel, stride, pads: Pads, out_size, divisor: torch.Tensor | float) -> torch.Tensor:
    """The window's sum over its divisor, in plain differentiable operations."""
    d = len(kernel)
    windows = reference_windows(x, pads, kernel, stride, (1,) * d, out_size)  # (N, *S_out, *K, C)
    return (windows.sum(tuple(range(1 + d, 1 + 2 * d))) / divisor).movedim(-1, 1)




def averaging_matrix(n: int, o: int, like: torch.Tensor) -> torch.Tensor:
    """(o, n) matrix whose row i averages input elements floor(i*n/o) .. ceil((i+1)*n/o) - 1."""
    i = torch.arange(o, device=like.device)
    start = (i * n) // o
    end = -((-(i + 1) * n) // o)
    j = torch.arange(n, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])  # (o, n)
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]

