"""What a run is made of: the device, the model (built and checked against the data's images), the optimiser,
the learning-rate schedule and the metadata written beside the weights; and a trained run's model loaded again."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

from ..models import create_model
from . import checkpoint as ckpt
from .config import TrainConfig
from .distributed import Dist


def _device(config: TrainConfig, dist: Dist) -> torch.device:
    kind = config.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device 'cuda' was asked for but torch.cuda.is_available() is False")
        return torch.device("cuda", dist.local_rank)
    return torch.device("cpu")

def _optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=config.lr, weight_decay=config.weight_decay)

def _schedule(config: TrainConfig, optimizer, steps_per_epoch: int):
    """The learning-rate factor per step: an optional linear warm-up from 0, then the schedule.

    cosine: from 1 down to 0 over the steps after the warm-up (per step); step: ``gamma`` every
    ``step_epochs`` epochs; none: 1.
    """
    total, warmup = config.epochs * steps_per_epoch, round(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        def decay(step: int) -> float:
            done = min(step - warmup, total - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * done))
    elif config.schedule == "step":
        def decay(step: int) -> float:
            return config.gamma ** (step // (config.step_epochs * steps_per_epoch))
    else:
        def decay(step: int) -> float:
            return 1.0

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else decay(step)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)

def _model_kwargs(config: TrainConfig) -> dict:
    """Architecture options beyond classes and channels (VGG's ``ratio``, a factory's ``model_args``)."""
    kwargs = dict(config.model_args or {})
    if config.ratio is not None:
        kwargs["ratio"] = config.ratio
    return kwargs

def model_kind(name: str) -> str:
    """'zoo' (a registered name), 'factory' (package.module:factory) or 'python' (a module object given to fit)."""
    from ..models.factory import is_factory_spec

    return "python" if name.startswith("python:") else "factory" if is_factory_spec(name) else "zoo"

def build_model(config: TrainConfig, num_classes: int, in_channels: int) -> nn.Module:
    """The run's model from its configuration (a zoo name or a factory); seeded by the caller."""
    from ..models.factory import load_factory

    kind = model_kind(config.model)
    if kind == "factory":
        return load_factory(config.model, config.model_args)
    if kind == "python":
        raise ValueError(f"the model {config.model.removeprefix('python:')} was defined in Python; pass it to fit() as an nn.Module")
    return create_model(config.model, num_classes=num_classes, in_channels=in_channels, backend=config.backend, **_model_kwargs(config))

def _metadata(config: TrainConfig, inputs, model: nn.Module) -> dict:
    meta = {"model": config.model, "model_kwargs": _model_kwargs(config), "backend": config.backend, "classes": inputs.classes,
            "dataset": inputs.name, "in_channels": inputs.image_shape[0], "image_size": inputs.image_shape[-1],
            "normalize": inputs.normalize, "mean": list(inputs.mean), "std": list(inputs.std), "format": "cnnlab-run-1"}
    kind = model_kind(config.model)
    if kind == "factory":
        module = sys.modules[config.model.partition(":")[0]]
        depth = config.model.partition(":")[0].count(".") + 1
        meta["factory_path"] = str(Path(module.__file__).resolve().parents[depth - 1]) if getattr(module, "__file__", None) else None
    if kind != "zoo":
        meta["architecture"] = repr(model)
    return meta

def check_input_fits(model: nn.Module, input_size: tuple[int, ...], num_classes: int, name: str = "the model") -> None:
    """Raise ValueError before training if ``model`` cannot take one (C, H, W) input or does not give
    one logit per class; the error names the layer where the shapes broke (the summary's shape walk)."""
    described = "x".join(map(str, input_size))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *input_size, device=next(model.parameters(), torch.zeros(0)).device))
    except Exception:
        from ..analysis import summary

        try:
            summary(model, input_size)
        except ValueError as err:
            raise ValueError(f"{name} cannot take {described} inputs (--image-size or the data's channels): {err}") from None
        raise
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"{name} gives output {got} for one {described} input; expected (1, {num_classes}): one logit per class")

def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")

def load_run_model(run: str | Path, device="cpu", backend: str | None = None, model: nn.Module | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a run's model from ``model.safetensors`` (weights + metadata); returns (model in eval mode, metadata).

    A zoo model is rebuilt by name, a ``package.module:factory`` one by importing the factory again
    (from the folder it was found in when trained). A model that was defined in Python (a notebook)
    cannot be rebuilt from a name: pass the same architecture as ``model`` and its weights are loaded.
    """
    state, meta = ckpt.load_weights(run)
    if "model" not in meta:
        raise ValueError(f"{run}: weights carry no cnnlab metadata (model name, classes); was it written by cnnlab?")
    kind = model_kind(meta["model"])
    if model is None and kind == "python":
        first = meta.get("architecture", "").splitlines()[0] if meta.get("architecture") else meta["model"]
        raise ValueError(f"{run}: this run's model ({first} ...) was defined in Python, so it cannot be rebuilt from its name. "
                         f"In Python: cnnlab.load_run({str(run)!r}, model=net) with the same architecture; on the command line, "
                         f"put it in a file as a function and train with: cnnlab train mymodule:factory")
    if model is None and kind == "factory":
        from ..models.factory import load_factory

        where = meta.get("factory_path")
        if where and where not in sys.path:
            sys.path.append(where)  # found again from any folder
        model = load_factory(meta["model"], meta.get("model_kwargs") or None)
    elif model is None:
        model = create_model(meta["model"], num_classes=len(meta["classes"]), in_channels=meta["in_channels"],
                             backend=backend or meta.get("backend", "scratch"), **meta.get("model_kwargs", {}))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{run}: the weights do not fit the model given: {str(err).splitlines()[0]}") from None
    return model.to(device).eval(), meta
