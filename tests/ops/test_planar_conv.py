"""The compiled convolution with lanes over output positions (ops/compiled_conv.PlanarConvNd,
csrc/planar_conv_body.h), which takes layers of 1-3 input channels, against torch in float64: values and
every gradient over random geometries and both layouts of the result and of its gradient, its float32
error, its thread independence, infinities where a row's last vector reads past the row, and which layers
ops.conv1d/2d/3d send to it (its second derivatives: test_direct_conv.py)."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from cnnlab import ops
from cnnlab.ops.kernels import compiled, compiled_conv

from helpers import at_thread_counts, check_op, max_rel_error, padded_torch_conv, random_conv

THEIRS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


pytestmark = pytest.mark.usefixtures("conv_loops")  # built here, or the tests fail (tests/ops/conftest.py)


class _GradChannelsLast(torch.autograd.Function):
    """The identity, whose backward hands on the gradient channels-last (as a channels-last network's next
    layer does), so that the loops read that layout of the output gradient too."""

    @staticmethod
    def forward(ctx, y):
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return g.movedim(1, -1).contiguous().movedim(-1, 1)


def planar(x, w, b, pads, dilation, stride=None, channels_last=False, grad_channels_last=False):
    stride = stride or (1,) * (x.dim() - 2)
    y = compiled_conv.PlanarConvNd.apply(compiled_conv.kernels(x), x, w, b, stride, pads, dilation, channels_last)
    assert y.movedim(1, -1).is_contiguous() if channels_last else y.is_contiguous()
    return _GradChannelsLast.apply(y) if grad_channels_last else y


def random_case(rng: random.Random, dtype=torch.float64):
    """A random convolution the planar loops take (``helpers.random_conv``): strides 1-3 on all but the last
    axis and 1-4 on the last (1-D and 2-D: its columns dealt into phases), 1-3 input channels, 1-40 output
    channels (every block width of 1-12), 1-40 samples (more than the weight gradient's 16 chunks, several
    samples a piece), rows of 1-40 outputs (partial last vectors)."""
    return random_conv(rng, dtype, channels=[1, 2, 3], outputs=range(1, 41), samples=[1, 2, 3, 17, 40],
                       strides=[1, 1, 2, 3], last_strides=[1, 1, 2, 3, 4], longest={1: 40, 2: 20, 3: 7},
                       strided_3d_rows=False)


@pytest.mark.parametrize("chunk", range(4))
def test_planar_convolution_matches_torch_float64(chunk):
    rng = random.Random(7000 + chunk)
    for i in range(40):
        dims, x, w, b, stride, pads, dilation = random_case(rng)
        layout = {"channels_last": i % 2 == 1, "grad_channels_last": i % 4 >= 2}
        check_op(lambda x, w, b: planar(x, w, b, pads, dilation, stride, **layout), padded_torch_conv(dims, stride, pads, dilation),
                 [x, w, b], rtol=1e-10, context=f"x {tuple(x.shape)} w {tuple(w.shape)} bias {b is not None} stride {stride} "
                                                f"pads {pads} dilation {dilation} {layout}")


@pytest.mark.parametrize("seed", range(6))
def test_planar_convolution_float32_within_float32_tolerance(seed):
    dims, x, w, b, stride, pads, dilation = random_case(random.Random(seed), torch.float32)
    layout = {"channels_last": seed % 2 == 1, "grad_channels_last": seed % 3 == 0}
    check_op(lambda x, w, b: planar(x, w, b, pads, dilation, stride, **layout), padded_torch_conv(dims, stride, pads, dilation),
             [x, w, b], rtol=2e-5)


@pytest.mark.parametrize("channels_last", [False, True])
def test_planar_convolution_on_zoo_first_layers_matches_torch_float64(channels_last):
    """The zoo's first layers (LeNet's 1->6 5x5, lenet-modern's 1->32, 3x3 layers of 16-64 channels, an RGB
    layer, the 7x7/2 of the book's ResNet and GoogLeNet, AlexNet's 11x11/4), many pieces of samples per chunk
    of the weight gradient."""
    torch.manual_seed(0)
    for n, c, o, size, k, stride in [(37, 1, 6, 28, 5, 1), (20, 1, 32, 28, 5, 1), (19, 1, 16, 28, 3, 1), (9, 1, 64, 28, 3, 1),
                                     (21, 3, 16, 32, 3, 1), (18, 2, 24, 14, 3, 1), (5, 1, 64, 32, 7, 2), (3, 1, 96, 67, 11, 4)]:
        x = torch.randn(n, c, size, size, dtype=torch.float64, requires_grad=c > 1)
        w = torch.randn(o, c, k, k, dtype=torch.float64, requires_grad=True)
        b = torch.randn(o, dtype=torch.float64, requires_grad=True)
        p = k // 2
        check_op(lambda x, w, b: planar(x, w, b, ((p, p), (p, p)), (1, 1), (stride, stride), channels_last, channels_last),
                 lambda x, w, b: F.conv2d(x, w, b, padding=p, stride=stride), [x, w, b], rtol=1e-10,
                 context=f"{n}x{c}x{size} -> {o}, {k}x{k}/{stride}")


def test_planar_convolution_does_not_depend_on_the_thread_count():
    """Each output is one thread's sum, and the weight gradient's chunks are set by the batch alone and
    added in order: bit-identical results for 1, 2 and 3 threads."""
    torch.manual_seed(0)
    x = torch.randn(45, 1, 21, 21)
    w = torch.randn(10, 1, 5, 5, requires_grad=True)
    g = torch.randn(45, 10, 19, 19)

    def run():
        y = planar(x, w, None, ((1, 1), (1, 1)), (1, 1))
        return (y, *torch.autograd.grad(y, w, g))

    results = at_thread_counts(run)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("grad_channels_last", [False, True])
def test_planar_weight_gradient_reads_nothing_past_a_row(grad_channels_last):
    """An infinity at the start of a row, which the previous row's last vector of outputs reaches in lanes
    past that row's end: the weight gradient must match torch's, finite where torch's is (the loops mask
    those lanes, so no 0 * inf = NaN enters a sum that does not hold that value)."""
    x = torch.randn(3, 1, 6, 20, dtype=torch.float64)
    x[1, 0, 3, 0] = float("inf")
    w = torch.randn(4, 1, 3, 3, dtype=torch.float64, requires_grad=True)
    g = torch.randn(3, 4, 4, 18, dtype=torch.float64)
    ours = torch.autograd.grad(planar(x, w, None, ((0, 0), (0, 0)), (1, 1), grad_channels_last=grad_channels_last), w, g)[0]
    expected = torch.autograd.grad(F.conv2d(x, w), w, g)[0]
    assert torch.isfinite(expected).any() and not torch.isfinite(expected).all()
    assert torch.equal(torch.isfinite(ours), torch.isfinite(expected))
    assert max_rel_error(ours, expected) < 1e-10


def test_layers_taking_the_planar_loops(monkeypatch):
    """conv1d/2d/3d send layers of one group with more than one tap and 1-3 input channels to the planar
    loops (any stride, but stride 1 along the last axis of a 3-D layer) where the result is channels-first
    or has at most 8 channels, in the layout torch gives; wider channels-last results, groups, 1x1 kernels,
    a 3-D layer strided along its last axis, 4+ channels, half precision and compiled.disabled() do not
    take them."""
    taken = []
    apply = compiled_conv.PlanarConvNd.apply
    monkeypatch.setattr(compiled_conv.PlanarConvNd, "apply", lambda *args: taken.append(1) or apply(*args))

    def routed(x_shape, w_shape, channels_last=False, dtype=torch.float32, conv=ops.conv2d, **kwargs):
        taken.clear()
        x = torch.randn(*x_shape, dtype=dtype)
        w = torch.randn(*w_shape, dtype=dtype)
        if channels_last:  # as Module.to(memory_format=torch.channels_last) lays out a first layer's weights
            x = x.contiguous(memory_format=torch.channels_last)
            o, c, h, wd = w.shape
            w = torch.empty_strided(w.shape, (c * h * wd, 1, wd * c, c), dtype=dtype).copy_(w)
        w.requires_grad_()
        y = conv(x, w, **kwargs)
        expected = THEIRS[x.dim() - 2](x.float(), w.float(), **kwargs)
        assert y.is_contiguous(memory_format=torch.channels_last) == expected.is_contiguous(memory_format=torch.channels_last)
        return bool(taken)

    assert routed((2, 1, 28, 28), (6, 1, 5, 5), padding=2)
    assert routed((2, 1, 28, 28), (32, 1, 3, 3), padding=1)
    assert routed((2, 1, 28, 28), (8, 1, 3, 3), channels_last=True, padding=1)
    assert not routed((2, 1, 28, 28), (9, 1, 3, 3), channels_last=True, padding=1)  # the channels-last loops
    assert routed((2, 3, 32, 32), (16, 3, 3, 3), padding=1)
    assert routed((2, 2, 28, 28), (16, 2, 3, 3), stride=(2, 1))
    assert routed((2, 1, 50), (8, 1, 7), conv=ops.conv1d)
    assert routed((2, 1, 6, 9, 9), (8, 1, 3, 3, 3), conv=ops.conv3d)
    assert routed((2, 1, 28, 28), (16, 1, 3, 3), stride=2)
    assert routed((2, 1, 224, 224), (96, 1, 11, 11), stride=4, padding=1)  # the book AlexNet's first layer
    assert not routed((2, 1, 6, 9, 9), (8, 1, 3, 3, 3), conv=ops.conv3d, stride=(1, 1, 2))
    assert not routed((2, 4, 28, 28), (16, 4, 3, 3))
    assert not routed((2, 2, 28, 28), (16, 1, 3, 3), groups=2)
    assert not routed((2, 1, 28, 28), (16, 1, 1, 1))
    assert not routed((2, 1, 28, 28), (16, 1, 3, 3), dtype=torch.float16)
    with compiled.disabled():
        assert not routed((2, 1, 28, 28), (16, 1, 3, 3))


@pytest.mark.parametrize("channels_last", [False, True])
def test_planar_convolution_output_can_be_changed_in_place(channels_last):
    """nn.ReLU(inplace=True) after a first layer (AlexNet-CPU's): the output is not a view autograd guards,
    and the gradients stay torch's (nothing saved for the backward pass shares the output)."""
    torch.manual_seed(0)
    x = torch.randn(3, 1, 12, 12, dtype=torch.float64)
    w = torch.randn(8, 1, 5, 5, dtype=torch.float64)
    if channels_last:  # a channels-last network's weights (Module.to's strides): the result is channels-last
        w = torch.empty_strided(w.shape, (25, 1, 5, 1), dtype=w.dtype).copy_(w)
    w.requires_grad_()
    y = ops.conv2d(x, w, padding=2)
    assert y.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    ours = torch.autograd.grad(torch.relu_(y).square().sum(), w)[0]
    expected = torch.autograd.grad(torch.relu(F.conv2d(x, w, padding=2)).square().sum(), w)[0]
    assert max_rel_error(ours, expected) < 1e-10
