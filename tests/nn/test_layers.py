"""cnnlab.nn layers: torch's constructor, state_dict and initialisation; both backends agree."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab import nn as cnn

from helpers import check_op

LAYERS = [
    (cnn.Conv1d, nn.Conv1d, (3, 4, 3), {"padding": 1, "stride": 2}, (2, 3, 11)),
    (cnn.Conv2d, nn.Conv2d, (4, 6, 3), {"padding": "same", "groups": 2, "dilation": 2}, (2, 4, 9, 9)),
    (cnn.Conv2d, nn.Conv2d, (2, 3, (3, 2)), {"padding": (1, 2), "padding_mode": "reflect"}, (2, 2, 7, 7)),
    (cnn.Conv2d, nn.Conv2d, (2, 3, 3), {"padding": 1, "padding_mode": "circular", "bias": False}, (2, 2, 6, 7)),
    (cnn.Conv3d, nn.Conv3d, (2, 3, 2), {"stride": (1, 2, 1)}, (2, 2, 5, 6, 4)),
    (cnn.MaxPool1d, nn.MaxPool1d, (3,), {"stride": 2, "padding": 1, "ceil_mode": True}, (2, 3, 10)),
    (cnn.MaxPool2d, nn.MaxPool2d, (3,), {"stride": 2, "dilation": 2}, (2, 3, 11, 11)),
    (cnn.MaxPool3d, nn.MaxPool3d, (2,), {}, (1, 2, 4, 6, 6)),
    (cnn.AvgPool1d, nn.AvgPool1d, (3,), {"padding": 1, "count_include_pad": False}, (2, 3, 10)),
    (cnn.AvgPool2d, nn.AvgPool2d, (3,), {"stride": 2, "ceil_mode": True}, (2, 3, 10, 9)),
    (cnn.AvgPool3d, nn.AvgPool3d, (2,), {"divisor_override": 3}, (1, 2, 4, 6, 6)),
    (cnn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool2d, ((3, 5),), {}, (2, 3, 10, 7)),
    (cnn.BatchNorm1d, nn.BatchNorm1d, (4,), {}, (8, 4)),
    (cnn.BatchNorm1d, nn.BatchNorm1d, (4,), {"affine": False}, (8, 4, 5)),
    (cnn.BatchNorm2d, nn.BatchNorm2d, (3,), {"momentum": None}, (4, 3, 5, 5)),
    (cnn.BatchNorm2d, nn.BatchNorm2d, (3,), {"track_running_stats": False}, (4, 3, 5, 5)),
]


def build(cls, args, kwargs, seed=0, **extra):
    torch.manual_seed(seed)
    return cls(*args, **kwargs, **extra).double()


@pytest.mark.parametrize(("ours", "theirs", "args", "kwargs", "shape"), LAYERS)
def test_same_state_dict_and_initialisation_as_torch(ours, theirs, args, kwargs, shape):
    a, b = build(ours, args, kwargs), build(theirs, args, kwargs)
    assert list(a.state_dict()) == list(b.state_dict())
    for key, value in b.state_dict().items():
        assert torch.equal(a.state_dict()[key], value), key


@pytest.mark.parametrize("backend", ["scratch", "torch"])
@pytest.mark.parametrize(("ours", "theirs", "args", "kwargs", "shape"), LAYERS)
def test_layer_matches_plain_torch(ours, theirs, args, kwargs, shape, backend):
    a, b = build(ours, args, kwargs, backend=backend), build(theirs, args, kwargs)
    params_a, params_b = list(a.parameters()), list(b.parameters())
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)

    # values and input gradient, training mode, then twice more so running statistics evolve
    for step in range(3):
        check_op(lambda x: a(x), lambda x: b(x), [x], context=f"{ours.__name__} step {step}")
        grads_a = torch.autograd.grad(a(x).pow(2).sum(), params_a) if params_a else []
        grads_b = torch.autograd.grad(b(x).pow(2).sum(), params_b) if params_b else []
        for ga, gb in zip(grads_a, grads_b):
            assert torch.allclose(ga, gb, rtol=1e-10, atol=1e-12)
    for key, value in b.state_dict().items():  # running_mean, running_var, num_batches_tracked
        assert torch.allclose(a.state_dict()[key].double(), value.double(), rtol=1e-10, atol=0), key
    a.eval(), b.eval()
    check_op(lambda x: a(x), lambda x: b(x), [x], context=f"{ours.__name__} eval")


def test_weights_move_between_backends_and_plain_torch():
    torch.manual_seed(0)
    scratch = nn.Sequential(cnn.Conv2d(1, 4, 3), cnn.BatchNorm2d(4), nn.ReLU(), cnn.MaxPool2d(2))
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
    torch_backend = nn.Sequential(cnn.Conv2d(1, 4, 3, backend="torch"), cnn.BatchNorm2d(4, backend="torch"), nn.ReLU(),
                                  cnn.MaxPool2d(2, backend="torch"))
    x = torch.randn(2, 1, 10, 10)
    scratch(x)  # move the running statistics away from their initial values
    plain.load_state_dict(scratch.state_dict())
    torch_backend.load_state_dict(scratch.state_dict())
    for m in (scratch, plain, torch_backend):
        m.eval()
    assert torch.allclose(scratch(x), plain(x), atol=1e-5)
    assert torch.allclose(torch_backend(x), plain(x), atol=1e-6)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match=r"backend must be one of \('scratch', 'torch'\), got 'cuda'"):
        cnn.Conv2d(1, 1, 3, backend="cuda")


def test_backend_shows_in_repr():
    assert "backend='scratch'" in repr(cnn.MaxPool2d(2))
    assert "backend='torch'" in repr(cnn.BatchNorm2d(3, backend="torch"))
