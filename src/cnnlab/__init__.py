"""cnnlab: convolutional neural networks from first principles.

``import cnnlab`` stays light: the submodules (``cnnlab.ops``, ``cnnlab.nn``,
``cnnlab.models``, ...) load torch when first used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "analysis", "data", "models", "nn", "ops", "train", "viz"]

_SUBMODULES = {"analysis", "data", "models", "nn", "ops", "train", "viz", "explorer"}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")
