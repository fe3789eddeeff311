"""The user's own models by name: ``package.module:factory`` (a function or an ``nn.Module`` class).

The current folder is importable (as ``python -m`` makes it), so ``mymodels:small`` finds
``./mymodels.py``. A class is instantiated, a function called, both with the keyword arguments
given (``--model-args '{"width": 32}'`` on the command line); a module object is used as it is.
Anything else is one clear ``ValueError``.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Any

from torch import nn

__all__ = ["is_factory_spec", "load_factory", "parse_model_args"]


def is_factory_spec(spec: str) -> bool:
    return ":" in spec and not spec.startswith(("folder:", "/", "."))


def parse_model_args(text: str | None) -> dict[str, Any]:
    """``--model-args`` JSON -> keyword arguments."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"--model-args must be a JSON object such as '{{\"width\": 32}}', got {text!r} ({err.msg})") from None
    if not isinstance(value, dict):
        raise ValueError(f"--model-args must be a JSON object such as '{{\"width\": 32}}', got {text!r}")
    return value


def _import(module_name: str, spec: str):
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name and (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ValueError(f"{spec!r}: no module named {module_name!r} in the current folder ({here}) or on the Python path") from None
        raise ValueError(f"{spec!r}: importing {module_name} failed: {err}") from None
    except Exception as err:  # the user's module raised while importing
        raise ValueError(f"{spec!r}: importing {module_name} failed: {type(err).__name__}: {err}") from None


def load_factory(spec: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Build the ``nn.Module`` that ``package.module:attribute`` names.

    Example::

        >>> load_factory("mymodels:SmallNet", {"width": 32})   # ./mymodels.py, class SmallNet(width=32)
    """
    kwargs = dict(kwargs or {})
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"a model factory must look like package.module:factory, got {spec!r}")
    obj: Any = _import(module_name, spec)
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in vars(obj) if not n.startswith("_")) if hasattr(obj, "__dict__") else []
            raise ValueError(f"{spec!r}: {module_name} has no attribute {attr!r}" + (f"; it defines: {', '.join(public[:20])}" if public else ""))
        obj = getattr(obj, part)
    if isinstance(obj, nn.Module):
        if kwargs:
            raise ValueError(f"{spec!r} is a module object, not a factory: it takes no --model-args")
        return obj
    if not callable(obj):
        raise ValueError(f"{spec!r} is an object of type {type(obj).__name__}, not a function or class that makes a torch.nn.Module")
    try:
        model = obj(**kwargs)
    except TypeError as err:
        raise ValueError(f"{spec!r} could not be called with --model-args {json.dumps(kwargs)}: {err}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{spec!r} returned an object of type {type(model).__name__}, not a torch.nn.Module")
    return model
