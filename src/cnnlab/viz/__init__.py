"""cnnlab.viz: figures (matplotlib with the Agg backend, imported only when drawing)."""

from .plots import confusion_matrix, plot_confusion, plot_curves, plot_predictions

__all__ = ["confusion_matrix", "plot_confusion", "plot_curves", "plot_predictions"]
