"""Fixtures shared by the op tests."""

from __future__ import annotations

import contextlib

import pytest

from cnnlab.ops.kernels import compiled, compiled_conv, compiled_norm, compiled_pool

# The compiled loops of every instruction-set variant this CPU runs (the best one is plain "compiled", as
# a test's own parametrisation names it; the others "compiled:<variant>"), then the tensor passes.
VARIANTS = compiled.runnable_variants()
ROUTES = ["compiled", *(f"compiled:{v}" for v in VARIANTS[1:]), "tensor"]


def _variant(param: str):
    """The context of a route's variant: the best this CPU runs for "compiled", else the one named."""
    _, _, name = param.partition(":")
    return compiled.use_variant(name) if name else contextlib.nullcontext()


def _route(request, monkeypatch, library: str, *functions):
    """Run the test on one of an op's routes: its compiled loops in one of the variants this CPU runs
    (``compiled.library(library)``, one of whose autograd Functions ``functions`` must then run at least once:
    the test's inputs must be ones the loops take) or its tensor passes (which half precision, some
    channels-first layouts and torch.compile take). Yields "compiled" or "tensor"."""
    if request.param == "tensor":
        with compiled.disabled():
            yield request.param
        return
    with _variant(request.param):
        yield from _compiled_route(monkeypatch, library, functions)


def _compiled_route(monkeypatch, library: str, functions):
    if compiled.library(library) is None:
        if compiled._compiler() is not None:  # a machine with a compiler must build them
            pytest.fail(compiled.status(library))
        pytest.skip(compiled.status(library))
    calls = []
    for function in functions:
        monkeypatch.setattr(function, "apply", lambda *args, apply=function.apply: calls.append(1) or apply(*args))
    yield "compiled"
    assert calls, f"the compiled route of {library} never ran in this test"


@pytest.fixture(params=ROUTES)
def pool_route(request, monkeypatch):
    """Max pooling: compiled_pool.py or tensor_pool.MaxPoolNd. On the compiled route channels-first inputs of 2 or
    more channels take the loops too (on a channels-last copy; in use from 8 channels, the test inputs have
    fewer), so both layouts' paths through the loops are swept."""
    from cnnlab.ops import routing

    monkeypatch.setattr(routing, "COMPILED_CHANNELS_FIRST_MIN_CHANNELS", 2)
    yield from _route(request, monkeypatch, "max_pool", compiled_pool.CompiledMaxPoolNd)


@pytest.fixture(params=ROUTES)
def norm_route(request, monkeypatch):
    """Batch norm of (M, C) rows: compiled_norm.py or tensor_norm.BatchNorm."""
    yield from _route(request, monkeypatch, "batch_norm", compiled_norm.CompiledBatchNorm)


@pytest.fixture(params=ROUTES)
def conv_route(request, monkeypatch):
    """Convolutions of one group: compiled_conv.py (channels-last loops, or lanes over positions for 1-3
    input channels), or the tensor routes (window matrix, per-tap products, DFT) that every other
    convolution takes."""
    yield from _route(request, monkeypatch, "direct_conv", compiled_conv.DirectConvNd, compiled_conv.PlanarConvNd)


@pytest.fixture(params=VARIANTS)
def conv_loops(request):
    """The compiled convolution loops of each variant this CPU runs (avx512, avx2, portable), which a machine
    with a C compiler must build (the tests fail if it cannot); skipped where there is no compiler."""
    with compiled.use_variant(request.param):
        if compiled.library("direct_conv") is None:
            if compiled._compiler() is not None:
                pytest.fail(compiled.status("direct_conv"))
            pytest.skip(compiled.status("direct_conv"))
        yield request.param


@pytest.fixture
def tensor_routes():
    """Every op on its tensor route: for tests of the window matrix, per-tap products and DFT
    convolutions, which the compiled loops would otherwise take from them."""
    with compiled.disabled():
        yield
