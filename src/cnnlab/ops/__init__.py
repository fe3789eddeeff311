"""cnnlab.ops: the chapter's operations from scratch, each with a hand-derived backward pass.

Pure functions on tensors. Signatures, defaults and results equal
``torch.nn.functional``'s where the name matches; nothing here calls torch's own
convolution, pooling, normalisation, unfold or fold. Max pooling and batch norm run as small
C loops of their own where a C compiler is at hand (``kernels/compiled.py``), their tensor forms otherwise.

In layers, each importing only those below it (import-linter checks this, see pyproject.toml):

    conv.py, pool.py, norm.py   the public functions, their checks, and the dispatch to a route
    routing.py                  which route a call takes, every threshold with its measurements
    kernels/                    the fast routes: compiled loops (csrc/ and their ctypes wrappers), the DFT,
                                the window matrix, per-tap and pointwise products, tensor pooling and batch norm
    textbook/                   the definitions: shapes, windows, the reference forms the double backward and
                                torch.func use, layouts, reused memory
"""

import sys

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
from .kernels import compiled
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
from .textbook.shapes import conv_output_size
from .textbook.windows import sliding_windows

# ``cnnlab.ops.compiled`` (status(), disabled(), use_variant(), machine()) is the loops' builder in kernels/,
# importable under its public name as well
sys.modules[f"{__name__}.compiled"] = compiled

__all__ = [
    "compiled",
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
