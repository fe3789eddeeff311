"""Max, average and adaptive average pooling, from scratch (D2L 7.5).

Pooling reads the same windows as cross-correlation but reduces each window per channel
instead of multiplying it with a kernel. Both reductions walk the kernel offsets one at a
time; each offset is a strided slice of the input (``_tap_regions``: only the outputs whose
window has that offset inside the input, so padding is never copied), and no window matrix
is ever built:

    max:  best = x[offset 0]; for each later offset: take it where it is larger (or NaN)
    avg:  total = sum over offsets; divide by the window's element count

Backward passes (hand-derived): max pooling routes each output gradient to the input
position that won (the first maximum in scan order, as torch does), found there by claiming
(``MaxPoolNd``); average pooling spreads it evenly over the window. Where windows overlap
along a strided axis, max pooling reads the input split into its stride phases (``_sources``).

Max pooling of float32/float64 CPU tensors runs as two compiled loops instead (``compiled_pool.py``,
``csrc/max_pool.c``: one pass each way, 2x faster than the passes below; channels-first maps of 8+
channels up to 32 MB on a channels-last copy), where a C compiler is at hand; ``MaxPoolNd`` here is the
tensor route, which other channels-first maps, single-channel maps, half precision and ``torch.compile``
take.

Adaptive average pooling has windows of varying size (``start = floor(i*n/o)``,
``end = ceil((i+1)*n/o)``), so it is written as averaging matrices, one per axis:
``out = P_h @ X @ P_w^T`` and ``grad_X = P_h^T @ grad_out @ P_w``.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import torch

from .autograd import anchored, graph_backward, reference_windows, transformed, unviewed, wants_graph
from .compiled_pool import CompiledMaxPoolNd, kernels
from .scratch import scratch
from .shapes import Pads, as_tuple, pool_output_size
from .windows import offset_regions, pad_channels_last, sliding_windows, window_offsets, windows_overlap

__all__ = [
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool2d",
    "pool2d",
]

IntOrTuple = int | Sequence[int]
PHASES_BELOW_CHANNELS = 48  # see _sources


def _pool_geometry(name, x, dims, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate pooling arguments; return (kernel, stride, pads, dilation, out_size)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: input must be a tensor, got {type(x).__name__}")
    if x.dim() != dims + 2:
        raise ValueError(f"{name}: input must have {dims + 1} (unbatched) or {dims + 2} (batched) dimensions, got shape {tuple(x.shape)}")
    kernel = as_tuple(kernel_size, dims, "kernel_size", minimum=1)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else as_tuple(stride, dims, "stride", minimum=1)
    pad = as_tuple(padding, dims, "padding", minimum=0)
    dilation = as_tuple(dilation, dims, "dilation", minimum=1)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise ValueError(f"{name}: padding must be at most half of kernel_size, got padding={padding!r} and kernel_size={kernel_size!r}")
    spatial = x.shape[2:]
    out_size = tuple(pool_output_size(n, k, p, s, d, ceil_mode) for n, k, p, s, d in zip(spatial, kernel, pad, stride, dilation))
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"{name}: kernel_size={kernel} (dilation {dilation}) is larger than the padded input {tuple(spatial)} "
            f"with padding {pad}: the output would be {out_size}"
        )
    # Windows may reach past the right padding in ceil_mode: pad enough to hold them all.
    pads = tuple(
        (p, max(p, (o - 1) * s + d * (k - 1) + 1 - n - p))
        for n, k, p, s, d, o in zip(spatial, kernel, pad, stride, dilation, out_size)
    )
    return kernel, stride, pads, dilation, out_size


def _batched(fn, x, dims, *args):
    """Run ``fn`` on a batched input, adding and removing the batch axis for unbatched ones."""
    if isinstance(x, torch.Tensor) and x.dim() == dims + 1:
        out = fn(x.unsqueeze(0), *args)
        return tuple(t.squeeze(0) for t in out) if isinstance(out, tuple) else out.squeeze(0)
    return fn(x, *args)


class _Index:
    """A basic index (full slices and slices with a start and stop, as ``offset_regions`` makes them,
    after an optional integer on the first axis) that ``of`` applies with one ``as_strided`` call:
    ``_Index(key).of(t)`` is ``t[key]``. Python's tuple indexing makes one slice op per axis (2.6-4.8 us
    a view here, against 1.2 us), and a 3x3 pool's forward and backward passes take 63 such views of
    small tensors."""

    __slots__ = ("first", "slices")

    def __init__(self, key: tuple):
        self.first = key[0] if isinstance(key[0], int) else None
        axes = key[1:] if self.first is not None else key
        self.slices = tuple((axis, sl.start, len(range(sl.start, sl.stop, sl.step or 1)), sl.step or 1)
                            for axis, sl in enumerate(axes) if sl != slice(None))

    def of(self, t: torch.Tensor) -> torch.Tensor:
        size, stride, offset = list(t.shape), list(t.stride()), t.storage_offset()
        if self.first is not None:
            offset += self.first * stride.pop(0)
            size.pop(0)
        for axis, start, count, step in self.slices:
            offset += start * stride[axis]
            size[axis] = count
            stride[axis] *= step
        return t.as_strided(size, stride, offset)


@functools.lru_cache(maxsize=1024)
def _tap_regions(spatial, kernel, stride, pads: Pads, dilation, out_size, phased: bool = False) -> tuple:
    """``offset_regions`` as a tuple of ``(t, source, target, whole)`` with ``_Index`` objects, made once
    per geometry (rebuilding it on every call cost 50-60 us of Python per forward + backward of a 3x3/2
    pool, medians of 200 interleaved calls, whatever the size); with ``phased``, every input index
    rewritten into ``_split_phases``' planes (``_phase_index``)."""
    regions = offset_regions(spatial, kernel, stride, pads, dilation, out_size)
    if phased:
        regions = ((t, _phase_index(source, stride), target, whole) for t, source, target, whole in regions)
    return tuple((t, _Index(source), _Index(target), whole) for t, source, target, whole in regions)


class MaxPoolNd(torch.autograd.Function):
    """Max pooling: the maxima forward, the gradient routed to each window's first maximum backward.

    Forward, one pass per kernel offset: ``best = torch.maximum(best, x[offset])`` (which
    propagates NaN as torch's max pooling does). Nothing else: the winners are found where they
    are used, in the backward pass, which keeps a copy of the maxima (``claimed``) and walks the
    offsets in scan order, three passes each::

        hit = (x[offset] == claimed)          # this offset holds its window's maximum ...
        grad_x[offset] += hit * g             # ... and no earlier one did: route g to it
        claimed += hit * (4 * bound + 1)      # then lift the maximum past every value

    where ``bound`` is the largest magnitude among the maxima, so a window matches once, at
    its *first* maximum in scan order, the winner torch picks (the last offset skips the lift:
    nothing compares after it). Comparisons go into float
    tensors (~3x faster than boolean masks here). Where the maxima hold inf (no finite lift
    exists) the winners are numbered first (``_first_winners``) and routed with
    ``hit = (winner == t)``; where they hold NaN, torch's rule (the last NaN wins) comes from
    the slower ``_nan_winners``; a gradient holding inf or NaN is routed with ``where`` so
    losing positions get an exact 0.

    Measured on 128 ReLU'd maps, channels-last, 2 threads, forward + backward (minimum of 31):
    tracking the winner in the forward pass beside the maximum (four passes per offset) and
    checking NaN/inf with ``isnan().any()``/``isfinite().all()`` (one ``aminmax`` pass now does
    it, 20x faster) made a 3x3/1 pool of 56x14x14 10.1-10.5 ms; numbering the winners after
    the maxima, 9.2; claiming, 7.8 (torch 2.4). 88x7x7 3x3/1: 4.2 -> 2.8 (torch 1.0); 2x2/2 of
    16x28x28: 3.8 -> 3.2 (1.4); 3x3/2 pools equal within noise (the strided reads dominate).
    """

    @staticmethod
    def forward(ctx, x, kernel, stride, pads: Pads, dilation, out_size, track: bool):  # track: a backward pass will follow
        shape = (x.shape[0], *out_size, x.shape[1])
        xl, regions = _sources(x, kernel, stride, pads, dilation, out_size, phases=track, keep=track)
        best = None
        for _, source, target, whole in regions:
            if best is None:  # the first offset inside the input: where it covers every output, start from it
                best = source.of(xl).clone() if whole else torch.full(shape, float("-inf"), dtype=x.dtype, device=x.device)
                if whole:
                    continue
            b = target.of(best)
            torch.maximum(b, source.of(xl), out=b)
        if best is None:  # every window holds padding only
            best = torch.full(shape, float("-inf"), dtype=x.dtype, device=x.device)
        ctx.geometry = (tuple(x.shape), kernel, stride, pads, dilation, out_size)
        if track:
            ctx.has_nan, ctx.bound = _nan_and_bound(best)
            planes = xl if xl.dim() > x.dim() else None  # the stride phases, split once for both passes
            ctx.save_for_backward(x, best.clone(), planes)  # the output itself may be changed in place later
        return unviewed(best.movedim(-1, 1))  # (N, C, *S_out); nothing saved shares it

    @staticmethod
    def backward(ctx, grad_out):
        x, best, planes = ctx.saved_tensors
        x_shape, kernel, stride, pads, dilation, out_size = ctx.geometry
        if planes is None:
            xl, regions = _sources(x, kernel, stride, pads, dilation, out_size, phases=False)
        else:
            xl, regions = planes, _tap_regions(tuple(x_shape[2:]), kernel, stride, pads, dilation, out_size, True)
        winner = None
        if ctx.has_nan:  # torch's rule for NaN windows: the last NaN wins
            windows = sliding_windows(pad_channels_last(x.detach(), pads, float("-inf")), kernel, stride, dilation, out_size)
            winner = _nan_winners(windows, kernel, best).to(_winner_dtype(x))
        elif wants_graph() or ctx.bound is None:
            winner = _first_winners(xl, best, regions, math.prod(kernel))
        if wants_graph():  # the winners, then a differentiable gather
            winners = winner.long()
            grads = graph_backward(lambda x: reference_max_pool(x, kernel, stride, pads, dilation, out_size, winners), (x,),
                                   ctx.needs_input_grad[:1], grad_out)
            return grads[0], None, None, None, None, None, None
        g = grad_out.movedim(1, -1)  # (N, *S_out, C)
        overlap = windows_overlap(kernel, stride, dilation)
        # windows that tile the input exactly (a 2x2/2 pool of an even map) write every position once: no zero fill
        tiles = _tiles(x_shape[2:], kernel, stride, pads, dilation, out_size)
        phased = xl.dim() > x.dim()
        if phased:  # routed into zeroed phase planes, then every input position written once from them
            grad_x = g.new_empty((x_shape[0], *x_shape[2:], x_shape[1]))
            grad_planes = scratch("max_pool.grad_phases", xl.shape, g).zero_()
        else:
            grad_x = grad_planes = (g.new_empty if tiles else g.new_zeros)((x_shape[0], *x_shape[2:], x_shape[1]))
        finite = _all_finite(g)
        zero = g.new_zeros(())
        if winner is None:  # claim: a window's maximum, once found, is raised past every value
            claimed = scratch("max_pool.claimed", best.shape, best).copy_(best)
            raise_by = 4 * ctx.bound + 1
            hit = scratch("max_pool.hit", best.shape, best)
        else:
            hit = scratch("max_pool.hit", winner.shape, winner)
        last = regions[-1][0] if regions else None
        for t, source, target, _ in regions:
            h, gt, dest = target.of(hit), target.of(g), source.of(grad_planes)
            if winner is None:
                c = target.of(claimed)
                torch.eq(source.of(xl), c, out=h)
            else:
                torch.eq(target.of(winner), t, out=h)
            if not finite:  # exact zeros for the losers even where g is inf or NaN
                routed = torch.where(h.bool(), gt, zero)
                dest.add_(routed) if overlap else dest.copy_(routed)
            elif overlap:
                dest.addcmul_(h, gt)
            else:  # each input position is in one window at most: write, not add
                torch.mul(h, gt, out=dest)
            if winner is None and t != last:  # no later offset compares against the last lift
                c.add_(h, alpha=raise_by)
        if phased:
            _merge_phases(grad_planes, grad_x, stride)
        return grad_x.movedim(-1, 1), None, None, None, None, None, None


def _tiles(spatial, kernel, stride, pads: Pads, dilation, out_size) -> bool:
    """Whether the windows tile the input exactly (a 2x2/2 pool of an even map): every input
    position lies in exactly one window."""
    return all(d == 1 and s == k and n == o * k and lo == 0
               for k, s, d, n, o, (lo, _) in zip(kernel, stride, dilation, spatial, out_size, pads))


def _sources(x: torch.Tensor, kernel, stride, pads: Pads, dilation, out_size, phases: bool = True, keep: bool = False):
    """What the offsets of a max pool read: ``(source, regions)`` with ``source[index]`` the values
    of offset ``t`` for each of ``_tap_regions``' tuples ``(t, index, target, whole)``.

    Normally ``source`` is x itself, channels last, and each offset a strided slice of it. Where
    windows overlap along a strided axis (a 3x3/2 pool) and there are few channels, x is first
    split into its stride phases (``_split_phases``, one pass), after which every offset reads a
    contiguous block of one phase; the backward pass routes into phase planes and merges them
    (one more pass). A strided slice of a channels-last map reads C values per jump, which made
    each pass ~3x slower than over contiguous memory at 24 channels (a comparison: 118 us against
    36 us). Measured forward + backward, batch 128, 3x3/2 pools, medians of 31, two runs:
    32x28x28 14.0-14.6 -> 11.1-13.0 ms, 24x28x28 11.3-12.8 -> 10.3-10.5 (torch 2.1-2.9); but
    88x14x14 8.3-12.2 -> 8.6-12.2 and 64x16x16 at batch 32 1.4-2.9 -> 1.7-3.7, where the longer
    runs of channels make the strided passes cheaper than the split and merge: so phases only
    below 48 channels. Inference (``phases=False``: the maxima alone, one pass per offset) reads
    x in place: there the split cost more than it saved (32x28x28: 1.1-1.7 -> 1.9-2.0 ms). In
    training the planes are split once, in the forward pass, into memory of their own (``keep``)
    and saved for the backward pass, which split x again before: 3x3/2 pools forward + backward
    0.83-0.91 of that, from 32x7x7 to 128x32x28x28 (alternately, medians of 31, two runs).
    """
    xl = x.movedim(1, -1)  # (N, *S, C), a view
    overlap_strided = any(s > 1 and d * (k - 1) + 1 > s for k, s, d in zip(kernel, stride, dilation))
    phased = phases and overlap_strided and x.shape[1] < PHASES_BELOW_CHANNELS
    regions = _tap_regions(tuple(x.shape[2:]), kernel, stride, pads, dilation, out_size, phased)
    return (_split_phases(xl, stride, keep) if phased else xl), regions


def _phase_slices(phase, stride):
    """Index of one stride phase in a channels-last map (its positions p with p % s == phase per axis)."""
    return (slice(None), *(slice(f, None, s) for f, s in zip(phase, stride)), slice(None))


def _split_phases(xl: torch.Tensor, stride, keep: bool = False) -> torch.Tensor:
    """(N, *S, C) -> (prod(stride), N, *ceil(S / stride), C): plane ``p`` holds the positions in phase
    ``p`` (scan order of the per-axis phases); entries past a short phase's end are never read. In
    reused memory, or with ``keep`` in a tensor of its own (kept for the backward pass)."""
    n, *spatial, c = xl.shape
    shape = (math.prod(stride), n, *(-(-m // s) for m, s in zip(spatial, stride)), c)
    planes = xl.new_empty(shape) if keep else scratch("max_pool.phases", shape, xl)
    for p, phase in enumerate(itertools.product(*(range(s) for s in stride))):
        part = xl[_phase_slices(phase, stride)]
        planes[(p, slice(None), *(slice(0, m) for m in part.shape[1:-1]))].copy_(part)
    return planes


def _merge_phases(planes: torch.Tensor, out: torch.Tensor, stride) -> None:
    """The inverse of ``_split_phases``: write every position of ``out`` (N, *S, C) from its phase plane."""
    for p, phase in enumerate(itertools.product(*(range(s) for s in stride))):
        part = out[_phase_slices(phase, stride)]
        part.copy_(planes[(p, slice(None), *(slice(0, m) for m in part.shape[1:-1]))])


def _phase_index(source, stride):
    """``_tap_regions``' strided index into x as an index into ``_split_phases``' planes."""
    plane, axes = 0, []
    for sl, s in zip(source[1:-1], stride):
        count = len(range(sl.start, sl.stop, s))
        plane = plane * s + sl.start % s
        axes.append(slice(sl.start // s, sl.start // s + count))
    return (plane, slice(None), *axes, slice(None))


def _nan_and_bound(best: torch.Tensor) -> tuple[bool, float | None]:
    """Whether ``best`` holds a NaN, and a bound on its magnitude where every value is finite and
    ``4 * bound + 1`` fits the dtype (None otherwise), from one ``aminmax`` pass (it propagates
    NaN; ``isnan().any()`` makes a mask first and took 10x longer here)."""
    if best.numel() == 0:
        return False, None
    low, high = (float(v) for v in torch.aminmax(best))
    if math.isnan(low) or math.isnan(high):
        return True, None
    bound = max(abs(low), abs(high))
    return False, bound if math.isfinite(4 * bound + 1) and 4 * bound + 1 < torch.finfo(best.dtype).max else None


def _all_finite(t: torch.Tensor) -> bool:
    """Whether every value of ``t`` is finite, in one pass (``isfinite().all()`` took 20x longer here;
    the two ends are checked as Python floats: ``torch.isfinite`` on them is several small ops, 35 us)."""
    if t.numel() == 0:
        return True
    return all(math.isfinite(float(v)) for v in torch.aminmax(t))


def _first_winners(xl: torch.Tensor, best: torch.Tensor, regions, count: int) -> torch.Tensor:
    """Each window's winner, the first of its ``count`` offsets (scan order) whose value equals the
    maximum ``best``, as a float offset number shaped like ``best`` (``count`` where none does:
    NaN windows, which ``_nan_winners`` settles). ``regions`` are ``_tap_regions``' tuples.

    ``rank = max over offsets t of (x[t] == best) * (count - t)`` is largest for the first
    offset that hit, in any order of the passes; the winner is ``count - rank``."""
    rank = torch.zeros(best.shape, dtype=_winner_dtype(xl), device=best.device)
    hit = scratch("max_pool.hit", best.shape, rank)
    for t, source, target, _ in regions:
        h, r = target.of(hit), target.of(rank)
        torch.eq(source.of(xl), target.of(best), out=h)
        torch.maximum(r, h.mul_(count - t), out=r)
    return rank.neg_().add_(count)


def _winner_dtype(x: torch.Tensor) -> torch.dtype:
    """Offset numbers are stored as floats: x's own for float32/64 (exact to 2**24 offsets), float32 for half."""
    return x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32


def winner_offsets(windows: torch.Tensor, kernel, best: torch.Tensor) -> torch.Tensor:
    """Kernel-offset index (0..prod(K)-1) of each window's winner, as torch picks it: the first
    maximum in scan order, or the last NaN. (N, *S_out, C) int64, like ``best``."""
    if best.isnan().any():
        return _nan_winners(windows, kernel, best).long()
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


def _nan_winners(windows: torch.Tensor, kernel, best: torch.Tensor) -> torch.Tensor:
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


def _avg_divisor(spatial, kernel, stride, pad, out_size, count_include_pad, like: torch.Tensor) -> torch.Tensor:
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


class AvgPoolNd(torch.autograd.Function):
    """Average pooling; the backward pass spreads each gradient evenly over its window."""

    @staticmethod
    def forward(ctx, x, kernel, stride, pads: Pads, out_size, divisor):
        ones = (1,) * len(kernel)
        xl = x.movedim(1, -1)  # (N, *S, C), a view
        total = None
        for _, source, target, whole in _tap_regions(tuple(x.shape[2:]), kernel, stride, pads, ones, out_size):
            if total is None:
                total = source.of(xl).clone() if whole else x.new_zeros((x.shape[0], *out_size, x.shape[1]))
                if whole:
                    continue
            target.of(total).add_(source.of(xl))
        if total is None:  # every window holds padding only
            total = x.new_zeros((x.shape[0], *out_size, x.shape[1]))
        ctx.geometry = (tuple(x.shape), kernel, stride, pads, out_size)
        constant = not isinstance(divisor, torch.Tensor)  # a float: the same count for every window
        ctx.divisor = divisor if constant else None
        ctx.save_for_backward(None if constant else divisor, x)  # x: only for a differentiable backward
        return unviewed((total / divisor).movedim(-1, 1))  # nothing saved shares it

    @staticmethod
    def backward(ctx, grad_out):
        divisor, x = ctx.saved_tensors
        divisor = ctx.divisor if divisor is None else divisor
        x_shape, kernel, stride, pads, out_size = ctx.geometry
        if wants_graph():
            grads = graph_backward(lambda x: reference_avg_pool(x, kernel, stride, pads, out_size, divisor), (x,),
                                   ctx.needs_input_grad[:1], grad_out)
            return grads[0], None, None, None, None, None
        g = grad_out.movedim(1, -1) / divisor  # (N, *S_out, C)
        n, c = x_shape[0], x_shape[1]
        ones = (1,) * len(kernel)
        overlap = windows_overlap(kernel, stride, ones)
        # windows that tile the input write every position once: no zero fill; windows that never overlap: copies
        grad_x = (g.new_empty if _tiles(x_shape[2:], kernel, stride, pads, ones, out_size) else g.new_zeros)((n, *x_shape[2:], c))
        for _, source, target, _ in _tap_regions(tuple(x_shape[2:]), kernel, stride, pads, ones, out_size):
            if overlap:
                source.of(grad_x).add_(target.of(g))
            else:
                source.of(grad_x).copy_(target.of(g))
        return grad_x.movedim(-1, 1), None, None, None, None, None


def reference_avg_pool(x, kernel, stride, pads: Pads, out_size, divisor: torch.Tensor | float) -> torch.Tensor:
    """The window's sum over its divisor, in plain differentiable operations."""
    d = len(kernel)
    windows = reference_windows(x, pads, kernel, stride, (1,) * d, out_size)  # (N, *S_out, *K, C)
    return (windows.sum(tuple(range(1 + d, 1 + 2 * d))) / divisor).movedim(-1, 1)


def _in_own_layout(pool, x: torch.Tensor, *args) -> torch.Tensor:
    """Run a pooling Function in the memory layout ``x`` already has.

    Pooling treats channels independently, so a channels-first input is pooled as N*C
    single-channel planes (long contiguous rows, gradient in the same layout), and a
    channels-last one as it is stored.
    """
    n, c, *spatial = x.shape
    if x.movedim(1, -1).is_contiguous() and c > 1:
        return pool.apply(x, *args)
    out = pool.apply(x.reshape(n * c, 1, *spatial), *args)  # (N*C, 1, *S_out)
    return out.view(n, c, *out.shape[2:])


# Channels-first maps of 8 or more channels are pooled by the compiled loops on a channels-last copy (the
# copies of x and of its gradient are two more passes) when the windows overlap, whatever the size: the
# tensor passes' backward then adds every window's gradient in turn. Windows that tile the map keep the
# tensor passes above COMPILED_CHANNELS_FIRST_MAX_BYTES, where the copies outgrow the memory glibc keeps for
# reuse. Fewer channels keep the tensor passes (the copies' rows too short). Forward + backward, ms, loops on
# the copy / tensor passes / torch, medians of 9, AMD EPYC (AVX2), 2 threads: 3x3/2 p1 64x64x48x48 (38 MB)
# 46 / 114 / 83, 3x3/2 64x96x54x54 (72 MB) 167 / 194 / 141, 3x3/2 p1 64x64x56x56 84 / 161 / 110, but 2x2/2
# 64x96x54x54 156 / 136 / 126 and 2x2/2 16x64x112x112 (51 MB) 119 / 108 / 81; 2x2/2 64x32x28x28 7.5 / 10.7 / 8.2.
COMPILED_CHANNELS_FIRST_MAX_BYTES = 32 * 2**20
COMPILED_CHANNELS_FIRST_MIN_CHANNELS = 8


def _compiled_layout_pays(x: torch.Tensor, kernel, stride, dilation) -> bool:
    if x.movedim(1, -1).is_contiguous():
        return True
    return x.shape[1] >= COMPILED_CHANNELS_FIRST_MIN_CHANNELS and (
        windows_overlap(kernel, stride, dilation) or x.numel() * x.element_size() <= COMPILED_CHANNELS_FIRST_MAX_BYTES)


def _max_pool(x, dims, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    kernel, stride, pads, dilation, out_size = _pool_geometry(f"max_pool{dims}d", x, dims, kernel_size, stride, padding, dilation, ceil_mode)
    if transformed(x):  # torch.func / forward-mode AD: the reference form
        if return_indices:
            raise ValueError(f"max_pool{dims}d: return_indices=True is not supported under torch.func transforms or forward-mode AD")
        return reference_max_pool(x, kernel, stride, pads, dilation, out_size, None)
    track = torch.is_grad_enabled() and x.requires_grad  # no winners to note for inference
    functions = kernels(x)
    if functions is not None and x.shape[1] > 1 and _compiled_layout_pays(x, kernel, stride, dilation):  # the compiled loops (compiled_pool.py)
        out, winners = CompiledMaxPoolNd.apply(functions, x, kernel, stride, pads, dilation, out_size, track or return_indices)
        return (out, winners.long()) if return_indices else out
    out = _in_own_layout(MaxPoolNd, x, kernel, stride, pads, dilation, out_size, track)
    if not return_indices:
        return out
    with torch.no_grad():  # the winners as torch reports them: the first maximum, or the last NaN
        windows = sliding_windows(pad_channels_last(x.detach(), pads, float("-inf")), kernel, stride, dilation, out_size)
        winners = winner_offsets(windows, kernel, out.detach().movedim(1, -1))
        return out, max_indices(tuple(x.shape), kernel, stride, pads, dilation, winners)


def _avg_pool(x, dims, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    name = f"avg_pool{dims}d"
    kernel, stride, pads, _, out_size = _pool_geometry(name, x, dims, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, int) or divisor_override < 1:
            raise ValueError(f"{name}: divisor_override must be a positive int or None, got {divisor_override!r}")
        divisor = float(divisor_override)
    elif all(lo == 0 and hi == 0 for lo, hi in pads):  # every window lies inside the input: one count for all
        divisor = float(math.prod(kernel))
    else:
        pad = tuple(lo for lo, _ in pads)
        divisor = _avg_divisor(x.shape[2:], kernel, stride, pad, out_size, count_include_pad, x)
    if transformed(x):  # torch.func / forward-mode AD: the reference form
        return reference_avg_pool(x, kernel, stride, pads, out_size, divisor)
    out = _in_own_layout(AvgPoolNd, x, kernel, stride, pads, out_size, divisor)
    return out.contiguous() if dims == 3 and not x.is_cuda else out  # torch's CPU avg_pool3d answers channels-first


def max_pool1d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False):
    """1-D max pooling; same signature and results as torch.nn.functional's ``max_pool1d``.

    Shape:
        (N, C, L) or (C, L) -> L_out = floor_or_ceil((L + 2p - d*(k-1) - 1) / s) + 1.
    """
    return _batched(_max_pool, input, 1, 1, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False):
    """2-D max pooling; same signature and results as torch.nn.functional's ``max_pool2d``.

    Args:
        kernel_size: window (kh, kw). stride defaults to kernel_size.
        padding: implicit -inf on each side, at most half the kernel.
        dilation: spacing between window elements.
        ceil_mode: round the output size up (the last window must start inside the input
            or its left padding).

    Shape:
        (N, C, H, W) or (C, H, W) -> H_out = floor_or_ceil((H + 2*ph - dh*(kh-1) - 1) / sh) + 1.

    Example:
        >>> max_pool2d(torch.arange(16.).view(1, 1, 4, 4), 3, stride=2, padding=1)
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """
    return _batched(_max_pool, input, 2, 2, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False):
    """3-D max pooling; same signature and results as torch.nn.functional's ``max_pool3d``."""
    return _batched(_max_pool, input, 3, 3, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def avg_pool1d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True):
    """1-D average pooling; same signature and results as torch.nn.functional's ``avg_pool1d``."""
    return _batched(_avg_pool, input, 1, 1, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
    """2-D average pooling; same signature and results as torch.nn.functional's ``avg_pool2d``.

    Each output is its window's sum divided by the window size; with ``count_include_pad=False``
    the padding zeros are not counted.

    Shape:
        (N, C, H, W) or (C, H, W) -> H_out = floor_or_ceil((H + 2*ph - kh) / sh) + 1.
    """
    return _batched(_avg_pool, input, 2, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def avg_pool3d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
    """3-D average pooling; same signature and results as torch.nn.functional's ``avg_pool3d``."""
    return _batched(_avg_pool, input, 3, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


# --- adaptive average pooling ----------------------------------------------------------------


def _averaging_matrix(n: int, o: int, like: torch.Tensor) -> torch.Tensor:
    """(o, n) matrix whose row i averages input elements floor(i*n/o) .. ceil((i+1)*n/o) - 1."""
    i = torch.arange(o, device=like.device)
    start = (i * n) // o
    end = -((-(i + 1) * n) // o)
    j = torch.arange(n, device=like.device)
    inside = (j >= start[:, None]) & (j < end[:, None])  # (o, n)
    return inside.to(like.dtype) / (end - start).to(like.dtype)[:, None]


class AdaptiveAvgPool2d(torch.autograd.Function):
    """out = P_h @ X @ P_w^T per (N, C) plane; grad_X = P_h^T @ grad_out @ P_w.

    Global pooling (output 1x1) is a plain mean, and its gradient ``grad_out / (H*W)``
    spread over the plane.
    """

    @staticmethod
    def forward(ctx, x, out_size):
        (h, w), (oh, ow) = x.shape[-2:], out_size
        ctx.sizes = (h, w, oh, ow)
        if oh == ow == 1:
            return x.mean((-2, -1), keepdim=True)
        ph, pw = _averaging_matrix(h, oh, x), _averaging_matrix(w, ow, x)
        ctx.save_for_backward(ph, pw, x)  # x: only to keep a differentiable gradient in its graph (autograd.anchored)
        # torch answers a channels-last input's gradient channels-last (the products give channels-first)
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        return ph @ x @ pw.T  # (N, C, oh, ow)

    @staticmethod
    def backward(ctx, grad_out):  # plain products of grad_out with constants: differentiable as it stands
        h, w, oh, ow = ctx.sizes
        if oh == ow == 1:
            # a mean's gradient, in x's graph no more than torch's is (torch computes global pooling as a mean)
            return (grad_out / (h * w)).expand(*grad_out.shape[:-2], h, w).contiguous(), None
        ph, pw, x = ctx.saved_tensors
        grad_x = ph.T @ grad_out @ pw
        grad_x = grad_x.contiguous(memory_format=torch.channels_last) if ctx.channels_last else grad_x
        return (anchored(grad_x, (x,)) if wants_graph() else grad_x), None


def adaptive_avg_pool2d(input, output_size: int | Sequence[int | None]):
    """2-D adaptive average pooling; same results as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output cell ``i`` along an axis of length ``n`` averages input elements
    ``floor(i*n/o)`` to ``ceil((i+1)*n/o) - 1``, so any output size works, including ones
    that do not divide the input. ``None`` in ``output_size`` keeps that axis's size.

    Shape:
        (N, C, H, W) or (C, H, W) -> (N, C, *output_size).
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"adaptive_avg_pool2d: input must be a tensor, got {type(input).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"adaptive_avg_pool2d: input must have 3 (unbatched) or 4 (batched) dimensions, got shape {tuple(input.shape)}")
    h, w = input.shape[-2:]
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    sizes = tuple(n if o is None else o for n, o in zip((h, w), output_size))
    sizes = as_tuple(sizes, 2, "output_size", minimum=1)
    if h < 1 or w < 1:
        raise ValueError(f"adaptive_avg_pool2d: input spatial size must be at least 1x1, got {tuple(input.shape)}")
    with torch.autocast(input.device.type, enabled=False):  # pooling runs in its input's dtype, as torch's does
        if transformed(input):  # torch.func / forward-mode AD: the averaging matrices as plain products
            (h, w), (oh, ow) = input.shape[-2:], sizes
            return _averaging_matrix(h, oh, input) @ input @ _averaging_matrix(w, ow, input).T
        out = AdaptiveAvgPool2d.apply(input, sizes)
    if input.dim() == 4 and input.shape[1] > 1 and input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)  # torch keeps a channels-last input's layout
    return out


# --- the chapter's pool2d (D2L 7.5.1) --------------------------------------------------------


def pool2d(X: torch.Tensor, pool_size: IntOrTuple, mode: str = "max") -> torch.Tensor:
    """Max or average pooling of a single 2-D input with stride 1 and no padding (D2L 7.5.1).

    Shape:
        X (n_h, n_w) -> (n_h - p_h + 1, n_w - p_w + 1).

    Example:
        >>> pool2d(torch.arange(9.).view(3, 3), (2, 2))
        tensor([[4., 5.],
                [7., 8.]])
    """
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise ValueError(f"X must be a 2-D tensor (height, width), got {getattr(X, 'shape', type(X).__name__)}")
    if mode == "max":
        return max_pool2d(X[None, None], pool_size, stride=1)[0, 0]
    if mode == "avg":
        return avg_pool2d(X[None, None], pool_size, stride=1)[0, 0]
    raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
