"""The tensor routes of pooling: max and average pooling as one strided pass per kernel offset, adaptive
average pooling as averaging matrices, each with a hand-derived backward pass.

Both window reductions walk the kernel offsets one at a time; each offset is a strided slice of the input
(``_tap_regions``: only the outputs whose window has that offset inside the input, so padding is never
copied), and no window matrix is ever built:

    max:  best = x[offset 0]; for each later offset: take it where it is larger (or NaN)
    avg:  total = sum over offsets; divide by the window's element count

Max pooling routes each output gradient to the input position that won (the first maximum in scan order,
as torch does), found there by claiming (``MaxPoolNd``); average pooling spreads it evenly over the window.
Where windows overlap along a strided axis, max pooling reads the input split into its stride phases
(``_sources``). The compiled loops (``compiled_pool.py``) take most max pools on a CPU; these passes take
the rest (``ops/routing.py``).
"""

from __future__ import annotations

import functools
import itertools
import math

import torch

from ..textbook.autograd import anchored, graph_backward, unviewed, wants_graph
from ..textbook.pool import averaging_matrix, nan_winners, reference_avg_pool, reference_max_pool, winner_dtype
from ..textbook.scratch import scratch
from ..textbook.shapes import Pads
from ..textbook.windows import offset_regions, pad_channels_last, sliding_windows, windows_overlap

PHASES_BELOW_CHANNELS = 48  # see _sources


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
            winner = nan_winners(windows, kernel, best).to(winner_dtype(x))
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
    rank = torch.zeros(best.shape, dtype=winner_dtype(xl), device=best.device)
    hit = scratch("max_pool.hit", best.shape, rank)
    for t, source, target, _ in regions:
        h, r = target.of(hit), target.of(rank)
        torch.eq(source.of(xl), target.of(best), out=h)
        torch.maximum(r, h.mul_(count - t), out=r)
    return rank.neg_().add_(count)




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
        ph, pw = averaging_matrix(h, oh, x), averaging_matrix(w, ow, x)
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

