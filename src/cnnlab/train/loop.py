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
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data import Batches, load_dataset
from ..data.loader import step_seed
from ..files import WriteError
from ..models import create_model, model_info
from . import checkpoint as ckpt
from .config import TrainConfig, absolute_paths, resolve_config, validate
from .distributed import Dist, setup
from .runfolder import RunFolder, check_new_folder

__all__ = ["RunResult", "TrainingError", "check_input_fits", "evaluate", "fit", "load_run_model"]

# What a resumed run may change (the rest would make the checkpoint's optimiser state meaningless).
RESUME_CHANGEABLE = {"epochs", "lr", "threads", "device", "data_dir", "eval_batch_size", "tensorboard", "compile"}

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "test_acc", "lr", "examples_per_s", "epoch_s", "elapsed_s"]


class TrainingError(RuntimeError):
    """Training stopped: a NaN or infinite loss. The message names epoch and step."""


@dataclass
class RunResult:
    folder: Path | None
    history: list[dict] = field(default_factory=list)
    status: str = "completed"  # completed, interrupted

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


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
    total = config.epochs * steps_per_epoch
    if config.schedule == "cosine":
        def factor(step: int) -> float:
            return 0.5 * (1 + math.cos(math.pi * min(step, total) / total))
    elif config.schedule == "step":
        def factor(step: int) -> float:
            return config.gamma ** (step // (config.step_epochs * steps_per_epoch))
    else:
        def factor(step: int) -> float:
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _model_kwargs(config: TrainConfig) -> dict:
    """Architecture options beyond classes and channels (VGG's ``ratio``)."""
    return {} if config.ratio is None else {"ratio": config.ratio}


def _metadata(config: TrainConfig, data, image_size: int) -> dict:
    return {"model": config.model, "model_kwargs": _model_kwargs(config), "backend": config.backend, "classes": data.classes, "dataset": data.name,
            "in_channels": data.image_shape[0], "image_size": image_size, "normalize": config.normalize,
            "mean": list(data.mean), "std": list(data.std), "format": "cnnlab-run-1"}


def _subset(data, n: int, seed: int):
    """A seeded random ``n`` training images and ``ceil(n / 6)`` test images (the 60k/10k proportion)."""
    import dataclasses

    gen = torch.Generator().manual_seed(seed)
    train = torch.randperm(len(data.train_labels), generator=gen)[:n]
    test = torch.randperm(len(data.test_labels), generator=gen)[: -(-n // 6)]
    return dataclasses.replace(data, train_images=data.train_images[train], train_labels=data.train_labels[train],
                               test_images=data.test_images[test], test_labels=data.test_labels[test],
                               source=f"{data.source}, a seeded random subset")


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


class _Printer:
    """Epoch lines (or JSON lines) on stdout from rank 0; a tqdm bar on a terminal."""

    def __init__(self, enabled: bool, quiet: bool, json_lines: bool):
        self.enabled, self.quiet, self.json = enabled, quiet, json_lines

    def bar(self, total: int, initial: int, desc: str):
        from tqdm import tqdm

        show = self.enabled and not self.quiet and not self.json and sys.stderr.isatty()
        return tqdm(total=total, initial=initial, desc=desc, leave=False, disable=not show, dynamic_ncols=True)

    def say(self, text: str) -> None:
        if self.enabled and not self.json:
            print(text, flush=True)

    def record(self, row: dict, epochs: int) -> None:
        if not self.enabled:
            return
        if self.json:
            print(json.dumps({"event": "epoch", **row}), flush=True)
        else:
            print(f"epoch {row['epoch']:>3}/{epochs}  loss {row['train_loss']:.4f}  train acc {row['train_acc']:.3f}  "
                  f"test acc {row['test_acc']:.3f}  {row['examples_per_s']:,.0f} ex/s  {row['elapsed_s']:.1f} s", flush=True)


def _metrics_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def fit(config: TrainConfig | None = None, *, resume: str | Path | None = None, overwrite: bool = False,
        quiet: bool = False, json_lines: bool = False, **overrides) -> RunResult:
    """Train as ``config`` says (or ``resolve_config(**overrides)``); resume from a run folder if given.

    The run folder (``config.out``, or a new ``runs/<model>-<dataset>-<time>``) must be new or
    empty: a folder holding a run is refused unless ``overwrite=True``, and a folder that another
    process is training into is always refused. Returns the run folder and the per-epoch history.
    Raises :class:`TrainingError` on a NaN or infinite loss, after keeping the last good checkpoint,
    and :class:`cnnlab.files.WriteError` when a file cannot be written (the last good checkpoint
    and weights stay intact).
    """
    # 1) configuration and processes
    state = None
    if resume is not None:
        if overwrite:
            raise ValueError("resume and overwrite exclude each other: resuming continues the run in its folder")
        config, state = _resume_config(Path(resume), overrides)
    elif config is None:
        config = resolve_config(**overrides)
    elif overrides:
        raise TypeError(f"fit() got a config and options {sorted(overrides)}; put them in the config (resolve_config) instead")
    if resume is None and config.out:
        check_new_folder(Path(config.out), overwrite)  # refuse before loading anything
    device_kind = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    dist = setup(device_kind)
    device = _device(config, dist)
    if config.threads:
        torch.set_num_threads(config.threads)
    printer = _Printer(dist.main, quiet, json_lines)
    try:
        return _train(config, state, resume is not None, overwrite, dist, device, printer)
    finally:
        dist.close()


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
    state["lr_override"] = "lr" in changed
    return config, state


def _claim(config: TrainConfig, resumed: bool, overwrite: bool) -> RunFolder:
    if resumed:
        return RunFolder.claim_existing(Path(config.out))
    if config.out:
        return RunFolder.claim_new(Path(config.out), overwrite)
    return RunFolder.claim_default(config.model, config.dataset)


def _train(config: TrainConfig, state: dict | None, resumed: bool, overwrite: bool, dist: Dist, device,
           printer: _Printer) -> RunResult:
    # 2) data, model, optimiser; then the run folder is claimed (nothing is written before)
    run = _Run(config, state, dist, device, printer)
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

    def __init__(self, config: TrainConfig, state: dict | None, dist: Dist, device, printer: _Printer):
        self.config, self.dist, self.device, self.printer, self.resumed = config, dist, device, printer, state is not None
        self.folder = Path(".")
        self.data = data = self._load_data()
        self.image_size = config.image_size or model_info(config.model)["input_size"]
        pad = 0 if not config.augment else (2 if self.image_size <= 32 and data.image_shape[-1] <= 28 else 4)
        common = {"mean": data.mean, "std": data.std, "normalize": config.normalize, "device": device,
                  "image_size": self.image_size, "channels_last": config.channels_last,
                  "rank": dist.rank, "world_size": dist.world_size}
        self.train_batches = Batches(data.train_images, data.train_labels, config.batch_size, shuffle=True, seed=config.seed,
                                     augment_pad=pad, flip=config.augment, **common)
        self.test_batches = Batches(data.test_images, data.test_labels, config.eval_batch_size, **common)

        torch.manual_seed(config.seed)
        self.model = create_model(config.model, num_classes=len(data.classes), in_channels=data.image_shape[0],
                                  backend=config.backend, **_model_kwargs(config)).to(device)
        check_input_fits(self.model, (data.image_shape[0], self.image_size, self.image_size), len(data.classes), config.model)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = _optimizer(config, self.model.parameters())
        self.schedule = _schedule(config, self.optimizer, len(self.train_batches))
        self.history: list[dict] = []
        self.start = (1, 0, [0.0, 0.0, 0.0, 0.0])  # epoch, step, partial sums: loss, correct, count, train seconds
        if state is not None:
            self._restore(state)
        self.net = self.model
        if dist.enabled:
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.net = torch.compile(self.net)
        self.metadata = _metadata(config, data, self.image_size)
        self.amp = config.amp and device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.writer = None

    def _load_data(self):
        config, dist = self.config, self.dist
        if dist.main:
            data = load_dataset(config.dataset, config.data_dir, image_size=config.image_size, progress=not self.printer.quiet)
        dist.barrier()
        if not dist.main:
            data = load_dataset(config.dataset, config.data_dir, fetch=False, image_size=config.image_size)
        return _subset(data, config.subset, config.seed) if config.subset else data

    def _restore(self, state: dict) -> None:
        config = self.config
        self.model.load_state_dict(state["model"])
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
        self._write(lambda: ckpt.write_text(self.folder / "metrics.csv", _metrics_csv(self.history)))
        self.save_checkpoint(epoch + 1, 0, [0.0, 0.0, 0.0, 0.0])

    # -- the loop -------------------------------------------------------------------------------
    def train(self) -> RunResult:
        config, printer, folder = self.config, self.printer, self.folder
        start_epoch, start_step, partial = self.start
        self._write(lambda: ckpt.write_text(folder / "config.json", config.to_json() + "\n"))
        if not self.resumed:
            data = self.data
            printer.say(f"training {config.model} ({sum(p.numel() for p in self.model.parameters()):,} parameters, backend "
                        f"{config.backend}) on {data.name} ({len(data.train_labels):,} train / {len(data.test_labels):,} test, "
                        f"from {data.source}) on {self.device}, {torch.get_num_threads()} threads -> {folder}")
        else:
            printer.say(f"resuming {folder} at epoch {start_epoch}, step {start_step}")
        self.writer = _tensorboard(config, folder, self.dist)
        if self.writer is not None and not self.resumed:
            _tensorboard_graph(self.writer, config, self.model, self.data, self.image_size, self.device)
        elapsed_before = self.history[-1]["elapsed_s"] if self.history else 0.0
        self.started = time.perf_counter() - elapsed_before - (partial[3] if start_step else 0.0)

        # 3) epochs
        with _Interrupt() as interrupt:
            for epoch in range(start_epoch, config.epochs + 1):
                first = start_step if epoch == start_epoch else 0
                sums = partial if epoch == start_epoch else [0.0, 0.0, 0.0, 0.0]
                sums = self._one_epoch(epoch, first, sums, interrupt)
                if sums is None:
                    return RunResult(folder, self.history, "interrupted")
                self._finish_epoch(epoch, sums)

        # 4) figures
        if self.dist.main:
            self._write(lambda: _figures(self.model, self.test_batches, self.data, folder, self.history))
            last = self.history[-1]
            if printer.json:
                print(json.dumps({"event": "summary", "folder": str(folder), **last}), flush=True)
            else:
                printer.say(f"done: test accuracy {last['test_acc']:.4f} after {_plural(last['epoch'], 'epoch')}, "
                            f"{last['elapsed_s']:.0f} s; run folder {folder}")
        if self.writer is not None:
            self.writer.close()
        return RunResult(folder, self.history)

    def _one_epoch(self, epoch: int, first: int, sums: list[float], interrupt: _Interrupt) -> list[float] | None:
        """Train one epoch from step ``first``; the updated sums, or None if interrupted (checkpoint saved)."""
        config, dist, device = self.config, self.dist, self.device
        loss_fn = nn.CrossEntropyLoss(reduction="sum", label_smoothing=config.label_smoothing)
        scaler = self.scaler
        self.net.train()
        with self.printer.bar(len(self.train_batches), first, f"epoch {epoch}/{config.epochs}") as bar:
            for step, (x, y, global_count) in enumerate(self.train_batches.epoch(epoch, first), start=first):
                if interrupt.requested:
                    self.save_checkpoint(epoch, step, sums)
                    self.printer.say(f"interrupted: checkpoint saved at epoch {epoch}, step {step}; "
                                     f"continue with: cnnlab train --resume {self.folder}")
                    return None
                tick = time.perf_counter()
                torch.manual_seed(step_seed(config.seed, epoch, step))  # dropout masks
                with torch.autocast(device.type, enabled=self.amp):
                    logits = self.net(x)
                    loss_sum = loss_fn(logits.float(), y)
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
                sums = [sums[0] + stats[0], sums[1] + stats[1], sums[2] + stats[2], sums[3] + time.perf_counter() - tick]
                bar.update(1)
                bar.set_postfix(loss=f"{sums[0] / max(sums[2], 1):.4f}", acc=f"{sums[1] / max(sums[2], 1):.3f}")
                if self.writer is not None:
                    self.writer.add_scalar("step/loss", stats[0] / max(stats[2], 1), (epoch - 1) * len(self.train_batches) + step)
        return sums

    def _kept_note(self) -> str:
        if self.dist.main and not (self.folder / ckpt.CHECKPOINT).exists():
            return "No checkpoint had been written yet"
        last = f" (end of epoch {self.history[-1]['epoch']})" if self.history else ""
        return f"The last good checkpoint is kept in {self.folder}{last}"

    def _finish_epoch(self, epoch: int, sums: list[float]) -> None:
        result = evaluate(self.net, self.test_batches, self.dist, self.device)
        row = {"epoch": epoch, "train_loss": sums[0] / sums[2], "train_acc": sums[1] / sums[2], "test_acc": result["acc"],
               "lr": self.optimizer.param_groups[0]["lr"], "examples_per_s": sums[2] / max(sums[3], 1e-9), "epoch_s": sums[3],
               "elapsed_s": time.perf_counter() - self.started}
        self.history.append(row)
        self.printer.record(row, self.config.epochs)
        if self.dist.main:
            self._end_of_epoch_files(epoch)
            if self.writer is not None:
                _tensorboard_epoch(self.writer, self.model, row, self.test_batches)


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


def _tensorboard_graph(writer, config: TrainConfig, model: nn.Module, data, image_size: int, device) -> None:
    """The model graph, traced from a torch-backend twin (same modules and weights): jit tracing does
    not follow the custom autograd Functions of the scratch operations."""
    twin = create_model(config.model, num_classes=len(data.classes), in_channels=data.image_shape[0], backend="torch",
                        **_model_kwargs(config)).to(device)
    twin.load_state_dict(model.state_dict())
    import warnings

    with warnings.catch_warnings():  # torch.jit's deprecation notices: not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        writer.add_graph(twin.eval(), torch.zeros(1, data.image_shape[0], image_size, image_size, device=device))


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
def _figures(model: nn.Module, test: Batches, data, folder: Path, history: list[dict]) -> None:
    from ..viz import confusion_matrix, plot_confusion, plot_curves, plot_predictions

    model.eval()
    predicted = torch.cat([model(x).argmax(1).cpu() for x, _, _ in test.epoch(0)])
    labels = data.test_labels[: len(predicted)]
    plot_curves(history, folder / "curves.png", title=f"{model.__class__.__name__} on {data.name}")
    show = torch.arange(min(32, len(labels)))
    plot_predictions(data.test_images[show], labels[show].tolist(), predicted[show].tolist(), data.classes, folder / "predictions.png")
    matrix = confusion_matrix(labels, predicted, len(data.classes))
    plot_confusion(matrix, data.classes, folder / "confusion.png", title=f"test accuracy {(labels == predicted).float().mean():.3f}")


def load_run_model(run: str | Path, device="cpu", backend: str | None = None) -> tuple[nn.Module, dict]:
    """Rebuild a run's model from ``model.safetensors`` (weights + metadata); returns (model in eval mode, metadata)."""
    state, meta = ckpt.load_weights(run)
    if "model" not in meta:
        raise ValueError(f"{run}: weights carry no cnnlab metadata (model name, classes); was it written by cnnlab?")
    model = create_model(meta["model"], num_classes=len(meta["classes"]), in_channels=meta["in_channels"],
                         backend=backend or meta.get("backend", "scratch"), **meta.get("model_kwargs", {}))
    model.load_state_dict(state)
    return model.to(device).eval(), meta
