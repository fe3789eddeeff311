"""The compiled direct convolution (ops/compiled_conv.py, csrc/direct_conv.c) against torch in float64:
values and every gradient over random geometries, its float32 error, its thread independence, and which
layers ops.conv1d/2d/3d send to it."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from cnnlab import ops
from cnnlab.ops.kernels import compiled, compiled_conv
from cnnlab.ops.textbook.layout import memory_format_like_torch

from helpers import at_thread_counts, check_op, max_rel_error, padded_torch_conv, random_conv

pytestmark = pytest.mark.usefixtures("conv_loops")  # built here, or the tests fail (tests/ops/conftest.py)


def direct(x, w, b, pads, dilation, stride=None):
    """The loops, with the result (and input gradient) written in the layout torch gives: channels-last for
    a channels-last input, else channels-first, straight from the loops."""
    stride = stride or (1,) * (x.dim() - 2)
    channels_last = memory_format_like_torch(x, w) != torch.contiguous_format
    y = compiled_conv.DirectConvNd.apply(compiled_conv.kernels(x), x, w, b, stride, pads, dilation, channels_last)
    assert y.is_contiguous(memory_format=memory_format_like_torch(x, w))
    return y


def random_case(rng: random.Random, dtype=torch.float64):
    """A random convolution of one group (``helpers.random_conv``): strides 1-3 on every axis, 1-70 output
    channels (the output channels' last vector group partly filled), 1-33 input channels, 1-4 samples, either
    layout."""
    return random_conv(rng, dtype, channels=[1, 2, 3, 5, 8, 13, 16, 17, 33], outputs=range(1, 71), samples=range(1, 5),
                       strides=[1, 1, 2, 3], last_strides=[1, 1, 2, 3], longest={1: 9, 2: 9, 3: 4}, channels_last=True)


@pytest.mark.parametrize("chunk", range(4))
def test_direct_convolution_matches_torch_float64(chunk):
    rng = random.Random(4000 + chunk)
    for _ in range(50):
        dims, x, w, b, stride, pads, dilation = random_case(rng)
        check_op(lambda x, w, b: direct(x, w, b, pads, dilation, stride), padded_torch_conv(dims, stride, pads, dilation), [x, w, b],
                 rtol=1e-10, context=f"x {tuple(x.shape)} w {tuple(w.shape)} bias {b is not None} stride {stride} "
                                     f"pads {pads} dilation {dilation}")


@pytest.mark.parametrize("seed", range(6))
def test_direct_convolution_float32_within_float32_tolerance(seed):
    dims, x, w, b, stride, pads, dilation = random_case(random.Random(seed), torch.float32)
    check_op(lambda x, w, b: direct(x, w, b, pads, dilation, stride), padded_torch_conv(dims, stride, pads, dilation), [x, w, b],
             rtol=2e-5)


@pytest.mark.parametrize("channels_last", [True, False])
def test_direct_convolution_on_zoo_sized_layers_matches_torch_float64(channels_last):
    """Many blocks and chunks, every register layout (groups of 2 and 1 vectors of output channels, partial
    groups), and the dot-product form (at most 8 output channels from whole vectors of input channels: the
    input gradient of 6->16, the forward pass of 16->4), writing channels-last and channels-first results."""
    torch.manual_seed(0)
    for n, c, o, size, k in [(20, 16, 32, 14, 3), (9, 64, 64, 7, 3), (3, 12, 16, 28, 5), (17, 24, 12, 9, 3),
                             (5, 6, 16, 14, 5), (7, 16, 4, 9, 3), (3, 32, 8, 6, 3)]:
        x = torch.randn(n, c, size, size, dtype=torch.float64)
        x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format).requires_grad_()
        w = torch.randn(o, c, k, k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(o, dtype=torch.float64, requires_grad=True)
        p = k // 2
        check_op(lambda x, w, b: direct(x, w, b, ((p, p), (p, p)), (1, 1)),
                 lambda x, w, b: F.conv2d(x, w, b, padding=p), [x, w, b], rtol=1e-10, context=f"{n}x{c}x{size} -> {o}")


def test_direct_convolution_does_not_depend_on_the_thread_count():
    """Each output, and each tile of the weight gradient, is summed by one thread in a fixed order (samples
    in order, a chunk at a time): bit-identical results for 1, 2 and 3 threads."""
    torch.manual_seed(0)
    x = torch.randn(13, 16, 11, 11).requires_grad_()
    w = torch.randn(40, 16, 3, 3, requires_grad=True)
    g = torch.randn(13, 40, 11, 11)

    def run():
        y = direct(x, w, None, ((1, 1), (1, 1)), (1, 1))
        return (y, *torch.autograd.grad(y, (x, w), g))

    results = at_thread_counts(run)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("function, channels", [(compiled_conv.DirectConvNd, 8), (compiled_conv.PlanarConvNd, 2)])
def test_compiled_convolution_second_derivatives_match_torch(function, channels):
    """create_graph differentiates the reference form, on either compiled route (the channels-last loops and
    the planar ones): a gradient penalty's gradient equals torch's."""
    torch.manual_seed(0)
    x = torch.randn(3, channels, 7, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, channels, 3, 3, dtype=torch.float64, requires_grad=True)
    extra = (False,) if function is compiled_conv.PlanarConvNd else ()  # the planar result's layout

    def penalty_grads(fn):
        y = fn(x, w)
        (gx,) = torch.autograd.grad((y ** 2).sum(), x, create_graph=True)
        return torch.autograd.grad((gx ** 2).sum(), (x, w))

    ours = penalty_grads(lambda x, w: function.apply(compiled_conv.kernels(x), x, w, None, (1, 1), ((1, 1), (1, 1)), (1, 1), *extra))
    expected = penalty_grads(lambda x, w: F.conv2d(x, w, padding=1))
    for a, b in zip(ours, expected):
        assert max_rel_error(a, b) < 1e-10


@pytest.mark.parametrize("variant", ["avx512", "avx2", "portable"])
def test_the_dft_keeps_the_training_layers_it_measured_faster_on_than_each_variant(monkeypatch, variant):
    """routing.FOURIER_RULES, one rule per variant of the loops (the variant is what the loaded build reports, set
    here so that every rule is checked on any CPU): with avx512's, 5x5+ kernels with 32+ channels where the
    DFT's fixed costs are amortised over the batch; with avx2's (and the portable build's), 5x5+ kernels from
    16 channels on a wider cost, and 3x3 kernels with 64+ channels both ways on the DFT's own maps."""
    real = compiled_conv.kernels
    monkeypatch.setattr(compiled_conv, "kernels", lambda x: None if (k := real(x)) is None else k._replace(variant=variant))
    taken = []
    apply = compiled_conv.DirectConvNd.apply
    monkeypatch.setattr(compiled_conv.DirectConvNd, "apply", lambda *args: taken.append(1) or apply(*args))

    def loops(x_shape, w_shape, grad=True, **kwargs):
        taken.clear()
        ops.conv2d(torch.randn(*x_shape), torch.randn(*w_shape, requires_grad=grad), **kwargs)
        return bool(taken)

    wide = variant == "avx512"  # the loops keep more layers on the widest vectors
    assert not loops((64, 64, 12, 12), (64, 64, 5, 5), padding=2)  # cost 0.031 + 0.006: the DFT with both rules
    assert loops((8, 64, 12, 12), (64, 64, 5, 5), padding=2) is wide  # 0.031 + 0.05: few samples
    assert loops((32, 32, 12, 12), (32, 32, 5, 5), padding=2) is wide  # 0.0625 + 0.0125
    assert loops((128, 16, 14, 14), (32, 16, 5, 5), padding=2) is wide  # 16 channels, 0.094 + 0.003
    assert loops((128, 16, 14, 14), (16, 16, 5, 5), padding=2)  # 0.125 + 0.003: the loops with both
    assert loops((128, 12, 14, 14), (24, 12, 5, 5), padding=2)  # 12 channels
    assert loops((32, 64, 7, 7), (64, 64, 3, 3), padding=1) is wide  # 3x3, 64 channels both ways, 7 px, batch 32
    assert loops((32, 64, 7, 7), (48, 64, 3, 3), padding=1)  # 48 out
    assert loops((16, 64, 7, 7), (64, 64, 3, 3), padding=1)  # batch 16: not the DFT's (routing._use_fourier)
    assert loops((32, 64, 28, 28), (64, 64, 3, 3), padding=1)  # 28 px: nor this
    assert loops((64, 64, 12, 12), (64, 64, 5, 5), grad=False, padding=2)  # evaluation: the loops


def test_layers_taking_the_direct_loops(monkeypatch):
    """conv2d sends layers of one group with more than one tap and 100 or more outputs per stride step to the
    loops, except the first layers the planar loops take (test_planar_conv.py) and, in training, the layers
    the DFT measured faster on (the next test). Groups, 1x1
    kernels, few outputs, half precision and compiled.disabled() keep the tensor routes."""
    taken = []
    apply = compiled_conv.DirectConvNd.apply
    monkeypatch.setattr(compiled_conv.DirectConvNd, "apply", lambda *args: taken.append(1) or apply(*args))

    def routed(x_shape, w_shape, grad=True, dtype=torch.float32, **kwargs):
        taken.clear()
        x = torch.randn(*x_shape, dtype=dtype)
        w = torch.randn(*w_shape, dtype=dtype, requires_grad=grad)
        ops.conv2d(x, w, **kwargs)
        return bool(taken)

    assert routed((2, 16, 14, 14), (32, 16, 3, 3), padding=1)
    assert routed((9, 16, 14, 14), (32, 16, 3, 3), padding=1, stride=2)  # 441 outputs, 4 per stride step
    assert not routed((8, 16, 14, 14), (32, 16, 3, 3), padding=1, stride=2)  # 392
    assert routed((25, 16, 2, 2), (32, 16, 3, 3), padding=1)  # 100 outputs
    assert not routed((24, 16, 2, 2), (32, 16, 3, 3), padding=1)
    assert routed((2, 8, 28, 28), (16, 8, 3, 3), padding=1, dilation=2)
    assert not routed((4, 3, 28, 28), (16, 3, 3, 3), padding=1, stride=2)  # 1-3 channels: the planar loops
    assert routed((2, 6, 14, 14), (16, 6, 5, 5))
    assert routed((2, 16, 14, 14), (32, 16, 3, 3), padding=3)  # a border past the kernel's reach
    assert not routed((64, 64, 12, 12), (64, 64, 5, 5), padding=2)  # training, 5x5, 64 channels: the DFT (below)
    assert routed((2, 64, 12, 12), (16, 64, 5, 5), grad=False, padding=2)  # evaluation
    assert not routed((2, 1, 28, 28), (16, 1, 3, 3), padding=1, stride=2)  # one channel: the planar loops ...
    w_last = torch.empty_strided((16, 1, 3, 3), (9, 1, 3, 1)).normal_().requires_grad_()  # ... but a
    ops.conv2d(torch.randn(2, 1, 28, 28), w_last, padding=1)  # channels-last result of 9+ channels: these
    assert taken
    taken.clear()
    assert not routed((2, 16, 14, 14), (32, 8, 3, 3), padding=1, groups=2)
    assert not routed((2, 16, 14, 14), (32, 16, 1, 1))
    assert not routed((2, 16, 14, 14), (32, 16, 3, 3), dtype=torch.float16, padding=1)
    with compiled.disabled():
        assert not routed((2, 16, 14, 14), (32, 16, 3, 3), padding=1)
