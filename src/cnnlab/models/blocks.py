"""Small building blocks shared by the CPU-sized variants of the families.

``conv_bn_relu`` is the modern convolution unit (convolution without bias, batch norm, ReLU;
Ioffe & Szegedy 2015, D2L 8.5): with batch norm the small networks train in a few epochs at
a large learning rate, which is what makes the CPU recipes fit in minutes.
"""

from __future__ import annotations

from torch import nn

from .. import nn as cnn

__all__ = ["conv_bn_relu", "conv_relu"]


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None,
                 backend: str = "scratch") -> list[nn.Module]:
    """[Conv2d (no bias: batch norm's shift replaces it), BatchNorm2d, ReLU]; 'same' padding by default."""
    padding = kernel_size // 2 if padding is None else padding
    return [cnn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False, backend=backend),
            cnn.BatchNorm2d(out_channels, backend=backend), nn.ReLU(inplace=True)]


def conv_relu(in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int | None = None,
              backend: str = "scratch") -> list[nn.Module]:
    """[Conv2d, ReLU], the unit of the networks before batch norm (AlexNet, VGG); 'same' padding by default."""
    padding = kernel_size // 2 if padding is None else padding
    return [cnn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, backend=backend), nn.ReLU(inplace=True)]
