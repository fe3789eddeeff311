"""Writing files so that nothing is lost: atomic replacement, the user's umask, and failures that say why.

Every file cnnlab writes into a run folder (weights, checkpoint, metrics, configuration, figures)
goes through :func:`atomic_write`:

    1) the whole content is made in memory first (a serialiser that fails half-way never
       touches the disk, and a full disk shows up as the operating system's own error)
    2) it is written to a new temporary file beside the target, created with mode 0666 less
       the umask (as ``open()`` would), flushed and fsync'ed
    3) the temporary file is renamed over the target: readers see the old file or the new one

If any step fails, the temporary file is removed, the old file is untouched and a
:class:`WriteError` names the file and the operating system's reason.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
from pathlib import Path

__all__ = ["WriteError", "atomic_write", "figure_bytes", "save_figure", "write_text"]


class WriteError(OSError):
    """A file could not be written; the message names it, the operating system's reason and what is safe."""

    def __init__(self, path: str | Path, code: int | None, reason: str, hint: str = ""):
        name = errno.errorcode.get(code, "") if code else ""
        message = f"could not write {path}: {reason}" + (f" [{name}]" if name else "") + (f"; {hint}" if hint else "")
        super().__init__(code, message)
        self.path, self.reason = Path(path), reason

    @classmethod
    def from_os(cls, path: str | Path, err: OSError) -> WriteError:
        return cls(path, err.errno, err.strerror or str(err))

    def with_hint(self, hint: str) -> WriteError:
        return WriteError(self.path, self.errno, self.reason, hint)

    def __str__(self) -> str:
        return self.strerror or ""


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` atomically (see the module docstring); returns the path.

    Raises:
        WriteError: the folder or file could not be written (no space, permission denied,
            read-only file system, a path that is a file...). ``path`` keeps its old content.
    """
    path = Path(path)
    blob = data.encode() if isinstance(data, str) else bytes(data)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    except OSError as err:
        raise WriteError.from_os(path, err) from None
    try:
        _write_all(fd, blob)
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except OSError as err:
        raise WriteError.from_os(path, err) from None
    finally:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
    return path


def _write_all(fd: int, blob: bytes) -> None:
    view = memoryview(blob)
    while view:
        view = view[os.write(fd, view):]


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, text)


def figure_bytes(fig, **savefig_kw) -> bytes:
    """A matplotlib figure rendered as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", **savefig_kw)
    return buf.getvalue()


def save_figure(fig, path: str | Path, **savefig_kw) -> Path:
    """Render ``fig`` as PNG and write it atomically to ``path``."""
    return atomic_write(path, figure_bytes(fig, **savefig_kw))
