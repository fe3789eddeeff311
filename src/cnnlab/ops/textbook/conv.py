"""Cross-correlation as the book defines it, in plain tensor operations (D2L 7.2-7.4): the reference form.

What deep learning calls "convolution" is a cross-correlation: each output value is the sum of an input
window times the kernel. One definition serves every dimension:

    1) pad the input into a channels-last buffer          (N, *S_pad, C)
    2) view all windows of it (``sliding_windows``)        (N, *S_out, *K, C)
    3) copy the view into a window matrix                  (M, K*C),  M = N*prod(S_out)
    4) one matrix product with the kernels                 (M, K*C) @ (K*C, C_out)

and its gradient with respect to the input adds each window's gradient back where it was read
(``col2im``). ``reference_conv`` is the definition in differentiable operations, which the double
backward, torch.func and forward-mode AD use; the fast routes (``ops/kernels``) compute the same sums.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .autograd import reference_windows
from .shapes import Pads, numel
from .windows import pad_channels_last, sliding_windows, unpad, window_offsets, windows_overlap


def window_matrix(x: torch.Tensor, kernel: Sequence[int], stride, pads: Pads, dilation, groups: int):
    """Steps 1-3: the window matrix of ``x`` (N, C, *S), one per group: (G, M, K*C/G)."""
    xp = pad_channels_last(x, pads)  # (N, *S_pad, C)
    windows = sliding_windows(xp, kernel, stride, dilation)  # (N, *S_out, *K, C)
    n, c = x.shape[0], x.shape[1]
    out_size = tuple(windows.shape[1 : 1 + len(kernel)])
    m, kc = n * numel(out_size), numel(kernel) * (c // groups)
    if groups == 1:
        return windows.reshape(1, m, kc), out_size
    windows = windows.unflatten(-1, (groups, c // groups)).movedim(-2, 0)  # (G, N, *S_out, *K, C/G)
    return windows.reshape(groups, m, kc), out_size


def kernel_matrix(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """(C_out, C/G, *K) -> (G, C_out/G, K*C/G), columns in the window matrix's (*K, C) order."""
    o = weight.shape[0]
    return weight.movedim(1, -1).reshape(groups, o // groups, -1)


def reference_conv(x, weight, bias, stride, pads: Pads, dilation, groups: int) -> torch.Tensor:
    """The definition, in plain differentiable operations (for the differentiable backward):
    each output is a window of the padded input times the kernel, summed. (N, C, *S) -> (N, O, *S_out)."""
    kernel = tuple(weight.shape[2:])
    n, c = x.shape[:2]
    o, k = weight.shape[0], len(kernel)
    windows = reference_windows(x, pads, kernel, stride, dilation)  # (N, *S_out, *K, C)
    out_size = windows.shape[1 : 1 + k]
    cols = windows.reshape(n, -1, numel(kernel), groups, c // groups)  # (N, L, K, G, C/G)
    w = weight.reshape(groups, o // groups, c // groups, numel(kernel))  # (G, O/G, C/G, K)
    out = torch.einsum("nlkgc,gock->nlgo", cols, w).reshape(n, *out_size, o)
    if bias is not None:
        out = out + bias
    return out.movedim(-1, 1)


def col2im(grad_cols: torch.Tensor, x_shape, kernel, stride, pads: Pads, dilation, out_size) -> torch.Tensor:
    """Add each window's gradient back onto the input positions it was read from.

    grad_cols: (N, *S_out, *K, C)  ->  returns (N, C, *S) (channels-last strides).
    """
    n, c, *spatial = x_shape
    padded = [s + lo + hi for s, (lo, hi) in zip(spatial, pads)]
    grad_xp = grad_cols.new_zeros((n, *padded, c))
    add_windows(sliding_windows(grad_xp, kernel, stride, dilation, out_size), grad_cols, kernel, stride, dilation)
    return unpad(grad_xp, pads, spatial).movedim(-1, 1)


def add_windows(windows: torch.Tensor, grad_cols: torch.Tensor, kernel, stride, dilation) -> None:
    """``windows += grad_cols`` for a window view (N, *S_out, *K, C) of a gradient buffer, one kernel
    offset at a time (windows that overlap share input positions, so one strided add would race)."""
    overlap = windows_overlap(kernel, stride, dilation)
    for _, index in window_offsets(kernel):
        if overlap:
            windows[index].add_(grad_cols[index])
        else:  # windows never share an input position: plain copies
            windows[index] = grad_cols[index]


