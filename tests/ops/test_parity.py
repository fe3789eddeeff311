"""Every cell of the op x property table (tests/ops/parity.py) holds: cnnlab's ops keep PyTorch's operator contract."""

from __future__ import annotations

import warnings

import pytest

from parity import PROPERTIES, SAMPLES


@pytest.mark.parametrize("prop", list(PROPERTIES))
@pytest.mark.parametrize("sample", SAMPLES, ids=[s.name for s in SAMPLES])
def test_op_keeps_the_contract(sample, prop):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.compile's notes on graph breaks
        ok = PROPERTIES[prop](sample)
    if ok is None:
        pytest.skip(f"{prop} does not apply to {sample.name}")
    assert ok, f"{sample.name}: {prop} differs from torch"
