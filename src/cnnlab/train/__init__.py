"""cnnlab.train: the typed configuration, presets, and fit() with checkpoints, resume and torchrun/DDP.

The configuration loads without torch (so ``cnnlab --help`` is instant); the loop loads on first use.
"""

from __future__ import annotations

from typing import Any

from .config import PRESETS, TrainConfig, resolve_config

__all__ = ["PRESETS", "Run", "RunResult", "TrainConfig", "TrainingError", "evaluate", "fit", "load_run", "load_run_model",
           "predict_probabilities", "resolve_config"]

_HOMES = {"RunResult": "loop", "TrainingError": "loop", "fit": "loop", "evaluate": "evaluation", "predict_probabilities": "evaluation",
          "load_run_model": "build", "Run": "run", "load_run": "run"}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'cnnlab.train' has no attribute {name!r}")
