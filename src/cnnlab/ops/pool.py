"""Max, average and adaptive average pooling, from scratch (D2L 7.5).

Pooling reads the same windows as cross-correlation but reduces each window per channel instead of
multiplying it with a kernel (the definitions: ``textbook/pool.py``). This file holds the public functions,
their checks and the dispatch: max pooling of float32/float64 CPU tensors runs as two compiled loops
(``kernels/compiled_pool.py``, ``csrc/max_pool.c``: one pass each way) where a C compiler is at hand and
``routing._compiled_layout_pays``; the tensor passes (``kernels/tensor_pool.py``) take other channels-first
maps, single-channel maps, half precision and ``torch.compile``.

Adaptive average pooling has windows of varying size (``start = floor(i*n/o)``,
``end = ceil((i+1)*n/o)``), so it is written as averaging matrices, one per axis:
``out = P_h @ X @ P_w^T`` and ``grad_X = P_h^T @ grad_out @ P_w``.
"""


from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from . import routing
from .kernels.compiled_pool import CompiledMaxPoolNd, kernels
from .kernels.tensor_pool import AdaptiveAvgPool2d, AvgPoolNd, MaxPoolNd
from .textbook.autograd import transformed
from .textbook.pool import averaging_matrix, avg_divisor, max_indices, reference_avg_pool, reference_max_pool, winner_offsets
from .textbook.shapes import as_tuple, pool_output_size
from .textbook.windows import pad_channels_last, sliding_windows

__all__ = [
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool2d",
    "pool2d",
]

IntOrTuple = int | Sequence[int]


def _pool_geometry(name, x, dims, kernel_size, stride, padding, dilation, ceil_mode):
    """Validate pooling arguments; return (kernel, stride, pads, dilation, out_size)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: input must be a tensor, got {type(x).__name__}")
    if x.dim() != dims + 2:
        raise ValueError(f"{name}: input must have {dims + 1} (unbatched) or {dims + 2} (batched) dimensions, got shape {tuple(x.shape)}")
    kernel = as_tuple(kernel_size, dims, "kernel_size", minimum=1)
    stride = kernel if stride is None or (not isinstance(stride, int) and len(stride) == 0) else as_tuple(stride, dims, "stride", minimum=1)
    pad = as_tuple(padding, dims, "padding", minimum=0)
    dilation = as_tuple(dilation, dims, "dilation", minimum=1)
    if any(p > k // 2 for p, k in zip(pad, kernel)):
        raise ValueError(f"{name}: padding must be at most half of kernel_size, got padding={padding!r} and kernel_size={kernel_size!r}")
    spatial = x.shape[2:]
    out_size = tuple(pool_output_size(n, k, p, s, d, ceil_mode) for n, k, p, s, d in zip(spatial, kernel, pad, stride, dilation))
    if any(o < 1 for o in out_size):
        raise ValueError(
            f"{name}: kernel_size={kernel} (dilation {dilation}) is larger than the padded input {tuple(spatial)} "
            f"with padding {pad}: the output would be {out_size}"
        )
    # Windows may reach past the right padding in ceil_mode: pad enough to hold them all.
    pads = tuple(
        (p, max(p, (o - 1) * s + d * (k - 1) + 1 - n - p))
        for n, k, p, s, d, o in zip(spatial, kernel, pad, stride, dilation, out_size)
    )
    return kernel, stride, pads, dilation, out_size


def _batched(fn, x, dims, *args):
    """Run ``fn`` on a batched input, adding and removing the batch axis for unbatched ones."""
    if isinstance(x, torch.Tensor) and x.dim() == dims + 1:
        out = fn(x.unsqueeze(0), *args)
        return tuple(t.squeeze(0) for t in out) if isinstance(out, tuple) else out.squeeze(0)
    return fn(x, *args)




def _in_own_layout(pool, x: torch.Tensor, *args) -> torch.Tensor:
    """Run a pooling Function in the memory layout ``x`` already has.

    Pooling treats channels independently, so a channels-first input is pooled as N*C
    single-channel planes (long contiguous rows, gradient in the same layout), and a
    channels-last one as it is stored.
    """
    n, c, *spatial = x.shape
    if x.movedim(1, -1).is_contiguous() and c > 1:
        return pool.apply(x, *args)
    out = pool.apply(x.reshape(n * c, 1, *spatial), *args)  # (N*C, 1, *S_out)
    return out.view(n, c, *out.shape[2:])



def _max_pool(x, dims, kernel_size, stride, padding, dilation, ceil_mode, return_indices):
    kernel, stride, pads, dilation, out_size = _pool_geometry(f"max_pool{dims}d", x, dims, kernel_size, stride, padding, dilation, ceil_mode)
    if transformed(x):  # torch.func / forward-mode AD: the reference form
        if return_indices:
            raise ValueError(f"max_pool{dims}d: return_indices=True is not supported under torch.func transforms or forward-mode AD")
        return reference_max_pool(x, kernel, stride, pads, dilation, out_size, None)
    track = torch.is_grad_enabled() and x.requires_grad  # no winners to note for inference
    functions = kernels(x)
    if functions is not None and x.shape[1] > 1 and routing._compiled_layout_pays(x, kernel, stride, dilation):  # the compiled loops (compiled_pool.py)
        out, winners = CompiledMaxPoolNd.apply(functions, x, kernel, stride, pads, dilation, out_size, track or return_indices)
        return (out, winners.long()) if return_indices else out
    out = _in_own_layout(MaxPoolNd, x, kernel, stride, pads, dilation, out_size, track)
    if not return_indices:
        return out
    with torch.no_grad():  # the winners as torch reports them: the first maximum, or the last NaN
        windows = sliding_windows(pad_channels_last(x.detach(), pads, float("-inf")), kernel, stride, dilation, out_size)
        winners = winner_offsets(windows, kernel, out.detach().movedim(1, -1))
        return out, max_indices(tuple(x.shape), kernel, stride, pads, dilation, winners)


def _avg_pool(x, dims, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    name = f"avg_pool{dims}d"
    kernel, stride, pads, _, out_size = _pool_geometry(name, x, dims, kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None:
        if isinstance(divisor_override, bool) or not isinstance(divisor_override, int) or divisor_override < 1:
            raise ValueError(f"{name}: divisor_override must be a positive int or None, got {divisor_override!r}")
        divisor = float(divisor_override)
    elif all(lo == 0 and hi == 0 for lo, hi in pads):  # every window lies inside the input: one count for all
        divisor = float(math.prod(kernel))
    else:
        pad = tuple(lo for lo, _ in pads)
        divisor = avg_divisor(x.shape[2:], kernel, stride, pad, out_size, count_include_pad, x)
    if transformed(x):  # torch.func / forward-mode AD: the reference form
        return reference_avg_pool(x, kernel, stride, pads, out_size, divisor)
    out = _in_own_layout(AvgPoolNd, x, kernel, stride, pads, out_size, divisor)
    return out.contiguous() if dims == 3 and not x.is_cuda else out  # torch's CPU avg_pool3d answers channels-first


def max_pool1d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False):
    """1-D max pooling; same signature and results as torch.nn.functional's ``max_pool1d``.

    Shape:
        (N, C, L) or (C, L) -> L_out = floor_or_ceil((L + 2p - d*(k-1) - 1) / s) + 1.
    """
    return _batched(_max_pool, input, 1, 1, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool2d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False):
    """2-D max pooling; same signature and results as torch.nn.functional's ``max_pool2d``.

    Args:
        kernel_size: window (kh, kw). stride defaults to kernel_size.
        padding: implicit -inf on each side, at most half the kernel.
        dilation: spacing between window elements.
        ceil_mode: round the output size up (the last window must start inside the input
            or its left padding).

    Shape:
        (N, C, H, W) or (C, H, W) -> H_out = floor_or_ceil((H + 2*ph - dh*(kh-1) - 1) / sh) + 1.

    Example:
        >>> max_pool2d(torch.arange(16.).view(1, 1, 4, 4), 3, stride=2, padding=1)
        tensor([[[[ 5.,  7.],
                  [13., 15.]]]])
    """
    return _batched(_max_pool, input, 2, 2, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def max_pool3d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, dilation: IntOrTuple = 1, ceil_mode: bool = False, return_indices: bool = False):
    """3-D max pooling; same signature and results as torch.nn.functional's ``max_pool3d``."""
    return _batched(_max_pool, input, 3, 3, kernel_size, stride, padding, dilation, ceil_mode, return_indices)


def avg_pool1d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True):
    """1-D average pooling; same signature and results as torch.nn.functional's ``avg_pool1d``."""
    return _batched(_avg_pool, input, 1, 1, kernel_size, stride, padding, ceil_mode, count_include_pad, None)


def avg_pool2d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
    """2-D average pooling; same signature and results as torch.nn.functional's ``avg_pool2d``.

    Each output is its window's sum divided by the window size; with ``count_include_pad=False``
    the padding zeros are not counted.

    Shape:
        (N, C, H, W) or (C, H, W) -> H_out = floor_or_ceil((H + 2*ph - kh) / sh) + 1.
    """
    return _batched(_avg_pool, input, 2, 2, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)


def avg_pool3d(input, kernel_size: IntOrTuple, stride: IntOrTuple | None = None, padding: IntOrTuple = 0, ceil_mode: bool = False, count_include_pad: bool = True, divisor_override: int | None = None):
    """3-D average pooling; same signature and results as torch.nn.functional's ``avg_pool3d``."""
    return _batched(_avg_pool, input, 3, 3, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)



def adaptive_avg_pool2d(input, output_size: int | Sequence[int | None]):
    """2-D adaptive average pooling; same results as ``torch.nn.functional.adaptive_avg_pool2d``.

    Output cell ``i`` along an axis of length ``n`` averages input elements
    ``floor(i*n/o)`` to ``ceil((i+1)*n/o) - 1``, so any output size works, including ones
    that do not divide the input. ``None`` in ``output_size`` keeps that axis's size.

    Shape:
        (N, C, H, W) or (C, H, W) -> (N, C, *output_size).
    """
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"adaptive_avg_pool2d: input must be a tensor, got {type(input).__name__}")
    if input.dim() not in (3, 4):
        raise ValueError(f"adaptive_avg_pool2d: input must have 3 (unbatched) or 4 (batched) dimensions, got shape {tuple(input.shape)}")
    h, w = input.shape[-2:]
    if isinstance(output_size, int) or output_size is None:
        output_size = (output_size, output_size)
    sizes = tuple(n if o is None else o for n, o in zip((h, w), output_size))
    sizes = as_tuple(sizes, 2, "output_size", minimum=1)
    if h < 1 or w < 1:
        raise ValueError(f"adaptive_avg_pool2d: input spatial size must be at least 1x1, got {tuple(input.shape)}")
    with torch.autocast(input.device.type, enabled=False):  # pooling runs in its input's dtype, as torch's does
        if transformed(input):  # torch.func / forward-mode AD: the averaging matrices as plain products
            (h, w), (oh, ow) = input.shape[-2:], sizes
            return averaging_matrix(h, oh, input) @ input @ averaging_matrix(w, ow, input).T
        out = AdaptiveAvgPool2d.apply(input, sizes)
    if input.dim() == 4 and input.shape[1] > 1 and input.is_contiguous(memory_format=torch.channels_last) and not input.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)  # torch keeps a channels-last input's layout
    return out


# --- the chapter's pool2d (D2L 7.5.1) --------------------------------------------------------


def pool2d(X: torch.Tensor, pool_size: IntOrTuple, mode: str = "max") -> torch.Tensor:
    """Max or average pooling of a single 2-D input with stride 1 and no padding (D2L 7.5.1).

    Shape:
        X (n_h, n_w) -> (n_h - p_h + 1, n_w - p_w + 1).

    Example:
        >>> pool2d(torch.arange(9.).view(3, 3), (2, 2))
        tensor([[4., 5.],
                [7., 8.]])
    """
    if not isinstance(X, torch.Tensor) or X.dim() != 2:
        raise ValueError(f"X must be a 2-D tensor (height, width), got {getattr(X, 'shape', type(X).__name__)}")
    if mode == "max":
        return max_pool2d(X[None, None], pool_size, stride=1)[0, 0]
    if mode == "avg":
        return avg_pool2d(X[None, None], pool_size, stride=1)[0, 0]
    raise ValueError(f"mode must be 'max' or 'avg', got {mode!r}")
