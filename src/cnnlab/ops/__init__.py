"""cnnlab.ops: the chapter's operations from scratch, each with a hand-derived backward pass.

Pure functions on tensors. Signatures, defaults and results equal
``torch.nn.functional``'s where the name matches; nothing here calls torch's own
convolution, pooling, normalisation, unfold or fold. Max pooling and batch norm run as small
C loops of their own where a C compiler is at hand (``compiled.py``), their tensor forms otherwise.
"""

from .conv import (
    conv1d,
    conv2d,
    conv3d,
    convolve2d,
    corr2d,
    corr2d_multi_in,
    corr2d_multi_in_out,
    corr2d_multi_in_out_1x1,
)
from .norm import batch_norm
from .pool import (
    adaptive_avg_pool2d,
    avg_pool1d,
    avg_pool2d,
    avg_pool3d,
    max_pool1d,
    max_pool2d,
    max_pool3d,
    pool2d,
)
from .shapes import conv_output_size
from .windows import sliding_windows

__all__ = [
    "adaptive_avg_pool2d",
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "batch_norm",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_output_size",
    "convolve2d",
    "corr2d",
    "corr2d_multi_in",
    "corr2d_multi_in_out",
    "corr2d_multi_in_out_1x1",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "pool2d",
    "sliding_windows",
]
