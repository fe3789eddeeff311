"""The compiled kernels (ops/compiled.py, ops/csrc/): built on first use, cached, switched off or
missing without changing a value, and the route each op takes. Their values are swept against torch
in test_pool.py (every max-pool test runs on both routes)."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
import torch.nn.functional as F

from cnnlab import ops
from cnnlab.ops import routing
from cnnlab.ops.kernels import compiled, compiled_norm, compiled_pool, tensor_norm, tensor_pool
from cnnlab.ops.textbook import pool as textbook_pool


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process state with nothing built or loaded yet, and an empty cache of its own."""
    monkeypatch.setattr(compiled, "_loaded", {})
    monkeypatch.setattr(compiled, "_why", {})
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path))
    return tmp_path


def _pool_both(x):
    y = ops.max_pool2d(x, 3, 2, 1)  # channels-last x: the compiled loops
    (g,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y, g


def test_kernels_build_and_load_where_a_compiler_exists(fresh):
    if compiled._compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert compiled.library("max_pool") is not None, compiled.status()
    assert "max_pool-" in compiled.status() and ".so" in compiled.status()
    assert len(list((fresh / "compiled").glob("max_pool-*.so"))) == 1


def test_a_cached_library_is_loaded_not_rebuilt(fresh, monkeypatch):
    if compiled._compiler() is None:
        pytest.skip("no C compiler on this machine")
    compiled.library("max_pool")
    (built,) = (fresh / "compiled").glob("max_pool-*.so")
    stamp = built.stat().st_mtime_ns
    monkeypatch.setattr(compiled, "_loaded", {})  # a new process, the same cache
    monkeypatch.setattr(compiled.subprocess, "run", _only_version(compiled.subprocess.run))
    assert compiled.library("max_pool") is not None
    assert built.stat().st_mtime_ns == stamp


def _only_version(run):
    def guarded(cmd, *args, **kwargs):
        assert cmd[1:] == ["--version"], f"rebuilt: {cmd}"
        return run(cmd, *args, **kwargs)

    return guarded


def test_without_a_working_compiler_every_op_keeps_its_tensor_route(fresh, monkeypatch):
    monkeypatch.setenv("CC", "false")  # a "compiler" that fails every build
    torch.manual_seed(0)
    x = torch.randn(2, 5, 9, 9, dtype=torch.float64).relu().contiguous(memory_format=torch.channels_last).requires_grad_()
    assert compiled.library("max_pool") is None
    assert "could not build max_pool.c" in compiled.status()
    y, g = _pool_both(x)
    ref = F.max_pool2d(x, 3, 2, 1)
    assert torch.equal(y, ref) and torch.equal(g, torch.autograd.grad(ref, x, torch.ones_like(ref))[0])
    monkeypatch.setenv("CC", "no-such-compiler")
    monkeypatch.setattr(compiled, "_loaded", {})
    assert compiled.library("max_pool") is None and "no C compiler found" in compiled.status()


def test_an_unwritable_cache_falls_back_to_a_private_temporary_folder(fresh, monkeypatch, tmp_path):
    if compiled._compiler() is None:
        pytest.skip("no C compiler on this machine")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(blocker))  # mkdir under a file fails
    monkeypatch.setattr(compiled.tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert compiled.library("max_pool") is not None, compiled.status()
    (folder,) = (tmp_path / "tmp").iterdir()
    assert folder.name.startswith("cnnlab-compiled-") and folder.stat().st_mode & 0o077 == 0
    assert list(folder.glob("max_pool-*.so"))


def test_a_library_in_a_folder_others_can_write_is_never_loaded(fresh, monkeypatch):
    if compiled._compiler() is None:
        pytest.skip("no C compiler on this machine")
    compiled.library("max_pool")  # built into the fresh cache
    (fresh / "compiled").chmod(0o777)
    monkeypatch.setattr(compiled, "_loaded", {})
    monkeypatch.setattr(compiled.tempfile, "gettempdir", lambda: str(fresh / "tmp"))
    assert compiled.library("max_pool") is not None
    assert str(fresh / "tmp") in compiled.status()  # built again where only this user writes


def test_switched_off_by_the_environment(fresh, monkeypatch):
    monkeypatch.setenv("CNNLAB_COMPILED", "0")
    assert compiled.library("max_pool") is None
    assert "CNNLAB_COMPILED=0" in compiled.status()
    assert not (fresh / "compiled").exists()  # nothing was built


def test_each_route_is_taken_where_it_should_be(monkeypatch):
    """float32/64 CPU tensors take the compiled loops when they are there; under ``disabled()`` and in
    half precision the tensor passes. Counted at the two autograd Functions."""
    if compiled.library("max_pool") is None:
        pytest.skip(compiled.status())
    taken = []
    for name, cls in (("compiled", compiled_pool.CompiledMaxPoolNd), ("tensor", tensor_pool.MaxPoolNd)):
        monkeypatch.setattr(cls, "apply", _counting(cls.apply, taken, name))
    x = torch.randn(2, 8, 8, 8)
    ops.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2)
    ops.max_pool2d(x.double().contiguous(memory_format=torch.channels_last), 2)
    ops.max_pool1d(x[:, :, 0].transpose(1, 2).contiguous().transpose(1, 2), 2)  # (N, C, L) stored channels-last
    ops.max_pool2d(x, 2)  # channels-first, small: on a channels-last copy
    with compiled.disabled():
        ops.max_pool2d(x.contiguous(memory_format=torch.channels_last), 2)
    monkeypatch.setattr(routing, "COMPILED_CHANNELS_FIRST_MAX_BYTES", x.numel() * 4 - 1)
    ops.max_pool2d(x, 2)  # channels-first, "large"
    monkeypatch.undo()
    monkeypatch.setattr(compiled_pool.CompiledMaxPoolNd, "apply", _counting(compiled_pool.CompiledMaxPoolNd.apply, taken, "compiled"))
    monkeypatch.setattr(tensor_pool.MaxPoolNd, "apply", _counting(tensor_pool.MaxPoolNd.apply, taken, "tensor"))
    ops.max_pool2d(x[:, :6].contiguous(), 2)  # channels-first, 6 channels
    ops.max_pool2d(x[:, :1].contiguous(memory_format=torch.channels_last), 2)  # one channel: a plane
    ops.max_pool2d(x.half().contiguous(memory_format=torch.channels_last), 2)
    assert taken == ["compiled"] * 4 + ["tensor"] * 5
    if compiled.library("batch_norm") is None:
        pytest.skip(compiled.status("batch_norm"))
    taken.clear()
    for name, cls in (("compiled", compiled_norm.CompiledBatchNorm), ("tensor", tensor_norm.BatchNorm)):
        monkeypatch.setattr(cls, "apply", _counting(cls.apply, taken, name))
    for t in (x.contiguous(memory_format=torch.channels_last), x[:, :, 0, 0].contiguous(), x.double()[:, :, 0, 0].contiguous()):  # (M, C) rows
        ops.batch_norm(t, None, None, training=True)
    for t in (x, x[:, :, 0, 0].t().contiguous().t(), x.half()[:, :, 0, 0]):  # channels-first, a transposed view, half
        ops.batch_norm(t, None, None, training=True)
    with compiled.disabled():
        ops.batch_norm(x[:, :, 0, 0], None, None, training=True)
    assert taken == ["compiled"] * 3 + ["tensor"] * 4


def _counting(apply, taken, name):
    def counted(*args):
        taken.append(name)
        return apply(*args)

    return counted


def _norm_all(x, w, b):
    y = ops.batch_norm(x, None, None, w, b, training=True)
    return (y, *torch.autograd.grad(y, (x, w, b), torch.cos(torch.arange(y.numel(), dtype=y.dtype)).view_as(y)))


def test_results_do_not_depend_on_the_thread_count():
    """Bit for bit: max pooling's loops write each value once; batch norm's sums are made block by block
    and merged in block order, blocks set by the shape alone."""
    torch.manual_seed(1)
    x = torch.randn(6, 16, 15, 15).relu().contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = (torch.randn(16, requires_grad=True) for _ in range(2))
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append((*_pool_both(x), *_norm_all(x, w, b)))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(other, results[0]))


def test_winner_positions_turn_back_into_kernel_offsets():
    """compiled_pool.offsets_of inverts textbook_pool.max_indices (winner offset -> flat input position) for
    random geometries in 1-3 dimensions, dilation and padding included."""
    rng = random.Random(11)
    for _ in range(200):
        dims = rng.randint(1, 3)
        kernel = tuple(rng.randint(1, 4) for _ in range(dims))
        stride = tuple(rng.randint(1, 3) for _ in range(dims))
        dilation = tuple(rng.randint(1, 2) for _ in range(dims))
        pads = tuple((rng.randint(0, k // 2),) * 2 for k in kernel)
        spatial = tuple(d * (k - 1) + 1 + rng.randint(0, 5) for k, d in zip(kernel, dilation))
        out_size = tuple((n + 2 * lo - d * (k - 1) - 1) // s + 1 for n, (lo, _), k, s, d in zip(spatial, pads, kernel, stride, dilation))
        offsets = torch.randint(0, int(torch.tensor(kernel).prod()), (2, *out_size, 3))
        positions = textbook_pool.max_indices((2, 3, *spatial), kernel, stride, pads, dilation, offsets).movedim(1, -1)
        inside = torch.ones_like(offsets, dtype=torch.bool)  # only winners inside the input are positions
        rest = offsets
        for axis in reversed(range(dims)):
            tap, rest = rest % kernel[axis], rest // kernel[axis]
            shape = [1] * offsets.dim()
            shape[1 + axis] = out_size[axis]
            at = torch.arange(out_size[axis]).view(shape) * stride[axis] - pads[axis][0] + tap * dilation[axis]
            inside &= (at >= 0) & (at < spatial[axis])
        back = compiled_pool.offsets_of(positions, spatial, kernel, stride, pads, dilation)
        assert torch.equal(back[inside], offsets[inside])


def test_batch_norm_running_estimates_the_loops_cannot_update_in_place_are_updated_all_the_same():
    """Running estimates the C loop cannot write where they lie (a strided view, another dtype) are updated
    by the tensor code instead: the same values as the tensor route's, and as torch's where torch takes them."""
    if compiled.library("batch_norm") is None:
        pytest.skip(compiled.status("batch_norm"))
    torch.manual_seed(4)
    x = torch.randn(8, 4, 5, 5).contiguous(memory_format=torch.channels_last)
    for make in (lambda v: torch.full((8,), v)[::2], lambda v: torch.full((4,), v, dtype=torch.float64)):
        results = []
        for route in ("compiled", "tensor"):
            running = (make(0.5), make(2.0))
            with compiled.disabled() if route == "tensor" else contextlib.nullcontext():
                y = ops.batch_norm(x, *running, training=True, momentum=0.3)
            results.append((y, *running))
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(*results))
    running, expected = (torch.full((8,), 0.5)[::2], torch.full((8,), 2.0)[::2]), (torch.full((4,), 0.5), torch.full((4,), 2.0))
    ops.batch_norm(x, *running, training=True, momentum=0.3)
    F.batch_norm(x, *expected, training=True, momentum=0.3)
    assert all(torch.allclose(a, b, rtol=1e-6) for a, b in zip(running, expected))


def test_the_variant_is_the_best_this_cpu_runs_unless_named(monkeypatch):
    """auto: the first runnable variant (avx512 where the CPU has AVX-512 F/BW/CD/DQ/VL, else avx2 with AVX2
    and FMA, else portable); a name in the environment wins; an unknown one is refused, naming what exists."""
    monkeypatch.setattr(compiled, "_cpu_fingerprint", lambda: "flags\t\t: fpu sse2 avx avx2 fma bmi1 bmi2 f16c abm movbe")
    monkeypatch.setattr(compiled, "_x86", lambda: True)
    monkeypatch.delenv(compiled.VARIANT_ENV, raising=False)
    assert compiled.runnable_variants() == ["avx2", "portable"] and compiled.variant() == "avx2"
    monkeypatch.setattr(compiled, "_cpu_fingerprint", lambda: "flags\t\t: fpu sse2")
    assert compiled.variant() == "portable"
    monkeypatch.setenv(compiled.VARIANT_ENV, "avx2")
    assert compiled.variant() == "avx2"
    monkeypatch.setenv(compiled.VARIANT_ENV, "avx1024")
    with pytest.raises(ValueError, match="CNNLAB_COMPILED_VARIANT='avx1024'.*auto, native, avx512, avx2, portable"):
        compiled.variant()


def test_a_variant_this_cpu_cannot_run_is_never_loaded(fresh, monkeypatch):
    monkeypatch.setattr(compiled, "_cpu_fingerprint", lambda: "flags\t\t: fpu sse2 avx")
    monkeypatch.setattr(compiled, "_x86", lambda: True)
    with compiled.use_variant("avx2"):
        assert compiled.library("max_pool") is None
        assert "variant avx2 needs CPU flags this CPU lacks (abm avx2 bmi1 bmi2 f16c fma movbe)" in compiled.status()
    assert not (fresh / "compiled").exists()  # nothing was built


@pytest.mark.parametrize("name", compiled.runnable_variants())
def test_each_variant_reports_its_vectors(name):
    """The Python side takes each build's blocking from the build itself (csrc/isa.h), never a constant."""
    from cnnlab.ops.kernels import compiled_conv

    if compiled._compiler() is None:
        pytest.skip("no C compiler on this machine")
    with compiled.use_variant(name):
        f32, f64 = (compiled_conv.kernels(torch.zeros(1, dtype=dtype)) for dtype in (torch.float32, torch.float64))
        assert f"variant {name}:" in compiled.status("direct_conv")
    wide = name == "avx512"
    assert f32.variant == (name if name != "portable" or compiled._x86() else "neon")
    assert (f32.lanes, f64.lanes) == ((16, 8) if wide else (8, 4) if name == "avx2" else (4, 2))
    assert f32.planar_max_width == (12 if wide or f32.variant == "neon" else 6)
