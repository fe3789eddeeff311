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

import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data.loader import step_seed
from ..files import WriteError, write_text
from ..models import model_info
from . import checkpoint as ckpt
from .build import _device, _metadata, _optimizer, _plural, _schedule, build_model, check_input_fits, load_run_model, model_kind
from .config import TrainConfig, absolute_paths, resolve_config, validate
from .distributed import Dist, setup
from .evaluation import evaluate
from .inputs import describe_data, from_name, from_objects
from .memory import keep_freed_memory
from .report import NotebookReporter, TerminalReporter, in_notebook
from .runfolder import RunFolder, check_new_folder
from .writes import _figures, _metrics_csv, _tensorboard, _tensorboard_epoch, _tensorboard_graph

__all__ = ["RunResult", "TrainingError", "check_input_fits", "evaluate", "fit", "load_run_model"]

# What a resumed run may change (the rest would make the checkpoint's optimiser state meaningless).
RESUME_CHANGEABLE = {"epochs", "lr", "threads", "device", "data_dir", "eval_batch_size", "tensorboard", "compile", "max_seconds"}



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
