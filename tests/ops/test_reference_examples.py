"""Every worked example of shared/REFERENCE.md (D2L chapter 7), computed by cnnlab.ops, exactly."""

from __future__ import annotations

import torch

from cnnlab import nn as cnn
from cnnlab import ops


def test_corr2d():
    X = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    K = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert torch.equal(ops.corr2d(X, K), torch.tensor([[19.0, 25.0], [37.0, 43.0]]))


def edge_image() -> torch.Tensor:
    X = torch.ones((6, 8))
    X[:, 2:6] = 0
    return X


def test_edge_detection():
    Y = ops.corr2d(edge_image(), torch.tensor([[1.0, -1.0]]))
    assert Y.shape == (6, 7)
    assert torch.equal(Y, torch.tensor([[0.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0]]).expand(6, 7))


def test_edge_detection_on_transposed_image_is_zero():
    Y = ops.corr2d(edge_image().t(), torch.tensor([[1.0, -1.0]]))
    assert torch.equal(Y, torch.zeros(8, 5))


def test_convolve2d_flips_the_kernel():
    X = torch.arange(9.0).view(3, 3)
    K = torch.tensor([[0.0, 1.0], [2.0, 3.0]])
    assert torch.equal(ops.convolve2d(X, K), ops.corr2d(X, torch.tensor([[3.0, 2.0], [1.0, 0.0]])))
    assert torch.equal(ops.convolve2d(X, K), torch.tensor([[5.0, 11.0], [23.0, 29.0]]))


def test_learning_the_edge_kernel():
    torch.manual_seed(0)
    X = edge_image().reshape(1, 1, 6, 8)
    Y = ops.corr2d(edge_image(), torch.tensor([[1.0, -1.0]])).reshape(1, 1, 6, 7)
    conv = cnn.Conv2d(1, 1, kernel_size=(1, 2), bias=False)
    for _ in range(10):
        loss = ((conv(X) - Y) ** 2).sum()
        conv.zero_grad()
        loss.backward()
        conv.weight.data[:] -= 3e-2 * conv.weight.grad
    final = ((conv(X) - Y) ** 2).sum().item()
    assert final < 0.3
    assert torch.allclose(conv.weight.data.reshape(2), torch.tensor([1.0, -1.0]), atol=0.2)


def test_padding_and_stride_shapes():
    X = torch.rand(1, 1, 8, 8)
    cases = [({"kernel_size": 3, "padding": 1}, (8, 8)),
             ({"kernel_size": (5, 3), "padding": (2, 1)}, (8, 8)),
             ({"kernel_size": 3, "padding": 1, "stride": 2}, (4, 4)),
             ({"kernel_size": (3, 5), "padding": (0, 1), "stride": (3, 4)}, (2, 2))]
    for kwargs, shape in cases:
        assert tuple(cnn.Conv2d(1, 1, **kwargs)(X).shape[2:]) == shape, kwargs


def multi_in():
    X = torch.stack([torch.arange(9.0).view(3, 3), torch.arange(1.0, 10.0).view(3, 3)])
    K = torch.tensor([[[0.0, 1.0], [2.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    return X, K


def test_multi_input_channels():
    X, K = multi_in()
    assert torch.equal(ops.corr2d_multi_in(X, K), torch.tensor([[56.0, 72.0], [104.0, 120.0]]))


def test_multi_input_output_channels():
    X, K = multi_in()
    K = torch.stack((K, K + 1, K + 2), 0)
    assert K.shape == (3, 2, 2, 2)
    expected = torch.tensor([[[56.0, 72.0], [104.0, 120.0]], [[76.0, 100.0], [148.0, 172.0]], [[96.0, 128.0], [192.0, 224.0]]])
    assert torch.equal(ops.corr2d_multi_in_out(X, K), expected)


def test_1x1_convolution_is_a_matrix_product():
    torch.manual_seed(0)
    X = torch.normal(0, 1, (3, 3, 3))
    K = torch.normal(0, 1, (2, 3, 1, 1))
    assert float((ops.corr2d_multi_in_out_1x1(X, K) - ops.corr2d_multi_in_out(X, K)).abs().sum()) < 1e-6


def test_pool2d():
    X = torch.tensor([[0.0, 1.0, 2.0], [3.0, 4.0, 5.0], [6.0, 7.0, 8.0]])
    assert torch.equal(ops.pool2d(X, (2, 2)), torch.tensor([[4.0, 5.0], [7.0, 8.0]]))
    assert torch.equal(ops.pool2d(X, (2, 2), "avg"), torch.tensor([[2.0, 3.0], [5.0, 6.0]]))


def test_pooling_padding_and_stride():
    X = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
    assert torch.equal(cnn.MaxPool2d(3)(X), torch.tensor([[[[10.0]]]]))
    assert torch.equal(cnn.MaxPool2d(3, padding=1, stride=2)(X), torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))
    pool = cnn.MaxPool2d((2, 3), stride=(2, 3), padding=(0, 1))
    assert torch.equal(pool(X), torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))


def test_pooling_multiple_channels():
    X = torch.arange(16, dtype=torch.float32).reshape((1, 1, 4, 4))
    X = torch.cat((X, X + 1), 1)
    Y = cnn.MaxPool2d(3, padding=1, stride=2)(X)
    assert Y.shape == (1, 2, 2, 2)
    assert torch.equal(Y[0, 1], torch.tensor([[6.0, 8.0], [14.0, 16.0]]))
