"""cnnlab's max / average / adaptive pooling against torch in float64: values and gradients."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from cnnlab import ops

from helpers import channels_last, check_op, max_rel_error

MAX = {1: (ops.max_pool1d, F.max_pool1d), 2: (ops.max_pool2d, F.max_pool2d), 3: (ops.max_pool3d, F.max_pool3d)}
AVG = {1: (ops.avg_pool1d, F.avg_pool1d), 2: (ops.avg_pool2d, F.avg_pool2d), 3: (ops.avg_pool3d, F.avg_pool3d)}
CONFIGS_PER_CHUNK, CHUNKS = 60, 10  # 600 random configurations per family


def laid_out(x: torch.Tensor, route: str, batched: bool = True, index: int = 0) -> torch.Tensor:
    """The input for a test on ``route``: on the compiled route channels-last (the layout the loops read
    in place) for even ``index`` and as made, channels-first (pooled on a channels-last copy), for odd
    ones; as made on the tensor route."""
    return channels_last(x, batched) if route == "compiled" and index % 2 == 0 else x


def random_pool_config(rng: random.Random, with_dilation: bool) -> dict:
    dims = rng.choice([1, 2, 2, 3])
    kernel = tuple(rng.randint(1, 4 if dims < 3 else 3) for _ in range(dims))
    stride = None if rng.random() < 0.25 else tuple(rng.randint(1, 3) for _ in range(dims))
    padding = tuple(rng.randint(0, k // 2) for k in kernel)
    dilation = tuple(rng.randint(1, 2) for _ in range(dims)) if with_dilation else (1,) * dims
    # torch's 3-D pooling wants the unpadded input at least as large as the kernel
    spatial = tuple(max(1, d * (k - 1) + 1 - (2 * p if dims < 3 else 0)) + rng.randint(0, 6 if dims < 3 else 3)
                    for k, p, d in zip(kernel, padding, dilation))
    kwargs = {"stride": stride, "padding": padding, "ceil_mode": rng.random() < 0.5}
    if with_dilation:
        kwargs["dilation"] = dilation
    return {"dims": dims, "kernel": kernel, "kwargs": kwargs, "spatial": spatial,
            "shape": ((rng.randint(1, 3),) if rng.random() > 0.15 else ()) + (rng.randint(1, 3), *spatial),
            "ties": rng.random() < 0.5}


def make_input(shape, ties: bool, seed: int, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: windows with several equal maxima
        x = torch.randint(0, 3, shape, generator=gen).to(torch.float64)
    else:
        x = torch.randn(shape, generator=gen, dtype=torch.float64)
    return x.to(dtype).requires_grad_()


def sees_only_padding(ours, cfg) -> bool:
    """True when some dilated window holds padding alone. torch's max pooling then records
    index -1 and its backward writes out of bounds (heap corruption), so such configurations
    are compared in test_max_pool_all_padding_window instead."""
    return bool(torch.isinf(ours(torch.zeros(cfg["shape"]), cfg["kernel"], **cfg["kwargs"])).any())


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_max_pool_matches_torch_float64(chunk, pool_route):
    rng = random.Random(2000 + chunk)
    checked = 0
    while checked < CONFIGS_PER_CHUNK:
        cfg = random_pool_config(rng, with_dilation=True)
        ours, theirs = MAX[cfg["dims"]]
        kw = cfg["kwargs"]
        if sees_only_padding(ours, cfg):
            continue
        i = checked = checked + 1
        x = laid_out(make_input(cfg["shape"], cfg["ties"], i), pool_route, len(cfg["shape"]) == cfg["dims"] + 2, i)
        check_op(lambda x: ours(x, cfg["kernel"], **kw), lambda x: theirs(x, cfg["kernel"], **kw), [x], context=f"config {cfg}")


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_avg_pool_matches_torch_float64(chunk):
    rng = random.Random(3000 + chunk)
    for i in range(CONFIGS_PER_CHUNK):
        cfg = random_pool_config(rng, with_dilation=False)
        ours, theirs = AVG[cfg["dims"]]
        kw = dict(cfg["kwargs"], count_include_pad=rng.random() < 0.5)
        if cfg["dims"] > 1 and rng.random() < 0.1:
            kw["divisor_override"] = rng.randint(1, 5)
        check_op(lambda x: ours(x, cfg["kernel"], **kw), lambda x: theirs(x, cfg["kernel"], **kw),
                 [make_input(cfg["shape"], False, i)], context=f"config {cfg} {kw}")


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_adaptive_avg_pool_matches_torch_float64(chunk):
    rng = random.Random(4000 + chunk)
    for i in range(CONFIGS_PER_CHUNK):
        h, w = rng.randint(1, 12), rng.randint(1, 12)
        out = rng.choice([rng.randint(1, 14), (rng.randint(1, 14), rng.randint(1, 14)), (None, rng.randint(1, 5))])
        shape = ((rng.randint(1, 3),) if rng.random() > 0.15 else ()) + (rng.randint(1, 3), h, w)
        x = make_input(shape, False, i)
        check_op(lambda x: ops.adaptive_avg_pool2d(x, out), lambda x: F.adaptive_avg_pool2d(x, out), [x],
                 context=f"input {shape} output_size {out}")


def test_max_pool_all_padding_window(pool_route):
    # H = 1, padding 1, dilation 2: every window reads the two padding rows only.
    x = laid_out(torch.randn(1, 2, 1, 4, dtype=torch.float64, requires_grad=True), pool_route)
    y = ops.max_pool2d(x, (2, 1), (3, 1), (1, 0), (2, 1))
    assert torch.equal(y, torch.full((1, 2, 1, 4), float("-inf"), dtype=torch.float64))  # torch's values too
    y.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))  # nothing to route to


def test_max_pool_nan_propagates_like_torch(pool_route):
    x = torch.tensor([[[1.0, float("nan"), 3.0, 2.0, 5.0], [float("nan"), 1.0, float("nan"), 4.0, 4.0]]], dtype=torch.float64)
    check_op(lambda x: ops.max_pool1d(x, 2, 1), lambda x: F.max_pool1d(x, 2, 1), [laid_out(x, pool_route).requires_grad_()])


def test_max_pool_ties_route_to_first_maximum(pool_route):
    x = laid_out(torch.ones(1, 2, 2, 2), pool_route).requires_grad_()
    ops.max_pool2d(x, 2).sum().backward()
    assert x.grad[0, 0].flatten().tolist() == x.grad[0, 1].flatten().tolist() == [1.0, 0.0, 0.0, 0.0]


@pytest.mark.parametrize("layout, pool_route", [("contiguous", "tensor"), ("channels-last", "tensor"), ("channels-last", "compiled")],
                         indirect=["pool_route"])
def test_max_pool_gives_losers_an_exact_zero_when_the_gradient_is_inf_or_nan(layout, pool_route):
    """A winner's gradient is routed, never multiplied: inf or NaN reaches only the winner."""
    torch.manual_seed(0)
    x0 = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    x0[0, 0, :2, :2] = float("-inf")  # a window of -inf: the first position wins
    if layout == "channels-last":
        x0 = x0.contiguous(memory_format=torch.channels_last)
    g = torch.randn(2, 3, 3, 3, dtype=torch.float64)
    g[0, 0, 0, 0], g[1, 2, 1, 1], g[0, 1, 2, 0] = float("inf"), float("nan"), float("-inf")
    grads = []
    for f in (ops, F):
        x = x0.clone().requires_grad_()
        f.max_pool2d(x, 2).backward(g)
        grads.append(x.grad)
    assert torch.equal(grads[0].isnan(), grads[1].isnan())
    assert torch.equal(grads[0].nan_to_num(), grads[1].nan_to_num())


@pytest.mark.parametrize("dtype, pool_route", [(torch.float32, "compiled"), (torch.float32, "tensor"), (torch.bfloat16, "tensor")],
                         indirect=["pool_route"])
def test_pooling_lower_precision(dtype, pool_route):
    torch.manual_seed(0)
    x = laid_out(torch.randn(2, 3, 9, 9), pool_route)
    tol = 1e-6 if dtype == torch.float32 else 1e-2
    pairs = [(ops.max_pool2d(x.to(dtype), 3, 2, 1), F.max_pool2d(x.to(dtype).float(), 3, 2, 1)),
             (ops.avg_pool2d(x.to(dtype), 3, 2, 1), F.avg_pool2d(x.to(dtype).float(), 3, 2, 1)),
             (ops.adaptive_avg_pool2d(x.to(dtype), 4), F.adaptive_avg_pool2d(x.to(dtype).float(), 4))]
    for ours, expected in pairs:
        assert ours.dtype == dtype
        assert max_rel_error(ours.float(), expected) < tol


def test_pool_gradcheck(pool_route):
    x = laid_out(torch.randn(2, 2, 7, 6, dtype=torch.float64, requires_grad=True), pool_route)
    assert torch.autograd.gradcheck(lambda x: ops.max_pool2d(x, (3, 2), (2, 1), (1, 1), ceil_mode=True), (x,))
    assert torch.autograd.gradcheck(lambda x: ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (x,))
    assert torch.autograd.gradcheck(lambda x: ops.adaptive_avg_pool2d(x, (4, 5)), (x,))


def test_pools_whose_windows_tile_the_input_match_torch_float64(pool_route):
    """Windows that tile the input exactly (kernel == stride, the map a multiple of it) write the
    gradient without a zero-filled buffer: every position is written once. Sweep that path, ties
    included, in both layouts."""
    rng = random.Random(4242)
    for i in range(40):
        dims = rng.choice([1, 2, 2, 3])
        kernel = tuple(rng.randint(1, 3) for _ in range(dims))
        shape = (rng.randint(1, 3), rng.randint(1, 4), *(k * rng.randint(1, 4) for k in kernel))
        x = make_input(shape, ties=rng.random() < 0.5, seed=i)
        if pool_route == "compiled" or rng.random() < 0.5:
            x = channels_last(x)
        for family in (MAX, AVG):  # average pooling's backward too writes without a zero fill there
            ours, theirs = family[dims]
            check_op(lambda x: ours(x, kernel), lambda x: theirs(x, kernel), [x], context=f"shape {shape} kernel {kernel}")


@pytest.mark.parametrize("channels", [24, 64])  # below and above PHASES_BELOW_CHANNELS
@pytest.mark.parametrize("kernel, stride, padding", [(3, 1, 1), (3, 2, 1), (2, 2, 0), (5, 1, 2)])
def test_max_pool_of_relu_outputs_routes_exactly_like_torch(kernel, stride, padding, channels, pool_route):
    """After a ReLU most windows tie at 0: the gradient must still reach the first zero in scan
    order, as torch routes it. float32, channels-last, the layer sizes of the zoo's Inception
    blocks. The gradient holds small integers, so sums of routed values are exact in any order
    and the comparison is exact."""
    torch.manual_seed(kernel * 10 + stride)
    x0 = torch.randn(8, channels, 14, 14).relu().contiguous(memory_format=torch.channels_last)
    g = torch.randint(-8, 9, F.max_pool2d(x0, kernel, stride, padding).shape).float()
    results = []
    for f in (ops, F):
        x = x0.clone().requires_grad_()
        y = f.max_pool2d(x, kernel, stride, padding)
        y.backward(g)
        results.append((y.detach(), x.grad))
    (y_ours, g_ours), (y_torch, g_torch) = results
    assert torch.equal(y_ours, y_torch) and torch.equal(g_ours, g_torch)
    with torch.no_grad():  # inference: the maxima alone, read in place (no stride phases)
        assert torch.equal(ops.max_pool2d(x0, kernel, stride, padding), y_torch)


def _max_pool_grads(x0, g, *args):
    """Gradients of ops' and torch's max_pool2d for the same input and output gradient."""
    grads = []
    for f in (ops, F):
        x = x0.clone().requires_grad_()
        f.max_pool2d(x, *args).backward(g)
        grads.append(x.grad)
    return grads


@pytest.mark.parametrize("case, pool_route", [("inf maxima", "compiled"), ("inf maxima", "tensor"), ("half, small", "tensor"),
                                              ("half, near the largest half", "tensor")], indirect=["pool_route"])
def test_max_pool_backward_routes_like_torch_where_maxima_are_infinite_or_large(case, pool_route):
    """The backward pass lifts each found maximum by 4*bound+1; where the maxima hold inf, or
    the lift would overflow the dtype, it numbers the winners instead. Both routes against torch
    (ties included: small-integer inputs)."""
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randint(-2, 3, (2, 3, 9, 9), generator=gen).to(torch.float64)
    dtype = torch.float64
    if case == "inf maxima":
        x0[0, 1, 2:4, 2:5] = float("inf")
        x0[1, 0, 5, 5] = float("-inf")
    else:
        dtype = torch.float16
        x0 = x0 * (16000.0 if case.endswith("largest half") else 1.0)
    x0 = laid_out(x0.to(dtype), pool_route)
    g = torch.randint(-4, 5, (2, 3, 5, 5), generator=gen).to(dtype)
    ours, theirs = _max_pool_grads(x0, g, 3, 2, 1)
    assert torch.equal(ours, theirs)


def test_max_pool_backward_twice_and_after_the_output_changed_in_place(pool_route):
    """The maxima the backward pass needs are its own copy: a second backward (retain_graph) and
    an in-place ReLU on the output change nothing."""
    torch.manual_seed(3)
    x = laid_out(torch.randn(2, 4, 8, 8, dtype=torch.float64).relu(), pool_route).requires_grad_()
    y = ops.max_pool2d(x, 3, 1, 1)
    g = torch.randint(-4, 5, y.shape).to(y.dtype)  # integers: routed sums exact in any order
    y.backward(g, retain_graph=True)
    first = x.grad.clone()
    x.grad = None
    y.backward(g)
    assert torch.equal(x.grad, first)
    x.grad = None
    z = torch.nn.functional.relu(ops.max_pool2d(x, 3, 1, 1) - 0.5, inplace=True)
    z.backward(g)
    expected = x.detach().clone().requires_grad_()
    torch.nn.functional.relu(F.max_pool2d(expected, 3, 1, 1) - 0.5).backward(g)
    assert torch.equal(x.grad, expected.grad)


def test_offset_views_equal_python_indexing_on_any_strides():
    """pool._Index.of (one as_strided call) gives exactly t[key]: the same values, sizes, strides and
    storage offset, for random basic indices (an optional integer first, then full axes and slices with
    steps) on contiguous, channels-last, transposed and offset tensors."""
    from cnnlab.ops.kernels.tensor_pool import _Index

    rng = random.Random(31)
    for _ in range(300):
        shape = [rng.randint(1, 7) for _ in range(rng.randint(2, 5))]
        base = torch.randn(*[s + 2 for s in shape])
        t = base[tuple(slice(1, 1 + s) for s in shape)]  # an offset view of a larger tensor
        if rng.random() < 0.5:
            t = t.transpose(0, -1) if rng.random() < 0.5 else t.movedim(1, -1)
        first = [rng.randrange(t.shape[0])] if rng.random() < 0.3 else []
        axes = []
        for n in t.shape[len(first):]:
            start, step = rng.randrange(n), rng.randint(1, 3)
            stop = rng.randint(start + 1, n)
            axes.append(slice(None) if rng.random() < 0.3 else slice(start, stop, step))
        key = (*first, *axes)
        ours, theirs = _Index(key).of(t), t[key]
        assert ours.shape == theirs.shape and ours.stride() == theirs.stride(), key
        assert ours.storage_offset() == theirs.storage_offset() and torch.equal(ours, theirs), key
