"""Fixtures shared by the op tests."""

from __future__ import annotations

import pytest

from cnnlab.ops import compiled


def _route(request, library: str):
    """Run the test on one of an op's two routes: its compiled loops (``compiled.library(library)``) or its
    tensor passes (which half precision, channels-first batch norms and torch.compile always take)."""
    if request.param == "tensor":
        with compiled.disabled():
            yield request.param
        return
    if compiled.library(library) is None:
        if compiled._compiler() is not None:  # a machine with a compiler must build them
            pytest.fail(compiled.status(library))
        pytest.skip(compiled.status(library))
    yield request.param


@pytest.fixture(params=["compiled", "tensor"])
def pool_route(request):
    """Max pooling: compiled_pool.py or pool.MaxPoolNd."""
    yield from _route(request, "max_pool")


@pytest.fixture(params=["compiled", "tensor"])
def norm_route(request):
    """Batch norm of (M, C) rows: compiled_norm.py or norm.BatchNorm."""
    yield from _route(request, "batch_norm")
