"""cnnlab.nn: ``torch.nn`` layers whose forward runs cnnlab's own operations.

Pick ``backend="scratch"`` (default) or ``backend="torch"`` per layer; ``state_dict``
keys are torch's, so weights move freely between backends and to plain PyTorch.
"""

from .layers import (
    BACKENDS,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    AvgPool3d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    Conv3d,
    MaxPool1d,
    MaxPool2d,
    MaxPool3d,
    check_backend,
)

__all__ = [
    "BACKENDS",
    "AdaptiveAvgPool2d",
    "AvgPool1d",
    "AvgPool2d",
    "AvgPool3d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv1d",
    "Conv2d",
    "Conv3d",
    "MaxPool1d",
    "MaxPool2d",
    "MaxPool3d",
    "check_backend",
]
