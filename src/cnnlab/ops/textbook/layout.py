"""Memory layouts as torch's convolution gives them: which format a result takes, and gradients laid out so.

A fast route may build its result or gradient in whatever layout suits it; before it returns, the result
takes the format torch's own kernel would give, and a parameter's gradient its parameter's strides
(autograd's gradient layout contract, which DDP checks).
"""

from __future__ import annotations

import torch


def _strides_like_channels_last(t: torch.Tensor) -> bool:
    """torch's own test for a channels-last tensor (its C++ ``is_channels_last_strides``), ambiguous
    cases (size-1 axes) falling back to channels-first as torch's do."""
    sizes, strides = t.shape, t.stride()
    if t.dim() not in (4, 5) or strides[1] == 0:
        return False
    order = (1, 3, 2, 0) if t.dim() == 4 else (1, 4, 3, 2, 0)
    low = 0
    for d in order:
        if sizes[d] == 0 or strides[d] < low or (d == 0 and low == strides[1]):
            return False
        low = strides[d] * (sizes[d] if sizes[d] > 1 else 1)
    return True


def memory_format_like_torch(x: torch.Tensor, weight: torch.Tensor) -> torch.memory_format:
    """torch's convolution returns channels-last when its input or its weight is stored so (for 3-D
    convolutions only on CUDA: its CPU kernels answer channels-first)."""
    if (x.dim() == 4 or (x.dim() == 5 and x.is_cuda)) and (_strides_like_channels_last(x) or _strides_like_channels_last(weight)):
        return torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return torch.contiguous_format




def laid_out_like_torch(grad_x: torch.Tensor | None, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor | None:
    """``grad_x`` contiguous in the memory format torch's convolution gives its input gradient (that of its
    output, ``memory_format_like_torch``), copied only where it is not. The routes that add window
    gradients into a padded buffer, or work on flattened padded rows, end with a view of its interior,
    and a view like that made the next layer's kernel read it strided: torch's batch norm backward on an
    8x64x112x112 gradient 48 against 6 ms, its max pool backward 1.5x."""
    if grad_x is None:
        return None
    fmt = memory_format_like_torch(x, weight)
    return grad_x if grad_x.is_contiguous(memory_format=fmt) else grad_x.contiguous(memory_format=fmt)


def like_param(grad: torch.Tensor | None, param: torch.Tensor) -> torch.Tensor | None:
    """``grad`` with ``param``'s strides (autograd's gradient layout contract, which DDP checks)."""
    if grad is None or grad.stride() == param.stride():
        return grad
    return torch.empty_like(param).copy_(grad)


