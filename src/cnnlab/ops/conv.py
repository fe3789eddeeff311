"""Cross-correlation and convolution in 1, 2 and 3 dimensions, from scratch (D2L 7.2-7.4).

What deep learning calls "convolution" is a cross-correlation: each output value is the
sum of an input window times the kernel. One implementation serves every dimension:

    1) pad the input into a channels-last buffer          (N, *S_pad, C)
    2) view all windows of it (``sliding_windows``)        (N, *S_out, *K, C)
    3) copy the view into a window matrix                  (M, K*C),  M = N*prod(S_out)
    4) one matrix product with the kernels                 (M, K*C) @ (K*C, C_out)

The backward pass is derived by hand (``ConvNd``): with ``G = grad_out`` as (M, C_out),

    grad_weight = G^T @ window_matrix        (a cross-correlation of input and grad_out)
    grad_input  = col2im(G @ W)               (a transposed cross-correlation: each window's
                                               gradient is added back where it came from)
    grad_bias   = G summed over M

The layout is chosen by shape, because no single one is fastest everywhere (measured in
benchmarks/bench_ops.py):

    - one group, more than one tap, 1-3 input channels (a network's first layer), any stride, a
      channels-first result or one of at most 8 channels, float32/float64 on the CPU where the machine has
      a C compiler: the direct sum from a channels-first padded input (a strided last axis dealt into
      phases), by compiled loops with a vector of consecutive outputs of one row in each register
      (``compiled_conv.PlanarConvNd``, ``_planar_loops``: LeNet's 1->6 5x5 at batch 256 0.6-0.8 of torch's
      time forward + backward, where the channels-first window matrix took 1.4-1.8);
    - every other layer of one group with more than one tap, any stride, float32/float64 on the CPU
      where the machine has a C compiler: no window matrix but the direct sum, as compiled loops that
      keep a block of outputs in registers (``compiled_conv.DirectConvNd``, ``_direct_loops``; the
      input gradient is the same loops on the output gradient, one stride-1 correlation per phase of
      the input positions). In training, 5x5 or larger kernels with 32 or more input channels keep the
      DFT below, where it measured faster. The tensor routes below serve everything else (and every
      layer where the loops cannot be built, with ``CNNLAB_COMPILED=0``, in half precision, under
      ``torch.compile`` and torch.func);
    - in training, 2-D, stride 1, 25 taps or more (5x5 kernels and larger) with at least 3 input
      channels, or 3x3 kernels on 5-16 px maps with at least 8 channels and 32 samples (4 px maps:
      64 samples): no windows at all but the convolution theorem, with the transforms as matrix
      products (``fourier.FourierConv2d``): a product per frequency instead of one per kernel tap;
    - 1x1 kernels at stride 1 without padding, 8 or more input channels (groups 1): no windows, one
      product per pass on the positions as rows (``PointwiseConvNd``);
    - few input channels (< 8, groups 1): the window matrix channels-first, (N, C*K, L), built
      plane by plane with long contiguous rows (a network's first layers);
    - 16-31 input channels, stride 1, at most 9 taps, where the DFT does not take them (maps over 16 px,
      batches under 32): no window matrix at all (``ShiftedConvNd``,
      one product per kernel tap on the flattened padded image);
    - everything else: the channels-last window matrix, built a block of samples at a time into
      reused memory that stays in the CPU's cache (``BLOCK_BYTES``), each block multiplied as soon
      as it is built; the backward pass builds it again rather than keeping it. For stride 1 with
      no more outputs than inputs, grad_input is itself a convolution (of grad_out with the flipped
      kernel), with no col2im scatter.

The products run through ``products.mm_nt`` (oneDNN's matrix product for float32 on CPUs, where
torch ships it; torch.mm elsewhere).

When a graph is requested (``create_graph=True``: a gradient penalty, a Hessian), the backward
differentiates ``reference_conv``, the definition in plain operations, instead (``textbook/autograd.py``),
so second and higher derivatives are exact; ordinary training steps keep the fast path.

Groups split channels into ``groups`` independent blocks (a batched product, one per
group); depthwise convolution is ``groups == in_channels``.

This file holds the public functions, their checks and the dispatch to the routes (``routing.py`` says
which); the chapter's own small functions (``corr2d`` and friends) are built on them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from . import routing
from .kernels import compiled_conv
from .kernels.fourier import FourierConv2d
from .kernels.pointwise import PointwiseConvNd
from .kernels.shifted import ShiftedConvNd
from .kernels.window import ConvNd
from .textbook.autograd import transformed
from .textbook.conv import reference_conv
from .textbook.layout import memory_format_like_torch
from .textbook.shapes import as_tuple, check_fits, conv_padding

__all__ = [
    "conv1d",
    "conv2d",
    "conv3d",
    "corr2d",
    "corr2d_multi_in",
    "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1",
    "convolve2d",
]

IntOrTuple = int | Sequence[int]


def _check_conv(input: torch.Tensor, weight: torch.Tensor, bias, dims: int, groups) -> None:
    name = f"conv{dims}d"
    if not isinstance(input, torch.Tensor) or not isinstance(weight, torch.Tensor):
        raise TypeError(f"{name}: input and weight must be tensors, got {type(input).__name__} and {type(weight).__name__}")
    if input.dim() not in (dims + 1, dims + 2):
        raise ValueError(
            f"{name}: input must have {dims + 1} (unbatched) or {dims + 2} (batched) dimensions, "
            f"got shape {tuple(input.shape)}"
        )
    if weight.dim() != dims + 2:
        raise ValueError(f"{name}: weight must have {dims + 2} dimensions (C_out, C_in/groups, *kernel), got shape {tuple(weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"{name}: groups must be a positive int, got {groups!r}")
    channels = input.shape[-dims - 1]
    if channels % groups or weight.shape[0] % groups:
        raise ValueError(
            f"{name}: groups={groups} must divide both in_channels={channels} and out_channels={weight.shape[0]}"
        )
    if weight.shape[1] * groups != channels:
        raise ValueError(
            f"{name}: input has {channels} channels but weight {tuple(weight.shape)} with groups={groups} "
            f"expects {weight.shape[1] * groups}"
        )
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{name}: bias must be a tensor of shape ({weight.shape[0]},), got {shape}")
    for other, what in ((weight, "weight"), (bias, "bias")):
        if other is not None and other.dtype != input.dtype:
            raise TypeError(f"{name}: {what} dtype {other.dtype} differs from input dtype {input.dtype}")


def _autocast(input, weight, bias):
    """Under ``torch.autocast`` a convolution runs in the autocast dtype, as torch's does (its
    "lower precision" cast policy): inputs, weight and bias are cast, the op then runs as written."""
    if not isinstance(input, torch.Tensor) or not torch.is_autocast_enabled(input.device.type):
        return input, weight, bias, False
    dtype = torch.get_autocast_dtype(input.device.type)

    def cast(t):
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return cast(input), cast(weight), cast(bias), True



def _conv(input, weight, bias, stride, padding, dilation, groups, dims: int) -> torch.Tensor:
    input, weight, bias, autocast = _autocast(input, weight, bias)
    _check_conv(input, weight, bias, dims, groups)
    stride = as_tuple(stride, dims, "stride", minimum=1)
    dilation = as_tuple(dilation, dims, "dilation", minimum=1)
    kernel = tuple(weight.shape[2:])
    pads = conv_padding(padding, kernel, dilation, stride)
    unbatched = input.dim() == dims + 1
    x = input.unsqueeze(0) if unbatched else input
    check_fits(x.shape[2:], pads, kernel, dilation, f"conv{dims}d")
    if transformed(x, weight, bias):  # torch.func / forward-mode AD: the reference form, which they know
        out = reference_conv(x, weight, bias, stride, pads, dilation, groups)
        return out.squeeze(0) if unbatched else out
    if x.shape[0] == 0:  # an empty batch: an empty output, still connected to the inputs
        out_size = routing._out_size(x.shape[2:], pads, kernel, stride, dilation)
        link = x.sum() + weight.sum() + (bias.sum() if bias is not None else 0)
        out = x.new_zeros((0, weight.shape[0], *out_size)) + 0 * link
        return out.squeeze(0) if unbatched else out
    with torch.autocast(x.device.type, enabled=False) if autocast else contextlib.nullcontext():
        channels_last = memory_format_like_torch(x, weight) != torch.contiguous_format
        planar = routing._planar_loops(x, weight, kernel, stride, groups, channels_last)
        direct = None if planar is not None else routing._direct_loops(x, weight, kernel, stride, pads, dilation, groups)
        if planar is not None:
            out = compiled_conv.PlanarConvNd.apply(planar, x, weight, bias, stride, pads, dilation, channels_last)
        elif direct is not None:
            out = compiled_conv.DirectConvNd.apply(direct, x, weight, bias, stride, pads, dilation, channels_last)
        elif routing._use_fourier(x, weight, kernel, stride, dilation, groups):
            out = FourierConv2d.apply(x, weight, bias, stride, pads, dilation)
        elif routing._use_pointwise(x, kernel, stride, pads, groups):
            out = PointwiseConvNd.apply(x, weight, bias)
        elif routing._training(x, weight) and routing._use_shifted(x, kernel, stride, pads, dilation, groups):
            out = ShiftedConvNd.apply(x, weight, bias, pads, dilation)
        else:
            out = ConvNd.apply(x, weight, bias, stride, pads, dilation, groups)
    out = out.contiguous(memory_format=memory_format_like_torch(x, weight))  # a no-op when it already is
    return out.squeeze(0) if unbatched else out



def conv1d(input, weight, bias=None, stride: IntOrTuple = 1, padding: str | IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1):
    """1-D cross-correlation over sequences; same signature and results as torch.nn.functional's ``conv1d``.

    Shape:
        input (N, C_in, L) or (C_in, L); weight (C_out, C_in/groups, k); output (N, C_out, L_out) with
        ``L_out = floor((L + 2*padding - dilation*(k-1) - 1) / stride) + 1``.
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, 1)


def conv2d(input, weight, bias=None, stride: IntOrTuple = 1, padding: str | IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1):
    """2-D cross-correlation; same signature and results as torch.nn.functional's ``conv2d``.

    Args:
        input: (N, C_in, H, W) or unbatched (C_in, H, W).
        weight: (C_out, C_in/groups, kh, kw).
        bias: optional (C_out,).
        stride, dilation: int or (sh, sw), each >= 1.
        padding: int or (ph, pw) zeros on each side, or ``'valid'`` / ``'same'``.
        groups: split channels into this many independent blocks.

    Shape:
        output (N, C_out, H_out, W_out), ``H_out = floor((H + 2*ph - dh*(kh-1) - 1) / sh) + 1``.

    Example:
        >>> conv2d(torch.ones(1, 1, 3, 3), torch.ones(1, 1, 2, 2)).shape
        torch.Size([1, 1, 2, 2])
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, 2)


def conv3d(input, weight, bias=None, stride: IntOrTuple = 1, padding: str | IntOrTuple = 0, dilation: IntOrTuple = 1, groups: int = 1):
    """3-D cross-correlation over volumes; same signature and results as torch.nn.functional's ``conv3d``.

    Shape:
        input (N, C_in, D, H, W) or (C_in, D, H, W); output (N, C_out, D_out, H_out, W_out), each axis
        ``floor((n + 2*p - d*(k-1) - 1) / s) + 1``.
    """
    return _conv(input, weight, bias, stride, padding, dilation, groups, 3)


# --- the chapter's own functions (D2L 7.2, 7.4) ---------------------------------------------


def _check_dims(name: str, tensor, dims: int, what: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(tensor).__name__}")
    if tensor.dim() != dims:
        raise ValueError(f"{name} must be a {dims}-D tensor {what}, got shape {tuple(tensor.shape)}")


def corr2d(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Two-dimensional cross-correlation of a single-channel image (D2L 7.2.1).

    Shape:
        X (n_h, n_w), K (k_h, k_w) -> (n_h - k_h + 1, n_w - k_w + 1).

    Example:
        >>> X = torch.arange(9.).view(3, 3); K = torch.arange(4.).view(2, 2)
        >>> corr2d(X, K)
        tensor([[19., 25.],
                [37., 43.]])
    """
    _check_dims("X", X, 2, "(height, width)")
    _check_dims("K", K, 2, "(height, width)")
    return conv2d(X[None, None], K[None, None])[0, 0]


def convolve2d(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Strict (mathematical) convolution: cross-correlation with the kernel flipped on both axes."""
    _check_dims("K", K, 2, "(height, width)")
    return corr2d(X, K.flip(0, 1))


def corr2d_multi_in(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Cross-correlation summed over input channels (D2L 7.4.1): X (c, h, w), K (c, kh, kw) -> (h', w')."""
    _check_dims("X", X, 3, "(channels, height, width)")
    _check_dims("K", K, 3, "(channels, height, width)")
    return conv2d(X, K[None])[0]


def corr2d_multi_in_out(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """One multi-input cross-correlation per output channel (D2L 7.4.2): K (c_o, c_i, kh, kw) -> (c_o, h', w')."""
    _check_dims("X", X, 3, "(channels, height, width)")
    _check_dims("K", K, 4, "(out_channels, in_channels, height, width)")
    return conv2d(X, K)


def corr2d_multi_in_out_1x1(X: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution as a fully connected layer applied at every pixel (D2L 7.4.3).

    Shape:
        X (c_i, h, w), K (c_o, c_i, 1, 1) -> (c_o, h, w), computed as ``K (c_o, c_i) @ X (c_i, h*w)``.
    """
    _check_dims("X", X, 3, "(channels, height, width)")
    _check_dims("K", K, 4, "(out_channels, in_channels, 1, 1)")
    c_i, h, w = X.shape
    if tuple(K.shape[1:]) != (c_i, 1, 1):
        raise ValueError(f"K must have shape (c_o, {c_i}, 1, 1) for X with {c_i} channels, got {tuple(K.shape)}")
    Y = K.reshape(K.shape[0], c_i) @ X.reshape(c_i, h * w)  # (c_o, h*w)
    return Y.reshape(K.shape[0], h, w)
