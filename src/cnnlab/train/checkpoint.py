"""Run-folder files written atomically, and read back without pickle's code execution.

    checkpoint.pt       resume state: model, optimiser, schedule, epoch, step, metric history
                        (torch.save of tensors and plain values; loaded with weights_only=True)
    model.safetensors   the weights plus metadata (model name, classes, input size, normalisation)

Every write goes to a temporary file in the same folder, is flushed to disk (fsync) and then
renamed over the old file, so a run killed at any moment leaves the previous complete file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write", "load_checkpoint", "load_weights", "save_checkpoint", "save_weights"]

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"


def atomic_write(path: str | Path, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, fsync it, then rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), binary=False)


def save_checkpoint(folder: str | Path, state: dict) -> None:
    atomic_write(Path(folder) / CHECKPOINT, lambda f: torch.save(state, f))


def load_checkpoint(folder: str | Path, map_location="cpu") -> dict:
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CHECKPOINT} to resume from (is this a cnnlab run folder?)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a damaged file: say which and why
        raise ValueError(f"{path}: cannot read the checkpoint ({err})") from None


def save_weights(folder: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write ``model.safetensors`` with JSON-encoded metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()})
    atomic_write(Path(folder) / WEIGHTS, lambda f: f.write(blob))


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read ``model.safetensors`` (a file, or a run folder holding one): (state_dict, metadata)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file (expected a run folder or a .safetensors file)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            return {k: f.get_tensor(k) for k in f.keys()}, metadata
    except Exception as err:
        raise ValueError(f"{path}: cannot read the weights ({err})") from None
