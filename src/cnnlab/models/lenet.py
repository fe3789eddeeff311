"""LeNet-5 as in D2L 7.6, its batch-normalised variant (D2L 8.5) and a modern LeNet.

    lenet         conv5(6, pad 2)-sigmoid-avgpool2 -> conv5(16)-sigmoid-avgpool2 -> 120 -> 84 -> 10
                  (Xavier-uniform weights, as the book initialises it for training)
    bn-lenet      the same with batch norm after every conv and linear layer, before the sigmoid
    lenet-modern  LeNet's layout, wider (32, 64), ReLU, max pooling, batch norm, dropout
    fast          the speed run: three 3x3 conv-BN-ReLU-maxpool blocks (16, 32, 64) and one linear
                  layer, 29k parameters, 2 M multiply-adds; 0.91 on Fashion-MNIST in under a minute on 2 CPU cores
"""

from __future__ import annotations

from torch import nn

from .. import nn as cnn
from .blocks import conv_bn_relu
from .registry import register_model

__all__ = ["LeNet"]


class LeNet(nn.Sequential):
    """A sequential LeNet; ``features`` then ``classifier`` layers in one flat list (D2L's layout)."""


def _xavier(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
    return model


@register_model("lenet", input_size=28)
def lenet(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> LeNet:
    return _xavier(LeNet(
        cnn.Conv2d(in_channels, 6, kernel_size=5, padding=2, backend=backend), nn.Sigmoid(),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend),
        cnn.Conv2d(6, 16, kernel_size=5, backend=backend), nn.Sigmoid(),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120), nn.Sigmoid(),
        nn.Linear(120, 84), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    ))


@register_model("bn-lenet", input_size=28)
def bn_lenet(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> LeNet:
    return LeNet(
        cnn.Conv2d(in_channels, 6, kernel_size=5, backend=backend), cnn.BatchNorm2d(6, backend=backend), nn.Sigmoid(),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend),
        cnn.Conv2d(6, 16, kernel_size=5, backend=backend), cnn.BatchNorm2d(16, backend=backend), nn.Sigmoid(),
        cnn.AvgPool2d(kernel_size=2, stride=2, backend=backend),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 120), cnn.BatchNorm1d(120, backend=backend), nn.Sigmoid(),
        nn.Linear(120, 84), cnn.BatchNorm1d(84, backend=backend), nn.Sigmoid(),
        nn.Linear(84, num_classes),
    )


@register_model("lenet-modern", input_size=28)
def lenet_modern(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> LeNet:
    def block(cin: int, cout: int, padding: int) -> list[nn.Module]:
        return [cnn.Conv2d(cin, cout, kernel_size=5, padding=padding, bias=False, backend=backend),
                cnn.BatchNorm2d(cout, backend=backend), nn.ReLU(inplace=True),
                cnn.MaxPool2d(kernel_size=2, stride=2, backend=backend)]

    return LeNet(
        *block(in_channels, 32, padding=2),  # 32 x 14 x 14
        *block(32, 64, padding=0),  # 64 x 5 x 5
        nn.Flatten(),
        nn.Linear(64 * 5 * 5, 256, bias=False), cnn.BatchNorm1d(256, backend=backend), nn.ReLU(inplace=True),
        nn.Dropout(0.3),
        nn.Linear(256, num_classes),
    )


@register_model("fast", input_size=28)
def fast(num_classes: int = 10, in_channels: int = 1, backend: str = "scratch") -> LeNet:
    def block(cin: int, cout: int) -> list[nn.Module]:
        return [*conv_bn_relu(cin, cout, 3, backend=backend), cnn.MaxPool2d(kernel_size=2, stride=2, backend=backend)]

    return LeNet(
        *block(in_channels, 16),  # 16 x 14 x 14
        *block(16, 32),  # 32 x 7 x 7
        *block(32, 64),  # 64 x 3 x 3
        nn.Flatten(),
        nn.Linear(64 * 3 * 3, num_classes),
    )
