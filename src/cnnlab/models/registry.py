"""The model registry: ``@register_model`` functions build a network by name (timm's pattern).

Every entry point takes ``num_classes``, ``in_channels`` and ``backend`` and builds its network
from :mod:`cnnlab.nn` layers, so ``backend="scratch"`` runs every convolution, pooling and batch
norm through cnnlab's own operations and ``backend="torch"`` through PyTorch's.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

from torch import nn

from ..nn import check_backend

__all__ = ["create_model", "list_models", "model_info", "register_model"]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_INPUT_SIZE: dict[str, int] = {}


def register_model(name: str, input_size: int) -> Callable:
    """Register a model factory under ``name``; ``input_size`` is the side of the images it expects."""

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name], _INPUT_SIZE[name] = fn, input_size
        return fn

    return decorator


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, family by family in the book's order."""
    _load_families()
    family = {name: fn.__module__.rsplit(".", 1)[-1] for name, fn in _REGISTRY.items()}
    rank = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(_REGISTRY, key=lambda name: (rank.get(family[name], len(rank)), list(_REGISTRY).index(name)))


def model_info(name: str) -> dict:
    """What a model expects: ``{"input_size": side}``."""
    _check_name(name)
    return {"input_size": _INPUT_SIZE[name]}


def create_model(name: str, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> nn.Module:
    """Build the registered model ``name``.

    Example:
        >>> create_model("lenet").__class__.__name__
        'LeNet'
    """
    _check_name(name)
    check_backend(backend)
    for arg, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{arg} must be a positive int, got {value!r}")
    return _REGISTRY[name](num_classes=num_classes, in_channels=in_channels, backend=backend, **kwargs)


def _check_name(name: str) -> None:
    _load_families()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


# Model families in the book's order; importing one registers its models.
FAMILIES = ("lenet", "alexnet", "vgg", "nin", "googlenet", "resnet", "densenet")


def _load_families() -> None:
    for family in FAMILIES:
        importlib.import_module(f"{__package__}.{family}")
