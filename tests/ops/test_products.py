"""cnnlab.ops.products.mm_nt: the matrix product under the convolutions, on every stride layout it is given."""

from __future__ import annotations

import random

import pytest
import torch

from cnnlab.ops.textbook import products
from cnnlab.ops.textbook.products import mm_nt


def _operand(rng: random.Random, rows: int, cols: int, dtype) -> torch.Tensor:
    """A (rows, cols) matrix stored in one of the layouts the convolutions pass: contiguous,
    transposed, a column slice with an offset, every other column, or a broadcast row."""
    kind = rng.choice(["contiguous", "transposed", "slice", "strided", "expanded"])
    if kind == "transposed":
        return torch.randn(cols, rows, dtype=dtype).T
    if kind == "slice":
        return torch.randn(rows + 2, cols + 3, dtype=dtype)[1 : rows + 1, 2 : cols + 2]
    if kind == "strided":
        return torch.randn(rows, 2 * cols, dtype=dtype)[:, ::2]
    if kind == "expanded":
        return torch.randn(1, cols, dtype=dtype).expand(rows, cols)
    return torch.randn(rows, cols, dtype=dtype)


@pytest.mark.parametrize("min_macs", [0, 10**18], ids=["onednn", "torch.mm"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mm_nt_equals_the_float64_product_on_every_layout(dtype, min_macs, monkeypatch):
    """Both engines (the size threshold moved so every product takes one), every layout."""
    monkeypatch.setattr(products, "ONEDNN_MIN_MACS", min_macs)
    rng = random.Random(5)
    torch.manual_seed(5)
    for _ in range(200):
        m, k, n = rng.randint(1, 300), rng.randint(1, 90), rng.randint(1, 70)
        a, b = _operand(rng, m, k, dtype), _operand(rng, n, k, dtype)
        bias = torch.randn(n, dtype=dtype) if rng.random() < 0.5 else None
        out = mm_nt(a, b, bias)
        truth = a.double() @ b.double().T + (bias.double() if bias is not None else 0)
        scale = (a.double().abs() @ b.double().abs().T + (bias.double().abs() if bias is not None else 0)).max()
        assert out.shape == (m, n) and out.dtype == dtype
        tol = 1e-13 if dtype == torch.float64 else 1e-6  # float32: k products of relative error 2**-24 each
        assert ((out.double() - truth).abs().max() / scale).item() < tol, (m, k, n, a.stride(), b.stride())


def test_small_products_skip_onednn_and_large_ones_take_it(monkeypatch):
    """oneDNN's product costs a fixed ~17 us more per call: products below ONEDNN_MIN_MACS multiply-adds
    go to torch.mm, larger float32 ones to oneDNN (where this build has it)."""
    if products._LINEAR is None:
        pytest.skip("this torch build has no oneDNN matrix product")
    calls = []
    real = products._LINEAR
    monkeypatch.setattr(products, "_LINEAR", lambda *args: calls.append(args[0].shape) or real(*args))
    mm_nt(torch.randn(98, 56), torch.randn(24, 56))
    assert calls == []
    mm_nt(torch.randn(6272, 56), torch.randn(24, 56))
    assert calls == [(6272, 56)]
