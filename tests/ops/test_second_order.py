"""Second and higher derivatives of every scratch op equal torch's (float64), over random configurations:
the gradient of a gradient (a gradient penalty) against torch, gradgradcheck, Hessians, and the two
cases that used to come back silently wrong. Also max pooling's return_indices and half-precision
batch-norm statistics."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from cnnlab import ops

from helpers import max_rel_error
from test_conv import OURS as CONV_OURS
from test_conv import THEIRS as CONV_THEIRS
from test_conv import random_conv_config
from test_pool import AVG, MAX, laid_out, make_input, random_pool_config, sees_only_padding

CONFIGS = 40


def second_order(fn, inputs: list[torch.Tensor], seed: int) -> list[torch.Tensor]:
    """d/d(inputs) of sum(g * dL/dx) where L = sum(v * fn(*inputs)): a gradient penalty's chain, both orders."""
    gen = torch.Generator().manual_seed(seed)
    out = fn(*inputs)
    v = torch.randn(out.shape, generator=gen, dtype=out.dtype)
    first = torch.autograd.grad((out * v).sum(), inputs, create_graph=True, allow_unused=True)
    penalty = sum((f * torch.randn(f.shape, generator=gen, dtype=f.dtype)).sum() for f in first if f is not None)
    return [g if g is not None else torch.zeros_like(t)
            for g, t in zip(torch.autograd.grad(penalty, inputs, allow_unused=True), inputs)]


def compare(ours, theirs, inputs, seed, context):
    a = [t.detach().clone().requires_grad_() for t in inputs]
    b = [t.detach().clone().requires_grad_() for t in inputs]
    for i, (ga, gb) in enumerate(zip(second_order(ours, a, seed), second_order(theirs, b, seed))):
        assert max_rel_error(ga, gb) <= 1e-10, f"{context}: second derivative of input {i} differs from torch's"


def test_conv_second_derivatives_match_torch():
    rng = random.Random(7100)
    for n in range(CONFIGS):
        cfg = random_conv_config(rng)
        gen = torch.Generator().manual_seed(n)
        x = torch.randn(cfg["batch"], cfg["in_channels"], *cfg["spatial"], generator=gen, dtype=torch.float64)
        w = torch.randn(cfg["out_channels"], cfg["in_channels"] // cfg["groups"], *cfg["kernel"], generator=gen, dtype=torch.float64)
        b = torch.randn(cfg["out_channels"], generator=gen, dtype=torch.float64)
        kw, dims = cfg["kwargs"], cfg["dims"]
        compare(lambda x, w, b: CONV_OURS[dims](x, w, b, **kw), lambda x, w, b: CONV_THEIRS[dims](x, w, b, **kw), [x, w, b], n, cfg)


def random_pools(seed: int, route: str, divisor_override: bool = False):
    """CONFIGS random pools, max or average: (index, kind, cfg, kwargs, ours, theirs, x laid out for ``route``);
    windows that see only padding skipped; average pools of 2-3 dims given a divisor_override now and then
    where ``divisor_override`` (torch's avg_pool1d has none)."""
    rng = random.Random(seed)
    checked = 0
    while checked < CONFIGS:
        cfg = random_pool_config(rng, with_dilation=True)
        kind = rng.choice(["max", "avg"])
        ours, theirs = (MAX if kind == "max" else AVG)[cfg["dims"]]
        kw = dict(cfg["kwargs"])
        if kind == "avg":
            kw.pop("dilation")
            kw["count_include_pad"] = rng.random() < 0.5
            if divisor_override and cfg["dims"] > 1 and rng.random() < 0.3:
                kw["divisor_override"] = rng.randint(1, 5)
        elif sees_only_padding(ours, cfg):
            continue
        x = laid_out(make_input(cfg["shape"], ties=False, seed=checked), route, len(cfg["shape"]) == cfg["dims"] + 2, checked)
        yield checked, kind, cfg, kw, ours, theirs, x
        checked += 1


def test_pool_second_derivatives_match_torch(pool_route):
    for checked, kind, cfg, kw, ours, theirs, x in random_pools(7200, pool_route):
        # pooling is piecewise linear: its own second derivative is zero; through a square it is not
        compare(lambda x: ours(x * x, cfg["kernel"], **kw), lambda x: theirs(x * x, cfg["kernel"], **kw), [x], checked, (kind, cfg))
        checked += 1


def pooled_gradient_graph(pool, x: torch.Tensor, v_grad: bool, seed: int):
    """A pool's gradient g = dL/dx (L = sum(v * pool(x))) taken with create_graph, then d(sum(u * g * g))/d(x, v):
    (g.requires_grad, grad wrt x, grad wrt v), a missing one as zeros (torch answers None or zeros alike)."""
    x = x.detach().clone().requires_grad_()
    gen = torch.Generator().manual_seed(seed)
    y = pool(x)
    v = torch.randn(y.shape, generator=gen, dtype=y.dtype).requires_grad_(v_grad)
    (g,) = torch.autograd.grad(y, x, v, create_graph=True)
    if not g.requires_grad:
        return (False,)
    u = torch.randn(g.shape, generator=gen, dtype=g.dtype)
    wrt = [x, v] if v_grad else [x]
    grads = torch.autograd.grad((u * g * g).sum(), wrt, allow_unused=True)
    return True, *[torch.zeros_like(t) if d is None else d for d, t in zip(grads, wrt)]


def test_a_pools_gradient_stays_in_the_graph_as_torchs(pool_route):
    """Double backward through a pool alone (a gradient penalty on a pooled map): the gradient requires grad as
    torch's does, its derivative with respect to the input is torch's zeros, with respect to the incoming
    gradient torch's values; max, average (count_include_pad, divisor_override) and adaptive, 1-3-D, ceil_mode."""
    for checked, kind, cfg, kw, ours, theirs, x in random_pools(7300, pool_route, divisor_override=True):
        v_grad = checked % 2 == 0
        mine = pooled_gradient_graph(lambda x: ours(x, cfg["kernel"], **kw), x, v_grad, checked)
        torchs = pooled_gradient_graph(lambda x: theirs(x, cfg["kernel"], **kw), x, v_grad, checked)
        assert mine[0] == torchs[0], (kind, cfg, kw, "requires_grad of the gradient")
        for a, b in zip(mine[1:], torchs[1:]):
            assert max_rel_error(a, b) <= 1e-10, (kind, cfg, kw)
    for size in ((3, 4), (1, 1), (5, 7)):
        x = torch.randn(2, 3, 7, 9, dtype=torch.float64)
        for v_grad in (True, False):
            mine = pooled_gradient_graph(lambda x: ops.adaptive_avg_pool2d(x, size), x, v_grad, 5)
            torchs = pooled_gradient_graph(lambda x: F.adaptive_avg_pool2d(x, size), x, v_grad, 5)
            assert mine[0] == torchs[0], ("adaptive", size)
            for a, b in zip(mine[1:], torchs[1:]):
                assert max_rel_error(a, b) <= 1e-10, ("adaptive", size)


@pytest.mark.parametrize("pool", ["max_pool2d", "avg_pool2d", "max_pool1d", "avg_pool3d", "adaptive_avg_pool2d"])
def test_hessians_through_torch_func_of_a_pooled_function_equal_torchs(pool):
    """torch.func.hessian and jacrev(grad(...)) of a function whose path to its input runs through a pool."""
    from torch.func import grad, hessian, jacrev

    shape = {"max_pool1d": (1, 2, 7), "avg_pool3d": (1, 1, 3, 4, 4)}.get(pool, (1, 2, 5, 5))
    args = {"adaptive_avg_pool2d": ((2, 3),), "avg_pool3d": (2, 1, 1)}.get(pool, (3, 2, 1))
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

    def f(module):
        return lambda x: (getattr(module, pool)(x, *args) ** 2).sum() + getattr(module, pool)(x, *args).sin().sum()

    for transform in (hessian, lambda f: jacrev(grad(f))):
        assert max_rel_error(transform(f(ops))(x), transform(f(F))(x)) <= 1e-10, pool


def test_adaptive_pool_and_batch_norm_second_derivatives_match_torch():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 7, 9, generator=gen, dtype=torch.float64)
    compare(lambda x: ops.adaptive_avg_pool2d(x * x, (3, 4)), lambda x: F.adaptive_avg_pool2d(x * x, (3, 4)), [x], 1, "adaptive")
    w, b = torch.rand(4, generator=gen, dtype=torch.float64) + 0.5, torch.randn(4, generator=gen, dtype=torch.float64)
    rm, rv = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5
    for training in (True, False):
        for shape in ((3, 4, 7, 9), (6, 4)):
            xx = torch.randn(shape, generator=gen, dtype=torch.float64)
            compare(lambda x, w, b: ops.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training),
                    lambda x, w, b: F.batch_norm(x, rm.clone(), rv.clone(), w, b, training=training), [xx, w, b], 2,
                    f"batch_norm training={training} {shape}")


def test_gradgradcheck_on_every_op():
    gen = torch.Generator().manual_seed(11)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64, requires_grad=True)

    cases = [
        (lambda x, w, b: ops.conv1d(x, w, b, stride=2, padding=1, dilation=2), (rand(2, 2, 9), rand(3, 2, 3), rand(3))),
        (lambda x, w, b: ops.conv2d(x, w, b, stride=(1, 2), padding="same" and 1, groups=2), (rand(1, 4, 6, 7), rand(4, 2, 3, 2), rand(4))),
        (lambda x, w: ops.conv2d(x, w, padding=1), (rand(1, 16, 6, 6), rand(2, 16, 3, 3))),  # the window-free layout
        (lambda x, w, b: ops.conv2d(x, w, b, padding=2), (rand(2, 3, 5, 6), rand(2, 3, 5, 5), rand(2))),  # through the DFT
        (lambda x, w: ops.conv3d(x, w, padding=(1, 0, 1)), (rand(1, 2, 4, 4, 3), rand(2, 2, 2, 2, 2))),
        (lambda x: ops.max_pool2d(x * x, 3, 2, 1, ceil_mode=True), (rand(1, 2, 7, 6),)),
        (lambda x: ops.max_pool3d(x * x, 2, dilation=(1, 2, 1)), (rand(1, 1, 4, 5, 4),)),
        (lambda x: ops.avg_pool1d(x * x, 3, 2, 1, ceil_mode=True, count_include_pad=False), (rand(2, 2, 8),)),
        (lambda x: ops.avg_pool2d(x * x, 2, divisor_override=3), (rand(1, 2, 5, 5),)),
        (lambda x: ops.adaptive_avg_pool2d(x * x, (2, 3)), (rand(1, 2, 5, 7),)),
        (lambda x, w, b: ops.batch_norm(x, None, None, w, b, training=True), (rand(4, 3, 2, 2), rand(3), rand(3))),
    ]
    for fn, inputs in cases:
        assert torch.autograd.gradgradcheck(fn, inputs, fast_mode=True)


def test_the_hessian_that_came_back_as_zeros():
    torch.manual_seed(0)
    w = torch.randn(3, 2, 3, 3, dtype=torch.float64)
    a = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    ours = torch.autograd.functional.hessian(lambda t: ops.conv2d(t, w).pow(2).sum(), a)
    theirs = torch.autograd.functional.hessian(lambda t: F.conv2d(t, w).pow(2).sum(), a)
    assert ours.abs().sum() > 0 and max_rel_error(ours, theirs) < 1e-12


def test_the_gradient_penalty_that_was_silently_wrong():
    torch.manual_seed(0)
    results = []
    for pool in (ops.max_pool2d, F.max_pool2d, ops.avg_pool2d, F.avg_pool2d):
        x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
        w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
        y = pool(F.conv2d(x, w), 2)
        (g,) = torch.autograd.grad((y**2).sum(), x, create_graph=True)
        (gw,) = torch.autograd.grad((g**2).sum(), w)
        results.append(gw)
        torch.manual_seed(0)
    assert max_rel_error(results[0], results[1]) < 1e-12 and max_rel_error(results[2], results[3]) < 1e-12


def test_a_whole_scratch_model_gives_torchs_gradient_penalty():
    from cnnlab.models import create_model

    ours, theirs = create_model("lenet").double(), create_model("lenet", backend="torch").double()
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64)
    penalties = []
    for model in (ours, theirs):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(model(xi).logsumexp(1).sum(), xi, create_graph=True)
        grads = torch.autograd.grad(g.pow(2).sum(), list(model.parameters()))
        penalties.append(grads)
    for a, b in zip(*penalties):
        assert max_rel_error(a, b) < 1e-9


@pytest.mark.parametrize("dims", [1, 2, 3])
def test_max_pool_return_indices_equal_torchs(dims, pool_route):
    rng = random.Random(7300 + dims)
    checked = 0
    while checked < 30:
        cfg = random_pool_config(rng, with_dilation=True)
        if cfg["dims"] != dims or sees_only_padding(MAX[dims][0], cfg):
            continue
        x = laid_out(make_input(cfg["shape"], ties=cfg["ties"], seed=checked).detach(), pool_route, len(cfg["shape"]) == dims + 2,
                     checked)
        out, idx = MAX[dims][0](x, cfg["kernel"], return_indices=True, **cfg["kwargs"])
        ref, ref_idx = MAX[dims][1](x, cfg["kernel"], return_indices=True, **cfg["kwargs"])
        assert torch.equal(out, ref) and torch.equal(idx, ref_idx), cfg
        checked += 1
    from cnnlab import nn

    layer = nn.MaxPool2d(2, return_indices=True)  # the scratch layer takes it too now
    out, idx = layer(torch.arange(16.0).view(1, 1, 4, 4))
    assert idx.tolist() == [[[[5, 7], [13, 15]]]]


def test_batch_norm_statistics_in_float32_for_half_inputs():
    torch.manual_seed(0)
    x = torch.randn(256, 6, 28, 28)
    w, b = torch.rand(6) + 0.5, torch.randn(6)
    truth = F.batch_norm(x.double(), None, None, w.double(), b.double(), training=True)
    for dtype in (torch.float16, torch.bfloat16):
        ours = ops.batch_norm(x.to(dtype), None, None, w, b, training=True)
        theirs = F.batch_norm(x.to(dtype), None, None, w, b, training=True)
        assert ours.dtype == dtype
        err_ours, err_theirs = (ours.double() - truth).abs().max(), (theirs.double() - truth).abs().max()
        assert err_ours <= 1.5 * err_theirs + 1e-3, (dtype, float(err_ours), float(err_theirs))
    shifted = (x * 10 + 50).half()  # mean 50, std 10: half-precision sums overflow
    out = ops.batch_norm(shifted, None, None, training=True)
    assert torch.isfinite(out).all() and (out.float() - F.batch_norm(shifted.float(), None, None, training=True)).abs().max() < 0.02
