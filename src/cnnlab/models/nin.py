"""Network in Network as in D2L 8.3: convolutions followed by two 1x1 convolutions (per-pixel MLPs),
and global average pooling instead of fully connected layers.

On 1x224x224: 96x54x54 -> 96x26x26 -> 256x26x26 -> 256x12x12 -> 384x12x12 -> 384x5x5 -> 10x5x5
-> 10x1x1 -> 10.
"""

from __future__ import annotations

from torch import nn

from .. import nn as cnn
from .blocks import conv_bn_relu
from .registry import register_model

__all__ = ["NiN", "NiNCPU"]

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


# 28 px: (out channels, kernel) per NiN block; a 3x3 stride-2 max pool follows each
NIN_CPU_ARCH = ((24, 5), (48, 3), (96, 3))


class NiNCPU(nn.Module):
    """NiN at 28 px for a CPU: NiN blocks (a spatial convolution, then two 1x1 convolutions: a
    per-pixel MLP), a last block with one channel per class, global average pooling and no
    fully connected layer, as in the book; batch norm after every convolution (not in the
    2013 paper) lets it train in a few epochs. On 1x28x28: 24x14x14 -> 48x7x7 -> 96x4x4 -> 10x4x4 -> 10.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", dropout: float = 0.3):
        super().__init__()
        layers, channels = [], in_channels
        for out, k in NIN_CPU_ARCH:
            layers += [*self.block(channels, out, k, backend), cnn.MaxPool2d(3, stride=2, padding=1, backend=backend)]
            channels = out
        head = self.block(channels, num_classes, 3, backend)[:-3]  # the last 1x1 convolution gives the class scores:
        head.append(cnn.Conv2d(num_classes, num_classes, 1, backend=backend))  # no batch norm, no ReLU (scores may be negative)
        layers += [nn.Dropout(dropout), *head, cnn.AdaptiveAvgPool2d((1, 1), backend=backend), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    @staticmethod
    def block(in_channels: int, out_channels: int, kernel_size: int, backend: str) -> list[nn.Module]:
        return [*conv_bn_relu(in_channels, out_channels, kernel_size, backend=backend),
                *conv_bn_relu(out_channels, out_channels, 1, backend=backend),
                *conv_bn_relu(out_channels, out_channels, 1, backend=backend)]

    def forward(self, x):
        return self.net(x)


@register_model("nin-cpu", input_size=28)
def nin_cpu(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> NiNCPU:
    return NiNCPU(num_classes, in_channels, backend, **kwargs)
