"""VGG as in D2L 8.2: blocks of 3x3 convolutions then a 2x2 max pool; architectures as data.

``ratio`` divides every block's channels (the book trains VGG-11 with ratio 4 on Fashion-MNIST);
the fully connected layers stay 4096 wide, as in the book.
"""

from __future__ import annotations

from torch import nn

from .. import nn as cnn
from .alexnet import dense_head
from .registry import register_model

__all__ = ["VGG", "VGG_ARCHS"]

# (number of convolutions, output channels) per block
VGG_ARCHS = {
    "vgg11": ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)),
    "vgg16": ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)),
    "vgg-cpu": ((1, 16), (1, 32), (2, 64)),  # 28 px: 16x14x14 -> 32x7x7 -> 64x3x3
}


def vgg_block(num_convs: int, in_channels: int, out_channels: int, backend: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(num_convs):
        layers += [cnn.Conv2d(in_channels if i == 0 else out_channels, out_channels, kernel_size=3, padding=1, backend=backend), nn.ReLU()]
    layers.append(cnn.MaxPool2d(kernel_size=2, stride=2, backend=backend))
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, arch, num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", ratio: int = 1,
                 dropout: float = 0.5, input_size: int = 224, width: int = 4096):
        super().__init__()
        if isinstance(ratio, bool) or not isinstance(ratio, int) or ratio < 1:
            raise ValueError(f"ratio must be a positive int, got {ratio!r}")
        blocks, channels = [], in_channels
        for num_convs, out in arch:
            blocks.append(vgg_block(num_convs, channels, out // ratio, backend))
            channels = out // ratio
        self.features = nn.Sequential(*blocks)
        side = input_size >> len(arch)  # each block halves the side (floor)
        self.classifier = dense_head(channels * side * side, num_classes, dropout, width)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("vgg11", input_size=224)
def vgg11(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> VGG:
    return VGG(VGG_ARCHS["vgg11"], num_classes, in_channels, backend, **kwargs)


@register_model("vgg16", input_size=224)
def vgg16(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> VGG:
    return VGG(VGG_ARCHS["vgg16"], num_classes, in_channels, backend, **kwargs)


@register_model("vgg-cpu", input_size=28)
def vgg_cpu(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch", **kwargs) -> VGG:
    """VGG at 28 px for a CPU: three VGG blocks (3x3 convolutions, ReLU, 2x2 max pool; no batch
    norm, as in the book) and a 256-wide dense head with dropout."""
    return VGG(VGG_ARCHS["vgg-cpu"], num_classes, in_channels, backend, input_size=28, width=256, **kwargs)
