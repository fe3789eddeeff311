"""Test accuracy, per-class accuracy and the confusion matrix of a model over batches, on one or many processes;
class probabilities with optional flip averaging."""

from __future__ import annotations

import torch
from torch import nn

from ..data import Batches
from .distributed import Dist


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
