"""Figures of a training run: curves, predictions and the confusion matrix (matplotlib, Agg).

Each function takes plain data (lists, tensors), draws one figure and returns it (a matplotlib
``Figure`` that shows inline in Jupyter); with ``path`` it also writes a PNG there. Nothing here
trains or loads anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..files import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["new_figure", "plot_confusion", "plot_curves", "plot_predictions"]


_FIGURE_CLASS = None


def new_figure(**kwargs):
    """A matplotlib ``Figure`` that draws without pyplot (no global state, any backend, any thread)
    and shows itself in Jupyter (``_repr_png_``) whatever the notebook's matplotlib backend."""
    global _FIGURE_CLASS
    if _FIGURE_CLASS is None:
        from matplotlib.figure import Figure as MplFigure

        from ..files import figure_bytes

        class CnnlabFigure(MplFigure):
            def _repr_png_(self) -> bytes:
                return figure_bytes(self)

        _FIGURE_CLASS = CnnlabFigure
    return _FIGURE_CLASS(**kwargs)


def plot_curves(history: Sequence[dict], path: str | Path | None = None, title: str = "") -> Figure:
    """Loss (left axis) and train/test accuracy (right axis) per epoch, as the book draws them."""
    epochs = [row["epoch"] for row in history]
    fig = new_figure(figsize=(6, 4), dpi=120)

    ax = fig.subplots()
    ax.plot(epochs, [row["train_loss"] for row in history], "-o", color="tab:blue", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    acc = ax.twinx()
    acc.plot(epochs, [row["train_acc"] for row in history], "--s", color="tab:purple", label="train acc")
    acc.plot(epochs, [row["test_acc"] for row in history], "-.^", color="tab:green", label="test acc")
    acc.set_ylabel("accuracy")
    acc.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()[0] + acc.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], loc="center right")
    ax.grid(alpha=0.3)
    ax.set_title(title or "training curves")
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


def _image_for_display(image: torch.Tensor):
    """(C, H, W) uint8 or float -> something imshow draws (H, W) gray or (H, W, 3)."""
    image = image.detach().cpu()
    if image.dtype != torch.uint8:
        lo, hi = image.min(), image.max()
        image = ((image - lo) / (hi - lo + 1e-12) * 255).round().to(torch.uint8)
    return image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy()


def plot_predictions(images: torch.Tensor, labels: Sequence[int], predicted: Sequence[int], classes: Sequence[str],
                     path: str | Path | None = None, columns: int = 8, probabilities: Sequence[float] | None = None) -> Figure:
    """A grid of test images titled with the true and the predicted class; mistakes in red."""
    n = len(images)
    rows = (n + columns - 1) // columns
    fig = new_figure(figsize=(1.6 * columns, 1.9 * rows), dpi=110)

    axes = fig.subplots(rows, columns, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(_image_for_display(images[i]), cmap="gray", vmin=0, vmax=255)
        wrong = labels[i] != predicted[i]
        guess = classes[predicted[i]] + (f" {probabilities[i]:.0%}" if probabilities is not None else "")
        ax.set_title(f"{classes[labels[i]]}\n{'x ' if wrong else ''}{guess}", fontsize=7, color="red" if wrong else "black",
                     y=1.0, pad=2)  # a fixed place: matplotlib's automatic one measures every axis (1.8 s for 32 images)
        if wrong:
            for spine in ax.spines.values():
                spine.set_visible(True)
                spine.set_color("red")
    fig.suptitle("test images: true class / prediction (x = mistake)", fontsize=9, y=1 - 0.08 / (1.9 * rows))
    # margins in inches, as tight_layout would find them for two 7-point title lines, without measuring 32 axes
    height = 1.9 * rows
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.1 / height, top=1 - 0.55 / height, wspace=0.08,
                        hspace=0.32 / (1.9 - 0.32))
    if path is not None:
        save_figure(fig, path)
    return fig


def confusion_matrix(labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    index = labels.long() * num_classes + predicted.long()
    return torch.bincount(index, minlength=num_classes * num_classes).view(num_classes, num_classes)


def plot_confusion(matrix: torch.Tensor, classes: Sequence[str], path: str | Path | None = None, title: str = "") -> Figure:
    """The confusion matrix as a heat map, each row normalised, with the counts written in."""
    matrix = matrix.cpu()
    share = matrix.float() / matrix.sum(1, keepdim=True).clamp_min(1)
    k = len(classes)
    fig = new_figure(figsize=(1.0 + 0.55 * k, 0.8 + 0.5 * k), dpi=120)

    ax = fig.subplots()
    im = ax.imshow(share.numpy(), cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(k), classes, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(j, i, int(matrix[i, j]), ha="center", va="center", fontsize=6,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    ax.set_title(title or "confusion matrix", fontsize=9)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig
