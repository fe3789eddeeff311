"""cnnlab.ops.batch_norm against torch.nn.functional.batch_norm in float64."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnlab import ops

from helpers import check_op, max_rel_error

CONFIGS_PER_CHUNK, CHUNKS = 60, 10  # 600 random configurations


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_batch_norm_matches_torch_float64(chunk):
    rng = random.Random(5000 + chunk)
    for i in range(CONFIGS_PER_CHUNK):
        c = rng.randint(1, 5)
        shape = (rng.randint(2, 5), c, *(rng.randint(1, 5) for _ in range(rng.randint(0, 3))))
        if math.prod(shape) // c < 4:  # two or three values per channel: see test_batch_norm_tiny_batch_gradient
            shape = (4, *shape[1:])
        training, momentum, eps = rng.random() < 0.6, rng.choice([0.1, 0.3, 1.0]), rng.choice([1e-5, 1e-3])
        gen = torch.Generator().manual_seed(i)
        x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 1).requires_grad_()
        weight = torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_() if rng.random() < 0.8 else None
        bias = torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_() if rng.random() < 0.8 else None
        running = (torch.randn(c, generator=gen, dtype=torch.float64), torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
        ours_stats, torch_stats = [t.clone() for t in running], [t.clone() for t in running]
        check_op(lambda x, w, b: ops.batch_norm(x, *ours_stats, w, b, training, momentum, eps),
                 lambda x, w, b: F.batch_norm(x, *torch_stats, w, b, training, momentum, eps),
                 [x, weight, bias], context=f"shape {shape} training={training}")
        for ours, theirs in zip(ours_stats, torch_stats):  # running estimates updated as torch does
            assert max_rel_error(ours, theirs) <= 1e-10


def test_batch_norm_without_running_stats_in_training(norm_route):
    for x in (torch.randn(8, 3, 4, 4, dtype=torch.float64), torch.randn(8, 3, 4, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)):
        check_op(lambda x: ops.batch_norm(x, None, None, training=True), lambda x: F.batch_norm(x, None, None, training=True), [x.requires_grad_()])


def test_batch_norm_gradcheck(norm_route):
    x = torch.randn(4, 3, 2, 2, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.batch_norm(x, None, None, w, b, training=True), (x, w, b))
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.batch_norm(x, rm, rv, w, b, training=False), (x, w, b))


def test_batch_norm_float32_and_bfloat16(norm_route):
    torch.manual_seed(0)
    x = torch.randn(16, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    expected = F.batch_norm(x, None, None, training=True)
    assert max_rel_error(ops.batch_norm(x, None, None, training=True), expected) < 1e-5
    assert max_rel_error(ops.batch_norm(x.bfloat16(), None, None, training=True).float(), expected) < 2e-2


def test_batch_norm_needs_more_than_one_value_per_channel():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        ops.batch_norm(torch.randn(1, 3), None, None, training=True)


def test_batch_norm_tiny_batch_gradient_against_long_double(norm_route):
    """With 2 values per channel x_hat = +-sqrt(var / (var + eps)), so the input gradient is
    proportional to 1 - x_hat^2 = eps / (var + eps): a difference of nearly equal numbers. Any
    float64 implementation (torch's too) loses ~6 digits relative to that tiny result, so this
    case is checked against an extended-precision reference, relative to the size of the terms."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, dtype=torch.float64, generator=gen).requires_grad_()
    w = torch.randn(3, dtype=torch.float64, generator=gen)
    dy = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    (gx,) = torch.autograd.grad(ops.batch_norm(x, None, None, w, None, True, 0.1, 1e-5), [x], dy)
    xl, wl, gl = (t.detach().numpy().astype(np.longdouble) for t in (x, w, dy))
    inv = 1 / np.sqrt(xl.var(0) + 1e-5)
    x_hat = (xl - xl.mean(0)) * inv
    d = gl * wl
    expected = inv * (d - d.mean(0) - x_hat * (d * x_hat).mean(0))
    term_scale = float(np.abs(gl * wl * inv).max())
    assert float(np.abs(gx.numpy() - expected).max()) <= 1e-14 * term_scale


@pytest.mark.parametrize("norm_route, blocked, folded", [("compiled", False, False), ("tensor", False, False), ("tensor", True, False),
                                                         ("tensor", False, True), ("tensor", True, True)], indirect=["norm_route"])
@pytest.mark.parametrize("chunk", range(4))
def test_batch_norm_on_rows_in_memory_matches_torch_float64(chunk, norm_route, blocked, folded, monkeypatch):
    """Channels-last batches and (N, C) features take the one-pass route (sums of x and x*x, of dy and
    dy*x); channels far from zero mean, and channels-first batches, take the two-pass route. All, in
    training and inference, against torch; ``blocked``: every matrix cut into 16-row blocks, as large
    batches are (PASS_BLOCK_BYTES); ``folded``: every (M, C) matrix whose rows allow it scaled and summed
    as (M/k, k*C), as large narrow ones are (sums.FOLD_MIN_VALUES, tensor_norm.AFFINE_FOLD). ``norm_route``: the
    compiled loops (compiled_norm.py) take every (M, C) matrix, the tensor route the channels-first ones."""
    from cnnlab.ops.kernels import tensor_norm
    from cnnlab.ops.textbook import sums

    if blocked:
        monkeypatch.setattr(tensor_norm, "PASS_BLOCK_BYTES", 1)
    folds = []
    if folded:
        monkeypatch.setattr(sums, "FOLD_MIN_VALUES", 1)
        monkeypatch.setattr(tensor_norm, "AFFINE_FOLD", ((1 << 30, 1),))
        real_fold = tensor_norm.fold_factor
        monkeypatch.setattr(tensor_norm, "fold_factor", lambda m, c: folds.append(real_fold(m, c)) or folds[-1])
    taken = {"one pass": 0, "two pass": 0}
    real = tensor_norm._one_pass_statistics

    def spy(rows):
        stats = real(rows)
        taken["one pass" if stats is not None else "two pass"] += 1
        return stats

    monkeypatch.setattr(tensor_norm, "_one_pass_statistics", spy)
    rng = random.Random(6000 + chunk)
    for i in range(40):
        c = rng.randint(1, 9)
        layout = rng.choice(["rows", "channels_last", "channels_last_3d", "channels_first", "channels_first_1d"])
        n = rng.randint(2, 6)
        shape = {"rows": (n + 2, c), "channels_last": (n, c, rng.randint(1, 5), rng.randint(1, 5)),
                 "channels_last_3d": (n, c, rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 3)),
                 "channels_first": (n, c, rng.randint(1, 5), rng.randint(1, 5)), "channels_first_1d": (n, c, rng.randint(2, 9))}[layout]
        training = rng.random() < 0.7
        gen = torch.Generator().manual_seed(i)
        offset = rng.choice([0.0, 1.0, 30.0])  # 30 standard deviations: the two-pass route
        x = torch.randn(shape, generator=gen, dtype=torch.float64) + offset * torch.randn(c, generator=gen, dtype=torch.float64).view(1, c, *[1] * (len(shape) - 2))
        if layout.startswith("channels_last"):
            x = x.contiguous(memory_format=torch.channels_last if layout == "channels_last" else torch.channels_last_3d)
        x.requires_grad_()
        weight = torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_() if rng.random() < 0.8 else None
        bias = torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_() if rng.random() < 0.8 else None
        running = (torch.randn(c, generator=gen, dtype=torch.float64), torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
        ours_stats, torch_stats = [t.clone() for t in running], [t.clone() for t in running]
        check_op(lambda x, w, b: ops.batch_norm(x, *ours_stats, w, b, training, 0.1, 1e-5),
                 lambda x, w, b: F.batch_norm(x, *torch_stats, w, b, training, 0.1, 1e-5),
                 [x, weight, bias], context=f"shape {shape} {layout} training={training} offset={offset}")
        for ours, theirs in zip(ours_stats, torch_stats):
            assert max_rel_error(ours, theirs) <= 1e-10
    if norm_route == "tensor":
        assert taken["one pass"] >= 5 and taken["two pass"] >= 3, taken
    assert not folded or sum(k > 1 for k in folds) >= 5, folds


@pytest.mark.parametrize("norm_route", ["tensor"], indirect=True)  # 7 channels, 140,000 values: the folds (compiled loops: not)
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_on_large_narrow_features_in_any_layout(training, norm_route):
    """(N, C) batches large and narrow enough for the folded scalings (AFFINE_FOLD), contiguous and as a
    transposed view (which cannot fold: it once raised a view error), forward and gradients against torch."""
    gen = torch.Generator().manual_seed(3)
    for x in (torch.randn(20000, 7, generator=gen, dtype=torch.float64), torch.randn(7, 20000, generator=gen, dtype=torch.float64).t()):
        running = (torch.randn(7, generator=gen, dtype=torch.float64), torch.rand(7, generator=gen, dtype=torch.float64) + 0.5)
        ours_stats, torch_stats = [t.clone() for t in running], [t.clone() for t in running]
        weight, bias = (torch.randn(7, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
        check_op(lambda x, w, b: ops.batch_norm(x, *ours_stats, w, b, training, 0.1, 1e-5),
                 lambda x, w, b: F.batch_norm(x, *torch_stats, w, b, training, 0.1, 1e-5),
                 [x.requires_grad_(), weight, bias], context=f"strides {x.stride()} training={training}")


@pytest.mark.parametrize("layout, norm_route", [(torch.channels_last, "compiled"), (torch.channels_last, "tensor"),
                                                (torch.contiguous_format, "tensor")],
                         ids=["channels-last-compiled", "channels-last-tensor", "channels-first"], indirect=["norm_route"])
@pytest.mark.parametrize("offset", [0.0, 3.0, 100.0])
def test_batch_norm_float32_channels_last_within_torchs_own_error(offset, layout, norm_route):
    """float32, a training-sized batch, channels-last or channels-first: our result's distance from the
    float64 truth is within a small multiple of torch's own float32 distance, with channels centred,
    moderately offset (one-pass route) or far off zero (two-pass route)."""
    gen = torch.Generator().manual_seed(1)
    x64 = (torch.randn(64, 16, 14, 14, generator=gen, dtype=torch.float64) + offset).contiguous(memory_format=layout)
    w64, b64 = torch.rand(16, generator=gen, dtype=torch.float64) + 0.5, torch.randn(16, generator=gen, dtype=torch.float64)
    dy64 = torch.randn(64, 16, 14, 14, generator=gen, dtype=torch.float64).contiguous(memory_format=layout)

    def run(f, dtype):
        x, w, b = (t.to(dtype).requires_grad_() for t in (x64, w64, b64))
        y = f(x, None, None, w, b, True)
        grads = torch.autograd.grad(y, (x, w, b), dy64.to(dtype))
        return [t.double() for t in (y, *grads)]

    truth = run(F.batch_norm, torch.float64)
    ours, theirs = run(ops.batch_norm, torch.float32), run(F.batch_norm, torch.float32)
    for name, t, a, b in zip(("y", "grad_x", "grad_w", "grad_b"), truth, ours, theirs):
        scale = t.abs().max()
        err_ours, err_theirs = (a - t).abs().max() / scale, (b - t).abs().max() / scale
        assert err_ours <= 4 * err_theirs + 1e-6, (name, float(err_ours), float(err_theirs))


@pytest.mark.parametrize("chunk", range(3))
def test_batch_norm_over_many_row_blocks_matches_torch_float64(chunk, norm_route):
    """Batches large enough to span many of the compiled loops' row blocks (at most 1024 rows each, merged
    pairwise in order) and of the tensor route's, channels far from zero mean (up to 10**4 spreads) or
    nearly constant included: values, gradients and running estimates against torch at 1e-10, random shapes."""
    rng = random.Random(6100 + chunk)
    for i in range(4):
        c = rng.randint(1, 24)
        n, h, w = rng.randint(2, 40), rng.randint(3, 20), rng.randint(3, 20)
        gen = torch.Generator().manual_seed(100 * chunk + i)
        # means up to 10**4 spreads from zero: x - mean then loses up to 4 of float64's digits in any
        # implementation (torch's too), which leaves the 1e-10 comparison meaningful
        spread = torch.tensor([rng.choice([1e-2, 1.0, 50.0]) for _ in range(c)], dtype=torch.float64)
        offset = torch.tensor([rng.choice([0.0, 1.0, 1e2]) for _ in range(c)], dtype=torch.float64)
        x = torch.randn(n, c, h, w, generator=gen, dtype=torch.float64) * spread.view(1, c, 1, 1) + offset.view(1, c, 1, 1)
        x = x.contiguous(memory_format=torch.channels_last) if rng.random() < 0.8 else x.movedim(1, -1).reshape(-1, c).contiguous()
        training = rng.random() < 0.75
        weight, bias = (torch.randn(c, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(2))
        running = (torch.randn(c, generator=gen, dtype=torch.float64), torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
        ours_stats, torch_stats = [t.clone() for t in running], [t.clone() for t in running]
        check_op(lambda x, w, b: ops.batch_norm(x, *ours_stats, w, b, training, 0.1, 1e-5),
                 lambda x, w, b: F.batch_norm(x, *torch_stats, w, b, training, 0.1, 1e-5),
                 [x.requires_grad_(), weight, bias], context=f"shape {tuple(x.shape)} training={training}")
        for ours, theirs in zip(ours_stats, torch_stats):
            assert max_rel_error(ours, theirs) <= 1e-10
