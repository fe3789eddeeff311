"""The rest of the operator contract, as torch keeps it: empty batches, memory format of outputs and
gradients, autocast (mixed precision) with the default backend."""

from __future__ import annotations

import copy
import random

import pytest
import torch
import torch.nn.functional as F

from cnnlab import nn as cnn
from cnnlab import ops
from cnnlab.models import create_model

from helpers import max_rel_error

EMPTY = [
    (lambda x, w: ops.conv1d(x, w, padding=1), lambda x, w: F.conv1d(x, w, padding=1), (0, 3, 9), (4, 3, 3)),
    (lambda x, w: ops.conv2d(x, w, stride=2), lambda x, w: F.conv2d(x, w, stride=2), (0, 3, 9, 8), (4, 3, 3, 3)),
    (lambda x, w: ops.conv3d(x, w), lambda x, w: F.conv3d(x, w), (0, 2, 4, 4, 4), (3, 2, 2, 2, 2)),
    (lambda x, w: ops.max_pool2d(x, 2), lambda x, w: F.max_pool2d(x, 2), (0, 3, 8, 8), None),
    (lambda x, w: ops.avg_pool3d(x, 2), lambda x, w: F.avg_pool3d(x, 2), (0, 2, 4, 4, 4), None),
    (lambda x, w: ops.adaptive_avg_pool2d(x, 3), lambda x, w: F.adaptive_avg_pool2d(x, 3), (0, 3, 8, 8), None),
    (lambda x, w: ops.batch_norm(x, None, None, w, None, training=True),
     lambda x, w: F.batch_norm(x, None, None, w, None, training=True), (0, 3, 5, 5), (3,)),
    (lambda x, w: ops.batch_norm(x, torch.zeros(3), torch.ones(3), w, None),
     lambda x, w: F.batch_norm(x, torch.zeros(3), torch.ones(3), w, None), (0, 3), (3,)),
]


@pytest.mark.parametrize(("ours", "theirs", "x_shape", "w_shape"), EMPTY)
def test_an_empty_batch_gives_torchs_empty_output_and_zero_gradients(ours, theirs, x_shape, w_shape):
    results = []
    for op in (ours, theirs):
        x = torch.zeros(x_shape, requires_grad=True)
        w = torch.randn(w_shape, requires_grad=True) if w_shape else None
        out = op(x, w)
        out.sum().backward()
        results.append((out.shape, x.grad.shape, None if w is None else w.grad))
    (shape, xg, wg), (shape_t, xg_t, wg_t) = results
    assert shape == shape_t and xg == xg_t
    assert wg is None or (torch.equal(wg, torch.zeros_like(wg)) and (wg_t is None or torch.equal(wg, wg_t)))


def test_convolution_output_memory_format_is_torchs():
    rng = random.Random(5)
    for n in range(60):
        c, o = rng.choice([1, 2, 3, 8, 17]), rng.randint(1, 5)
        x = torch.randn(2, c, rng.randint(5, 12), rng.randint(5, 12))
        w = torch.randn(o, c, rng.randint(1, 3), rng.randint(1, 3))
        if rng.random() < 0.5:
            x = x.to(memory_format=torch.channels_last)
        if rng.random() < 0.3:
            w = w.to(memory_format=torch.channels_last)
        kw = {"stride": rng.randint(1, 2), "padding": rng.randint(0, 1)}
        ours, theirs = ops.conv2d(x, w, **kw), F.conv2d(x, w, **kw)
        for fmt in (torch.contiguous_format, torch.channels_last):  # (strides of size-1 axes carry no layout)
            assert ours.is_contiguous(memory_format=fmt) == theirs.is_contiguous(memory_format=fmt), (n, tuple(x.shape), x.stride(), w.stride())
        assert max_rel_error(ours, theirs) < 1e-5
    x3 = torch.randn(1, 4, 5, 6, 7).to(memory_format=torch.channels_last_3d)
    w3 = torch.randn(2, 4, 2, 2, 2)
    for fmt in (torch.contiguous_format, torch.channels_last_3d):
        assert ops.conv3d(x3, w3).is_contiguous(memory_format=fmt) == F.conv3d(x3, w3).is_contiguous(memory_format=fmt)


@pytest.mark.parametrize("channels", [1, 6, 20])
def test_weight_gradients_keep_their_parameters_layout(channels):
    for layout in (torch.channels_last, torch.contiguous_format):
        w = torch.randn(8, channels, 5, 5).to(memory_format=layout).requires_grad_()
        x = torch.randn(4, channels, 14, 14).to(memory_format=torch.channels_last)
        ops.conv2d(x, w, padding=2).sum().backward()
        assert w.grad.stride() == w.stride()


@pytest.mark.parametrize("name", ["lenet", "bn-lenet", "resnet18"])
def test_autocast_runs_the_scratch_backend_like_torchs(name):
    size = 28 if "lenet" in name else 32
    ours, theirs = create_model(name), create_model(name, backend="torch")
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(8, 1, size, size)
    outs = []
    for model in (ours, theirs):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
        out.float().logsumexp(1).sum().backward()
        outs.append(out)
    truth = copy.deepcopy(ours).double()(x.double())
    assert outs[0].dtype == outs[1].dtype == torch.bfloat16
    err_ours, err_theirs = (outs[0].double() - truth).abs().max(), (outs[1].double() - truth).abs().max()
    assert err_ours <= 2 * err_theirs + 0.02, (float(err_ours), float(err_theirs))  # within torch's own bfloat16 error
    for (n, a), b in zip(ours.named_parameters(), theirs.parameters()):
        assert a.grad is not None and a.grad.dtype == torch.float32 and a.grad.shape == b.grad.shape, n


# torch's convolution, pooling, normalisation and im2col/col2im kernels, oneDNN's included (mkldnn_convolution,
# mkldnn_max_pool2d, ...). oneDNN's matrix product (mkldnn::_linear_pointwise) is allowed: the scratch
# convolutions are products of window matrices, and that product engine is the faster one on some CPUs.
FORBIDDEN = ("convolution", "conv1d", "conv2d", "conv3d", "conv_transpose", "max_pool", "avg_pool", "adaptive_avg_pool",
             "batch_norm", "im2col", "col2im", "unfold", "fold")


def test_no_torch_convolution_pooling_or_norm_kernel_is_reached_at_any_order():
    """A dispatcher-level look (TorchDispatchMode) at every aten op the scratch ops reach: forward, backward,
    the backward of the backward, forward-mode AD and vmap. None is torch's convolution, pooling, batch
    norm or im2col/col2im."""
    from torch.func import jvp, vmap
    from torch.utils._python_dispatch import TorchDispatchMode

    class Record(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.seen.add(func._schema.name)
            return func(*args, **(kwargs or {}))

    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bn_w = torch.rand(4, dtype=torch.float64, requires_grad=True)

    def net(x, w):
        y = ops.conv2d(x, w, padding=1)
        y = ops.batch_norm(y, None, None, bn_w, None, training=True)
        y = ops.max_pool2d(y, 2) + ops.avg_pool2d(y, 2)
        return ops.adaptive_avg_pool2d(y, 1).sum()

    with Record() as record:
        (gx, gw) = torch.autograd.grad(net(x, w), (x, w), create_graph=True)
        torch.autograd.grad(gx.pow(2).sum() + gw.pow(2).sum(), (x, w))
        jvp(lambda x: net(x, w.detach()), (x.detach(),), (torch.ones_like(x),))
        vmap(lambda x: net(x.unsqueeze(0), w.detach()))(x.detach())
        # float32: the training dtype, where products may go through oneDNN's matrix product
        x32 = torch.randn(2, 16, 12, 12).contiguous(memory_format=torch.channels_last).requires_grad_()
        w32 = torch.randn(8, 16, 3, 3, requires_grad=True)
        y = ops.batch_norm(ops.conv2d(x32, w32, padding=1, stride=2), None, None, training=True)
        (ops.max_pool2d(y, 2).sum() + ops.avg_pool2d(y, 2).sum()).backward()
    reached = sorted(name for name in record.seen if any(word in name for word in FORBIDDEN))
    assert record.seen and not reached, reached


def test_per_sample_gradients_of_a_whole_scratch_model_equal_torchs():
    from torch.func import functional_call, grad, vmap

    ours, theirs = create_model("lenet").double(), create_model("lenet", backend="torch").double()
    theirs.load_state_dict(ours.state_dict())
    x, y = torch.randn(5, 1, 28, 28, dtype=torch.float64), torch.arange(5)
    results = []
    for model in (ours, theirs):
        params = {k: v.detach() for k, v in model.named_parameters()}

        def loss(p, xi, yi, model=model):
            return F.cross_entropy(functional_call(model, p, (xi.unsqueeze(0),)), yi.unsqueeze(0))

        results.append(vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y))
    for k in results[0]:
        assert results[0][k].shape[0] == 5 and max_rel_error(results[0][k], results[1][k]) < 1e-10, k


INPLACE_AFTER = [  # (name, op(x, w), x shape, weight shape): every fast path a layer can take
    ("conv2d windows", lambda f, x, w: f.conv2d(x, w, stride=2, padding=1), (3, 4, 9, 9), (5, 4, 3, 3)),
    ("conv2d shifted", lambda f, x, w: f.conv2d(x, w, padding=1), (3, 4, 9, 9), (5, 4, 3, 3)),
    ("conv2d planar", lambda f, x, w: f.conv2d(x, w, padding=2), (3, 1, 9, 9), (5, 1, 5, 5)),
    ("conv1d", lambda f, x, w: f.conv1d(x, w), (3, 4, 9), (5, 4, 3)),
    ("conv3d groups", lambda f, x, w: f.conv3d(x, w, groups=2), (2, 4, 5, 5, 5), (4, 2, 2, 2, 2)),
    ("max_pool2d", lambda f, x, w: f.max_pool2d(x, 3, stride=2, padding=1), (3, 4, 9, 9), None),
    ("avg_pool2d", lambda f, x, w: f.avg_pool2d(x, 2), (3, 4, 8, 8), None),
    ("adaptive_avg_pool2d", lambda f, x, w: f.adaptive_avg_pool2d(x, 1), (3, 4, 8, 8), None),
    ("batch_norm", lambda f, x, w: f.batch_norm(x, None, None, w, None, training=True), (3, 4, 5, 5), (4,)),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels-last"])
@pytest.mark.parametrize(("name", "op", "x_shape", "w_shape"), INPLACE_AFTER, ids=[c[0] for c in INPLACE_AFTER])
def test_an_in_place_change_after_the_op_works_and_leaves_the_gradients_right(name, op, x_shape, w_shape, channels_last):
    """nn.ReLU(inplace=True) after a layer, as the user's own networks write it (and torchvision's)."""
    torch.manual_seed(0)
    x0 = torch.randn(x_shape, dtype=torch.float64)
    if channels_last and x0.dim() == 4:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    w0 = None if w_shape is None else torch.randn(w_shape, dtype=torch.float64)
    grads = []
    for f in (ops, F):
        x = x0.clone().requires_grad_()
        w = None if w0 is None else w0.clone().requires_grad_()
        out = torch.relu_(op(f, x, w))
        (out * torch.linspace(-1, 2, out.numel(), dtype=torch.float64).view_as(out)).sum().backward()
        grads.append((out.detach(), x.grad, None if w is None else w.grad))
    for ours, theirs in zip(*grads):
        if theirs is not None:
            assert max_rel_error(ours, theirs) < 1e-10, name


def test_a_scratch_model_trains_under_torch_compile_with_inductor():
    """``cnnlab train --compile`` compiles the scratch model with the default (Inductor) backend,
    float32, channels-last: the compiled step gives the eager step's loss and gradients (the
    products take torch's own matmul there, which Inductor knows how to lower). One layer of each
    scratch kind (the zoo's ``fast`` repeats three such blocks, and took 80 s to compile here, this 54 s)."""
    torch.manual_seed(0)
    eager = torch.nn.Sequential(
        cnn.Conv2d(1, 8, 3, padding=1), cnn.BatchNorm2d(8), torch.nn.ReLU(), cnn.MaxPool2d(2), cnn.Conv2d(8, 16, 3, padding=1),
        cnn.AvgPool2d(2), cnn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10)).to(memory_format=torch.channels_last)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    x = torch.randn(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.arange(8) % 10
    losses = []
    for net in (eager, compiled):
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        losses.append(loss)
    assert abs(losses[0].item() - losses[1].item()) < 1e-5
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-5), name


def _layouts(t: torch.Tensor) -> tuple[bool, ...]:
    formats = (torch.contiguous_format, torch.channels_last) if t.dim() == 4 else (torch.contiguous_format, torch.channels_last_3d)
    return tuple(t.is_contiguous(memory_format=f) for f in formats) if t.dim() in (4, 5) else (t.is_contiguous(),)


GRAD_LAYOUT_OPS = [  # (name, op(f, x, w), kernel size or None); every route of the convolution is reached below
    ("conv2d 3x3", lambda f, x, w: f.conv2d(x, w, padding=1), 3),
    ("conv2d 3x3 stride 2", lambda f, x, w: f.conv2d(x, w, padding=1, stride=2), 3),
    ("conv2d 5x5", lambda f, x, w: f.conv2d(x, w, padding=2), 5),
    ("conv2d 1x1", lambda f, x, w: f.conv2d(x, w), 1),
    ("conv1d", lambda f, x, w: f.conv1d(x, w, padding=1), 3),
    ("conv3d", lambda f, x, w: f.conv3d(x, w, padding=1), 3),
    ("max_pool2d 3x3/2", lambda f, x, w: f.max_pool2d(x, 3, stride=2, padding=1), None),
    ("max_pool2d 2x2", lambda f, x, w: f.max_pool2d(x, 2), None),
    ("avg_pool2d", lambda f, x, w: f.avg_pool2d(x, 3, stride=1, padding=1), None),
    ("max_pool1d", lambda f, x, w: f.max_pool1d(x, 3, stride=2, padding=1), None),
    ("max_pool3d", lambda f, x, w: f.max_pool3d(x, 2), None),
    ("avg_pool3d", lambda f, x, w: f.avg_pool3d(x, 3, stride=2, padding=1), None),
    ("adaptive_avg_pool2d global", lambda f, x, w: f.adaptive_avg_pool2d(x, 1), None),
    ("adaptive_avg_pool2d 3x2", lambda f, x, w: f.adaptive_avg_pool2d(x, (3, 2)), None),
    ("batch_norm", lambda f, x, w: f.batch_norm(x, None, None, training=True), None),
]


@pytest.mark.parametrize("name, op, kernel", GRAD_LAYOUT_OPS, ids=[c[0] for c in GRAD_LAYOUT_OPS])
def test_input_gradients_are_laid_out_as_torchs(name, op, kernel):
    """A gradient comes back contiguous in the layout torch's own kernel gives it (a view into a padded
    buffer made the next layer's kernel read it strided: torch's batch norm backward ran 8x slower)."""
    rng = random.Random(11)
    dims = 1 if "1d" in name else 3 if "3d" in name else 2
    for trial in range(12):
        c = rng.choice([1, 3, 8, 16, 20, 24, 40])
        batch = rng.choice([2, 8, 32])
        side = rng.choice([5, 7, 12, 14, 17])
        x0 = torch.randn(batch, c, *([side] * dims), dtype=torch.float64)
        if dims == 2 and rng.random() < 0.6:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        w = None if kernel is None else torch.randn(rng.randint(1, 40), c, *([kernel] * dims), dtype=torch.float64)
        grads, g = [], None
        for f in (F, ops):
            x = x0.detach().clone(memory_format=torch.preserve_format).requires_grad_()
            inner = x * 1  # a non-leaf, as inside a network: a leaf's .grad is laid out again by autograd itself
            out = op(f, inner, w)
            g = torch.randn_like(out) if g is None else g
            grads.append(torch.autograd.grad(out, inner, g)[0])
        theirs, ours = grads
        assert _layouts(ours) == _layouts(theirs), (name, trial, tuple(x0.shape), x0.stride(), ours.stride(), theirs.stride())
        assert max_rel_error(ours, theirs) < 1e-10
