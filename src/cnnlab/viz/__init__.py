"""cnnlab.viz: figures (matplotlib with the Agg backend, imported only when drawing)."""

from .inside import (
                     activations,
                     conv_layers,
                     plot_attribution,
                     plot_features,
                     plot_kernels,
                     plot_receptive,
                     plot_top_patches,
                     window_layers,
)
from .plots import confusion_matrix, plot_confusion, plot_curves, plot_predictions

__all__ = ["activations", "confusion_matrix", "conv_layers", "plot_attribution", "plot_confusion", "plot_curves", "plot_features", "plot_kernels",
           "plot_predictions", "plot_receptive", "plot_top_patches", "window_layers"]
