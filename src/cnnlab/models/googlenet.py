"""GoogLeNet as in D2L 8.4: nine Inception blocks in five stages, global average pooling.

An Inception block runs four paths side by side and concatenates them on channels:
1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1. On 1x96x96: 64x24x24 -> 192x12x12
-> 480x6x6 -> 832x3x3 -> 1024 -> classes.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as cnn
from .blocks import conv_bn_relu
from .registry import register_model

__all__ = ["GoogLeNet", "GoogLeNetCPU", "Inception"]

# (c1, (c2 reduce, c2), (c3 reduce, c3), c4) per Inception block, stage by stage
INCEPTION_STAGES = (
    ((64, (96, 128), (16, 32), 32), (128, (128, 192), (32, 96), 64)),
    ((192, (96, 208), (16, 48), 64), (160, (112, 224), (24, 64), 64), (128, (128, 256), (24, 64), 64),
     (112, (144, 288), (32, 64), 64), (256, (160, 320), (32, 128), 128)),
    ((256, (160, 320), (32, 128), 128), (384, (192, 384), (48, 128), 128)),
)


# 28 px, four Inception blocks in two stages (14x14, then 7x7), about a tenth of the book's widths
INCEPTION_CPU_STAGES = (
    ((16, (16, 24), (4, 8), 8), (24, (24, 32), (8, 16), 16)),
    ((32, (32, 48), (8, 16), 16), (40, (40, 56), (12, 24), 24)),
)


class Inception(nn.Module):
    def __init__(self, in_channels: int, c1: int, c2: tuple[int, int], c3: tuple[int, int], c4: int, backend: str = "scratch",
                 batch_norm: bool = False):
        super().__init__()
        if batch_norm:  # BN-Inception (Ioffe & Szegedy 2015): each convolution followed by batch norm
            conv = lambda i, o, k, p=0: nn.Sequential(*conv_bn_relu(i, o, k, padding=p, backend=backend))  # noqa: E731
        else:
            conv = lambda i, o, k, p=0: nn.Sequential(cnn.Conv2d(i, o, k, padding=p, backend=backend), nn.ReLU())  # noqa: E731
        self.p1 = conv(in_channels, c1, 1)
        self.p2 = nn.Sequential(conv(in_channels, c2[0], 1), conv(c2[0], c2[1], 3, 1))
        self.p3 = nn.Sequential(conv(in_channels, c3[0], 1), conv(c3[0], c3[1], 5, 2))
        self.p4 = nn.Sequential(cnn.MaxPool2d(3, stride=1, padding=1, backend=backend), conv(in_channels, c4, 1))
        self.out_channels = c1 + c2[1] + c3[1] + c4

    def forward(self, x):
        return torch.cat((self.p1(x), self.p2(x), self.p3(x), self.p4(x)), dim=1)


class GoogLeNet(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch"):
        super().__init__()
        pool = lambda: cnn.MaxPool2d(3, stride=2, padding=1, backend=backend)  # noqa: E731
        stages = [
            nn.Sequential(cnn.Conv2d(in_channels, 64, 7, stride=2, padding=3, backend=backend), nn.ReLU(), pool()),
            nn.Sequential(cnn.Conv2d(64, 64, 1, backend=backend), nn.ReLU(),
                          cnn.Conv2d(64, 192, 3, padding=1, backend=backend), nn.ReLU(), pool()),
        ]
        channels = 192
        for i, stage in enumerate(INCEPTION_STAGES):
            blocks = []
            for c1, c2, c3, c4 in stage:
                blocks.append(Inception(channels, c1, c2, c3, c4, backend))
                channels = blocks[-1].out_channels
            tail = [pool()] if i < len(INCEPTION_STAGES) - 1 else [cnn.AdaptiveAvgPool2d((1, 1), backend=backend), nn.Flatten()]
            stages.append(nn.Sequential(*blocks, *tail))
        self.features = nn.Sequential(*stages)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("googlenet", input_size=96)
def googlenet(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> GoogLeNet:
    return GoogLeNet(num_classes, in_channels, backend)


class GoogLeNetCPU(nn.Module):
    """GoogLeNet at 28 px for a CPU: a 3x3 stem, four Inception blocks (the four paths 1x1 |
    1x1 -> 3x3 | 1x1 -> 5x5 | 3x3 max pool -> 1x1, concatenated) in two stages with a 3x3
    stride-2 max pool between, global average pooling and one linear layer; batch norm in every
    convolution (BN-Inception). On 1x28x28: 24x14x14 -> 88x14x14 -> 88x7x7 -> 144x7x7 -> 144 -> classes.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch"):
        super().__init__()
        pool = lambda: cnn.MaxPool2d(3, stride=2, padding=1, backend=backend)  # noqa: E731
        layers, channels = [*conv_bn_relu(in_channels, 24, backend=backend), pool()], 24
        for i, stage in enumerate(INCEPTION_CPU_STAGES):
            for c1, c2, c3, c4 in stage:
                layers.append(Inception(channels, c1, c2, c3, c4, backend, batch_norm=True))
                channels = layers[-1].out_channels
            layers.append(pool() if i < len(INCEPTION_CPU_STAGES) - 1 else cnn.AdaptiveAvgPool2d((1, 1), backend=backend))
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("googlenet-cpu", input_size=28)
def googlenet_cpu(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> GoogLeNetCPU:
    return GoogLeNetCPU(num_classes, in_channels, backend)
