"""The run folder: claimed before training, never overwritten by surprise, one writer at a time.

    new run, default name   runs/<model>-<dataset>-<YYYYmmdd-HHMMSS>, created with an exclusive
                            mkdir; if another run took that name in the same second, -2, -3, ...
    new run, --out DIR      DIR must not exist, or be empty; a folder holding a run is refused
                            (resume it, or pass --overwrite to replace it); a folder holding other
                            files is refused even with --overwrite (cnnlab deletes only its own files)
    resume                  DIR must hold a checkpoint
    every case              an OS-level lock (``flock`` on DIR/.lock) held while training: a second
                            process is refused; the lock goes with the process, so a killed run
                            leaves no stale lock

A run that fails before its first checkpoint removes what it wrote (the whole folder if it made it).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from ..files import WriteError

__all__ = ["RUN_FILES", "RunFolder", "check_new_folder", "default_folder"]

LOCK = ".lock"
# Everything cnnlab itself writes into a run folder (and may therefore replace with --overwrite).
RUN_FILES = {"config.json", "metrics.csv", "model.safetensors", "checkpoint.pt", "curves.png", "predictions.png",
             "confusion.png", "tensorboard", LOCK}


def default_folder(model: str, dataset: str, root: str | Path = "runs") -> Path:
    """``runs/<model>-<dataset>-<time>`` (not yet created)."""
    def clean(text: str) -> str:  # letters, digits, '.', '_' and '-' only
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "data"

    if dataset.startswith("folder:"):
        dataset = "folder-" + Path(dataset.removeprefix("folder:")).name
    return Path(root) / f"{clean(model)}-{clean(dataset)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or (name.startswith(".") and name.endswith(".tmp"))


def _describe(path: Path) -> str:
    """'a lenet run, 3 epochs' or 'files a.txt, b.txt'."""
    import json

    try:
        config = json.loads((path / "config.json").read_text())
        rows = (path / "metrics.csv").read_text().count("\n") - 1 if (path / "metrics.csv").exists() else 0
        return f"a {config.get('model', '?')} run on {config.get('dataset', '?')} ({max(rows, 0)} epoch(s) done)"
    except (OSError, ValueError):
        names = sorted(p.name for p in path.iterdir() if p.name != LOCK)
        return "files " + ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def check_new_folder(path: Path, overwrite: bool = False) -> None:
    """Refuse (ValueError) a folder a new run must not use, before any work; creates nothing."""
    for part in (path, *path.parents):
        if part.exists() and not part.is_dir():
            where = "" if part == path else f" ({part} is a file)"
            raise ValueError(f"--out {path}: {'it is a file, not a folder' if part == path else 'cannot make a folder there'}{where}; "
                             f"give a new folder name")
    if not path.is_dir():
        return
    entries = [p.name for p in path.iterdir() if p.name != LOCK]
    if not entries:
        return
    foreign = sorted(n for n in entries if not _is_run_file(n))
    if foreign:
        raise ValueError(f"--out {path} is not empty (it holds {_describe(path)}); cnnlab writes a run only into a new "
                         f"or empty folder" + (" and --overwrite replaces only a cnnlab run's own files" if overwrite else "")
                         + "; choose another --out")
    if not (path / "checkpoint.pt").exists():
        return  # a run that died before its first checkpoint: nothing to keep; its files are replaced
    if not overwrite:
        raise ValueError(f"--out {path} already holds {_describe(path)}; continue it with: cnnlab train --resume {path}; "
                         f"or choose another --out; or replace it with --overwrite")


class RunFolder:
    """A claimed run folder: locked for this process until :meth:`release`."""

    def __init__(self, path: Path, created: bool):
        self.path, self.created, self._fd = path, created, -1

    # -- claiming -------------------------------------------------------------------------
    @classmethod
    def claim_default(cls, model: str, dataset: str) -> RunFolder:
        base = default_folder(model, dataset)
        base.parent.mkdir(parents=True, exist_ok=True)
        for n in range(1, 10_000):
            path = base if n == 1 else base.with_name(f"{base.name}-{n}")
            try:
                os.mkdir(path)  # exclusive: two runs in the same second get different folders
            except FileExistsError:
                continue
            return cls(path, created=True)._lock()
        raise ValueError(f"could not find a free run folder name next to {base}")

    @classmethod
    def claim_new(cls, path: Path, overwrite: bool = False) -> RunFolder:
        check_new_folder(path, overwrite)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(path)
            created = True
        except FileExistsError:
            created = False
        folder = cls(path, created)._lock()
        try:
            check_new_folder(path, overwrite)  # again, under the lock: nobody slipped in between
            folder._remove_run_files()  # only a run's own files: with --overwrite, or a run that never saved
        except BaseException:
            folder.release()
            raise
        return folder

    @classmethod
    def claim_existing(cls, path: Path) -> RunFolder:
        cls.check_resumable(path)
        return cls(path, created=False)._lock()

    @staticmethod
    def check_resumable(path: Path) -> None:
        if not (path / "checkpoint.pt").is_file() or not (path / "config.json").is_file():
            if (path / "config.json").is_file():
                raise ValueError(f"--resume {path}: this run stopped before its first checkpoint; there is nothing to resume. "
                                 f"Start it again with --out {path}")
            what = "does not exist" if not path.exists() else "is not a folder" if not path.is_dir() else "holds no checkpoint.pt"
            raise ValueError(f"--resume {path}: {what}; give a cnnlab run folder")

    def _lock(self) -> RunFolder:
        try:
            import fcntl
        except ImportError:  # no flock on this platform: one writer is then the user's to ensure
            return self
        try:
            fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise WriteError.from_os(self.path / LOCK, err).with_hint("a run folder must be writable") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ValueError(f"run folder {self.path} is in use by another cnnlab process (pid {holder}); wait for it to "
                             f"finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    # -- letting go -----------------------------------------------------------------------
    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = -1

    def discard_if_unused(self) -> bool:
        """After a failure: remove what this run wrote if it never reached a checkpoint. True if removed."""
        if (self.path / "checkpoint.pt").exists():
            return False
        if self.created:
            shutil.rmtree(self.path, ignore_errors=True)
        else:
            self._remove_run_files()
        return True

    def _remove_run_files(self) -> None:
        for entry in self.path.iterdir():
            if entry.name == LOCK or not _is_run_file(entry.name):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
