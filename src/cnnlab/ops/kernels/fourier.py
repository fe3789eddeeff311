"""2-D cross-correlation through the convolution theorem, with the transforms as matrix products.

A cross-correlation of a whole feature map is a product in the frequency domain: with ``^`` a
discrete Fourier transform of length ``L`` along each spatial axis,

    y^[f] = sum over c of  x^[f, c] * conj(w^[f, c, o])          (one frequency at a time)

so the kernel's ``kh*kw`` taps per input-output channel pair become one complex multiply-add per
frequency: a 5x5 kernel on a 14x14 map with padding 2 costs 196 * 25 = 4900 real multiply-adds per
channel pair directly and 18 * 10 complex ones (720 real) here, plus the transforms, which act on
each channel once instead of on each channel pair.

The transforms are written as matrix products with the DFT matrices ``E[f, p] = exp(-2 pi i f p / L)``,
one axis at a time (a separable 2-D transform), never through an FFT library: matrices can read the
input at any positions and produce any outputs, which does the padding, the stride, the dilation and
the cropping for free:

    forward   x^   = E_h(x rows)  E_w(x columns)       every input position p, zeros never stored
              w^   = E_h(a*d - lo) E_w(b*d - lo)       each kernel tap at its offset from the window start
              y    = Re( I_h(j*s) I_w(k*s) sum_c x^ conj(w^) )    only the outputs that exist
    backward  g^   = E(j*s) of grad_out
              grad_x = Re( I(p) sum_o g^ w^ )          (a transposed correlation: no scatter)
              grad_w = Re( I(a*d - lo) sum_n conj(g^) x^ )

Lengths: ``L = n + max(lo, hi)`` per axis is enough for the circular products to equal the linear
ones on every position read (each window reaches at most ``lo`` before the map and ``hi`` past it,
and those positions wrap onto zeros), and no longer is needed because a matrix does not care for
powers of two. Along the width only the frequencies ``0 .. L//2`` are kept (a real signal's
spectrum is symmetric); the inverse weighs the others in (``multiplicity`` in ``_axis``).

Layout: the channel products need one (N, C) matrix per frequency, so the spectra are kept as
(F, G, N, C), frequency-major (F the width's half spectrum, G the height's): the input is copied once
into (W, H, N, C) order (as complex numbers), and each transform is then one product over the leading
axis or a batch of them over the second, with no other copy: forward transforms take the width first
(``_spectra``), inverses the height first (``_real_map``), so the short half-spectrum axis meets the
long one on the cheap side both ways. The result is written straight into the channels-last output.

Where it is used (``conv._use_fourier``) and why: see ``FOURIER_MIN_TAPS`` there. Products run in
complex64 for float32 (torch.mm/bmm), complex128 for float64, so the float64 oracle holds (errors
near 1e-15 relative). In float32 the rounding error spreads over the map rather than sitting in each
output's own sum; against float64, largest error / largest value (and RMS error / RMS value) of the
output, grad_x and grad_w, this path vs torch's float32 convolution (random normal data):

    16->32 5x5 at 14 px, batch 32      y 1.9e-7 (1.8e-7) vs 6.2e-7 (3.4e-7)   grad_w 2.0e-7 vs 1.2e-6
    6->16 5x5 at 14 px, batch 64       y 2.6e-7 (1.7e-7) vs 4.7e-7 (2.2e-7)   grad_w 2.3e-7 vs 2.5e-6
    96->256 5x5 at 27 px, batch 16     y 2.6e-7 (2.7e-7) vs 5.2e-7 (3.5e-7)   grad_w 2.9e-7 vs 4.2e-6
    256->256 3x3 at 8 px, batch 8      y 2.2e-7 (2.4e-7) vs 3.0e-7 (2.2e-7)   grad_w 1.7e-7 vs 9.3e-7

(grad_x alike): as accurate as torch's own float32 result or more so.
"""

from __future__ import annotations

import functools
import math

import torch

from ..textbook.autograd import graph_backward, unviewed, wants_graph
from ..textbook.conv import reference_conv
from ..textbook.layout import laid_out_like_torch
from ..textbook.scratch import scratch
from ..textbook.shapes import Pads
from ..textbook.sums import channel_sums

__all__ = ["FourierConv2d"]


@functools.lru_cache(maxsize=256)
def _axis(n: int, k: int, pad: tuple[int, int], s: int, d: int, half: bool, dtype: torch.dtype, device: torch.device) -> dict:
    """The DFT matrices of one spatial axis (length ``n``, kernel ``k``, padding ``pad``, stride ``s``,
    dilation ``d``), computed in float64 and rounded once to ``dtype`` (complex). ``half``: keep only
    the frequencies 0 .. L//2 (the last axis: a real signal's spectrum is symmetric).

    Returns ``{"out": the output length, "k": E (frequency, position) over the kernel taps' offsets,
    "y": E over the output positions, "x_conj": conj(E) over the input positions, "inv_x": the inverse
    at the input positions (position, frequency), "inv_k_conj", "inv_y_conj": the conjugated inverses
    at the taps' offsets and the output positions}``; inverses are weighted by 1/L and, on the half
    axis, by each frequency's multiplicity. Which are conjugated follows from ``FourierConv2d``'s
    folding of the conjugations into the matrices."""
    lo, hi = pad
    out = (n + lo + hi - d * (k - 1) - 1) // s + 1
    length = n + max(lo, hi)
    count = length // 2 + 1 if half else length
    freq = torch.arange(count, dtype=torch.float64)

    def dft(positions: torch.Tensor) -> torch.Tensor:  # (frequencies, positions)
        return torch.exp(torch.outer(freq, positions.to(torch.float64)) * (-2j * math.pi / length))

    multiplicity = torch.ones(count, dtype=torch.float64)  # how often each kept frequency stands in the full spectrum
    if half:
        multiplicity[1:] = 2.0
        if length % 2 == 0:
            multiplicity[-1] = 1.0  # the Nyquist frequency appears once

    def inverse(e: torch.Tensor) -> torch.Tensor:  # (positions, frequencies)
        return e.conj().T * (multiplicity / length)

    e_x = dft(torch.arange(n))
    e_k = dft(torch.arange(k) * d - lo)
    e_y = dft(torch.arange(out) * s)

    def put(t: torch.Tensor) -> torch.Tensor:
        return t.to(dtype=dtype, device=device).contiguous()

    return {"out": out, "x_conj": put(e_x.conj()), "k": put(e_k), "y": put(e_y),
            "inv_x": put(inverse(e_x)), "inv_k_conj": put(inverse(e_k).conj()), "inv_y_conj": put(inverse(e_y).conj())}


def _complex(dtype: torch.dtype) -> torch.dtype:
    return torch.complex128 if dtype == torch.float64 else torch.complex64


def _spectra(t: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """(N, C, H, W) real -> (F, G, N, C) complex: ``cols`` (F, W) along the width first, then ``rows`` (G, H)
    along the height; one copy into (W, H, N, C) order, then two products that need no other. Into ``out``
    where given; the temporaries live in reused memory (``scratch``: fresh pages cost more here than
    the products).

    The width goes first because its half spectrum is short (F = L//2 + 1 frequencies): the first
    product, which reads the real input as complex numbers, then makes F rows instead of G = L, and the
    second has F batches. At 14 px (L = 15, F = 8) that is 30% fewer multiply-adds; measured, one
    process, alternately, medians of 31: 0.72-0.96 of the height-first order on 4-14 px maps, 1.10 on
    7 px (batch 128, 64 channels), where the batched product over few rows runs slower than one product."""
    n, c, h, w = t.shape
    g, f = rows.shape[0], cols.shape[0]
    planes = scratch("fourier.planes", (w, h, n, c), t, rows.dtype)
    planes.copy_(t.permute(3, 2, 0, 1))
    by_cols = torch.mm(cols, planes.view(w, h * n * c), out=scratch("fourier.by_cols", (f, h * n * c), t, rows.dtype))
    out = torch.empty((f, g, n, c), dtype=rows.dtype, device=t.device) if out is None else out
    torch.matmul(rows, by_cols.view(f, h, n * c), out=out.view(f, g, n * c))
    return out


def _real_map(spectrum: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, out: torch.Tensor, bias=None) -> None:
    """(F, G, N, C) complex -> the real part of its inverse at ``rows`` (H, G) x ``cols`` (W, F) positions,
    written into ``out`` (N, H, W, C). The height goes first, the short half spectrum last (the other
    order makes G = L rows from F: more multiply-adds)."""
    f, g, n, c = spectrum.shape
    h, w = rows.shape[0], cols.shape[0]
    by_rows = torch.matmul(rows, spectrum.view(f, g, n * c), out=scratch("fourier.by_rows", (f, h, n * c), out, rows.dtype))
    full = torch.mm(cols, by_rows.view(f, h * n * c), out=scratch("fourier.full", (w, h * n * c), out, rows.dtype)).view(w, h, n, c)
    target = out.permute(2, 1, 0, 3)
    if bias is None:
        target.copy_(full.real)
    else:
        torch.add(full.real, bias, out=target)


class FourierConv2d(torch.autograd.Function):
    """2-D cross-correlation (groups 1) through the convolution theorem (module docstring).

    Shapes: x (N, C, H, W), weight (O, C, kh, kw), bias (O,) or None -> (N, O, H_out, W_out),
    channels-last in memory. Any stride, padding (``pads``: (lo, hi) per axis) and dilation.

    Conjugations are folded into the matrices: the forward pass keeps ``conj(x^)`` (from the
    conjugated DFT matrix), so ``sum_c x^ conj(w^) = conj(sum_c conj(x^) w^)`` and its inverse's real
    part is the conjugated inverse applied to ``sum_c conj(x^) w^``: no conjugation pass over data.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, stride, pads: Pads, dilation):
        n, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        dtype = _complex(x.dtype)
        rows = _axis(h, kh, pads[0], stride[0], dilation[0], False, dtype, x.device)
        cols = _axis(w, kw, pads[1], stride[1], dilation[1], True, dtype, x.device)
        x_hat = _spectra(x, rows["x_conj"], cols["x_conj"])  # conj(x^), (F, G, N, C)
        f, g = x_hat.shape[:2]
        taps = torch.empty((kw, kh, c, o), dtype=dtype, device=x.device)
        taps.copy_(weight.permute(3, 2, 1, 0))
        w_hat = torch.matmul(rows["k"], torch.mm(cols["k"], taps.view(kw, kh * c * o)).view(f, kh, c * o)).view(f * g, c, o)
        y_hat = torch.bmm(x_hat.view(f * g, n, c), w_hat, out=scratch("fourier.product", (f * g, n, o), x, dtype))  # conj(y^)
        y = x.new_empty((n, rows["out"], cols["out"], o))
        _real_map(y_hat.view(f, g, n, o), rows["inv_y_conj"], cols["inv_y_conj"], y, bias)
        ctx.geometry = (stride, pads, dilation)
        ctx.axes = (rows, cols)
        ctx.save_for_backward(x_hat if ctx.needs_input_grad[1] else None, w_hat if ctx.needs_input_grad[0] else None,
                              x, weight, bias)
        return unviewed(y.permute(0, 3, 1, 2))  # (N, O, H_out, W_out); nothing saved shares y

    @staticmethod
    def backward(ctx, grad_out):
        x_hat, w_hat, x, weight, bias = ctx.saved_tensors
        stride, pads, dilation = ctx.geometry
        if wants_graph():

            grads = graph_backward(lambda x, w, b: reference_conv(x, w, b, stride, pads, dilation, 1), (x, weight, bias),
                                   ctx.needs_input_grad[:3], grad_out)
            return (*grads, None, None, None)
        rows, cols = ctx.axes
        n, c, h, w = x.shape
        o, _, kh, kw = weight.shape
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            g, f = rows["y"].shape[0], cols["y"].shape[0]
            g_hat = _spectra(grad_out, rows["y"], cols["y"], scratch("fourier.grad_out", (f, g, n, o), x, rows["y"].dtype))
            g_hat = g_hat.view(f * g, n, o)
        if ctx.needs_input_grad[0]:
            gx_hat = torch.bmm(g_hat, w_hat.transpose(1, 2), out=scratch("fourier.product", (f * g, n, c), x, g_hat.dtype))
            grad_x = x.new_empty((n, h, w, c))
            _real_map(gx_hat.view(f, g, n, c), rows["inv_x"], cols["inv_x"], grad_x)
            grad_x = grad_x.permute(0, 3, 1, 2)
        if ctx.needs_input_grad[1]:
            # sum_n conj(g^) x^ = conj(sum_n g^ conj(x^)): the conjugated inverse of x_hat^T g_hat
            gw_hat = torch.bmm(x_hat.view(f * g, n, c).transpose(1, 2), g_hat,
                               out=scratch("fourier.product", (f * g, c, o), x, g_hat.dtype))  # (F*G, C, O)
            taps = weight.new_empty((kh, kw, c, o))
            _real_map(gw_hat.view(f, g, c, o), rows["inv_k_conj"], cols["inv_k_conj"], taps.permute(2, 0, 1, 3))
            grad_w = torch.empty_like(weight).copy_(taps.permute(3, 2, 0, 1))  # in the parameter's layout (DDP buckets)
        if ctx.needs_input_grad[2]:
            grad_b = channel_sums(grad_out)

        return laid_out_like_torch(grad_x, x, weight), grad_w, grad_b, None, None, None
