"""Batch normalisation through the compiled loops of ``csrc/batch_norm.c`` (built by ``compiled.py``).

The same operation as ``norm.BatchNorm`` (the formulas are in ``norm.py``), for values that lie in
memory as a contiguous (M, C) matrix (channels-last images, (N, C) features), as four loops that read
the matrix once each:

    forward    statistics (blocks of rows in cache, merged in order: exact for any channel offset,
               no one-pass cancellation check needed), then y = x * scale + shift
    backward   sum(dy) and sum(dy * (x - mean)) per channel, then dx = dy * a + x * k1 + k0

with the per-channel vectors in between (statistics, running estimates, coefficients; the gradient's
sums and coefficients) made in the same calls: two C calls each way, against the tensor route's 22
tensor calls forward and 23 backward. Sums run in an order fixed by the shape, so results do not depend
on the thread count: a block's (at most 1024 rows, in cache) in the values' own type, the blocks' merged
in double. Summing every value in double made the statistics pass twice as slow (800K floats: 127
against 64 us), and float32 results stay within torch's own float32 error this way
(``test_batch_norm_float32_channels_last_within_torchs_own_error``).

Forward + backward against torch's own kernel and ``BatchNorm``'s tensor passes, channels-last, 2
threads, the three interleaved in rotating order, medians of 40 (compiled / torch, tensor / torch):
256x32x28x28 0.97 / 1.64, 128x16x28x28 0.92 / 1.51, 128x64x7x7 0.94 / 1.80, 32x16x14x14 1.19 / 1.97,
32x64x7x7 1.23 / 2.31, 2x32x14x14 1.51 / 2.76, BatchNorm1d 256x256 1.29 / 2.28 (small layers: the
Python around the loops, about 30 us a layer forward + backward, where torch's whole layer takes 50-110;
four C calls each way instead of two measured 1.4-1.9x torch's there).
Fewer than 8 channels on a large matrix keep the tensor route (``norm.COMPILED_MIN_CHANNELS_FOLDED``).

Used for float32 and float64 CPU tensors whose rows are contiguous, in training and in eval mode;
channels-first images, half precision, other devices, ``torch.compile`` and torch.func transforms keep
the tensor route. A differentiable backward (``create_graph``) differentiates
``norm.reference_batch_norm`` as the tensor route does.
"""

from __future__ import annotations

import ctypes
import functools

import torch

from ..textbook.autograd import graph_backward, wants_graph
from ..textbook.norm import reference_batch_norm, update_running
from . import compiled

__all__ = ["CompiledBatchNorm", "kernels"]

_FLOAT = {torch.float32: "f32", torch.float64: "f64"}
_P, _I64, _INT, _D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
_SIGNATURES = {  # name: (argument types, result type)
    "batch_norm_prepare": ([_P, _I64, _I64, _INT, _P, _P, _D, _P, _P, _D, _P, _INT], ctypes.c_int),
    "batch_norm_normalise": ([_P, _P, _I64, _I64, _P, _P, _INT], None),
    "batch_norm_backward_prepare": ([_P, _P, _I64, _I64, _P, _INT, _INT, _P, _INT], ctypes.c_int),
    "batch_norm_input_gradient": ([_P, _P, _P, _I64, _I64, _P, _P, _P, _INT], None),
}


@functools.cache
def _typed(lib: ctypes.CDLL, suffix: str) -> dict:
    functions = {}
    for name, (args, result) in _SIGNATURES.items():
        f = lib[f"{name}_{suffix}"]
        f.argtypes, f.restype = args, result
        functions[name] = f
    return functions


def kernels(x: torch.Tensor) -> dict | None:
    """The C functions for ``x``'s dtype where ``x`` is a (M, C) matrix in memory, else None (the tensor route)."""
    if x.device.type != "cpu" or x.dtype not in _FLOAT or x.numel() == 0 or x.shape[1] == 0:
        return None
    if not (x.is_contiguous() if x.dim() == 2 else x.movedim(1, -1).is_contiguous()):
        return None
    lib = compiled.library("batch_norm")
    return None if lib is None else _typed(lib, _FLOAT[x.dtype])


def _ok(status: int) -> None:
    if status != 0:
        raise MemoryError("batch_norm: out of memory for the per-block sums")


def _as_read(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    """A (C,) parameter as the C loops read it: ``like``'s dtype, contiguous (the tensor itself where it is)."""
    return None if t is None else t.detach().to(like.dtype).contiguous()


def _address(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _in_place(running: torch.Tensor | None, like: torch.Tensor) -> bool:
    """Whether the C loop can update a running estimate where it lies (None counts: nothing to update)."""
    return running is None or (running.dtype == like.dtype and running.is_contiguous() and running.device == like.device)


class CompiledBatchNorm(torch.autograd.Function):
    """Batch norm of a (M, C) matrix by the compiled loops; ``training`` says whether the statistics come
    from this batch (and update the running ones) or from the running estimates. ``f`` holds the C
    functions for x's dtype (``kernels(x)``)."""

    @staticmethod
    def forward(ctx, f, x, weight, bias, running_mean, running_var, training, momentum, eps):
        threads, c = torch.get_num_threads(), x.shape[1]
        m = x.numel() // c
        vectors = x.new_empty(5, c)  # mean, var, invstd, scale, shift
        if not training:
            vectors[0].copy_(running_mean)
            vectors[1].copy_(running_var)
        in_place = training and _in_place(running_mean, x) and _in_place(running_var, x)
        w, b = _as_read(weight, x), _as_read(bias, x)
        _ok(f["batch_norm_prepare"](x.data_ptr(), m, c, int(training), _address(running_mean) if in_place else None,
                                    _address(running_var) if in_place else None, momentum, _address(w), _address(b), eps,
                                    vectors.data_ptr(), threads))
        if training and not in_place:  # running estimates of another dtype or layout

            update_running(running_mean, running_var, vectors[0], vectors[1], m, momentum)
        y = torch.empty_like(x)  # the same memory format: its rows lie as x's do
        f["batch_norm_normalise"](x.data_ptr(), y.data_ptr(), m, c, vectors[3].data_ptr(), vectors[4].data_ptr(), threads)
        ctx.f, ctx.training, ctx.eps = f, training, eps
        ctx.stats = None if training else (vectors[0], vectors[1])  # for a differentiable backward (read only)
        ctx.save_for_backward(x, weight, bias, vectors)
        return y

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, bias, vectors = ctx.saved_tensors
        if wants_graph():

            stats = ctx.stats
            grads = graph_backward(lambda x, w, b: reference_batch_norm(x, w, b, stats, ctx.eps), (x, weight, bias),
                                   ctx.needs_input_grad[1:4], grad_out)
            return (None, *grads, None, None, None, None, None)
        f, threads, c = ctx.f, torch.get_num_threads(), x.shape[1]
        m = x.numel() // c
        g = grad_out if _same_rows(grad_out, x) else _like(grad_out, x)  # (M, C) rows as x's
        out = x.new_empty(4, c)  # grad_weight, grad_bias, k1, k0
        need_sums = ctx.training or ctx.needs_input_grad[2] or ctx.needs_input_grad[3]
        _ok(f["batch_norm_backward_prepare"](g.data_ptr(), x.data_ptr(), m, c, vectors.data_ptr(), int(ctx.training),
                                             int(need_sums), out.data_ptr(), threads))
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[1]:
            grad_x = torch.empty_like(x)  # dx = dy * scale + x * k1 + k0
            f["batch_norm_input_gradient"](g.data_ptr(), x.data_ptr(), grad_x.data_ptr(), m, c, vectors[3].data_ptr(),
                                           out[2].data_ptr(), out[3].data_ptr(), threads)
        if ctx.needs_input_grad[2]:
            grad_w = out[0].to(weight.dtype)
        if ctx.needs_input_grad[3]:
            grad_b = out[1].to(bias.dtype)
        return None, grad_x, grad_w, grad_b, None, None, None, None, None


def _same_rows(g: torch.Tensor, x: torch.Tensor) -> bool:
    """Whether ``g`` lies in memory exactly as ``x`` does (same shape and strides, both dense)."""
    return g.shape == x.shape and g.stride() == x.stride() and g.dtype == x.dtype


def _like(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``g`` copied into memory laid out as ``x``'s, in x's dtype."""
    return torch.empty_like(x).copy_(g)
