"""AlexNet as in D2L 8.1: five convolutions, three max pools, two 4096-wide dropout layers.

On 1x224x224: 96x54x54 -> 96x26x26 -> 256x26x26 -> 256x12x12 -> 384x12x12 -> 384x12x12 -> 256x12x12
-> 256x5x5 -> 6400 -> 4096 -> 4096 -> classes.
"""

from __future__ import annotations

from torch import nn

from .. import nn as cnn
from .blocks import conv_relu
from .registry import register_model

__all__ = ["AlexNet", "AlexNetCPU", "dense_head"]


def dense_head(in_features: int, num_classes: int, dropout: float, width: int = 4096) -> nn.Sequential:
    """Flatten, then two ``width``-wide ReLU layers with dropout and the output layer (AlexNet's and VGG's)."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, width), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(width, num_classes),
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


class AlexNetCPU(nn.Module):
    """AlexNet's design at 28 px, for a CPU: a wide-kernel first convolution, five convolutions,
    three overlapping 3x3 stride-2 max pools, ReLU, no batch norm, and the two dropout layers of
    the dense head, all six times narrower. On 1x28x28: 16x14x14 -> 32x7x7 -> 48x7x7 -> 48x7x7
    -> 32x4x4 -> 512 -> 256 -> 256 -> classes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", dropout: float = 0.5):
        super().__init__()
        pool = lambda: cnn.MaxPool2d(kernel_size=3, stride=2, padding=1, backend=backend)  # noqa: E731
        self.features = nn.Sequential(
            *conv_relu(in_channels, 16, 5, backend=backend), pool(),
            *conv_relu(16, 32, 5, backend=backend), pool(),
            *conv_relu(32, 48, backend=backend), *conv_relu(48, 48, backend=backend), *conv_relu(48, 32, backend=backend), pool(),
        )
        self.classifier = dense_head(32 * 4 * 4, num_classes, dropout, width=256)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("alexnet", input_size=224)
def alexnet(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> AlexNet:
    return AlexNet(num_classes, in_channels, backend, **kwargs)


@register_model("alexnet-cpu", input_size=28)
def alexnet_cpu(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> AlexNetCPU:
    return AlexNetCPU(num_classes, in_channels, backend, **kwargs)
