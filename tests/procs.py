"""Real child processes that start in milliseconds: ``python -m cnnlab ...`` and ``python -c CODE`` for the tests.

Importing torch takes about 3 s of CPU on this project's 2-core machines, and the suite starts dozens of
command-line processes (the kill soak alone starts twenty). ``run`` forks each child from a standard-library
fork server that imported torch once (``multiprocessing``'s "forkserver" start method, torch preloaded): the
child is a new process with its own pid, memory, file descriptors, environment, working folder and exit
status (a SIGKILL is seen as -9, as with ``subprocess``), which runs the command as ``python`` would, its
modules already imported (torch, matplotlib, cnnlab's command line and training loop; cnnlab reads its
environment variables when called, not when imported). What it cannot stand in for (a process read line by line
while it runs, torchrun, page-fault counts of a fresh process) keeps ``subprocess``.
"""

from __future__ import annotations

import ast
import functools
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        # what every command imports anyway; cnnlab's own modules read their environment when called, not imported
        _context.set_forkserver_preload(["torch", "numpy", "PIL.Image", "matplotlib.figure", "matplotlib.backends.backend_agg",
                                         "safetensors.torch", "cnnlab.cli", "cnnlab.train.loop", "cnnlab.viz.plots"])
    return _context


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str, err: str, base_path: list[str]) -> None:
    """In the forked child: the command's environment, folder, arguments and output files, then the command."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.stdout = open(1, "w", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", closefd=False, buffering=1)  # noqa: SIM115
    # the search path a fresh ``python -m``/``-c`` gets: its folder first, then PYTHONPATH, then the interpreter's own
    first = os.getcwd() if argv[0] == "-m" else ""
    sys.path[:] = [first, *(p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p), *base_path]
    code = 0
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            assert argv[0] == "-c", argv
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, int) and stop.code is not None:
            print(stop.code, file=sys.stderr)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@functools.cache
def _base_path() -> list[str]:
    """The interpreter's own search path, without PYTHONPATH or a script's folder (what every python starts with)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    code = "import sys; print(repr(sys.path[1:]))"
    return ast.literal_eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout)


def run(*argv: str, env: dict[str, str] | None = None, cwd: str | Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python ARGV`` (``-m module ...`` or ``-c code ...``) in a child forked from the torch-preloaded server;
    ``env`` is the child's whole environment (default: this one's), src/ on its PYTHONPATH as the tests expect."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH", "")) if p)
    with tempfile.TemporaryDirectory() as folder:
        out, err = os.path.join(folder, "out"), os.path.join(folder, "err")
        for path in (out, err):
            open(path, "w").close()
        child = _server().Process(target=_child, args=(list(argv), env, str(cwd or os.getcwd()), out, err, _base_path()))
        child.start()
        child.join(timeout)
        if child.exitcode is None:
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([sys.executable, *argv], timeout)
        return subprocess.CompletedProcess([sys.executable, *argv], child.exitcode,
                                           Path(out).read_text(), Path(err).read_text())
