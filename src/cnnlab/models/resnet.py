"""ResNet as in D2L 8.6: residual blocks of two 3x3 convolutions with batch norm, a 1x1
convolution on the shortcut where the shape changes; stage depths as data.

ResNet-18 on 1x96x96: 64x24x24 -> 64x24x24 -> 128x12x12 -> 256x6x6 -> 512x3x3 -> 512 -> classes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .. import nn as cnn
from .registry import register_model

__all__ = ["ResNet", "Residual", "RESNET_DEPTHS"]

RESNET_DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3), "resnet-cpu": (1, 1, 1)}
STAGE_CHANNELS = (64, 128, 256, 512)
CPU_STAGE_CHANNELS = (32, 64, 128)  # 28 px: 32x14x14 -> 64x7x7 -> 128x4x4


class Residual(nn.Module):
    """relu(bn(conv(relu(bn(conv(x))))) + shortcut(x)), shortcut a strided 1x1 conv when asked."""

    def __init__(self, in_channels: int, out_channels: int, use_1x1conv: bool = False, strides: int = 1, backend: str = "scratch"):
        super().__init__()
        self.conv1 = cnn.Conv2d(in_channels, out_channels, 3, padding=1, stride=strides, backend=backend)
        self.conv2 = cnn.Conv2d(out_channels, out_channels, 3, padding=1, backend=backend)
        self.conv3 = cnn.Conv2d(in_channels, out_channels, 1, stride=strides, backend=backend) if use_1x1conv else None
        self.bn1 = cnn.BatchNorm2d(out_channels, backend=backend)
        self.bn2 = cnn.BatchNorm2d(out_channels, backend=backend)

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.conv3(x) if self.conv3 is not None else x))


def stem(in_channels: int, backend: str, out_channels: int = 64, small: bool = False) -> nn.Sequential:
    """Convolution, batch norm, ReLU, 3x3/2 max pool (shared with DenseNet): a 7x7/2 convolution
    (the book's, for 96-224 px), or ``small``: a 3x3/1 one for 28-32 px images, which have no
    resolution to spare."""
    kernel, stride = (3, 1) if small else (7, 2)
    return nn.Sequential(cnn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, backend=backend),
                         cnn.BatchNorm2d(out_channels, backend=backend), nn.ReLU(), cnn.MaxPool2d(3, stride=2, padding=1, backend=backend))


class ResNet(nn.Module):
    """Stem, stages of residual blocks (the first block of every stage but the first halves the
    side), global average pooling, one linear layer. ``widths``: each stage's channels;
    ``small_stem``: the 3x3 stem for 28-32 px images."""

    def __init__(self, depths, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch",
                 widths: tuple[int, ...] = STAGE_CHANNELS, small_stem: bool = False):
        super().__init__()
        stages, channels = [stem(in_channels, backend, widths[0], small_stem)], widths[0]
        for i, (depth, out) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(depth):
                downsample = j == 0 and i > 0
                blocks.append(Residual(channels, out, use_1x1conv=downsample, strides=2 if downsample else 1, backend=backend))
                channels = out
            stages.append(nn.Sequential(*blocks))
        self.features = nn.Sequential(*stages, cnn.AdaptiveAvgPool2d((1, 1), backend=backend), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("resnet18", input_size=96)
def resnet18(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> ResNet:
    return ResNet(RESNET_DEPTHS["resnet18"], num_classes, in_channels, backend)


@register_model("resnet34", input_size=96)
def resnet34(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> ResNet:
    return ResNet(RESNET_DEPTHS["resnet34"], num_classes, in_channels, backend)


@register_model("resnet-cpu", input_size=28)
def resnet_cpu(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> ResNet:
    """ResNet at 28 px for a CPU: the 3x3 stem and pool, three stages of one residual block each
    (32, 64, 128 channels; ResNet-8), global average pooling."""
    return ResNet(RESNET_DEPTHS["resnet-cpu"], num_classes, in_channels, backend, CPU_STAGE_CHANNELS, small_stem=True)
