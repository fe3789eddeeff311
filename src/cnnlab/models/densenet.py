"""DenseNet as in D2L 8.7: dense blocks whose convolutions see the concatenation of every earlier
output, transition layers halving channels and resolution in between.

The book's network: ResNet's stem, 4 dense blocks of 4 (BN-ReLU-3x3 conv) layers, growth rate 32.
"""

from __future__ import annotations

import torch
from torch import nn

from .. import nn as cnn
from .registry import register_model
from .resnet import stem

__all__ = ["DenseBlock", "DenseNet", "transition_block"]


def conv_block(in_channels: int, out_channels: int, backend: str) -> nn.Sequential:
    return nn.Sequential(cnn.BatchNorm2d(in_channels, backend=backend), nn.ReLU(),
                         cnn.Conv2d(in_channels, out_channels, 3, padding=1, backend=backend))


class DenseBlock(nn.Module):
    """``num_convs`` conv blocks, each fed the concatenation of the input and all earlier outputs."""

    def __init__(self, num_convs: int, in_channels: int, growth_rate: int, backend: str = "scratch"):
        super().__init__()
        self.net = nn.ModuleList(conv_block(in_channels + i * growth_rate, growth_rate, backend) for i in range(num_convs))
        self.out_channels = in_channels + num_convs * growth_rate

    def forward(self, x):
        for block in self.net:
            x = torch.cat((x, block(x)), dim=1)
        return x


def transition_block(in_channels: int, out_channels: int, backend: str = "scratch") -> nn.Sequential:
    """BN-ReLU-1x1 conv to ``out_channels``, then 2x2 average pooling (halves height and width)."""
    return nn.Sequential(cnn.BatchNorm2d(in_channels, backend=backend), nn.ReLU(),
                         cnn.Conv2d(in_channels, out_channels, 1, backend=backend), cnn.AvgPool2d(2, stride=2, backend=backend))


class DenseNet(nn.Module):
    """Stem, dense blocks of ``arch[i]`` conv blocks with transitions between, batch norm, ReLU,
    global average pooling, one linear layer. ``stem_channels`` and ``small_stem``: the stem's
    width and its 3x3 form for 28-32 px images."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", growth_rate: int = 32,
                 arch: tuple[int, ...] = (4, 4, 4, 4), stem_channels: int = 64, small_stem: bool = False):
        super().__init__()
        layers, channels = [stem(in_channels, backend, stem_channels, small_stem)], stem_channels
        for i, num_convs in enumerate(arch):
            block = DenseBlock(num_convs, channels, growth_rate, backend)
            layers.append(block)
            channels = block.out_channels
            if i != len(arch) - 1:
                layers.append(transition_block(channels, channels // 2, backend))
                channels //= 2
        layers += [cnn.BatchNorm2d(channels, backend=backend), nn.ReLU(), cnn.AdaptiveAvgPool2d((1, 1), backend=backend), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("densenet", input_size=96)
def densenet(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> DenseNet:
    return DenseNet(num_classes, in_channels, backend, **kwargs)


@register_model("densenet-cpu", input_size=28)
def densenet_cpu(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> DenseNet:
    """DenseNet at 28 px for a CPU: the 3x3 stem (32 channels) and pool, two dense blocks of
    four conv blocks with growth rate 12 and a transition between. On 1x28x28: 32x14x14 ->
    80x14x14 -> 40x7x7 -> 88x7x7 -> 88 -> classes."""
    return DenseNet(num_classes, in_channels, backend, growth_rate=12, arch=(4, 4), stem_channels=32, small_stem=True)
