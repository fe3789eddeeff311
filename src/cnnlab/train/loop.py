"""fit(): train a model on an image data set, end to end, into a run folder (D2L's train_ch6, grown up).

    1) resolve the configuration, join torchrun's process group if there is one
    2) load the data into memory; build the model (seeded) and the optimiser; resume if asked
    3) for each epoch: batches -> forward -> loss -> backward -> step, one progress bar;
       evaluate on the test split; write metrics.csv, model.safetensors and checkpoint.pt
    4) draw curves.png, predictions.png and confusion.png

Exact resumption: the shuffling, the augmentation and the dropout masks of every step are
seeded by (seed, epoch, step), and the checkpoint holds the model, optimiser and schedule, so
a resumed CPU run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data import Batches
from ..data.loader import step_seed
from ..files import WriteError, write_text
from ..models import create_model, model_info
from . import checkpoint as ckpt
from .config import TrainConfig, absolute_paths, resolve_config, validate
from .distributed import Dist, setup
from .inputs import describe_data, from_name, from_objects
from .memory import keep_freed_memory
from .report import NotebookReporter, TerminalReporter, in_notebook
from .runfolder import RunFolder, check_new_folder

__all__ = ["RunResult", "TrainingError", "check_input_fits", "evaluate", "fit", "load_run_model"]

# What a resumed run may change (the rest would make the checkpoint's optimiser state meaningless).
RESUME_CHANGEABLE = {"epochs", "lr", "threads", "device", "data_dir", "eval_batch_size", "tensorboard", "compile", "max_seconds"}

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "test_acc", "lr", "examples_per_s", "epoch_s", "elapsed_s"]


class TrainingError(RuntimeError):
    """Training stopped: a NaN or infinite loss. The message names epoch and step."""


@dataclass
class RunResult:
    folder: Path | None
    history: list[dict] = field(default_factory=list)
    status: str = "completed"  # completed, interrupted, or "time limit" (max_seconds)
    partial: dict | None = None  # a run stopped by max_seconds: the unfinished epoch's numbers (test acc included)

    @property
    def final(self) -> dict:
        """The last numbers: the unfinished epoch's where max_seconds stopped the run, else the last epoch's."""
        return self.partial or (self.history[-1] if self.history else {})


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


@torch.no_grad()
def predict_probabilities(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Class probabilities (N, classes) of a batch; ``tta="flip"`` averages them with those of the
    horizontally mirrored images (test-time augmentation, for models trained with flips)."""
    if tta not in ("none", "flip"):
        raise ValueError(f"tta must be 'none' or 'flip', got {tta!r}")
    model.eval()
    probs = model(x).softmax(1)
    return (probs + model(x.flip(-1)).softmax(1)) / 2 if tta == "flip" else probs


@torch.no_grad()
def evaluate(model: nn.Module, batches: Batches, dist: Dist | None = None, device=None) -> dict:
    """Accuracy and mean loss over a split; with ``dist`` the counts are summed over processes."""
    was_training = model.training
    model.eval()
    correct = total = loss = 0.0
    for x, y, _ in batches.epoch(0):
        logits = model(x)
        loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        total += len(y)
    if dist is not None:
        correct, total, loss = dist.sum([correct, total, loss], device)
    model.train(was_training)
    return {"acc": correct / max(total, 1), "loss": loss / max(total, 1), "count": int(total)}


class _Interrupt:
    """Turn SIGINT into a flag checked between steps (a second Ctrl-C stops at once)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread
            self._previous = None
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def _metrics_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def fit(model: str | nn.Module | TrainConfig | None = None, data=None, *, resume: str | Path | None = None,
        overwrite: bool = False, quiet: bool = False, json_lines: bool = False, classes: list[str] | None = None,
        reporters: list | None = None, **options) -> RunResult:
    """Train a model into a run folder: the book's ``train_ch6`` with checkpoints, exact resume and figures.

    Args:
        model: a zoo name (``"lenet"``), ``"package.module:factory"``, your own ``nn.Module``, or a
            :class:`TrainConfig` (then nothing else but ``resume``/``overwrite``/``quiet``).
        data: a data set name (``"fashion-mnist"``, ``"mnist"``, ``"cifar10"``, ``"folder:PATH"``),
            ``(images, labels)`` tensors (1 in 10 held out for testing), ``((X, y), (X_test, y_test))``,
            a ``Dataset`` (1 in 10 held out), or a pair ``(train, test)`` of Datasets or DataLoaders
            (the book's ``train_iter, test_iter``). Default: ``options["dataset"]`` or Fashion-MNIST.
        resume: a run folder to continue (with the same model object and data if they were Python objects).
        overwrite: replace the run already in ``out`` (refused otherwise).
        quiet: no progress output at all.  json_lines: one JSON object per epoch (terminal only).
        classes: class names, when the data cannot tell them.
        reporters: extra :class:`cnnlab.train.report.Reporter` objects to watch training.
        **options: any :class:`TrainConfig` field (``epochs``, ``lr``, ``batch_size``, ``out``, ...).

    Returns:
        :class:`RunResult`: the run folder and the per-epoch history.

    Before training it sets glibc's allocator to keep freed memory for the next step
    (:func:`cnnlab.train.memory.keep_freed_memory`; a process-wide setting, 15-30% shorter steps here).

    Raises :class:`TrainingError` on a NaN or infinite loss, after keeping the last good checkpoint,
    and :class:`cnnlab.files.WriteError` when a file cannot be written (the last good checkpoint and
    weights stay intact). A folder that holds a run is refused unless ``overwrite=True``; one another
    process is training into is always refused.

    Example::

        >>> net = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2), ...)
        >>> result = cnnlab.fit(net, "fashion-mnist", epochs=10, lr=0.9, batch_size=256)
    """
    # 1) configuration and processes
    module = model if isinstance(model, nn.Module) else None
    data_object = data if data is not None and not isinstance(data, str) else None
    state = None
    if isinstance(model, TrainConfig):
        if data is not None or options:
            raise TypeError(f"fit() got a TrainConfig and {'data' if data is not None else sorted(options)}; put them in the config")
        config = model
    elif resume is not None:
        if overwrite:
            raise ValueError("resume and overwrite exclude each other: resuming continues the run in its own folder")
        if isinstance(model, str):
            options["model"] = model
        if isinstance(data, str):
            options["dataset"] = data
        config, state = _resume_config(Path(resume), options)
        _check_resumed_objects(config, module, data_object, Path(resume))
    else:
        name = model if isinstance(model, str) else f"python:{type(module).__name__}" if module is not None else options.pop("model", "lenet")
        if data is not None:
            options["dataset"] = data if isinstance(data, str) else describe_data(data)
        config = resolve_config(name, **options)
    if model_kind(config.model) == "python" and module is None:
        raise ValueError(f"{config.model.removeprefix('python:')} was defined in Python: pass the module itself, fit(net, data, ...)")
    if data_object is None and not is_named_data_set(config.dataset):
        raise ValueError(f"the data ({config.dataset}) was given as Python objects: pass them again, fit(net, data, ...)")
    if resume is None and config.out:
        check_new_folder(Path(config.out), overwrite)  # refuse before loading anything
    device_kind = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = setup(device_kind)
    device = _device(config, dist)
    if config.threads:
        torch.set_num_threads(config.threads)
    keep_freed_memory()  # a training process reuses its freed activations (train/memory.py)
    watchers = list(reporters or []) if dist.main else []
    if dist.main and in_notebook() and not json_lines:
        watchers += [] if quiet else [NotebookReporter()]  # quiet: no bar, no live figure
    elif dist.main:
        watchers.append(TerminalReporter(quiet=quiet, json_lines=json_lines))  # quiet: epoch lines, no bar
    finished = False
    try:
        result = _train(config, state, resume is not None, overwrite, dist, device, _Reporters(watchers), module, data_object, classes)
        finished = result.status == "completed"  # every process ran every step (an interrupt may reach them at different steps)
        return result
    finally:
        dist.close(finished)


def is_named_data_set(name: str) -> bool:
    return not (name == "tensors" or name.startswith("python:"))


def _check_resumed_objects(config: TrainConfig, module, data_object, folder: Path) -> None:
    if model_kind(config.model) == "python":
        if module is None:
            raise ValueError(f"{folder}'s model ({config.model.removeprefix('python:')}) was defined in Python; resume it "
                             f"with cnnlab.fit(net, data, resume={str(folder)!r})")
        if f"python:{type(module).__name__}" != config.model:
            raise ValueError(f"{folder} was trained with a {config.model.removeprefix('python:')}, not a {type(module).__name__}")
    elif module is not None:
        raise ValueError(f"{folder} was trained with {config.model!r}; resume it without a model object")


class _Reporters:
    """Fan one call out to every reporter."""

    def __init__(self, reporters: list):
        self.reporters = reporters

    def __getattr__(self, name: str):
        def call(*args):
            for r in self.reporters:
                getattr(r, name, lambda *a: None)(*args)

        return call


def _resume_config(folder: Path, overrides: dict) -> tuple[TrainConfig, dict]:
    """The run's own configuration with the allowed changes, and its checkpoint state."""
    RunFolder.check_resumable(folder)
    state = ckpt.load_checkpoint(folder)
    config = TrainConfig.from_json(folder / "config.json")
    changed = {k: v for k, v in overrides.items() if v is not None and v != getattr(config, k, None)}
    fixed = set(changed) - RESUME_CHANGEABLE
    if fixed:
        was = ", ".join(f"{k}={getattr(config, k, None)!r} (asked {changed[k]!r})" for k in sorted(fixed))
        raise ValueError(f"cannot change {was} when resuming {folder}; changeable: {', '.join(sorted(RESUME_CHANGEABLE))}")
    done = len(state["history"])
    if "epochs" in changed and changed["epochs"] <= done:
        raise ValueError(f"--epochs {changed['epochs']}: {folder} has already trained {done} epoch(s); "
                         f"give more than {done} to train further")
    if "epochs" not in changed and state["epoch"] > config.epochs:
        raise ValueError(f"{folder} is complete ({done} of {config.epochs} epochs); pass --epochs N with N > {done} to train further")
    for key, value in changed.items():
        setattr(config, key, value)
    validate(config)
    absolute_paths(config)
    if model_kind(config.model) == "factory" and (folder / ckpt.WEIGHTS).is_file():
        where = ckpt.load_weights(folder)[1].get("factory_path")
        if where and where not in sys.path:
            sys.path.append(where)  # the factory is found again from any folder
    state["lr_override"] = "lr" in changed
    config.out = str(folder)  # where it is now, from wherever the resume was asked
    return config, state


def _claim(config: TrainConfig, resumed: bool, overwrite: bool) -> RunFolder:
    if resumed:
        return RunFolder.claim_existing(Path(config.out))
    if config.out:
        return RunFolder.claim_new(Path(config.out), overwrite)
    return RunFolder.claim_default(config.model, config.dataset)


def _train(config: TrainConfig, state: dict | None, resumed: bool, overwrite: bool, dist: Dist, device, report,
           module: nn.Module | None, data_object, classes) -> RunResult:
    # 2) data, model, optimiser; then the run folder is claimed (nothing is written before)
    run = _Run(config, state, dist, device, report, module, data_object, classes)
    claimed = _claim(config, resumed, overwrite) if dist.main else None
    run.folder = claimed.path if claimed is not None else Path(config.out or ".")
    config.out = str(run.folder)
    try:
        return run.train()
    except Exception as err:
        if claimed is None or not claimed.discard_if_unused():
            raise
        note = f"nothing was saved ({'the run folder ' + str(run.folder) + ' was removed' if claimed.created else 'its files were removed'})"
        if isinstance(err, WriteError):
            raise err.with_hint(note) from None
        if isinstance(err, TrainingError):
            raise TrainingError(f"{err}; {note}") from None
        raise
    finally:
        if claimed is not None:
            claimed.release()


class _Run:
    """One training run's pieces, and the steps of the loop (the module docstring's 2-4)."""

    def __init__(self, config: TrainConfig, state: dict | None, dist: Dist, device, report, module, data_object, classes):
        self.config, self.dist, self.device, self.report, self.resumed = config, dist, device, report, state is not None
        self.folder = Path(".")
        kind = model_kind(config.model)
        if data_object is None:
            def image_size_of(data):
                return config.image_size or (model_info(config.model)["input_size"] if kind == "zoo" else data.image_shape[-1])

            progress = any(isinstance(r, TerminalReporter) and not r.quiet for r in report.reporters)
            self.inputs = from_name(config, dist, device, image_size_of, progress=progress)
        else:
            self.inputs = from_objects(data_object, config, dist, device, classes)
        inputs = self.inputs

        torch.manual_seed(config.seed)
        self.model = (module if module is not None else build_model(config, len(inputs.classes), inputs.image_shape[0])).to(device)
        self.model_name = config.model.removeprefix("python:")
        check_input_fits(self.model, inputs.image_shape, len(inputs.classes), self.model_name)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = _optimizer(config, self.model.parameters())
        self.schedule = _schedule(config, self.optimizer, len(inputs.train))
        self.history: list[dict] = []
        self.start = (1, 0, [0.0, 0.0, 0.0, 0.0])  # epoch, step, partial sums: loss, correct, count, train seconds
        if state is not None:
            self._restore(state)
        self.net = self.model
        if dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.net = torch.compile(self.net)
        self.metadata = _metadata(config, inputs, self.model)
        # mixed precision: float16 with loss scaling on CUDA, bfloat16 on the CPU (no scaling needed)
        self.amp = config.amp
        self.amp_dtype = (torch.float16 if device.type == "cuda" else torch.bfloat16) if config.amp else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp and device.type == "cuda")
        self.metadata["amp"] = str(self.amp_dtype).removeprefix("torch.") if self.amp else None
        self.writer = None
        self.stopped_at: tuple[int, int, int] | None = None  # (epoch, step, steps) where max_seconds stopped the run

    def _restore(self, state: dict) -> None:
        config = self.config
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise ValueError(f"the checkpoint does not fit this model: {str(err).splitlines()[0]}") from None
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        if state.get("lr_override"):  # a new peak learning rate from here on
            self.schedule.base_lrs = [config.lr for _ in self.schedule.base_lrs]
            for group in self.optimizer.param_groups:
                group["initial_lr"] = config.lr
                group["lr"] = config.lr * self.schedule.lr_lambdas[0](self.schedule.last_epoch)
        self.history = [dict(row) for row in state["history"]]
        self.start = (state["epoch"], state["step"], list(state["partial"]))

    # -- writing: every file through cnnlab.files.atomic_write; a failure says what is still safe --
    def _write(self, what) -> None:
        if not self.dist.main:
            return
        try:
            what()
        except WriteError as err:
            raise err.with_hint(self._safe_note()) from None

    def _safe_note(self) -> str:
        if not (self.folder / ckpt.CHECKPOINT).exists():
            return "no checkpoint had been written yet"
        state = ckpt.load_checkpoint(self.folder)
        where = f"end of epoch {state['epoch'] - 1}" if state["step"] == 0 else f"epoch {state['epoch']}, step {state['step']}"
        return (f"the last good checkpoint ({where}) and weights in {self.folder} are intact; "
                f"after fixing the cause, continue with: cnnlab train --resume {self.folder}")

    def save_checkpoint(self, epoch: int, step: int, partial_sums) -> None:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
                 "epoch": epoch, "step": step, "partial": list(partial_sums), "history": self.history,
                 "format": "cnnlab-checkpoint-1"}
        self._write(lambda: ckpt.save_checkpoint(self.folder, state))

    def _end_of_epoch_files(self, epoch: int) -> None:
        # the checkpoint last: it commits the epoch. Killed or failed before it, a resume redoes this
        # epoch exactly and rewrites the weights and metrics written so far with the same values
        self._write(lambda: ckpt.save_weights(self.folder, self.model.state_dict(), self.metadata))
        self._write(lambda: write_text(self.folder / "metrics.csv", _metrics_csv(self.history)))
        self.save_checkpoint(epoch + 1, 0, [0.0, 0.0, 0.0, 0.0])

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> RunResult:
        config, report, folder, inputs = self.config, self.report, self.folder, self.inputs
        start_epoch, start_step, partial = self.start
        self._write(lambda: write_text(folder / "config.json", config.to_json() + "\n"))
        if not self.resumed:
            report.say(f"training {self.model_name} ({sum(p.numel() for p in self.model.parameters()):,} parameters, backend "
                       f"{config.backend if model_kind(config.model) == 'zoo' else 'of the model'}) on {inputs.name} "
                       f"({inputs.n_train:,} train / {inputs.n_test:,} test, from {inputs.source}) on {self.device}, "
                       f"{torch.get_num_threads()} threads{', mixed precision ' + self.metadata['amp'] if self.amp else ''} -> {folder}")
        else:
            report.say(f"resuming {folder} at epoch {start_epoch}, step {start_step}")
        self.writer = _tensorboard(config, folder, self.dist)
        if self.writer is not None and not self.resumed:
            _tensorboard_graph(self.writer, config, self.model, inputs, self.device)
        elapsed_before = self.history[-1]["elapsed_s"] if self.history else 0.0
        self.started = time.perf_counter() - elapsed_before - (partial[3] if start_step else 0.0)
        self.budget_start = time.perf_counter()
        report.start(self)

        # 3) epochs
        with _Interrupt() as interrupt:
            for epoch in range(start_epoch, config.epochs + 1):
                first = start_step if epoch == start_epoch else 0
                sums = partial if epoch == start_epoch else [0.0, 0.0, 0.0, 0.0]
                sums = self._one_epoch(epoch, first, sums, interrupt)
                if sums is None:
                    report.end(self.history)
                    return RunResult(folder, self.history, "interrupted")
                if self.stopped_at is not None:  # max_seconds, inside the epoch
                    return self._stop_for_time(epoch, sums)
                self._finish_epoch(epoch, sums)
                if config.max_seconds is not None and epoch < config.epochs and self._over_time():
                    report.say(f"time limit: max_seconds={config.max_seconds:g} reached after epoch {epoch} of {config.epochs}; "
                               f"stopped (continue with: cnnlab train --resume {folder} )")
                    report.end(self.history)
                    return RunResult(folder, self.history, "time limit")
        report.end(self.history)

        # 4) figures
        if self.dist.main:
            self._write(lambda: _figures(self.model, inputs, folder, self.history, self.model_name))
            last = self.history[-1]
            report.summary({"event": "summary", "folder": str(folder), **last})
            report.say(f"done: test accuracy {last['test_acc']:.4f} after {_plural(last['epoch'], 'epoch')}, "
                       f"{last['elapsed_s']:.0f} s; run folder {folder}")
        if self.writer is not None:
            self.writer.close()
        return RunResult(folder, self.history)

    def _one_epoch(self, epoch: int, first: int, sums: list[float], interrupt: _Interrupt) -> list[float] | None:
        """Train one epoch from step ``first``; the updated sums, or None if interrupted (checkpoint saved)."""
        config, dist, device, train = self.config, self.dist, self.device, self.inputs.train
        loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=config.label_smoothing)
        scaler = self.scaler
        self.net.train()
        self.report.epoch_start(epoch, len(train), first)
        tick = time.perf_counter()  # epoch_s: wall time of the steps, batch preparation and augmentation included
        for step, (x, y, global_count) in enumerate(train.epoch(epoch, first), start=first):
            if interrupt.requested:
                self.save_checkpoint(epoch, step, sums)
                self.report.say(f"interrupted: checkpoint saved at epoch {epoch}, step {step}; "
                                f"continue with: cnnlab train --resume {self.folder}")
                return None
            torch.manual_seed(step_seed(config.seed, epoch, step))  # dropout masks
            with torch.autocast(device.type, dtype=self.amp_dtype, enabled=self.amp):
                logits = self.net(x)
                loss_sum = self._loss(loss_fn, logits, y)
            # each process's share of the global mean: DDP averages over processes
            scaled = loss_sum * (dist.world_size / global_count)
            self.optimizer.zero_grad(set_to_none=True)
            scaler.scale(scaled).backward()
            stats = dist.sum([loss_sum.item(), (logits.argmax(1) == y).sum().item(), len(y)], device)
            if not math.isfinite(stats[0]):
                raise TrainingError(f"the loss became {stats[0]} at epoch {epoch}, step {step}; stopped. " + self._kept_note())
            scaler.step(self.optimizer)
            scaler.update()
            self.schedule.step()
            tock = time.perf_counter()
            sums, tick = [sums[0] + stats[0], sums[1] + stats[1], sums[2] + stats[2], sums[3] + tock - tick], tock
            self.report.step(epoch, step, sums)
            if self.writer is not None:
                self.writer.add_scalar("step/loss", stats[0] / max(stats[2], 1), (epoch - 1) * len(train) + step)
            if config.max_seconds is not None and step + 1 < len(train) and self._over_time():
                self.stopped_at = (epoch, step + 1, len(train))
                break
        return sums

    def _over_time(self) -> bool:
        return time.perf_counter() - self.budget_start >= self.config.max_seconds  # this call's seconds, a resume's own

    def _stop_for_time(self, epoch: int, sums: list[float]) -> RunResult:
        """max_seconds reached inside an epoch: a checkpoint at that step (``--resume`` continues exactly), the
        test accuracy of the model as it is, and the shortened run's numbers reported as such."""
        _, step, steps = self.stopped_at
        if self.dist.main:
            self.save_checkpoint(epoch, step, sums)
        result = evaluate(self.net, self.inputs.test, self.dist, self.device)
        row = {"epoch": epoch - 1 + step / steps, "train_loss": sums[0] / sums[2], "train_acc": sums[1] / sums[2],
               "test_acc": result["acc"], "lr": self.optimizer.param_groups[0]["lr"],
               "examples_per_s": sums[2] / max(sums[3], 1e-9), "epoch_s": sums[3], "elapsed_s": time.perf_counter() - self.started}
        self.report.say(f"time limit: max_seconds={self.config.max_seconds:g} reached at epoch {epoch}, step {step} of {steps}; "
                        f"stopped: loss {row['train_loss']:.4f}, train acc {row['train_acc']:.3f}, test acc {row['test_acc']:.3f} "
                        f"are those of this shortened run (continue with: cnnlab train --resume {self.folder} )")
        self.report.end(self.history)
        return RunResult(self.folder, self.history, "time limit", partial=row)

    def _loss(self, loss_fn, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        classes = len(self.inputs.classes)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise ValueError(f"a label {int(y.max()) if int(y.max()) >= classes else int(y.min())} is outside 0..{classes - 1} "
                             f"({classes} classes: {', '.join(self.inputs.classes[:5])}{', ...' if classes > 5 else ''})")
        return loss_fn(logits.float(), y)

    def _kept_note(self) -> str:
        if self.dist.main and not (self.folder / ckpt.CHECKPOINT).exists():
            return "No checkpoint had been written yet"
        last = f" (end of epoch {self.history[-1]['epoch']})" if self.history else ""
        return f"The last good checkpoint is kept in {self.folder}{last}"

    def _finish_epoch(self, epoch: int, sums: list[float]) -> None:
        result = evaluate(self.net, self.inputs.test, self.dist, self.device)
        row = {"epoch": epoch, "train_loss": sums[0] / sums[2], "train_acc": sums[1] / sums[2], "test_acc": result["acc"],
               "lr": self.optimizer.param_groups[0]["lr"], "examples_per_s": sums[2] / max(sums[3], 1e-9), "epoch_s": sums[3],
               "elapsed_s": time.perf_counter() - self.started}
        self.history.append(row)
        self.report.epoch_end(row)
        if self.dist.main:
            self._end_of_epoch_files(epoch)
            if self.writer is not None:
                _tensorboard_epoch(self.writer, self.model, row, self.inputs.test)


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


def _tensorboard(config: TrainConfig, folder: Path, dist: Dist):
    if not (config.tensorboard and dist.main):
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'cnnlab[tensorboard]'") from None
    return SummaryWriter(log_dir=str(folder / "tensorboard"))


def _tensorboard_graph(writer, config: TrainConfig, model: nn.Module, inputs, device) -> None:
    """The model graph. A zoo model is traced from a torch-backend twin (same modules and weights): jit
    tracing does not follow the custom autograd Functions of the scratch operations."""
    import warnings

    if model_kind(config.model) == "zoo":
        twin = create_model(config.model, num_classes=len(inputs.classes), in_channels=inputs.image_shape[0], backend="torch",
                            **_model_kwargs(config)).to(device)
        twin.load_state_dict(model.state_dict())
    else:
        twin = model
    with warnings.catch_warnings():  # torch.jit's deprecation notices: not the user's concern
        warnings.simplefilter("ignore")
        try:
            writer.add_graph(twin.eval(), torch.zeros(1, *inputs.image_shape, device=device))
        except Exception as err:  # a user's model jit cannot trace: the rest of TensorBoard still works
            print(f"note: TensorBoard graph skipped: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}", flush=True)
    model.train()


@torch.no_grad()
def _tensorboard_epoch(writer, model: nn.Module, row: dict, test: Batches) -> None:
    from ..viz.inside import activations, conv_layers, tile_grid

    epoch = row["epoch"]
    for key in ("train_loss", "train_acc", "test_acc", "lr", "examples_per_s"):
        writer.add_scalar(f"epoch/{key}", row[key], epoch)
    for name, p in model.named_parameters():
        writer.add_histogram(f"weights/{name}", p.detach().cpu(), epoch)
        if p.grad is not None:
            writer.add_histogram(f"grads/{name}", p.grad.detach().cpu(), epoch)
    first = conv_layers(model)[:1]
    if first:
        weight = dict(model.named_modules())[first[0]].weight
        writer.add_image(f"kernels/{first[0]}", tile_grid(weight.flatten(0, 1)), epoch)
        x, _, _ = next(test.epoch(0))
        _, maps = activations(model, x[:1], first)
        writer.add_image(f"feature_maps/{first[0]}", tile_grid(maps[first[0]]), epoch)
        model.train()


@torch.no_grad()
def _figures(model: nn.Module, inputs, folder: Path, history: list[dict], name: str) -> None:
    from ..viz import confusion_matrix, plot_confusion, plot_curves, plot_predictions

    model.eval()
    shown, predicted, labels = [], [], []
    for x, y, _ in inputs.test.epoch(0):
        predicted.append(model(x).argmax(1).cpu())
        labels.append(y.cpu())
        if sum(len(s) for s in shown) < 32:
            shown.append(x[: 32 - sum(len(s) for s in shown)].float().cpu())
    predicted, labels, images = torch.cat(predicted), torch.cat(labels), torch.cat(shown)
    classes = inputs.classes
    plot_curves(history, folder / "curves.png", title=f"{name} on {inputs.name}")
    n = len(images)
    plot_predictions(images, labels[:n].tolist(), predicted[:n].tolist(), classes, folder / "predictions.png")
    matrix = confusion_matrix(labels, predicted, len(classes))
    plot_confusion(matrix, classes, folder / "confusion.png", title=f"test accuracy {(labels == predicted).float().mean():.3f}")


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
