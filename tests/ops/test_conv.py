"""cnnlab.ops.conv1d/2d/3d against torch.nn.functional in float64: values and every gradient."""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch.nn.functional as F

from cnnlab import ops

from helpers import check_op, max_rel_error

OURS = {1: ops.conv1d, 2: ops.conv2d, 3: ops.conv3d}
THEIRS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
CONFIGS_PER_CHUNK, CHUNKS = 60, 10  # 600 random configurations


def random_conv_config(rng: random.Random) -> dict:
    """One random, valid convolution: dims, channels, groups, kernel, stride, padding, dilation."""
    dims = rng.choice([1, 2, 2, 3])
    groups = rng.choice([1, 1, 1, 2, 3])
    depthwise = rng.random() < 0.15
    cg = 1 if depthwise else rng.randint(1, 3)
    if rng.random() < 0.25:  # many channels: the layouts chosen for wide layers (see ops/conv.py)
        groups, cg = 1, rng.randint(16, 20)
    og = rng.randint(1, 3)
    kmax, smax = (3, 2) if dims == 3 else (4, 3)
    kernel = tuple(rng.randint(1, kmax) for _ in range(dims))
    stride = tuple(rng.randint(1, smax) for _ in range(dims))
    dilation = tuple(rng.randint(1, smax) for _ in range(dims))
    if cg >= 16 and rng.random() < 0.7:
        stride = (1,) * dims
    choice = rng.random()
    if choice < 0.15:
        padding, stride = "same", (1,) * dims
        pads = [0] * dims
    elif choice < 0.25:
        padding, pads = "valid", [0] * dims
    elif choice < 0.6:
        padding = rng.randint(0, 3)
        pads = [padding] * dims
    else:
        padding = tuple(rng.randint(0, 3) for _ in range(dims))
        pads = list(padding)
    extra = 6 if dims < 3 else 3
    if cg >= 16 and rng.random() < 0.5:  # large maps: where the window-free layout is chosen
        extra = 24 if dims == 1 else 14 if dims == 2 else 6
    spatial = tuple(max(1, d * (k - 1) + 1 - 2 * p) + rng.randint(extra // 2, extra) for k, d, p in zip(kernel, dilation, pads))
    # A single-element stride/dilation tuple is how users often write 1-D arguments; ints too.
    def as_arg(t):
        return t[0] if dims == 1 or len(set(t)) == 1 and rng.random() < 0.5 else t

    return {
        "dims": dims, "batch": rng.randint(1, 3), "unbatched": rng.random() < 0.15,
        "in_channels": cg * groups, "out_channels": og * groups, "groups": groups,
        "kernel": kernel, "spatial": spatial, "bias": rng.random() < 0.7,
        "kwargs": {"stride": as_arg(stride), "padding": padding, "dilation": as_arg(dilation), "groups": groups},
    }


def make_inputs(cfg: dict, dtype=torch.float64, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    lead = () if cfg["unbatched"] else (cfg["batch"],)
    x = torch.randn(*lead, cfg["in_channels"], *cfg["spatial"], generator=gen, dtype=torch.float64)
    w = torch.randn(cfg["out_channels"], cfg["in_channels"] // cfg["groups"], *cfg["kernel"], generator=gen, dtype=torch.float64)
    b = torch.randn(cfg["out_channels"], generator=gen, dtype=torch.float64) if cfg["bias"] else None
    return [t.to(dtype).requires_grad_() if t is not None else None for t in (x, w, b)]


@pytest.mark.parametrize("chunk", range(CHUNKS))
def test_conv_matches_torch_float64(chunk, conv_route):
    rng = random.Random(1000 + chunk)
    for i in range(CONFIGS_PER_CHUNK):
        cfg = random_conv_config(rng)
        d, kw = cfg["dims"], cfg["kwargs"]
        check_op(lambda x, w, b: OURS[d](x, w, b, **kw), lambda x, w, b: THEIRS[d](x, w, b, **kw),
                 make_inputs(cfg, seed=i), rtol=1e-10, context=f"config {cfg}")


def direct(cfg: dict) -> bool:
    """Whether a training step of ``cfg`` takes the compiled loops (routing._direct_loops)."""
    from cnnlab.ops import routing
    from cnnlab.ops.textbook.shapes import as_tuple, conv_padding

    d, kw = cfg["dims"], cfg["kwargs"]
    dilation, stride = as_tuple(kw["dilation"], d, "dilation"), as_tuple(kw["stride"], d, "stride")
    x, w, _ = make_inputs(cfg)
    x = x if not cfg["unbatched"] else x.unsqueeze(0)
    return routing._direct_loops(x, w, cfg["kernel"], stride, conv_padding(kw["padding"], cfg["kernel"], dilation, stride),
                              dilation, cfg["groups"]) is not None


@pytest.mark.parametrize("seed", range(40))
def test_conv_float32_within_float32_tolerance(seed, conv_route):
    rng = random.Random(seed)
    cfg = random_conv_config(rng)
    while conv_route == "compiled" and not direct(cfg):
        cfg = random_conv_config(rng)  # one the compiled loops take
    d, kw = cfg["dims"], cfg["kwargs"]
    check_op(lambda x, w, b: OURS[d](x, w, b, **kw), lambda x, w, b: THEIRS[d](x, w, b, **kw),
             make_inputs(cfg, torch.float32, seed), rtol=2e-5, context=f"config {cfg}")


def test_conv_bfloat16_close_to_float32_result():
    torch.manual_seed(0)
    x, w, b = torch.randn(4, 8, 12, 12), torch.randn(16, 8, 3, 3) / 8, torch.randn(16)
    expected = F.conv2d(x, w, b, padding=1)
    ours = ops.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), padding=1)
    assert ours.dtype == torch.bfloat16
    assert max_rel_error(ours.float(), expected) < 2e-2


@pytest.mark.parametrize("kwargs", [
    {"stride": 2, "padding": 1},
    {"padding": "same", "dilation": 2},
    {"stride": (1, 2), "padding": (2, 0), "dilation": (1, 2)},
])
def test_conv_gradcheck(kwargs):
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 7, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: ops.conv2d(x, w, b, groups=2, **kwargs), (x, w, b))


def test_same_padding_with_even_kernel_pads_more_on_the_right():
    x = torch.arange(5.0).view(1, 1, 5)
    w = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # picks the first tap of each window
    # total padding 3: 1 before, 2 after, so output i reads x[i - 1]
    assert ops.conv1d(x, w, padding="same").flatten().tolist() == [0.0, 0.0, 1.0, 2.0, 3.0]


def test_conv_skips_gradients_nobody_asked_for():
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)  # no grad: the first layer's case
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    out = ops.conv2d(x, w, padding=1)
    (gw,) = torch.autograd.grad(out.sum(), [w])
    expected = torch.autograd.grad(F.conv2d(x, w, padding=1).sum(), [w])[0]
    assert max_rel_error(gw, expected) < 1e-12


def test_conv_accepts_channels_last_and_non_contiguous_inputs():
    x = torch.randn(2, 6, 9, 9, dtype=torch.float64)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
    for variant in (x.to(memory_format=torch.channels_last), x[:, :, ::2, 1::2], x.transpose(2, 3)):
        assert max_rel_error(ops.conv2d(variant, w, groups=2), F.conv2d(variant, w, groups=2)) < 1e-12


def test_conv_output_size_formula():
    assert ops.conv_output_size(8, 3, padding=1) == 8
    assert ops.conv_output_size(8, 5, padding=2) == 8
    assert ops.conv_output_size(8, 3, padding=1, stride=2) == 4
    assert ops.conv_output_size(8, 3, padding=0, stride=3) == 2
    assert ops.conv_output_size(8, 5, padding=1, stride=4) == 2
    assert ops.conv_output_size(10, 3, dilation=2) == 6
    with pytest.raises(ValueError, match="stride must be >= 1, got 0"):
        ops.conv_output_size(8, 3, stride=0)
    with pytest.raises(ValueError, match="larger than the padded input"):
        ops.conv_output_size(2, 5)


@pytest.mark.usefixtures("tensor_routes")
@pytest.mark.parametrize("chunk", range(4))
def test_wide_stride1_convolutions_without_window_matrix_match_torch(chunk):
    """Wide, stride-1 layers on large maps take the window-free layout (ShiftedConvNd): sweep it."""
    from cnnlab.ops.routing import _use_shifted
    from cnnlab.ops.textbook.shapes import conv_padding

    rng = random.Random(7000 + chunk)
    taken = 0
    for i in range(30):
        dims = rng.choice([1, 2, 2, 3])
        kernel = tuple(rng.randint(1, 3) for _ in range(dims))
        dilation = tuple(rng.randint(1, 2) for _ in range(dims))
        padding = rng.choice(["same", "valid", rng.randint(0, 2), tuple(rng.randint(0, 2) for _ in range(dims))])
        size = {1: (60, 90), 2: (20, 30), 3: (9, 12)}[dims]
        cfg = {"dims": dims, "batch": rng.randint(1, 2), "unbatched": rng.random() < 0.1, "in_channels": rng.randint(16, 20),
               "out_channels": rng.randint(1, 5), "groups": 1, "kernel": kernel, "bias": rng.random() < 0.7,
               "spatial": tuple(rng.randint(*size) for _ in range(dims))}
        kw = {"padding": padding, "dilation": dilation}
        x = torch.zeros(1, cfg["in_channels"], *cfg["spatial"])
        taken += _use_shifted(x, kernel, (1,) * dims, conv_padding(padding, kernel, dilation, (1,) * dims), dilation, 1)
        check_op(lambda x, w, b: OURS[dims](x, w, b, **kw), lambda x, w, b: THEIRS[dims](x, w, b, **kw),
                 make_inputs(cfg, seed=i), rtol=1e-10, context=f"config {cfg} {kw}")
    assert taken >= 10  # the sweep does exercise that layout (about half of its configurations)


@pytest.mark.usefixtures("tensor_routes")
def test_per_tap_products_only_in_training(monkeypatch):
    """The per-tap layout (ShiftedConvNd) was measured faster forward + backward; the forward pass alone is
    faster through the window matrix, so inference (no grad, or inputs that need none) takes that; both
    equal torch."""
    from cnnlab.ops.kernels import shifted

    taken = []
    real = shifted.ShiftedConvNd.apply
    monkeypatch.setattr(shifted.ShiftedConvNd, "apply", lambda *args: taken.append(1) or real(*args))
    x = torch.randn(2, 20, 9, 11, dtype=torch.float64)
    w = torch.randn(7, 20, 3, 3, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(x, w, padding=1)
    with torch.no_grad():
        torch.testing.assert_close(ops.conv2d(x, w, padding=1), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ops.conv2d(x, w, padding=1), expected, rtol=1e-10, atol=1e-12)  # nothing needs a gradient
    assert not taken
    torch.testing.assert_close(ops.conv2d(x, w.requires_grad_(), padding=1), expected, rtol=1e-10, atol=1e-12)
    assert taken


@pytest.mark.usefixtures("tensor_routes")
@pytest.mark.parametrize("chunk", range(2))
def test_pointwise_convolutions_match_torch_in_both_layouts(chunk, monkeypatch):
    """1x1 (1, 1x1x1) stride-1 unpadded layers with 8 or more input channels take PointwiseConvNd (one
    product per pass, no windows): sweep it in 1-3 dimensions, both memory layouts, with and without bias,
    in float64 against torch; a strided, padded or grouped 1x1 layer, or one with fewer channels, does not."""
    from cnnlab.ops.kernels import pointwise

    taken = []
    real = pointwise.PointwiseConvNd.apply
    monkeypatch.setattr(pointwise.PointwiseConvNd, "apply", lambda *args: taken.append(1) or real(*args))
    rng = random.Random(8000 + chunk)
    for i in range(25):
        dims = rng.choice([1, 2, 2, 3])
        cfg = {"dims": dims, "batch": rng.randint(1, 3), "unbatched": rng.random() < 0.1, "in_channels": rng.randint(8, 40),
               "out_channels": rng.randint(1, 24), "groups": 1, "kernel": (1,) * dims, "bias": rng.random() < 0.6,
               "spatial": tuple(rng.randint(1, 9) for _ in range(dims))}
        x, w, b = make_inputs(cfg, seed=i)
        if dims == 2 and x.dim() == 4 and rng.random() < 0.5:
            x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        taken.clear()
        out = check_op(lambda x, w, b: OURS[dims](x, w, b), lambda x, w, b: THEIRS[dims](x, w, b), [x, w, b], rtol=1e-10,
                       context=f"config {cfg} layout {x.stride()}")
        assert taken, cfg
        theirs = THEIRS[dims](x, w, b)
        assert out.shape == theirs.shape and out.is_contiguous() == theirs.is_contiguous(), cfg
    x = torch.randn(2, 8, 6, 6, dtype=torch.float64)
    for kw in ({"stride": 2}, {"padding": 1}):
        taken.clear()
        ops.conv2d(x, torch.randn(4, 8, 1, 1, dtype=torch.float64), **kw)
        assert not taken, kw
    taken.clear()
    ops.conv2d(x, torch.randn(4, 4, 1, 1, dtype=torch.float64), groups=2)
    ops.conv2d(x[:, :7], torch.randn(4, 7, 1, 1, dtype=torch.float64))
    assert not taken
    inputs = (x[:, :, :3, :3].clone().requires_grad_(), torch.randn(3, 8, 1, 1, dtype=torch.float64, requires_grad=True),
              torch.randn(3, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradgradcheck(lambda x, w, b: ops.conv2d(x, w, b), inputs)  # second order: the reference form
    assert taken


@pytest.mark.usefixtures("tensor_routes")
@pytest.mark.parametrize("chunk", range(4))
def test_input_gradient_computed_as_a_convolution_of_the_output_gradient_matches_torch(chunk, monkeypatch):
    """Stride-1 layers with no more outputs than inputs (DenseNet's growth layers, ResNet's blocks), or up to
    twice as many with 25 taps or more (GoogLeNet's 5x5 branches), that take the window matrix compute grad_x
    as a convolution with the flipped kernel: sweep that path."""
    from cnnlab.ops import routing
    from cnnlab.ops.kernels.window import _transposed_by_convolution
    from cnnlab.ops.routing import _use_shifted
    from cnnlab.ops.textbook.shapes import conv_padding

    monkeypatch.setattr(routing, "FOURIER_MIN_TAPS", None)  # 2-D 5x5 layers would go through the DFT (FourierConv2d)
    rng = random.Random(9000 + chunk)
    taken = wider = 0
    for i in range(40):
        dims = rng.choice([1, 2, 2, 3])
        kernel = tuple(rng.randint(1, 4 if dims < 3 else 3) for _ in range(dims))
        dilation = tuple(rng.randint(1, 3) for _ in range(dims))
        padding = rng.choice(["same", "valid", rng.randint(0, 3), tuple(rng.randint(0, 3) for _ in range(dims))])
        c = rng.randint(9, 20)
        out_channels = rng.randint(1, c)
        if rng.random() < 0.3:  # a padded 5x5 kernel with more outputs than inputs
            dims, kernel, dilation, padding, out_channels = 2, (5, 5), (1, 1), rng.choice([2, "same"]), rng.randint(c + 1, 2 * c)
        cfg = {"dims": dims, "batch": rng.randint(2, 4), "unbatched": rng.random() < 0.1, "in_channels": c,
               "out_channels": out_channels, "groups": 1, "kernel": kernel, "bias": rng.random() < 0.7,
               "spatial": tuple(d * (k - 1) + rng.randint(3, 8 if dims < 3 else 4) for k, d in zip(kernel, dilation))}
        kw = {"padding": padding, "dilation": dilation}
        ones = (1,) * dims
        pads = conv_padding(padding, kernel, dilation, ones)
        n = 1 if cfg["unbatched"] else cfg["batch"]
        x = torch.zeros(1, c, *cfg["spatial"])
        took = (not _use_shifted(x, kernel, ones, pads, dilation, 1) and c >= 8  # not planar (PLANAR_MAX_CHANNELS)
                and _transposed_by_convolution(c, cfg["out_channels"], ones, pads, dilation, kernel, n * math.prod(cfg["spatial"]),
                                               n * math.prod(s + lo + hi - d * (k - 1) for s, (lo, hi), d, k
                                                             in zip(cfg["spatial"], pads, dilation, kernel))))
        taken += took
        wider += took and out_channels > c
        inputs = make_inputs(cfg, seed=i)
        if inputs[0].dim() == 4 and rng.random() < 0.5:  # the layout the training loop uses
            inputs[0] = inputs[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        check_op(lambda x, w, b: OURS[dims](x, w, b, **kw), lambda x, w, b: THEIRS[dims](x, w, b, **kw),
                 inputs, rtol=1e-10, context=f"config {cfg} {kw}")
    assert taken >= 15 and wider >= 5  # most of the sweep takes the path under test, some with more outputs


@pytest.mark.usefixtures("tensor_routes")
@pytest.mark.parametrize("chunk", range(3))
def test_window_matrix_built_block_by_block_matches_torch(chunk, monkeypatch):
    """Large layers build the window matrix a block of samples at a time (forward, and again in the
    backward for grad_w and grad_x): with a tiny block budget every configuration below is cut into
    blocks of one or two samples, including the last, shorter block."""
    from cnnlab.ops.kernels import window

    monkeypatch.setattr(window, "BLOCK_BYTES", 1)
    blocks = []
    real = window._sample_blocks
    monkeypatch.setattr(window, "_sample_blocks", lambda windows: blocks.append(len(real(windows))) or real(windows))
    rng = random.Random(11000 + chunk)
    for i in range(60):
        cfg = random_conv_config(rng)
        cfg["batch"], cfg["unbatched"] = rng.randint(2, 5), False
        cfg["groups"] = cfg["kwargs"]["groups"] = 1  # the path under test: groups 1, at least 8 input channels
        cfg["in_channels"] = rng.randint(8, 20)
        d, kw = cfg["dims"], cfg["kwargs"]
        inputs = make_inputs(cfg, seed=i)
        if d == 2 and rng.random() < 0.5:  # the layout the training loop uses
            inputs[0] = inputs[0].detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        check_op(lambda x, w, b: OURS[d](x, w, b, **kw), lambda x, w, b: THEIRS[d](x, w, b, **kw),
                 inputs, rtol=1e-10, context=f"config {cfg}")
    assert sum(n > 1 for n in blocks) >= 60  # forward and backward of most configurations went through several blocks


@pytest.mark.usefixtures("tensor_routes")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels", [(64, 12), (128, 24), (36, 12)])
def test_weight_gradient_of_wide_narrow_layers_matches_torch(dtype, channels, monkeypatch):
    """A wide kernel matrix and few outputs (K*C >= 576 with <= 12 outputs, K*C >= 1152 with <= 32:
    DenseNet's growth layers) take the weight gradient from oneDNN's product, block by block and summed;
    the rest from torch.mm accumulating in place. Both, in float64 and float32, in several blocks."""
    from cnnlab.ops import routing
    from cnnlab.ops.kernels import window

    c, o = channels
    monkeypatch.setattr(routing, "FOURIER_MIN_TAPS", None)  # 6x6 maps with 32+ channels would go through the DFT
    monkeypatch.setattr(window, "BLOCK_BYTES", 3 * 36 * 9 * c * dtype.itemsize)  # 3 samples a block: 3 + 3 + 1
    calls = []
    real = window.mm_nt
    monkeypatch.setattr(window, "mm_nt", lambda a, b, bias=None: calls.append((a.shape[0], b.shape[0])) or real(a, b, bias))
    gen = torch.Generator().manual_seed(c)
    x = torch.randn(7, c, 6, 6, generator=gen, dtype=torch.float64).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(o, c, 3, 3, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    check_op(lambda x, w: ops.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1), [x, w],
             rtol=1e-10 if dtype == torch.float64 else 2e-5, context=f"{c}->{o} {dtype}")
    by_onednn = calls.count((o, 9 * c))  # (O, rows) @ (rows, K*C)^T: one per block
    assert by_onednn == (0 if c == 36 else 3)


@pytest.mark.usefixtures("tensor_routes")
def test_window_blocks_fit_the_budget_and_cover_the_batch(monkeypatch):
    from cnnlab.ops.kernels import window

    windows = torch.zeros(10, 3, 3, 2, 2, 4)  # 144 values = 576 bytes a sample
    monkeypatch.setattr(window, "BLOCK_BYTES", 3 * 576 + 100)
    assert window._sample_blocks(windows) == [(0, 3), (3, 6), (6, 9), (9, 10)]
    monkeypatch.setattr(window, "BLOCK_BYTES", 10**9)
    assert window._sample_blocks(windows) == [(0, 10)]


@pytest.mark.usefixtures("tensor_routes")
def test_few_channel_convolutions_in_channels_last_match_torch_float64():
    """Fewer than 8 input channels (a network's first layer) in the training layout: with 16 or more
    outputs the result is produced channels-last directly and grad_w read from a channels-last
    grad_out, with fewer made channels-first and converted: sweep both."""
    rng = random.Random(12000)
    for i in range(60):
        cfg = random_conv_config(rng)
        cfg.update(dims=2, groups=1, unbatched=False, in_channels=rng.randint(1, 7), batch=rng.randint(1, 4),
                   out_channels=rng.choice([rng.randint(1, 6), rng.randint(16, 20)]))  # both sides of PLANAR_MIN_ROWS_OUT
        cfg["kwargs"]["groups"] = 1
        if len(cfg["kernel"]) != 2:
            cfg["kernel"] = (rng.randint(1, 4), rng.randint(1, 4))
            cfg["kwargs"].update(stride=rng.randint(1, 2), dilation=rng.randint(1, 2), padding=rng.randint(0, 1))
            cfg["spatial"] = (9, 10)
        x, w, b = make_inputs(cfg, seed=i)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        kw = cfg["kwargs"]
        check_op(lambda x, w, b: ops.conv2d(x, w, b, **kw), lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b],
                 rtol=1e-10, context=f"config {cfg}")
        ours, theirs = ops.conv2d(x, w, b, **kw), F.conv2d(x, w, b, **kw)
        for layout in (torch.channels_last, torch.contiguous_format):  # the layout torch gives, too
            assert ours.is_contiguous(memory_format=layout) == theirs.is_contiguous(memory_format=layout)


@pytest.mark.usefixtures("tensor_routes")
def test_pointwise_convolutions_of_channels_last_inputs_read_the_input_in_place(monkeypatch):
    """A 1x1 stride-1 convolution of a channels-last input (PointwiseConvNd) multiplies the input's own
    memory: the forward product's operand is x's storage, not a copy. Values and gradients against torch."""
    from cnnlab.ops.kernels import pointwise

    operands = []
    real = pointwise.mm_nt
    monkeypatch.setattr(pointwise, "mm_nt", lambda a, b, bias=None: operands.append(a.untyped_storage().data_ptr()) or real(a, b, bias))
    rng = random.Random(13000)
    for i in range(20):
        c, o = rng.randint(8, 40), rng.randint(1, 40)
        cfg = {"dims": 2, "batch": rng.randint(1, 4), "unbatched": False, "in_channels": c, "out_channels": o, "groups": 1,
               "kernel": (1, 1), "bias": rng.random() < 0.5, "spatial": (rng.randint(1, 9), rng.randint(1, 9))}
        x, w, b = make_inputs(cfg, seed=i)
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        operands.clear()
        ops.conv2d(x, w, b)
        assert operands[0] == x.untyped_storage().data_ptr(), cfg
        check_op(lambda x, w, b: ops.conv2d(x, w, b), lambda x, w, b: F.conv2d(x, w, b), [x, w, b], rtol=1e-10,
                 context=f"config {cfg}")


def test_input_gradient_route_follows_the_measured_shapes():
    """The input gradient's route for the layers it was measured on (see ``_transposed_by_convolution``)."""
    from cnnlab.ops.kernels.window import _transposed_by_convolution

    same5, ones = ((2, 2), (2, 2)), (1, 1)
    assert _transposed_by_convolution(8, 16, ones, same5, ones, (5, 5), 128 * 196, 128 * 196)  # GoogLeNet's 5x5 branch
    assert _transposed_by_convolution(68, 12, ones, ((1, 1), (1, 1)), ones, (3, 3), 128 * 196, 128 * 196)  # DenseNet growth
    assert not _transposed_by_convolution(12, 24, ones, ((1, 1), (1, 1)), ones, (3, 3), 128 * 196, 128 * 196)  # 3x3, wider
    assert not _transposed_by_convolution(8, 32, ones, same5, ones, (5, 5), 128 * 196, 128 * 196)  # four times the outputs
    # lenet-modern's unpadded 32->64 5x5: the window matrix of grad_out would cover 14x14 positions, col2im's 10x10
    assert not _transposed_by_convolution(32, 64, ones, ((0, 0), (0, 0)), ones, (5, 5), 256 * 196, 256 * 100)
    assert not _transposed_by_convolution(512, 512, ones, ((1, 1), (1, 1)), ones, (3, 3), 32, 32)  # a tiny map


@pytest.mark.usefixtures("tensor_routes")
@pytest.mark.parametrize("chunk", range(3))
def test_convolution_through_the_dft_matches_torch_float64(chunk):
    """FourierConv2d on its own, over every geometry it accepts: strides, dilations, uneven padding,
    kernels of 1x1 to 6x6, with and without bias, each gradient asked for alone or with the others."""
    from cnnlab.ops.kernels.fourier import FourierConv2d

    rng = random.Random(14000 + chunk)
    for i in range(40):
        kernel = (rng.randint(1, 6), rng.randint(1, 6))
        stride, dilation = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(1, 3), rng.randint(1, 3))
        pads = tuple((rng.randint(0, 3), rng.randint(0, 3)) for _ in range(2))
        spatial = tuple(max(1, d * (k - 1) + 1 - lo - hi) + rng.randint(0, 9) for k, d, (lo, hi) in zip(kernel, dilation, pads))
        n, c, o = rng.randint(1, 4), rng.randint(1, 6), rng.randint(1, 6)
        gen = torch.Generator().manual_seed(i)
        x = torch.randn(n, c, *spatial, generator=gen, dtype=torch.float64)
        if rng.random() < 0.5:
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.randn(o, c, *kernel, generator=gen, dtype=torch.float64)
        b = torch.randn(o, generator=gen, dtype=torch.float64) if rng.random() < 0.7 else None
        needs = rng.choice([(True, True, True), (False, True, True), (True, False, False), (True, True, False)])
        inputs = [t.requires_grad_(need) if t is not None else None for t, need in zip((x, w, b), needs)]
        flat = [p for lo_hi in reversed(pads) for p in lo_hi]

        def theirs(x, w, b):
            return F.conv2d(F.pad(x, flat), w, b, stride=stride, dilation=dilation)

        check_op(lambda x, w, b: FourierConv2d.apply(x, w, b, stride, pads, dilation), theirs, inputs, rtol=1e-10,
                 context=f"x {tuple(x.shape)} w {tuple(w.shape)} stride {stride} pads {pads} dilation {dilation} needs {needs}")


@pytest.mark.usefixtures("tensor_routes")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_large_kernels_and_small_maps_take_the_dft_route(dtype, monkeypatch):
    """In training, conv2d sends stride-1 layers with 25 taps or more and at least 3 input channels, and
    3x3 layers on 5-16 px maps with at least 8 channels and 32 samples (4 px maps: 64), through the DFT (the layers
    where it measured faster), in either layout, and matches torch there; 1-2 input channels, 3x3
    kernels elsewhere or on smaller batches, and strides keep the window matrix."""
    from cnnlab.ops import routing
    from cnnlab.ops.kernels import fourier

    taken = []
    real = fourier.FourierConv2d.apply
    monkeypatch.setattr(fourier.FourierConv2d, "apply", lambda *args: taken.append(tuple(args[1].shape)) or real(*args))
    gen = torch.Generator().manual_seed(5)
    cases = [((3, 8, 10, 10), (6, 8, 5, 5), 2, 1, True), ((2, 3, 9, 7), (4, 3, 5, 5), 0, 1, True),
             ((2, 6, 12, 12), (5, 6, 7, 7), 3, 1, True), ((2, 2, 9, 9), (4, 2, 5, 5), 2, 1, False),
             ((2, 8, 9, 9), (4, 8, 3, 3), 1, 1, False), ((2, 8, 11, 11), (4, 8, 5, 5), 2, 2, False),
             ((32, 32, 7, 7), (5, 32, 3, 3), 1, 1, True), ((32, 40, 8, 6), (3, 40, 3, 3), 0, 1, True),
             ((32, 32, 16, 16), (2, 32, 3, 3), 1, 1, True), ((31, 32, 7, 7), (5, 32, 3, 3), 1, 1, False),
             ((32, 32, 17, 17), (2, 32, 3, 3), 1, 1, False), ((32, 32, 4, 4), (5, 32, 3, 3), 1, 1, False),
             ((32, 8, 7, 7), (5, 8, 3, 3), 1, 1, True), ((32, 7, 7, 7), (5, 7, 3, 3), 1, 1, False),
             ((32, 16, 14, 14), (6, 16, 3, 3), 1, 1, True), ((32, 16, 14, 14), (6, 16, 3, 3), 1, 2, False), ((64, 32, 4, 4), (3, 32, 3, 3), 1, 1, True),
             ((63, 32, 4, 4), (3, 32, 3, 3), 1, 1, False), ((64, 32, 3, 3), (3, 32, 3, 3), 1, 1, False)]
    for x_shape, w_shape, padding, stride, routed in cases:
        for layout in (torch.contiguous_format, torch.channels_last):
            x = torch.randn(x_shape, generator=gen, dtype=torch.float64).to(dtype).contiguous(memory_format=layout)
            w = torch.randn(w_shape, generator=gen, dtype=torch.float64).to(dtype)
            b = torch.randn(w_shape[0], generator=gen, dtype=torch.float64).to(dtype)
            taken.clear()
            out = check_op(lambda x, w, b: ops.conv2d(x, w, b, padding=padding, stride=stride),
                           lambda x, w, b: F.conv2d(x, w, b, padding=padding, stride=stride),
                           [x.requires_grad_(), w.requires_grad_(), b.requires_grad_()],
                           rtol=1e-10 if dtype == torch.float64 else 2e-5, context=f"{x_shape} {w_shape} {layout}")
            assert bool(taken) == routed, (x_shape, w_shape, stride)
            theirs = F.conv2d(x, w, b, padding=padding, stride=stride)
            assert out.is_contiguous(memory_format=layout) == theirs.is_contiguous(memory_format=layout)
    w = torch.zeros(4, 8, 5, 5, requires_grad=True)
    assert routing._use_fourier(torch.zeros(1, 8, 9, 9), w, (5, 5), (1, 1), (1, 1), 1)
    assert not routing._use_fourier(torch.zeros(1, 8, 9, 9, dtype=torch.float16), w.half(), (5, 5), (1, 1), (1, 1), 1)
    assert not routing._use_fourier(torch.zeros(1, 8, 9, 9), w.detach(), (5, 5), (1, 1), (1, 1), 1)  # inference: forward only
    with torch.no_grad():
        assert not routing._use_fourier(torch.zeros(1, 8, 9, 9), w, (5, 5), (1, 1), (1, 1), 1)


@pytest.mark.usefixtures("tensor_routes")
def test_dft_float32_error_is_no_larger_than_torchs_own():
    """In float32 the DFT route's error against the float64 truth (largest and RMS, relative to the
    largest and RMS value) stays within torch's own float32 convolution's, for the output, grad_x and
    grad_w (measured 1.5-6x smaller on grad_w, up to 1.1x torch's RMS on the output)."""
    from cnnlab.ops.kernels.fourier import FourierConv2d

    gen = torch.Generator().manual_seed(21)
    for n, c, o, size, k, p in [(8, 16, 32, 14, 5, 2), (16, 6, 16, 14, 5, 0), (4, 64, 64, 7, 3, 1)]:
        x = torch.randn(n, c, size, size, generator=gen, dtype=torch.float64)
        w = torch.randn(o, c, k, k, generator=gen, dtype=torch.float64) / (c * k * k) ** 0.5
        g = torch.randn(n, o, size + 2 * p - k + 1, size + 2 * p - k + 1, generator=gen, dtype=torch.float64)

        def run(conv, x, w):
            x, w = x.clone().requires_grad_(), w.clone().requires_grad_()
            y = conv(x, w)
            return (y, *torch.autograd.grad(y, (x, w), g.to(y.dtype)))

        truth = run(lambda x, w: F.conv2d(x, w, padding=p), x, w)
        ours = run(lambda x, w: FourierConv2d.apply(x, w, None, (1, 1), ((p, p), (p, p)), (1, 1)), x.float(), w.float())
        theirs = run(lambda x, w: F.conv2d(x, w, padding=p), x.float(), w.float())
        for name, a, b, t in zip(("y", "grad_x", "grad_w"), ours, theirs, truth):
            largest = [(u.double() - t).abs().max() / t.abs().max() for u in (a, b)]
            rms = [(u.double() - t).pow(2).mean().sqrt() / t.pow(2).mean().sqrt() for u in (a, b)]
            assert largest[0] <= 1.5 * largest[1] and rms[0] <= 1.5 * rms[1], (name, (n, c, o, size, k), largest, rms)
