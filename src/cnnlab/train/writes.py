"""What a run writes besides its checkpoint: metrics.csv, TensorBoard events and the three figures."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch
from torch import nn

from ..data import Batches
from ..models import create_model
from .build import _model_kwargs, model_kind
from .config import TrainConfig
from .distributed import Dist

METRIC_FIELDS = ["epoch", "train_loss", "train_acc", "test_acc", "lr", "examples_per_s", "epoch_s", "elapsed_s"]


def _metrics_csv(history: list[dict]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=METRIC_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()

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
