"""Compiled kernels: the few loops whose tensor form costs several passes over memory, in C.

Most of cnnlab's operations are tensor code (a window matrix and one product, a DFT, a sum), and
the tensor code is what a reader should study. A handful of loops have no fast tensor form: max
pooling's forward pass in tensor operations is one pass per kernel offset, and its backward pass
finds each window's first maximum by three passes per offset, where a loop reads the map once
(forward + backward 2.0-3.9x torch's time in tensor form, 0.8-1.2x as a loop); batch norm's tensor
form makes 22 tensor calls forward and 23 backward where torch makes one each (1.5-2.8x torch's
time; as loops 0.9-1.0x on large layers, 1.2-1.6x on small ones, where Python's share remains); and
a convolution's tensor forms copy the input into a window matrix (or transforms) before their
product and reach 1.5-3x torch's time on narrow layers, where its direct sum, with a block of
outputs held in registers, reads the input in place (``csrc/direct_conv.c``: 0.95-1.4x torch's
oneDNN forward + backward). Those loops are written in C beside this file (``csrc/``), each the
textbook definition, and built on first use with the machine's C compiler:

    cc -O3 -march=x86-64-v3 -mtune=native -fopenmp -shared  csrc/<name>.c  ->  ~/.cache/cnnlab/compiled/<name>-<hash>.so

loaded with ctypes (no build step at install time, no Python headers; 0.2 s to build). The loops are
built for one of a few instruction-set variants (``VARIANTS``): ``avx512`` (x86-64-v4), ``avx2``
(x86-64-v3: AVX2 and FMA) and ``portable`` (the architecture's baseline: SSE2 on x86-64, NEON on arm64),
each with the vector width and register blocking of its registers (``csrc/isa.h``); :func:`variant` is
the best one this CPU's flags allow, read at load time, or the one ``CNNLAB_COMPILED_VARIANT`` names
(``native`` builds for ``-march=native``). :func:`use_variant` switches within a block: the tests sweep
every variant this machine can run. The hash covers the source, the compiler, its flags and the CPU's
instruction set, so a cached library is never loaded on a machine it was not built for. Without a compiler (or where a build fails,
or with ``CNNLAB_COMPILED=0`` in the environment) :func:`library` returns None and every op keeps
its tensor route: the same values, more slowly. ``CC`` picks the compiler, ``CNNLAB_CACHE_DIR``
the cache; where the cache cannot be written, a folder of this user's own in the system's temporary
folder serves, and a library is never loaded from a folder others can write. ``status()`` says which it is and why. Each op keeps its tensor route beside the loops,
for half precision, other devices and ``torch.compile``, and the tests sweep both against torch.

OpenMP, where the compiler has it, shares the runtime torch already loaded (``libgomp.so.1``),
and each call passes torch's thread count (``torch.get_num_threads()``).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

__all__ = ["VARIANTS", "Geometry", "disabled", "library", "machine", "runnable_variants", "status", "use_variant", "variant"]

SOURCES = Path(__file__).with_name("csrc")
# The instruction-set variants the loops are built for, best first: (compiler flags, the CPU flags of
# /proc/cpuinfo they need). x86-64-v3 is AVX2 + FMA + BMI1/2 + F16C + LZCNT + MOVBE; v4 adds AVX-512
# F/BW/CD/DQ/VL. "native" (-march=native) is chosen only by name.
VARIANTS: dict[str, tuple[list[str], frozenset[str]]] = {
    "avx512": (["-march=x86-64-v4", "-mtune=native"],
               frozenset("avx512f avx512bw avx512cd avx512dq avx512vl avx2 fma bmi1 bmi2 f16c abm movbe".split())),
    "avx2": (["-march=x86-64-v3", "-mtune=native"], frozenset("avx2 fma bmi1 bmi2 f16c abm movbe".split())),
    "portable": ([], frozenset()),
}
NATIVE = (["-march=native"], frozenset())
VARIANT_ENV = "CNNLAB_COMPILED_VARIANT"

_lock = threading.Lock()
_loaded: dict[tuple[str, str], ctypes.CDLL | None] = {}  # (library, variant) -> the loaded library, or None
_why: dict[tuple[str, str], str] = {}
_enabled = True
_forced: str | None = None  # the variant use_variant() chose, over the environment's


class Geometry(ctypes.Structure):
    """A pooling window's geometry as the C kernels read it (``csrc/max_pool.c``): 1-D and 2-D padded
    to 3-D with leading size-1 axes."""

    _fields_ = [("n", ctypes.c_int64), ("c", ctypes.c_int64)] + [
        (name, ctypes.c_int64 * 3) for name in ("size_in", "size_out", "kernel", "stride", "pad", "dilation")]

    @classmethod
    def of(cls, n: int, c: int, size_in, size_out, kernel, stride, pad, dilation) -> Geometry:
        def three(v, fill):
            return (ctypes.c_int64 * 3)(*([fill] * (3 - len(v)) + list(v)))

        return cls(n, c, three(size_in, 1), three(size_out, 1), three(kernel, 1), three(stride, 1), three(pad, 0),
                   three(dilation, 1))


@functools.cache
def _cpu_fingerprint() -> str:
    """The instruction-set flags of this CPU (Linux), else the machine and processor names."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _cpu_flags(fingerprint: str | None = None) -> frozenset[str]:
    """The flags of a ``/proc/cpuinfo`` flags line (default: this CPU's)."""
    return frozenset((_cpu_fingerprint() if fingerprint is None else fingerprint).partition(":")[2].split())


def _switched_off_by_environment() -> bool:
    return os.environ.get("CNNLAB_COMPILED", "1").strip().lower() in ("0", "false", "no", "off")


@functools.cache
def _x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "i386")


def runnable_variants() -> list[str]:
    """The variants this CPU can run, best first (on other than x86: ``portable`` alone, which is NEON on arm64)."""
    return list(_runnable(_cpu_fingerprint(), _x86()))


@functools.lru_cache(maxsize=8)
def _runnable(fingerprint: str, x86: bool) -> tuple[str, ...]:  # asked on every call of an op: read once
    if not x86:
        return ("portable",)
    flags = _cpu_flags(fingerprint)
    return tuple(name for name, (_, needs) in VARIANTS.items() if needs <= flags)


def variant() -> str:
    """The variant the loops are built for in this process: :func:`use_variant`'s, else ``$CNNLAB_COMPILED_VARIANT``
    (one of ``VARIANTS``, ``native`` or ``auto``), else the best this CPU runs. ValueError for another name."""
    name = _forced or os.environ.get(VARIANT_ENV, "auto").strip().lower() or "auto"
    if name == "auto":
        return runnable_variants()[0]
    if name != "native" and name not in VARIANTS:
        raise ValueError(f"{VARIANT_ENV}={name!r} is not a variant of the compiled loops; use one of auto, native, "
                         f"{', '.join(VARIANTS)}")
    return name


@contextlib.contextmanager
def use_variant(name: str) -> Iterator[None]:
    """Within this block the compiled loops are those built for variant ``name`` (built on first use)."""
    global _forced
    if name != "native" and name not in VARIANTS:
        raise ValueError(f"variant {name!r} is not one of native, {', '.join(VARIANTS)}")
    before, _forced = _forced, name
    try:
        yield
    finally:
        _forced = before


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("model name", "Model")):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    """One line saying where a measurement ran: the CPU, its cores and vector extensions, the compiled loops'
    variant, torch's version, its own kernels' instruction set (and any cap set in the environment) and threads.
    Benchmarks write it into every result; a figure without it could be from any processor."""
    flags = _cpu_flags()
    vector = [name for flag, name in (("sse4_2", "SSE4.2"), ("avx", "AVX"), ("avx2", "AVX2"), ("fma", "FMA"),
                                       ("avx512f", "AVX-512"), ("asimd", "NEON"), ("sve", "SVE")) if flag in flags]
    caps = [f"{key}={os.environ[key]}" for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
            if os.environ.get(key)]
    try:
        loops = f"compiled loops: variant {variant()}"
    except ValueError as e:
        loops = f"compiled loops: {e}"
    if not _enabled or _switched_off_by_environment():
        loops = "compiled loops: off"
    return (f"{_cpu_model()} ({os.cpu_count()} cores; {' '.join(vector) or 'no vector extensions listed'}); {loops}; "
            f"torch {torch.__version__} (kernels {torch.backends.cpu.get_cpu_capability()}"
            f"{', capped: ' + ' '.join(caps) if caps else ''}), {torch.get_num_threads()} threads")


def _compiler() -> str | None:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc)
    return next((path for path in map(shutil.which, ("cc", "gcc", "clang")) if path), None)


def _cache_dir() -> Path:
    root = os.environ.get("CNNLAB_CACHE_DIR") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "cnnlab")
    return Path(root) / "compiled"


def _flag_sets(chosen: str) -> list[list[str]]:
    """The compiler flags to try in order: the variant's own with threads, without, then the portable build's."""
    flags = NATIVE[0] if chosen == "native" else VARIANTS[chosen][0]
    sets = [["-O3", *flags, "-fopenmp"], ["-O3", *flags]]
    return sets + [s for s in (["-O3", "-fopenmp"], ["-O3"]) if s not in sets]


def _build(name: str, chosen: str) -> tuple[ctypes.CDLL | None, str]:
    """Build (or find in the cache) and load ``csrc/<name>.c`` for variant ``chosen``; (library, how) or
    (None, why not)."""
    if chosen in VARIANTS and chosen not in runnable_variants():
        missing = " ".join(sorted(VARIANTS[chosen][1] - _cpu_flags()))
        return None, f"variant {chosen} needs CPU flags this CPU lacks ({missing}); tensor routes used"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc or clang); tensor routes used"
    source = SOURCES / f"{name}.c"
    errors = []
    try:
        texts = b"".join(p.read_bytes() for p in sorted(SOURCES.iterdir()) if p.suffix in (".c", ".h"))
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    except OSError as e:
        return None, f"{cc} could not be run ({e}); tensor routes used"
    machine = _cpu_fingerprint().encode()
    for flags in _flag_sets(chosen):
        key = hashlib.sha256(b"\0".join([texts, cc.encode(), version.encode(), " ".join(flags).encode(), machine])).hexdigest()[:16]
        try:
            target = _cached(f"{name}-{key}.so", [cc, *flags, "-fPIC", "-shared", str(source), "-o"])
            return ctypes.CDLL(str(target)), f"{target} (variant {chosen}: {cc} {' '.join(flags)})"
        except (OSError, RuntimeError) as e:
            errors.append(f"{' '.join(flags)}: {e}")
    return None, f"{cc} could not build {source.name}: {'; '.join(errors)}; tensor routes used"


def _cached(filename: str, command: list[str]) -> Path:
    """The library ``filename`` in the cache, built first by ``command`` + its path where it is not
    there yet: into a folder of its own, then renamed (atomic, so processes starting together, such as
    torchrun's, never load a half-written file). Falls back to the system's temporary folder where the
    cache cannot be written; raises RuntimeError with the compiler's last line where the build fails."""
    folders = [_cache_dir(), Path(tempfile.gettempdir()) / f"cnnlab-compiled-{os.getuid() if hasattr(os, 'getuid') else 0}"]
    for i, folder in enumerate(folders):
        target = folder / filename
        try:
            if target.exists():
                _check_private(folder)
                return target
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            _check_private(folder)
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                built = Path(tmp) / target.name
                run = subprocess.run([*command, str(built)], capture_output=True, text=True, check=False)
                if run.returncode != 0:
                    raise RuntimeError((run.stderr.strip().splitlines() or [f"exit status {run.returncode}"])[-1])
                os.replace(built, target)
            return target
        except OSError:
            if i == len(folders) - 1:
                raise
    raise AssertionError("unreachable")


def _check_private(folder: Path) -> None:
    """OSError where others could have written a library there (a folder not owned by this user, or
    writable by everyone: the shared temporary folder's risk)."""
    if hasattr(os, "getuid"):
        st = folder.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o002:
            raise OSError(f"{folder} is writable by others; not loading libraries from it")


def library(name: str) -> ctypes.CDLL | None:
    """The compiled kernels of ``csrc/<name>.c``, built and loaded once per process; None where they
    cannot be (no compiler, a failed build), are switched off (``CNNLAB_COMPILED=0``, :func:`disabled`),
    or inside ``torch.compile`` (which plans its own kernels)."""
    if not _enabled or torch.compiler.is_compiling():
        return None
    key = (name, variant())
    lib = _loaded.get(key, False)
    if lib is not False:
        return lib
    with _lock:
        if key not in _loaded:
            if _switched_off_by_environment():
                _loaded[key], _why[key] = None, "switched off by CNNLAB_COMPILED=0; tensor routes used"
            else:
                _loaded[key], _why[key] = _build(*key)
        return _loaded[key]


def status(name: str = "max_pool") -> str:
    """Where ``csrc/<name>.c``'s kernels come from (their file and variant), or why the tensor routes are used instead."""
    library(name)
    return _why.get((name, variant()), "switched off by cnnlab.ops.compiled.disabled(); tensor routes used")


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within this block every op takes its tensor route (tests compare both; benchmarks time both)."""
    global _enabled
    before, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = before
