"""AlexNet as in D2L 8.1: five convolutions, three max pools, two 4096-wide dropout layers.

On 1x224x224: 96x54x54 -> 96x26x26 -> 256x26x26 -> 256x12x12 -> 384x12x12 -> 384x12x12 -> 256x12x12
-> 256x5x5 -> 6400 -> 4096 -> 4096 -> classes.
"""

from __future__ import annotations

from torch import nn

from .. import nn as cnn
from .registry import register_model

__all__ = ["AlexNet", "dense_head"]


def dense_head(in_features: int, num_classes: int, dropout: float) -> nn.Sequential:
    """Flatten, then two 4096-wide ReLU layers with dropout and the output layer (AlexNet's and VGG's)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, 4096), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(4096, num_classes),
    )


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", dropout: float = 0.5):
        super().__init__()
        conv = lambda *a, **k: cnn.Conv2d(*a, **k, backend=backend)  # noqa: E731
        pool = lambda: cnn.MaxPool2d(kernel_size=3, stride=2, backend=backend)  # noqa: E731
        self.features = nn.Sequential(
            conv(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(), pool(),
            conv(96, 256, kernel_size=5, padding=2), nn.ReLU(), pool(),
            conv(256, 384, kernel_size=3, padding=1), nn.ReLU(),
            conv(384, 384, kernel_size=3, padding=1), nn.ReLU(),
            conv(384, 256, kernel_size=3, padding=1), nn.ReLU(), pool(),
        )
        self.classifier = dense_head(256 * 5 * 5, num_classes, dropout)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("alexnet", input_size=224)
def alexnet(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> AlexNet:
    return AlexNet(num_classes, in_channels, backend, **kwargs)
