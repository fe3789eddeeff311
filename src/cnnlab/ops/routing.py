"""Which route a call takes: every threshold with the measurements it was fitted on.

The convolution's routes, asked in this order by ``conv._conv`` (each rule below says where it measured
faster; all of them compute the same definition, ``textbook/conv.py``):

    planar loops      kernels/compiled_conv.PlanarConvNd   first layers (1-3 input channels)        _planar_loops
    direct loops      kernels/compiled_conv.DirectConvNd   one group, more than one tap             _direct_loops
    DFT               kernels/fourier.FourierConv2d        training; large kernels, small maps      _use_fourier
    pointwise         kernels/pointwise.PointwiseConvNd    1x1, stride 1, no padding, 8+ channels   _use_pointwise
    per-tap products  kernels/shifted.ShiftedConvNd        training, 16-31 channels, <= 9 taps      _use_shifted
    window matrix     kernels/window.ConvNd                everything else

Where the compiled loops and the DFT compete, the rule depends on the loops' variant (``FOURIER_RULES``),
since their multiply-adds per cycle follow the vector width and the DFT's do not. Pooling's and batch
norm's rules are at the end.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .kernels import compiled_conv
from .kernels.tensor_norm import affine_fold
from .kernels.window import PLANAR_MAX_CHANNELS
from .textbook.shapes import Pads
from .textbook.windows import windows_overlap

# A stride-1 convolution with SHIFTED_MIN_CHANNELS <= C < SHIFTED_MAX_CHANNELS inputs and at most
# SHIFTED_MAX_TAPS kernel taps skips the window matrix altogether (ShiftedConvNd), as long as the margins
# it computes and throws away cost at most SHIFTED_MAX_WASTE more work. Measured forward + backward,
# 2 threads, batch 128, channels-last, against the window matrix built in reused cache-sized blocks:
# 16->32 3x3 at 14 px 8.3 vs 12.4 ms, 16->16 at 28 px 16.4 vs 19.8 ms (shifted faster); 16->32 5x5
# 24.4 vs 21.5, 32->32 3x3 at 28 px 68.8 vs 51.5, 68->12 20.3 vs 14.2, 64->64 at 24-56 px (batch 8-16)
# 5-10% slower (window matrix faster). With fewer channels the window matrix is built channels-first
# (PLANAR_MAX_CHANNELS). Only in training: the forward pass alone (inference, evaluation) is faster
# through the window matrix, whose one product has K = k*k*C where the per-tap products have K = C. No
# grad, 2 threads, medians of 32: 16->24 3x3 at 14 px, batch 32, 464 vs 362 us; 16->32 at 28 px, batch
# 32 and 128, 1.31x and 1.40x; 24->32 at 7 px 1.52x, 24->64 at 28 px 1.53x; 16->16 at 56 px, batch 16, 0.97x.
# Whole models evaluated at batch 1024 (their evaluation batch), alternately, medians of 11: fast 0.74,
# vgg-cpu 0.79, nin-cpu 0.83 of the time with the per-tap products (0.90-0.94 at batch 256); the rest
# (no such layer in inference: noise) 0.99-1.10. Such a layer's output in training and in inference therefore
# agree to rounding (summed in another order), not bit for bit, as with the DFT below.
SHIFTED_MIN_CHANNELS = 16
SHIFTED_MAX_CHANNELS = 32
SHIFTED_MAX_TAPS = 9
SHIFTED_MAX_WASTE = 2.0


# Large kernels, and 3x3 kernels on small maps, go through the DFT (fourier.FourierConv2d) where it measured
# faster. Forward + backward, channels-last, 2 threads, the DFT route against the window-matrix paths,
# alternately in one process, medians of 15:
#   5x5 kernels, 3+ input channels: 0.48-0.82 of the time (LeNet's 6->16 at batch 256, AlexNet-CPU's 16->32
#     at 14 px, GoogLeNet-CPU's 8->16 branch, lenet-modern's 32->64, the book AlexNet's 96->256 at 27 px);
#     1-2 input channels (a first layer: its channels-first window matrix is short, no input gradient
#     is needed) 1.16-3.5.
#   3x3 kernels, batch 32 or more, 32 or more input channels, 7-16 px maps: 0.56-0.98 (7-8 px: 32->64,
#     48->12, 64->64, 256->256 0.68-0.85; 14-16 px: 40->12 0.84, 64->64 0.74-0.75, 96->96 0.79, 128->128
#     0.58, 256->256 0.56, 32->32 and 68->12 0.96-0.98). Not then with 12-16 input channels (0.9-1.5: see the
#     8-19 channel rule below, measured after the transforms were reordered), at
#     batch 8-16 (0.96-1.9: the kernels' spectra, frequencies x C x O complex values, are read for few
#     samples), on 24-56 px maps (1.2-1.9: the transforms grow with the map's side, the saving does not)
#     or on 1-4 px maps with 256-512 channels at batch 32 (1.2-2.65).
#   3x3 kernels, 20-31 input channels, 5-16 px maps, batch 32-128 (against the per-tap products of
#     ShiftedConvNd or the window matrix, whichever was faster): 0.69-0.99 over 14 shapes (24->32 at 14 px
#     0.88-0.90, 24->48 0.90, 20->20 at 16 px 0.90, 24->32 at 7 px 0.75-0.84, 24->32 at 16 px 0.99); 16
#     channels at 14 px 0.94-1.01 (not routed then; at 7 px 0.88-0.91, 12 channels 0.82: see the next rule).
#   3x3 kernels, 8-19 input channels, 7-16 px maps, batch 32-128, after the transforms took the width's half
#     spectrum first (fourier._spectra): 0.68-0.94 of the per-tap or channels-last window path, three processes
#     of each, alternately, medians of 31 (16->24 and 16->32 at 14 px 0.77-0.94, 12->24 0.86, 8->16 0.68-0.77,
#     16->16 at 7 px 0.72, 16->32 at 16 px 0.93; batch 16 and 8 0.78 and 0.88, not routed: one rule on the batch);
#     fewer than 8 channels 1.4-1.6 (the channels-first window matrix is short there); stride 2 1.5-1.8.
#   3x3 kernels on 4 px maps, 32-256 input channels: batch 64-128 0.72-0.87 (128->128 at batch 128 0.72,
#     256->256 0.72, 64->64 0.76-0.85), batch 48 0.90, batch 32 1.03-1.05; 3 px and 2 px maps at batch 128
#     0.89 and 0.94 (too close to call: not routed).
# Only for training, where the rule was measured (forward + backward: the backward pass reuses the
# forward's spectra of x and w). The forward alone, in one process alternately (median of 21): 0.77-0.87
# of the window matrix on LeNet's 6->16, AlexNet-CPU's 16->32 and lenet-modern's 32->64, 0.97-1.03 on
# GoogLeNet-CPU's 8->16 branch and a 64->64 3x3 layer at 7 px, 1.35 on the book AlexNet's 96->256; an
# earlier comparison across two benchmark runs (one in a slow phase) had said slower, and inference
# keeps the window matrix on that evidence. Measured since on whole models evaluated at batch 256 (alternately,
# medians of 11), 5x5 layers through the DFT against the window matrix: lenet 0.98, lenet-modern 1.11,
# alexnet-cpu 1.15: the window matrix stays. So such a
# layer's output in training and in inference agree to rounding (1e-16 relative in float64, about 1e-7
# in float32), not bit for bit.
FOURIER_MIN_TAPS = 25
PLANAR_LOOPS_MAX_CHANNELS = 3  # the compiled loops with lanes over positions (_planar_loops) up to this many input channels
DIRECT_MIN_OUTPUTS = 100  # the compiled loops (_direct_loops) from this many outputs (samples x positions) per stride step
DIRECT_FOURIER_BATCH_COST = 0.4  # the batch's term in the rule below


class FourierRule(NamedTuple):
    """Where the DFT keeps a training layer from the compiled loops (``_direct_loops``), for one variant of them:
    5x5+ kernels with ``min_channels`` or more input channels where (C + O) / (C * O) + DIRECT_FOURIER_BATCH_COST / N
    is below ``max_cost`` (``_fourier_amortised``), and 3x3 kernels with ``small_min_channels`` or more input and
    output channels (None: never) on the DFT's own maps (``_use_fourier``)."""

    min_channels: int
    max_cost: float
    small_min_channels: int | None


# The loops' multiply-adds per cycle halve from avx512 to avx2 while the DFT's transforms and products run on
# torch's matrix products either way, so the rule is measured per variant (forward + backward, channels-last,
# 2 threads, the DFT against the loops, ms, medians of 11, alternately):
# - avx512 (AMD EPYC Zen 5): see _fourier_amortised; 3x3 layers stay with the loops (0.48-0.80 of the tensor
#   routes' time, the DFT among them).
# - avx2 (AMD EPYC, AVX2 and FMA, no AVX-512): 5x5 layers at 7-26 px, 16-96 input channels, batch 8-256: the DFT
#   0.35-0.96 of the loops' time (96->256 at 26 px, batch 8 189 / 231, batch 32 287 / 779; 32->64 at 14 px, batch
#   64-256, 0.51-0.52; 32->32, batch 32, 7.9 / 11.8; 24->48 at 7 px 10.7 / 18.1; 16->32 at batch 128 18.3 / 25.0,
#   batch 32 8.0 / 8.3), but 16->16 at 28 px 80 / 41, 12->24 14.5 / 14.8, 8->16 and 6->16 1.1-1.25 times; 3x3 layers
#   with 64+ channels both ways 0.61-0.90 (64->64 at 7-16 px, batch 32-128, 128->128 at 4 and 12 px, 256->256 at
#   7 px), with 48 0.89-1.13, with 16-32 (or 12 out) 1.1-1.6. The portable and NEON builds (16-byte vectors) take avx2's (unmeasured).
FOURIER_RULES = {
    "avx512": FourierRule(min_channels=32, max_cost=0.054, small_min_channels=None),
    "avx2": FourierRule(min_channels=16, max_cost=0.10, small_min_channels=64),
    "portable": FourierRule(min_channels=16, max_cost=0.10, small_min_channels=64),
}
FOURIER_MIN_CHANNELS = 3
FOURIER_SMALL_MAP = (5, 16)  # 3x3 kernels (9-24 taps): maps of this many pixels a side ...
FOURIER_SMALL_MAP_MIN_CHANNELS = 8  # ... at least this many input channels ...
FOURIER_SMALL_MAP_MIN_BATCH = 32  # ... and samples
FOURIER_TINY_MAP = (4, 64)  # 3x3 kernels on maps of 4 px a side: from this many samples on


def _training(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a backward pass will follow this convolution (the layouts chosen for training were measured
    forward + backward)."""
    return torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)


def _use_fourier(x: torch.Tensor, weight: torch.Tensor, kernel, stride, dilation, groups: int) -> bool:
    """Whether a convolution goes through the DFT: in training (a backward pass will follow), 2-D,
    groups 1, stride and dilation 1, float32/64 on the CPU (where it was measured), outside
    ``torch.compile`` (which plans its own kernels), and a shape where it measured faster (above)."""
    if (FOURIER_MIN_TAPS is None or not _training(x, weight) or x.dim() != 4 or groups != 1 or x.device.type != "cpu"
            or x.dtype not in (torch.float32, torch.float64) or any(s != 1 for s in stride) or any(d != 1 for d in dilation)
            or torch.compiler.is_compiling()):
        return False
    taps, c = math.prod(kernel), x.shape[1]
    if taps >= FOURIER_MIN_TAPS:
        return c >= FOURIER_MIN_CHANNELS
    if taps < 9 or c < FOURIER_SMALL_MAP_MIN_CHANNELS:
        return False
    (low, high), (tiny, tiny_batch), n = FOURIER_SMALL_MAP, FOURIER_TINY_MAP, x.shape[0]
    return ((n >= FOURIER_SMALL_MAP_MIN_BATCH and all(low <= m <= high for m in x.shape[2:]))
            or (n >= tiny_batch and min(x.shape[2:]) == tiny and max(x.shape[2:]) <= high))


def _out_size(spatial, pads: Pads, kernel, stride, dilation) -> list[int]:
    """The output's spatial sizes for (before, after) borders ``pads``."""
    return [(n + lo + hi - d * (k - 1) - 1) // s + 1 for n, (lo, hi), k, s, d in zip(spatial, pads, kernel, stride, dilation)]


def _direct_loops(x: torch.Tensor, weight: torch.Tensor, kernel, stride, pads: Pads, dilation, groups: int):
    """The compiled loops' functions (``compiled_conv.kernels``) where they take the layer, else None: one
    group, more than one tap, and in training not a layer the DFT measured faster on (25+ taps with
    DIRECT_FOURIER_MIN_CHANNELS or more input channels on the DFT's maps). Asked after ``_planar_loops``,
    which takes most first layers.

    Measured forward + backward, channels-last, 2 threads, against the tensor routes (window matrix, per-tap
    products, DFT; alternately, medians of 11-15): 3x3 layers 0.48-0.79 of their time (16->32 at 28 px,
    batch 128, 9.8 against 25.9 ms; 32->32 at 14 px 0.51; 64->64 and 128->128 at 7 px 0.73-0.80; stride 2
    0.53-0.71); 5x5 layers with 6-16 input channels 0.53-0.70 of the DFT's time, with 32 channels 0.86 (14 px
    out) to 1.23 (10 px out: lenet-modern's 32->64), 48 and 96 channels 1.56 and 1.71 (the DFT keeps them);
    first layers, no input gradient: see ``_planar_loops``. Layers with few outputs for their weights (fewer than
    DIRECT_MIN_OUTPUTS samples x positions per stride step: ResNet-18's last stages at batch 32, 512->512 on
    1 px maps and 256->512 at stride 2 on 2 px) stay with the window matrix too: the loops repack the weights
    every pass (once per phase at stride 2) and measured 1.9 and 3.7x its time there, 128->256 at stride 2
    on 4 px maps 1.4x (256->256 on 2 px maps at stride 1, 128 outputs: 0.75)."""
    if groups != 1 or math.prod(kernel) == 1 or torch.compiler.is_compiling():
        return None
    if x.shape[0] * math.prod(_out_size(x.shape[2:], pads, kernel, stride, dilation)) < DIRECT_MIN_OUTPUTS * math.prod(stride):  # the weights' packing would dominate
        return None
    functions = compiled_conv.kernels(x)
    if functions is None or not _training(x, weight) or FOURIER_MIN_TAPS is None:
        return functions
    rule, (n, c), o = FOURIER_RULES.get(functions.variant, FOURIER_RULES["avx2"]), x.shape[:2], weight.shape[0]
    if math.prod(kernel) >= FOURIER_MIN_TAPS:
        keep = c >= rule.min_channels and _fourier_amortised(n, c, o, rule.max_cost)
    else:
        keep = rule.small_min_channels is not None and min(c, o) >= rule.small_min_channels
    return None if keep and _use_fourier(x, weight, kernel, stride, dilation, groups) else functions


def _fourier_amortised(n: int, c: int, o: int, max_cost: float) -> bool:
    """Whether the DFT's fixed costs are spread thinly enough for it to beat the compiled loops on a 5x5+
    layer of 32+ input channels in training: its transforms cost per sample and channel (C + O) against
    the products' C * O, and the kernels' spectra once per call, against the loops' cost per sample and
    pair of channels. Forward + backward, channels-last, 2 threads, the DFT against the loops, ms (medians
    of 10, alternately): the book AlexNet's 96->256 at 26 px, batch 8 74.1 / 51.9, batch 16 89.0 / 94.2,
    batch 32 148 / 190; lenet-modern's 32->64 at 14 px, batch 64 9.70 / 8.67, 128 14.6 / 17.9, 256 27.3 /
    28.6; 32->32 at 14 px, batch 32, 4.76 / 3.15; 64->64 at batch 32 7.63 / 9.50, 64 14.1 / 19.0; 48->64 at
    batch 64 12.0 / 15.4; 32->48 at batch 128 15.5 / 17.4. The rule gets 9 of these 11 right and the two
    others (lenet-modern at batch 64, 32->48 at 128) by 11-12%."""
    return (c + o) / (c * o) + DIRECT_FOURIER_BATCH_COST / n < max_cost


def _planar_loops(x: torch.Tensor, weight: torch.Tensor, kernel, stride, groups: int, channels_last: bool):
    """The compiled loops' functions where ``compiled_conv.PlanarConvNd`` takes the layer, else None: one
    group, more than one tap, at most PLANAR_LOOPS_MAX_CHANNELS input channels (a network's first layer),
    any stride (1-D and 2-D; a 3-D layer at stride 1 along its last axis), and a channels-first result or
    one of at most ``compiled_conv.PLANAR_MAX_CHANNELS_LAST`` channels (wider channels-last results go to
    the channels-last loops, ``_direct_loops``).

    Measured forward + backward with no input gradient (a first layer), 2 threads, alternately, medians of
    11-15, channels-last: LeNet's 1->6 5x5 at batch 256 1.64 against 4.04 ms on the channels-first window
    matrix it had before (torch 2.29); wider layers, on the channels-last loops now, against that window
    matrix: lenet-modern's 1->32 5x5 at batch 128 2.40 / 4.77 ms (torch 2.95), 1->32 3x3 1.98 / 2.66 (2.61),
    the book AlexNet's 11x11/4 at 224 px, batch 8, 4.01 / 8.13 (4.36). Channels-first, the planar loops
    against the window matrix: 0.45-0.9 of its time (LeNet's 1->6 1.45 / 4.25 ms). The planar loops against
    the channels-last loops on a channels-last result: 1->6 5x5 forward 0.73 / 1.12 ms, 1->8 0.80 / 1.13,
    1->12 1.27 / 1.14, 1->16 3x3 0.67 / 0.44 (they write such a result a value at a time). With 4-8 input
    channels the channels-last loops stay faster (LeNet's 6->16: 2.81 against 3.08 ms channels-last, 3.27
    against 3.88 channels-first)."""
    if (groups != 1 or math.prod(kernel) == 1 or x.shape[1] > PLANAR_LOOPS_MAX_CHANNELS
            or (stride[-1] != 1 and x.dim() > 4) or (channels_last and weight.shape[0] > compiled_conv.PLANAR_MAX_CHANNELS_LAST)
            or torch.compiler.is_compiling()):
        return None
    return compiled_conv.kernels(x)


def _use_shifted(x: torch.Tensor, kernel, stride, pads: Pads, dilation, groups: int) -> bool:
    taps = math.prod(kernel)
    if (groups != 1 or any(s != 1 for s in stride) or not SHIFTED_MIN_CHANNELS <= x.shape[1] < SHIFTED_MAX_CHANNELS
            or taps == 1 or taps > SHIFTED_MAX_TAPS):
        return False
    padded = [n + lo + hi for n, (lo, hi) in zip(x.shape[2:], pads)]
    out = [p - d * (k - 1) for p, k, d in zip(padded, kernel, dilation)]
    return math.prod(padded) <= SHIFTED_MAX_WASTE * math.prod(out)




def _use_pointwise(x: torch.Tensor, kernel, stride, pads: Pads, groups: int) -> bool:
    """A 1x1 (1, 1x1x1) convolution at stride 1 without padding, one group, and at least
    PLANAR_MAX_CHANNELS input channels (fewer keep the channels-first window matrix): ``PointwiseConvNd``."""
    return (groups == 1 and x.shape[1] >= PLANAR_MAX_CHANNELS and all(k == 1 for k in kernel)
            and all(s == 1 for s in stride) and all(p == (0, 0) for p in pads))




# --- pooling ---------------------------------------------------------------------------------------------

# Channels-first maps of 8 or more channels are pooled by the compiled loops on a channels-last copy (the
# copies of x and of its gradient are two more passes) when the windows overlap, whatever the size: the
# tensor passes' backward then adds every window's gradient in turn. Windows that tile the map keep the
# tensor passes above COMPILED_CHANNELS_FIRST_MAX_BYTES, where the copies outgrow the memory glibc keeps for
# reuse. Fewer channels keep the tensor passes (the copies' rows too short). Forward + backward, ms, loops on
# the copy / tensor passes / torch, medians of 9, AMD EPYC (AVX2), 2 threads: 3x3/2 p1 64x64x48x48 (38 MB)
# 46 / 114 / 83, 3x3/2 64x96x54x54 (72 MB) 167 / 194 / 141, 3x3/2 p1 64x64x56x56 84 / 161 / 110, but 2x2/2
# 64x96x54x54 156 / 136 / 126 and 2x2/2 16x64x112x112 (51 MB) 119 / 108 / 81; 2x2/2 64x32x28x28 7.5 / 10.7 / 8.2.
COMPILED_CHANNELS_FIRST_MAX_BYTES = 32 * 2**20
COMPILED_CHANNELS_FIRST_MIN_CHANNELS = 8


def _compiled_layout_pays(x: torch.Tensor, kernel, stride, dilation) -> bool:
    if x.movedim(1, -1).is_contiguous():
        return True
    return x.shape[1] >= COMPILED_CHANNELS_FIRST_MIN_CHANNELS and (
        windows_overlap(kernel, stride, dilation) or x.numel() * x.element_size() <= COMPILED_CHANNELS_FIRST_MAX_BYTES)



# --- batch norm --------------------------------------------------------------------------------------------



# Large matrices of fewer channels than this keep the tensor route, whose scalings fold (AFFINE_FOLD) where
# the compiled loops run C lanes at a time. Forward + backward, channels-last, ms, compiled / tensor / torch,
# medians of 55: 256x6x28x28 2.17 / 1.81 / 8.8, 256x4x28x28 1.84 / 1.27 / 5.7; with 8 or more channels
# the loops win: 32x8x28x28 0.38 / 0.44 / 0.62, 256x12x28x28 3.0 / 3.7 / 16.3, 256x16x28x28 2.7 / 4.6 / 2.4.
COMPILED_MIN_CHANNELS_FOLDED = 8


def _folds_narrow(x: torch.Tensor) -> bool:
    c = x.shape[1]
    return c < COMPILED_MIN_CHANNELS_FOLDED and affine_fold(x.numel() // c, c) > 1


