"""The training configuration: one typed dataclass, per-model presets, and CLI flags derived from it.

A run resolves its configuration as: dataclass defaults <- the model's preset <- explicit
choices (CLI flags or keyword arguments). The resolved configuration is written to the run
folder as ``config.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

__all__ = ["PRESETS", "TrainConfig", "resolve_config"]


@dataclass
class TrainConfig:
    model: str = field(default="lenet", metadata={"help": "a zoo name (cnnlab.models.list_models()) or package.module:factory"})
    model_args: dict | None = field(default=None, metadata={"help": "JSON keyword arguments for a package.module:factory model, e.g. '{\"width\": 32}'"})
    ratio: int | None = field(default=None, metadata={"help": "VGG only: divide every block's channels by this (the book trains VGG-11 with 4)"})
    dataset: str = field(default="fashion-mnist", metadata={"help": "fashion-mnist, mnist, cifar10 or folder:PATH"})
    data_dir: str | None = field(default=None, metadata={"help": "look here first for the data set's files"})
    epochs: int = field(default=10, metadata={"help": "passes over the training set"})
    batch_size: int = field(default=256, metadata={"help": "global batch size (split across processes)"})
    lr: float = field(default=0.9, metadata={"help": "learning rate (peak, for schedules)"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd, adam or adamw"})
    momentum: float = field(default=0.0, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 penalty (decoupled for adamw)"})
    schedule: str = field(default="none", metadata={"help": "learning-rate schedule: none, step or cosine (per step)"})
    warmup_epochs: float = field(default=0.0, metadata={"help": "raise the learning rate linearly from 0 over this many epochs first (cosine and step schedules)"})
    step_epochs: int = field(default=3, metadata={"help": "step schedule: epochs between drops"})
    gamma: float = field(default=0.1, metadata={"help": "step schedule: factor per drop"})
    label_smoothing: float = field(default=0.0, metadata={"help": "cross-entropy label smoothing"})
    subset: int | None = field(default=None, metadata={"help": "train on a seeded random N of the training images and max(N/6, classes) test images, stratified so "
                                                                 "that every class has both (N >= the number of classes): quick runs"})
    image_size: int | None = field(default=None, metadata={"help": "resize images to this side (default: the model's input size)"})
    normalize: bool = field(default=False, metadata={"help": "subtract the data set's mean and divide by its std (the book only scales to [0, 1])"})
    augment: bool = field(default=False, metadata={"help": "random crop (padding 2 for 28px, 4 otherwise) and horizontal flip"})
    backend: str = field(default="scratch", metadata={"help": "scratch (cnnlab's own ops) or torch"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    threads: int | None = field(default=None, metadata={"help": "CPU threads (torch.set_num_threads)"})
    amp: bool = field(default=False, metadata={"help": "mixed precision: float16 with loss scaling on CUDA, bfloat16 on the CPU (torch.autocast)"})
    channels_last: bool = field(default=True, metadata={"help": "channels-last memory format for inputs and model (about 1.3x faster for LeNet on CPU)"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    seed: int = field(default=0, metadata={"help": "seed for weights, shuffling and augmentation (a CPU run repeats exactly)"})
    out: str | None = field(default=None, metadata={"help": "run folder, new or empty (default: a new runs/<model>-<dataset>-<time>)"})
    tensorboard: bool = field(default=False, metadata={"help": "write TensorBoard event files to the run folder"})
    eval_batch_size: int = field(default=1024, metadata={"help": "batch size for evaluation"})
    max_seconds: float | None = field(default=None, metadata={"help": "stop training after this many seconds (a checkpoint at that step, "
                                                                     "the test accuracy of the shortened run reported; --resume continues)"})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        data = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


_CPU = {"optimizer": "adamw", "weight_decay": 0.05, "batch_size": 128, "schedule": "cosine", "warmup_epochs": 0.5,
        "label_smoothing": 0.1, "normalize": True}

# The book's recipes (shared/REFERENCE.md), this project's modern LeNet and its CPU recipes.
PRESETS: dict[str, dict[str, Any]] = {
    "lenet": {"lr": 0.9, "batch_size": 256, "epochs": 10},
    "bn-lenet": {"lr": 1.0, "batch_size": 256, "epochs": 10},
    "lenet-modern": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.05, "batch_size": 128, "epochs": 10,
                     "schedule": "cosine", "normalize": True, "augment": True, "label_smoothing": 0.1},
    "alexnet": {"lr": 0.01, "batch_size": 128, "epochs": 10, "image_size": 224},
    "vgg11": {"lr": 0.05, "batch_size": 128, "epochs": 10, "image_size": 224, "ratio": 4},
    "vgg16": {"lr": 0.05, "batch_size": 128, "epochs": 10, "image_size": 224},
    "nin": {"lr": 0.1, "batch_size": 128, "epochs": 10, "image_size": 224},
    "googlenet": {"lr": 0.1, "batch_size": 128, "epochs": 10, "image_size": 96},
    "resnet18": {"lr": 0.05, "batch_size": 256, "epochs": 10, "image_size": 96},
    "resnet34": {"lr": 0.05, "batch_size": 256, "epochs": 10, "image_size": 96},
    "densenet": {"lr": 0.1, "batch_size": 256, "epochs": 10, "image_size": 96},
    # CPU recipes (28 px, minutes on a laptop; measured in benchmarks/results/recipes.md): AdamW,
    # cosine schedule after a short linear warm-up, label smoothing, normalised inputs; random
    # crop and flip for three of them (vgg-cpu underfitted with them: 0.9073 against 0.9240).
    "fast": {**_CPU, "lr": 8e-3, "weight_decay": 0.01, "epochs": 3, "warmup_epochs": 0.3},
    "alexnet-cpu": {**_CPU, "lr": 1e-3, "epochs": 10, "augment": True},
    "vgg-cpu": {**_CPU, "lr": 2e-3, "epochs": 12},
    "nin-cpu": {**_CPU, "lr": 4e-3, "epochs": 8, "augment": True},
    "googlenet-cpu": {**_CPU, "lr": 4e-3, "epochs": 6},
    "resnet-cpu": {**_CPU, "lr": 4e-3, "epochs": 8, "augment": True},
    "densenet-cpu": {**_CPU, "lr": 4e-3, "epochs": 5},
}

CHOICES = {"optimizer": ("sgd", "adam", "adamw"), "schedule": ("none", "step", "cosine"),
           "backend": ("scratch", "torch"), "device": ("auto", "cpu", "cuda")}


def resolve_config(model: str = "lenet", **overrides: Any) -> TrainConfig:
    """Defaults <- the model's preset <- ``overrides`` (None values are ignored), validated."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise TypeError(f"unknown training option(s): {', '.join(sorted(unknown))}")
    values = {**PRESETS.get(model, {}), **{k: v for k, v in overrides.items() if v is not None}, "model": model}
    config = TrainConfig(**values)
    validate(config)
    return absolute_paths(config)


def absolute_paths(config: TrainConfig) -> TrainConfig:
    """Store data paths absolute, so a run's tools find its data from any folder."""
    if config.dataset.startswith("folder:"):
        config.dataset = "folder:" + str(Path(config.dataset.removeprefix("folder:")).expanduser().resolve())
    if config.data_dir:
        config.data_dir = str(Path(config.data_dir).expanduser().resolve())
    return config


def validate(config: TrainConfig) -> None:
    """Raise ValueError naming the option, its value and what is allowed."""
    for name, allowed in CHOICES.items():
        if getattr(config, name) not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {getattr(config, name)!r}")
    for name in ("epochs", "batch_size", "eval_batch_size", "step_epochs"):
        if getattr(config, name) < 1:
            raise ValueError(f"{name} must be >= 1, got {getattr(config, name)}")
    if config.threads is not None and config.threads < 1:
        raise ValueError(f"threads must be >= 1, got {config.threads}")
    for name in ("lr", "momentum", "weight_decay", "gamma", "label_smoothing", "warmup_epochs"):
        if not math.isfinite(getattr(config, name)):
            raise ValueError(f"{name} must be a finite number, got {getattr(config, name)}")
    if not config.lr > 0:
        raise ValueError(f"lr must be > 0, got {config.lr}")
    if config.momentum < 0 or config.weight_decay < 0 or config.gamma <= 0:
        raise ValueError(f"momentum and weight_decay must be >= 0 and gamma > 0, got momentum={config.momentum}, "
                         f"weight_decay={config.weight_decay}, gamma={config.gamma}")
    if config.ratio is not None and (not config.model.startswith("vgg") or config.ratio < 1):
        raise ValueError(f"ratio must be a positive int and applies to vgg11/vgg16 only, got ratio={config.ratio} for {config.model!r}")
    if not 0 <= config.warmup_epochs <= config.epochs:
        raise ValueError(f"warmup_epochs must be in [0, epochs={config.epochs}], got {config.warmup_epochs}")
    if config.max_seconds is not None and not (math.isfinite(config.max_seconds) and config.max_seconds > 0):
        raise ValueError(f"max_seconds must be a positive number of seconds, got {config.max_seconds}")
    if config.subset is not None and config.subset < 1:
        raise ValueError(f"subset must be >= 1, got {config.subset}")
    if config.image_size is not None and config.image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {config.image_size}")
    if not 0 <= config.label_smoothing < 1:
        raise ValueError(f"label_smoothing must be in [0, 1), got {config.label_smoothing}")
