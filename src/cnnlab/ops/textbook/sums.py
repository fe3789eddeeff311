"""Per-channel sums, the reductions of batch norm and of every bias gradient.

A channels-last batch (or an (N, C) one) is a (M, C) matrix in memory, and its per-channel sum
is a sum over the rows. torch reduces such a matrix one vector of C lanes at a time, which runs
well when C fills whole vector registers and badly otherwise: on this project's machine
(AVX-512, 2 threads) summing the rows of a 100352x24 matrix took 280-300 us, of a 100352x12 one
245 us, where a 100352x16 one took 130 us. Viewing the same memory as (M/k, k*C), summing its rows
and then the k partial sums gives the reduction long rows instead: 81 us, 41 us and 59 us. ``k``
is the largest power of two up to 16 that divides M and keeps k*C <= 448 (measured best or
within 10% of best for C = 4 ... 112 at M = 25088 and 100352), for matrices of 2**17 values
or more; smaller ones are summed as they are.

The same fold serves per-channel *scaling* (batch norm's ``x * scale + shift`` and its backward):
broadcasting a (C,) vector along the rows of a narrow (M, C) matrix runs C lanes at a time too, and
the folded (M/k, k*C) matrix with the vector repeated k times gives long rows (``folded``). Measured
(``torch.addcmul``, 2 threads, medians of 180, the repeats not counted): 200704x6 292 -> 53 us,
100352x24 198 -> 104 us, 25088x16 24 -> 18 us, 25088x32 40 -> 34 us; the repeats cost ~5 us each,
so only narrow or very large matrices gain (``norm.AFFINE_FOLD``).
"""

from __future__ import annotations

import torch

__all__ = ["column_sums", "channel_sums", "fold_factor", "folded"]

FOLD_MAX_WIDTH = 448  # k * C stays at or below this many values per folded row
FOLD_MAX = 16
FOLD_MIN_VALUES = 1 << 17  # below this the extra small sum costs more than it saves (2048x64: 6 -> 11 us)


def fold_factor(m: int, c: int) -> int:
    """How many rows of a contiguous (M, C) matrix to lay side by side (module docstring): the largest
    power of two up to FOLD_MAX that divides ``m`` with ``k * c <= FOLD_MAX_WIDTH``; 1 for matrices of
    fewer than FOLD_MIN_VALUES values."""
    k = 1
    if m * c < FOLD_MIN_VALUES:
        return k
    while k < FOLD_MAX and m % (2 * k) == 0 and 2 * k * c <= FOLD_MAX_WIDTH:
        k *= 2
    return k


def folded(rows: torch.Tensor, k: int) -> torch.Tensor:
    """A contiguous (M, C) matrix viewed as (M/k, k*C): row i holds rows i*k ... i*k + k - 1."""
    m, c = rows.shape
    return rows.view(m // k, k * c)


def column_sums(rows: torch.Tensor) -> torch.Tensor:
    """Sum over the rows of a contiguous (M, C) matrix: (C,)."""
    m, c = rows.shape
    k = fold_factor(m, c)
    if k == 1 or not rows.is_contiguous():
        return rows.sum(0)
    return folded(rows, k).sum(0).view(k, c).sum(0)


def channel_sums(t: torch.Tensor) -> torch.Tensor:
    """Sum over every axis but 1: (N, C, *S) -> (C,), in the order memory allows."""
    if t.dim() == 2:
        return column_sums(t) if t.is_contiguous() else t.sum(0)
    moved = t.movedim(1, -1)
    if moved.is_contiguous():  # channels-last: a (M, C) matrix
        return column_sums(moved.view(-1, t.shape[1]))
    if t.is_contiguous():  # channels-first: contiguous planes first
        return t.view(t.shape[0], t.shape[1], -1).sum(-1).sum(0)
    return t.sum([0, *range(2, t.dim())])
