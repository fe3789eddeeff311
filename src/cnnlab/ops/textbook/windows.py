"""The one sliding-window primitive under every windowed op (D2L 7.2-7.5).

Cross-correlation, convolution, max pooling and average pooling all look at the same
thing: for every output position, the input values under a (strided, dilated) window.
:func:`sliding_windows` returns exactly that as a *view* (no copy), built with
``as_strided`` on a channels-last tensor::

    x: (N, *S, C)  ->  windows: (N, *S_out, *K, C)

Cross-correlation reshapes the view into one window matrix (a copy) for one matrix
product; pooling reads one kernel offset at a time (``window_offsets``), which is a plain
strided slice. The backward passes scatter into the same view of a zero gradient buffer.

Channels-last (``C`` innermost) keeps each window row contiguous in memory and lets the
convolution output come straight out of a matrix product as ``(N, *S_out, C_out)``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence

import torch

from .scratch import scratch
from .shapes import Pads

__all__ = ["flat_offsets", "offset_regions", "pad_channels_last", "sliding_windows", "tap_positions", "window_offsets",
           "windows_overlap", "unpad"]


def pad_channels_last(x: torch.Tensor, pads: Pads, value: float = 0.0, slot: str | None = None) -> torch.Tensor:
    """Copy ``x`` (N, C, *S) into a channels-last buffer (N, *S_padded, C) bordered with ``value``.

    Without padding this is a view when ``x`` is already stored channels-last. With ``slot`` the
    buffer is reused scratch memory (``scratch.py``: only for a result that never leaves the op)
    and only the border is filled; otherwise a new tensor.
    """
    xl = x.movedim(1, -1)  # (N, *S, C), a view
    if all(lo == 0 and hi == 0 for lo, hi in pads):
        return xl
    n, *spatial, c = xl.shape
    padded = [s + lo + hi for s, (lo, hi) in zip(spatial, pads)]
    if slot is None:
        out = xl.new_full((n, *padded, c), value)
    else:
        out = scratch(slot, (n, *padded, c), xl)
        for axis, (s, (lo, _)) in enumerate(zip(spatial, pads)):
            lead = (slice(None),) * (1 + axis)
            out[(*lead, slice(0, lo))].fill_(value)
            out[(*lead, slice(lo + s, None))].fill_(value)
    unpad(out, pads, spatial).copy_(xl)
    return out


def unpad(xp: torch.Tensor, pads: Pads, spatial: Sequence[int]) -> torch.Tensor:
    """The inner (unpadded) region of a channels-last buffer (N, *S_padded, C), as a view."""
    inner = tuple(slice(lo, lo + s) for s, (lo, _) in zip(spatial, pads))
    return xp[(slice(None), *inner)]


def sliding_windows(
    x: torch.Tensor,
    kernel: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    out_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """All windows of a channels-last tensor, as a strided view.

    Args:
        x: (N, *S, C), any strides.
        kernel, stride, dilation: one int per spatial axis.
        out_size: number of windows per axis; by default as many as fit,
            ``floor((S - dilation*(K-1) - 1) / stride) + 1``.

    Shape:
        returns ``(N, *S_out, *K, C)``: ``windows[n, *o, *k, c] = x[n, *(o*stride + k*dilation), c]``.
    """
    n, *spatial, c = x.shape
    if out_size is None:
        out_size = [(s - d * (k - 1) - 1) // st + 1 for s, k, st, d in zip(spatial, kernel, stride, dilation)]
    sn, *ss, sc = x.stride()
    size = (n, *out_size, *kernel, c)
    strides = (sn, *[a * st for a, st in zip(ss, stride)], *[a * d for a, d in zip(ss, dilation)], sc)
    return x.as_strided(size, strides, x.storage_offset())


def windows_overlap(kernel: Sequence[int], stride: Sequence[int], dilation: Sequence[int]) -> bool:
    """Whether neighbouring windows share input positions along some axis (a scatter back into
    them must then add, one kernel offset at a time; otherwise plain writes do)."""
    return any(s < d * (k - 1) + 1 for k, s, d in zip(kernel, stride, dilation))


def window_offsets(kernel: Sequence[int]) -> Iterator[tuple[int, tuple]]:
    """Yield ``(i, index)`` for every kernel offset, in row-major order (torch's scan order).

    ``windows[index]`` is the (N, *S_out, C) slice of :func:`sliding_windows` at that offset.
    """
    lead = (slice(None),) * (1 + len(kernel))
    for i, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        yield i, (*lead, *offset)


def tap_positions(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Every kernel tap's position relative to its window's first element (an index per axis), scan order."""
    return tuple(tuple(k * d for k, d in zip(tap, dilation)) for tap in itertools.product(*(range(k) for k in kernel)))


def flat_offsets(positions, grid: Sequence[int]) -> list[int]:
    """Positions (an index per axis) as offsets into the row-major flattening of a grid of size ``grid``."""
    row_strides = [math.prod(grid[a + 1 :]) for a in range(len(grid))]
    return [sum(i * r for i, r in zip(position, row_strides)) for position in positions]


def offset_regions(spatial, kernel, stride, pads: Pads, dilation, out_size):
    """For every kernel offset (scan order), the outputs whose window has that offset inside the
    input, and the input positions they read there, as index tuples for channels-last tensors:
    yields ``(t, input_index, output_index, whole)``, ``x[input_index]`` and ``out[output_index]``
    both (N, *R, C), ``whole`` when every output is among them. Offsets that fall in the padding for
    every output are skipped. With these, padding is never materialised: pooling reads the input in
    place (max pooling's -inf and average pooling's zeros never change a result, and a window holding
    padding only is rejected up front; the 3x3/2 pool with padding 1 that opens a ResNet spent more
    time filling and copying a padded buffer than comparing), and the convolution's col2im adds each
    offset's window gradients straight onto the input positions they came from."""
    per_axis = []
    for n, k, s, (lo, _), d, o in zip(spatial, kernel, stride, pads, dilation, out_size):
        taps = []
        for tap in range(k):
            first = max(0, -((tap * d - lo) // s))  # ceil((lo - tap*d) / s), the first output inside
            last = min(o - 1, (n - 1 + lo - tap * d) // s)
            if first > last:
                taps.append(None)
                continue
            start = first * s + tap * d - lo
            taps.append((slice(start, start + (last - first) * s + 1, s), slice(first, last + 1), first == 0 and last == o - 1))
        per_axis.append(taps)
    for t, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        regions = [axis[tap] for axis, tap in zip(per_axis, offset)]
        if any(r is None for r in regions):
            continue
        yield (t, (slice(None), *(r[0] for r in regions), slice(None)), (slice(None), *(r[1] for r in regions), slice(None)),
               all(r[2] for r in regions))
