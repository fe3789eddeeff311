"""Network in Network as in D2L 8.3: convolutions followed by two 1x1 convolutions (per-pixel MLPs),
and global average pooling instead of fully connected layers.

On 1x224x224: 96x54x54 -> 96x26x26 -> 256x26x26 -> 256x12x12 -> 384x12x12 -> 384x5x5 -> 10x5x5
-> 10x1x1 -> 10.
"""

from __future__ import annotations

from torch import nn

from .. import nn as cnn
from .registry import register_model

__all__ = ["NiN"]

# (out channels, kernel, stride, padding) per NiN block; a max pool 3/2 follows all but the last
NIN_ARCH = ((96, 11, 4, 0), (256, 5, 1, 2), (384, 3, 1, 1))


def nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int, backend: str) -> nn.Sequential:
    return nn.Sequential(
        cnn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, backend=backend), nn.ReLU(),
        cnn.Conv2d(out_channels, out_channels, kernel_size=1, backend=backend), nn.ReLU(),
        cnn.Conv2d(out_channels, out_channels, kernel_size=1, backend=backend), nn.ReLU(),
    )


class NiN(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", dropout: float = 0.5):
        super().__init__()
        layers, channels = [], in_channels
        for out, k, s, p in NIN_ARCH:
            layers += [nin_block(channels, out, k, s, p, backend), cnn.MaxPool2d(3, stride=2, backend=backend)]
            channels = out
        layers += [nn.Dropout(dropout), nin_block(channels, num_classes, 3, 1, 1, backend),
                   cnn.AdaptiveAvgPool2d((1, 1), backend=backend), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


@register_model("nin", input_size=224)
def nin(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> NiN:
    return NiN(num_classes, in_channels, backend, **kwargs)
