"""cnnlab: convolutional neural networks from first principles.

The short API a notebook reader can guess::

    import cnnlab
    result = cnnlab.fit(net, "fashion-mnist", epochs=10, lr=0.9, batch_size=256)   # live plot in Jupyter
    cnnlab.summary(net, (1, 28, 28))            # per-layer table (HTML in Jupyter)
    run = cnnlab.load_run(result)               # model, metadata, history
    cnnlab.plot_kernels(run.model[0].weight)    # figures show inline
    page = cnnlab.explore(result)               # the explorer, inline; page.stop()

``import cnnlab`` stays light: torch and everything else load on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = {"analysis", "d2l", "data", "models", "nn", "ops", "train", "viz", "explorer", "files"}
# name -> (module, attribute): the top-level functions, each documented where it lives
_API = {
    "fit": ("train.loop", "fit"),
    "evaluate": ("train.evaluation", "evaluate"),
    "load_run": ("train.run", "load_run"),
    "Run": ("train.run", "Run"),
    "summary": ("analysis.summary", "summary"),
    "receptive_field_for_unit": ("analysis.summary", "receptive_field_for_unit"),
    "explore": ("explorer.notebook", "explore"),
    "create_model": ("models.registry", "create_model"),
    "list_models": ("models.registry", "list_models"),
    "plot_curves": ("viz.plots", "plot_curves"),
    "plot_predictions": ("viz.plots", "plot_predictions"),
    "plot_confusion": ("viz.plots", "plot_confusion"),
    "plot_kernels": ("viz.inside", "plot_kernels"),
    "plot_features": ("viz.inside", "plot_features"),
    "plot_receptive": ("viz.inside", "plot_receptive"),
    "plot_attribution": ("viz.inside", "plot_attribution"),
    "explain": ("analysis.attribution", "explain"),
    "top_patches": ("analysis.patches", "top_patches"),
    "plot_top_patches": ("viz.inside", "plot_top_patches"),
    "activations": ("viz.inside", "activations"),
    "scratch": ("nn.intercept", "scratch"),
}
__all__ = ["__version__", *sorted(_SUBMODULES), *sorted(_API)]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _API:
        module, attr = _API[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    raise AttributeError(f"module 'cnnlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
