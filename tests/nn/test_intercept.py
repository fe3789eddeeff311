"""cnnlab.scratch(): torch's own layers on the scratch operations, the same values and gradients as torch's
kernels (float64), no torch convolution/pool/norm kernel reached, and what has no scratch form listed."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import cnnlab

from helpers import max_rel_error

# the aten kernels of torch's convolutions, poolings and batch norms (forward and backward)
TORCH_KERNELS = ("convolution", "conv1d", "conv2d", "conv3d", "mkldnn", "pool", "batch_norm")


class Kernels(TorchDispatchMode):
    """Records the name of every aten operator that runs."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.seen.add(func.__name__)
        return func(*args, **(kwargs or {}))


def torch_model() -> nn.Module:
    """Every torch layer the scratch ops cover, in torch's own classes."""
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.b1 = nn.Conv1d(2, 3, 3, padding=1), nn.BatchNorm1d(3)
            self.c2, self.b2 = nn.Conv2d(3, 4, 3, stride=2, padding="valid", dilation=1), nn.BatchNorm2d(4)
            self.c3 = nn.Conv3d(1, 2, (1, 3, 3), padding=(0, 1, 1), groups=1)
            self.p = nn.ModuleList([nn.MaxPool1d(2), nn.AvgPool1d(2, ceil_mode=True), nn.MaxPool2d(2, 1, 1),
                                    nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.MaxPool3d((1, 2, 2)),
                                    nn.AvgPool3d((1, 2, 2), divisor_override=3), nn.AdaptiveAvgPool2d((2, 3))])

        def forward(self, x):  # x (N, 2, 8, 8)
            s = self.b1(self.c1(x.flatten(2)))  # (N, 3, 64)
            a = self.p[1](self.p[0](s)).sum((1, 2))
            m = self.b2(self.c2(s.view(-1, 3, 8, 8)))  # (N, 4, 3, 3)
            b = self.p[6](self.p[3](self.p[2](m))).sum((1, 2, 3))
            v = self.c3(m[:, :1, None])  # (N, 2, 1, 3, 3)
            c = self.p[5](F.pad(self.p[4](F.pad(v, (0, 1, 0, 1))), (0, 1, 0, 1))).sum((1, 2, 3, 4))
            return a + b + c

    return Net().double()


def run(model, x):
    x = x.clone().requires_grad_()
    y = model(x)
    grads = torch.autograd.grad(y.sum(), [x, *model.parameters()])
    return [y, *grads]


@pytest.mark.parametrize("training", [True, False])
def test_torch_layers_under_scratch_give_torchs_values_and_gradients(training):
    torch.manual_seed(0)
    model = torch_model().train(training)
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    twin = copy.deepcopy(model)  # its own running statistics
    theirs = run(model, x)
    with cnnlab.scratch() as mode:
        ours = run(twin, x)
    assert mode.routed["conv1d"] == mode.routed["conv2d"] == mode.routed["conv3d"] == 1
    assert mode.routed["batch_norm"] == 2 and sum(v for k, v in mode.routed.items() if "pool" in k) == 7
    assert not mode.fell_through
    for a, b in zip(ours, theirs):  # (gradients that are zero but for rounding, e.g. a bias before batch norm: scale 1)
        assert (a - b).abs().max() <= 1e-10 * max(1.0, b.abs().max().item())
    for m, t in zip(twin.modules(), model.modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert max_rel_error(m.running_var, t.running_var) <= 1e-10 and max_rel_error(m.running_mean, t.running_mean) <= 1e-10


def test_no_torch_convolution_pool_or_norm_kernel_runs_under_scratch():
    torch.manual_seed(1)
    model = torch_model()
    x = torch.randn(3, 2, 8, 8, dtype=torch.float64)
    with Kernels() as plain:
        run(model, x)
    assert {k for k in plain.seen if any(w in k for w in TORCH_KERNELS)}  # the check sees torch's kernels ...
    with cnnlab.scratch(), Kernels() as scratched:
        run(model, x)
    assert not {k for k in scratched.seen if any(w in k for w in TORCH_KERNELS)}  # ... and none of them here
    for dtype, layout in ((torch.float32, torch.channels_last), (torch.float32, torch.contiguous_format)):  # the compiled loops too
        net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 16, 3)).to(dtype)
        net = net.to(memory_format=layout)
        xx = torch.randn(4, 1, 16, 16, dtype=dtype).contiguous(memory_format=layout)
        with cnnlab.scratch(), Kernels() as scratched:
            run(net, xx)
        assert not {k for k in scratched.seen if any(w in k for w in TORCH_KERNELS)}, layout


def test_what_has_no_scratch_form_falls_through_unchanged_and_is_listed(capsys):
    x = torch.randn(2, 4, 6, 6)
    up, ln = nn.ConvTranspose2d(4, 2, 2), nn.LayerNorm(6)
    with cnnlab.scratch(report=True) as mode:
        y = up(x) + 0
        z = ln(x)
        w = nn.Conv2d(4, 4, 1)(x)
    assert torch.equal(y, up(x)) and torch.equal(z, ln(x))  # torch's own results
    assert mode.fell_through == {"conv_transpose2d": 1, "layer_norm": 1} and mode.routed == {"conv2d": 1}
    assert w.shape == (2, 4, 6, 6)
    line = capsys.readouterr().out.strip()
    assert line == ("cnnlab.scratch: scratch ops: conv2d x1; fell through to torch (no scratch form): conv_transpose2d x1, "
                    "layer_norm x1")
