"""Bad arguments get ValueError / TypeError messages naming the argument, its value and what is allowed."""

from __future__ import annotations

import pytest
import torch

from cnnlab import ops

X = torch.randn(2, 4, 8, 8)
W = torch.randn(6, 4, 3, 3)


@pytest.mark.parametrize(("call", "error", "match"), [
    (lambda: ops.conv2d(torch.randn(8, 8), W), ValueError, r"3 \(unbatched\) or 4 \(batched\) dimensions, got shape \(8, 8\)"),
    (lambda: ops.conv2d(X, torch.randn(6, 4, 3)), ValueError, r"weight must have 4 dimensions"),
    (lambda: ops.conv2d(X, torch.randn(6, 3, 3, 3)), ValueError, r"input has 4 channels but weight \(6, 3, 3, 3\)"),
    (lambda: ops.conv2d(X, torch.randn(6, 2, 3, 3), groups=3), ValueError, r"groups=3 must divide both in_channels=4"),
    (lambda: ops.conv2d(X, torch.randn(5, 2, 3, 3), groups=2), ValueError, r"out_channels=5"),
    (lambda: ops.conv2d(X, W, groups=0), ValueError, r"groups must be a positive int, got 0"),
    (lambda: ops.conv2d(X, torch.randn(6, 4, 9, 9)), ValueError, r"kernel size \(9, 9\).*larger than the padded input"),
    (lambda: ops.conv2d(X, W, stride=0), ValueError, r"stride must be >= 1, got 0"),
    (lambda: ops.conv2d(X, W, dilation=(1, 0)), ValueError, r"dilation must be >= 1, got \(1, 0\)"),
    (lambda: ops.conv2d(X, W, padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (lambda: ops.conv2d(X, W, padding="full"), ValueError, r"padding must be 'valid', 'same', an int or a tuple of 2 ints, got 'full'"),
    (lambda: ops.conv2d(X, W, padding="same", stride=2), ValueError, r"padding='same' needs stride 1"),
    (lambda: ops.conv2d(X, W, stride=(1, 2, 3)), ValueError, r"stride must be an int or a tuple of 2 ints"),
    (lambda: ops.conv2d(X, W, stride=1.5), TypeError, r"stride must be an int or a tuple of 2 ints, got 1.5"),
    (lambda: ops.conv2d(X, W, bias=torch.randn(5)), ValueError, r"bias must be a tensor of shape \(6,\), got \(5,\)"),
    (lambda: ops.conv2d(X, W.double()), TypeError, r"weight dtype torch.float64 differs from input dtype torch.float32"),
    (lambda: ops.conv2d([[1.0]], W), TypeError, r"input and weight must be tensors"),
    (lambda: ops.conv1d(X, W), ValueError, r"conv1d: input must have 2 \(unbatched\) or 3 \(batched\)"),
    (lambda: ops.max_pool2d(X, 3, padding=2), ValueError, r"padding must be at most half of kernel_size, got padding=2 and kernel_size=3"),
    (lambda: ops.max_pool2d(X, 0), ValueError, r"kernel_size must be >= 1, got 0"),
    (lambda: ops.max_pool2d(X, 3, stride=0), ValueError, r"stride must be >= 1, got 0"),
    (lambda: ops.max_pool2d(X, 9), ValueError, r"kernel_size=\(9, 9\).*larger than the padded input"),
    (lambda: ops.max_pool2d(X, 3, dilation=0), ValueError, r"dilation must be >= 1, got 0"),
    (lambda: ops.max_pool2d(X, 2, padding=-1), ValueError, r"padding must be >= 0, got -1"),
    (lambda: ops.max_pool2d(torch.randn(8), 2), ValueError, r"max_pool2d: input must have 3 \(unbatched\) or 4 \(batched\)"),
    (lambda: ops.avg_pool2d(X, 2, divisor_override=0), ValueError, r"divisor_override must be a positive int or None, got 0"),
    (lambda: ops.avg_pool1d(X, 2), ValueError, r"avg_pool1d: input must have 2 \(unbatched\) or 3 \(batched\)"),
    (lambda: ops.adaptive_avg_pool2d(X, 0), ValueError, r"output_size must be >= 1, got \(0, 0\)"),
    (lambda: ops.adaptive_avg_pool2d(torch.randn(8), 2), ValueError, r"3 \(unbatched\) or 4 \(batched\) dimensions"),
    (lambda: ops.pool2d(torch.randn(3, 3), 2, mode="min"), ValueError, r"mode must be 'max' or 'avg', got 'min'"),
    (lambda: ops.batch_norm(X, torch.zeros(3), torch.ones(3)), ValueError, r"running_mean must have shape \(4,\) for an input with 4 channels, got \(3,\)"),
    (lambda: ops.batch_norm(X, None, None, training=False), ValueError, r"running_mean and running_var are required"),
    (lambda: ops.batch_norm(torch.randn(4), None, None, training=True), ValueError, r"at least 2 dimensions"),
    (lambda: ops.corr2d(torch.randn(2, 3, 3), torch.randn(2, 2)), ValueError, r"X must be a 2-D tensor \(height, width\), got shape \(2, 3, 3\)"),
    (lambda: ops.corr2d_multi_in_out_1x1(torch.randn(3, 4, 4), torch.randn(2, 3, 3, 3)), ValueError, r"K must have shape \(c_o, 3, 1, 1\)"),
])
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
