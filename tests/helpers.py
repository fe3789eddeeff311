"""The torch oracle: compare a cnnlab function with torch's on values and every gradient."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def max_rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |actual - expected| / max |expected| (plain max error when ``expected`` is all zeros)."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != torch's {tuple(expected.shape)}"
    if expected.numel() == 0:
        return 0.0
    actual, expected = actual.double(), expected.double()
    if torch.isnan(expected).any() or torch.isnan(actual).any():
        assert torch.equal(torch.isnan(actual), torch.isnan(expected)), "NaN positions differ from torch's"
        mask = ~torch.isnan(expected)
        actual, expected = actual[mask], expected[mask]
        if expected.numel() == 0:
            return 0.0
    finite = expected[torch.isfinite(expected)]
    scale = finite.abs().max().item() if finite.numel() else 0.0
    differ = actual != expected  # equal infinities count as exact
    actual, expected = actual[differ], expected[differ]
    if expected.numel() == 0:
        return 0.0
    return (actual - expected).abs().max().item() / (scale if scale > 0 else 1.0)


def check_op(
    ours: Callable,
    theirs: Callable,
    inputs: Sequence[torch.Tensor | None],
    rtol: float = 1e-10,
    context: str = "",
    grad_seed: int = 0,
) -> torch.Tensor:
    """Run ``ours(*inputs)`` and ``theirs(*inputs)``; assert forward values and the gradient of every
    input that requires grad agree to ``rtol`` (relative to the largest magnitude). Returns our output."""
    def copies():
        return [t.detach().clone().requires_grad_(t.requires_grad) if isinstance(t, torch.Tensor) else t for t in inputs]

    a, b = copies(), copies()
    out_a, out_b = ours(*a), theirs(*b)
    assert out_a.dtype == out_b.dtype, f"{context}: dtype {out_a.dtype} != {out_b.dtype}"
    err = max_rel_error(out_a.detach(), out_b.detach())
    assert err <= rtol, f"{context}: forward relative error {err:.3g} > {rtol:g}"
    wanted = [i for i, t in enumerate(inputs) if isinstance(t, torch.Tensor) and t.requires_grad]
    if wanted and out_b.requires_grad:
        gen = torch.Generator().manual_seed(987_654_321 + grad_seed)  # never a seed the inputs used
        g = torch.randn(out_b.shape, generator=gen, dtype=torch.float64).to(out_b.dtype)
        grads_a = torch.autograd.grad(out_a, [a[i] for i in wanted], g, allow_unused=True)
        grads_b = torch.autograd.grad(out_b, [b[i] for i in wanted], g, allow_unused=True)
        for i, ga, gb in zip(wanted, grads_a, grads_b):
            ga = torch.zeros_like(a[i]) if ga is None else ga
            gb = torch.zeros_like(b[i]) if gb is None else gb
            err = max_rel_error(ga, gb)
            assert err <= rtol, f"{context}: gradient of input {i} relative error {err:.3g} > {rtol:g}"
    for i, (mine, given) in enumerate(zip(a, inputs)):  # an op never changes what it was given
        if isinstance(given, torch.Tensor):
            assert torch.equal(mine.detach(), given.detach()) or (given.is_floating_point() and torch.equal(
                mine.detach().nan_to_num(), given.detach().nan_to_num())), f"{context}: input {i} changed in place"
    return out_a


def channels_last(x: torch.Tensor, batched: bool = True) -> torch.Tensor:
    """``x`` with its channel axis (1, or 0 when unbatched) stored last, any number of dimensions: the
    layout the compiled max pool takes. A leaf that requires grad stays one."""
    axis = 1 if batched else 0
    return x.detach().movedim(axis, -1).contiguous().movedim(-1, axis).requires_grad_(x.requires_grad)


def random_conv(rng, dtype, *, channels, outputs, samples, strides, last_strides, longest, channels_last=False,
                strided_3d_rows=True):
    """A random convolution of one group for the compiled loops' sweeps: 1-3 spatial axes, kernels of 1-5
    taps a side (1-3 in 3-D), dilation 1-2, borders of 0-3 on either side (past the kernel's reach too),
    strides drawn from ``strides`` (the last axis from ``last_strides``; in 3-D from ``strides`` again, or 1
    where not ``strided_3d_rows``), maps up to
    ``longest[dims]`` past the smallest that fits, ``channels``/``outputs``/``samples`` drawn from the lists
    given, a channels-last input half the time in 2-D if ``channels_last``, with or without bias, and any
    subset of inputs asking for gradients. Returns (dims, x, w, b, stride, pads, dilation)."""
    dims = rng.choice([1, 2, 2, 3])
    kernel = [rng.randint(1, 3 if dims == 3 else 5) for _ in range(dims)]
    if all(k == 1 for k in kernel):
        kernel[-1] = 2
    dilation = tuple(rng.randint(1, 2) for _ in range(dims))
    last = last_strides if dims < 3 else (strides if strided_3d_rows else [1])
    stride = tuple(rng.choice(strides) for _ in range(dims - 1)) + (rng.choice(last),)
    pads = tuple((rng.randint(0, 3), rng.randint(0, 3)) for _ in range(dims))
    spatial = [max(1, d * (k - 1) + 1 - lo - hi) + rng.randint(0, longest[dims]) for k, d, (lo, hi) in zip(kernel, dilation, pads)]
    n, c, o = rng.choice(samples), rng.choice(channels), rng.choice(outputs)
    x = torch.randn(n, c, *spatial, dtype=dtype)
    if channels_last and dims == 2 and rng.random() < 0.5:
        x = x.contiguous(memory_format=torch.channels_last)
    w = torch.randn(o, c, *kernel, dtype=dtype)
    b = torch.randn(o, dtype=dtype) if rng.random() < 0.7 else None
    for t in (x, w, b):
        if t is not None and rng.random() < 0.8:
            t.requires_grad_()
    return dims, x, w, b, stride, pads, dilation


def padded_torch_conv(dims, stride, pads, dilation):
    """torch's convolution with the (before, after) borders ``pads`` given as an explicit padding of the input."""
    import torch.nn.functional as F

    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    flat = [p for lo_hi in reversed(pads) for p in lo_hi]
    return lambda x, w, b: conv(F.pad(x, flat), w, b, stride=stride, dilation=dilation)


def at_thread_counts(fn, counts=(1, 2, 3)) -> list:
    """``fn()`` run with torch set to each thread count in turn (the count restored afterwards)."""
    threads, results = torch.get_num_threads(), []
    try:
        for n in counts:
            torch.set_num_threads(n)
            results.append(fn())
    finally:
        torch.set_num_threads(threads)
    return results
