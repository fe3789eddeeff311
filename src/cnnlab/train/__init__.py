"""cnnlab.train: the typed configuration, presets, and fit() with checkpoints, resume and torchrun/DDP.

The configuration loads without torch (so ``cnnlab --help`` is instant); the loop loads on first use.
"""

from __future__ import annotations

from typing import Any

from .config import PRESETS, TrainConfig, resolve_config

__all__ = ["PRESETS", "Run", "RunResult", "TrainConfig", "TrainingError", "evaluate", "fit", "load_run", "load_run_model",
           "predict_probabilities", "resolve_config"]

_LOOP = {"RunResult", "TrainingError", "evaluate", "fit", "load_run_model", "predict_probabilities"}
_RUN = {"Run", "load_run"}


def __getattr__(name: str) -> Any:
    if name in _LOOP:
        from . import loop

        return getattr(loop, name)
    if name in _RUN:
        from . import run

        return getattr(run, name)
    raise AttributeError(f"module 'cnnlab.train' has no attribute {name!r}")
