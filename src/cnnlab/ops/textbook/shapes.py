"""Output-size formulas and argument normalisation for windowed operations.

Follows D2L section 7.3 ("Padding and Stride") and the ``Shape:`` sections of
``torch.nn.Conv2d`` / ``torch.nn.MaxPool2d``: for an input of length ``n``, a kernel of
length ``k``, padding ``p`` on each side, stride ``s`` and dilation ``d``::

    out = floor((n + 2p - d*(k - 1) - 1) / s) + 1

which for ``d = 1`` is the book's ``floor((n - k + p_total + s) / s)``.

Every function here validates user input and raises ``ValueError`` / ``TypeError``
messages that name the argument, the value and what is allowed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = [
    "as_tuple",
    "conv_output_size",
    "conv_padding",
    "pool_output_size",
]

Pads = tuple[tuple[int, int], ...]  # one (before, after) pair per spatial dimension


def as_tuple(value: int | Sequence[int], n: int, name: str, minimum: int | None = None) -> tuple[int, ...]:
    """Turn ``value`` (an int or a sequence of ``n`` ints) into a tuple of ``n`` ints.

    Raises ``TypeError`` for non-integers and ``ValueError`` for a wrong length or a value
    below ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, Sequence)) or isinstance(value, str):
        raise TypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) == 1 and n > 1:
        values = values * n
    if len(values) != n:
        raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r} ({len(values)} values)")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must contain ints, got {value!r}")
        if minimum is not None and v < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return values


def conv_output_size(n: int, k: int, padding: int = 0, stride: int = 1, dilation: int = 1) -> int:
    """Length of a cross-correlation's output along one axis.

    Args:
        n: input length.
        k: kernel length.
        padding: zeros added on *each* side.
        stride: step between windows.
        dilation: spacing between kernel taps.

    Shape:
        ``out = floor((n + 2*padding - dilation*(k - 1) - 1) / stride) + 1``

    Example:
        >>> conv_output_size(8, 3, padding=1, stride=2)
        4
    """
    for name, value, low in (("n", n, 1), ("k", k, 1), ("padding", padding, 0), ("stride", stride, 1), ("dilation", dilation, 1)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {value!r}")
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    span = dilation * (k - 1) + 1
    if n + 2 * padding < span:
        raise ValueError(
            f"kernel (k={k}, dilation={dilation}, span {span}) is larger than the padded input "
            f"(n={n} + 2*padding={2 * padding})"
        )
    return (n + 2 * padding - span) // stride + 1


def pool_output_size(n: int, k: int, padding: int, stride: int, dilation: int, ceil_mode: bool) -> int:
    """Length of a pooling output along one axis, with torch's ``ceil_mode`` rule.

    With ``ceil_mode`` the division rounds up, but the last window must start inside the
    input or its left padding (it may not start in the right padding).
    """
    span = dilation * (k - 1) + 1
    numerator = n + 2 * padding - span
    out = (-(-numerator // stride) if ceil_mode else numerator // stride) + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out


def conv_padding(
    padding: str | int | Sequence[int], kernel: Sequence[int], dilation: Sequence[int], stride: Sequence[int]
) -> Pads:
    """Resolve a convolution's ``padding`` argument into (before, after) pairs per axis.

    ``'valid'`` means no padding. ``'same'`` keeps the output length equal to the input's
    (stride 1 only); the total ``dilation*(k-1)`` is split as torch does it, the smaller
    half before and the larger after, so even kernels pad one more on the right.
    """
    n = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ValueError(f"padding='same' needs stride 1, got stride={tuple(stride)}")
            totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ValueError(f"padding must be 'valid', 'same', an int or a tuple of {n} ints, got {padding!r}")
    pads = as_tuple(padding, n, "padding", minimum=0)
    return tuple((p, p) for p in pads)


def check_fits(spatial: Sequence[int], pads: Pads, kernel: Sequence[int], dilation: Sequence[int], what: str) -> None:
    """Raise ``ValueError`` when a (dilated) kernel is larger than the padded input."""
    for axis, (n, (lo, hi), k, d) in enumerate(zip(spatial, pads, kernel, dilation)):
        span = d * (k - 1) + 1
        if n + lo + hi < span:
            raise ValueError(
                f"{what}: kernel size {tuple(kernel)} (dilation {tuple(dilation)}) is larger than the padded "
                f"input along spatial axis {axis}: input {tuple(spatial)}, padding {tuple(pads)}, "
                f"kernel span {span} > {n + lo + hi}"
            )


def numel(sizes: Sequence[int]) -> int:
    """Product of ``sizes`` (1 for an empty sequence)."""
    return math.prod(sizes)
