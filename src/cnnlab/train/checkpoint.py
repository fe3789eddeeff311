"""Run-folder files written atomically, and read back without pickle's code execution.

    checkpoint.pt       resume state: model, optimiser, schedule, epoch, step, metric history
                        (torch.save of tensors and plain values; loaded with weights_only=True)
    model.safetensors   the weights plus metadata (model name, classes, input size, normalisation)

Every write goes through :func:`cnnlab.files.atomic_write`: made in memory, written to a temporary
file in the same folder, flushed to disk (fsync) and renamed over the old file, so a run killed
at any moment leaves the previous complete file, and a failed write names the file and the reason.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write

__all__ = ["atomic_write", "load_checkpoint", "load_weights", "save_checkpoint", "save_weights"]

CHECKPOINT = "checkpoint.pt"
WEIGHTS = "model.safetensors"


def save_checkpoint(folder: str | Path, state: dict) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)  # in memory first: a full disk is then the OS's own error, naming the file
    atomic_write(Path(folder) / CHECKPOINT, buf.getvalue())


def load_checkpoint(folder: str | Path, map_location="cpu") -> dict:
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {CHECKPOINT} to resume from (is this a cnnlab run folder?)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception:  # torch's own message advises weights_only=False: never do that with an unknown file
        state = None
    if not isinstance(state, dict) or state.get("format") != "cnnlab-checkpoint-1":
        raise ValueError(f"{path} is corrupt or not a cnnlab checkpoint; it cannot be resumed. The run's weights "
                         f"(model.safetensors) may still be usable; start a new run to train again") from None
    return state


def save_weights(folder: str | Path, state_dict: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write ``model.safetensors`` with JSON-encoded metadata."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = save(tensors, metadata={k: json.dumps(v) for k, v in metadata.items()})
    atomic_write(Path(folder) / WEIGHTS, blob)


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
