"""A finished (or interrupted) run folder, loaded for a notebook: ``cnnlab.load_run(path)``."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    """A run folder's model (in eval mode), metadata, configuration and metric history."""

    folder: Path
    model: nn.Module
    meta: dict
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.meta["classes"]

    @property
    def input_size(self) -> tuple[int, int, int]:
        return (self.meta["in_channels"], self.meta["image_size"], self.meta["image_size"])

    def plot_curves(self, path=None):
        """Loss and accuracy per epoch (a matplotlib figure; saved too with ``path``)."""
        from ..viz import plot_curves

        return plot_curves(self.history, path, title=f"{self.meta['model']} on {self.meta['dataset']}")

    def summary(self, depth: int | None = None):
        """The per-layer table of the run's model on its input size."""
        from ..analysis import summary

        return summary(self.model, self.input_size, depth=depth)

    def __repr__(self) -> str:
        last = self.history[-1] if self.history else {}
        done = f", {last['epoch']} epochs, test acc {last['test_acc']:.4f}" if last else ""
        return f"Run({str(self.folder)!r}: {self.meta['model']} on {self.meta['dataset']}{done})"


def load_run(run, model: nn.Module | None = None, device="cpu") -> Run:
    """Load a run folder (or a :class:`RunResult`): its model with the trained weights, metadata and history.

    Args:
        run: a run folder or the result of :func:`cnnlab.fit`.
        model: the architecture, for a run whose model was defined in Python (the weights are loaded into it).

    Example::

        >>> run = cnnlab.load_run("runs/lenet-fashion-mnist-20261124-101500")
        >>> run.plot_curves()
    """
    from .build import load_run_model

    folder = Path(getattr(run, "folder", run))
    net, meta = load_run_model(folder, device=device, model=model)
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    history = []
    if (folder / "metrics.csv").is_file():
        with (folder / "metrics.csv").open() as f:
            history = [{k: (int(v) if k == "epoch" else float(v)) for k, v in row.items()} for row in csv.DictReader(f)]
    return Run(folder, net, meta, config, history)
