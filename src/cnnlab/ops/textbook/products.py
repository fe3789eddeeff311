"""The matrix product under every convolution: ``a @ b.T``, with the fastest engine torch ships.

Every convolution path ends in products of a window (or gradient) matrix with a kernel matrix.
torch runs ``torch.mm`` on CPUs through its BLAS (Intel MKL in the official builds). torch also
ships oneDNN, whose matrix product (reached as ``torch.ops.mkldnn._linear_pointwise``: a fully
connected layer, ``a @ b.T + bias``) runs the narrow, tall products of convolutions much faster
on some CPUs. Measured on this project's 2-core AMD EPYC machine, float32, 2 threads, median of 7:

    (M, K) @ (K, N)                      torch.mm   oneDNN
    25600 x 800  @ 800 x 64  (LeNet 5x5)    23.2 ms   13.4 ms
    25088 x 612  @ 612 x 12  (DenseNet)     10.8 ms    3.5 ms
    25088 x 288  @ 288 x 64                  6.9 ms    5.2 ms
    2048 x 2048 @ 2048 x 2048             160 GFLOP/s  209 GFLOP/s

oneDNN's product costs about 17 us more per call, though, which small products feel (same machine,
oneDNN / torch.addmm, median of 5 x 41 calls, float32): 8 x 56 @ 56 x 24 3.3, 392 x 88 @ 88 x 32 1.5,
1568 x 56 @ 56 x 24 (2.1 million multiply-adds) 1.14; 6272 x 56 @ 56 x 24 (8.4 million) 0.94, 1568 x
288 @ 288 x 32 0.81, 6272 x 288 @ 288 x 32 0.70. A batch of 32 on 7x7 maps makes many of the first kind.

So :func:`mm_nt` uses oneDNN's product for float32 CPU tensors where it exists and the product has
at least ONEDNN_MIN_MACS multiply-adds, and torch.mm everywhere else (float64, half precision, other devices, builds without oneDNN, and inside
``torch.compile``, whose compiler picks the product itself). This is a
matrix product, nothing more: no convolution, pooling or normalisation kernel is reached.
"""

from __future__ import annotations

import torch

__all__ = ["mm_nt"]


def _onednn_linear():
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None
    return op if torch.backends.mkldnn.is_available() else None


_LINEAR = _onednn_linear()
ONEDNN_MIN_MACS = 3_000_000  # smaller products go to torch.mm (see above)


def mm_nt(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``a @ b.T (+ bias)``: a (M, K), b (N, K), bias (N,) -> (M, N), a new contiguous tensor.

    Any strides are accepted. Only for values: no autograd graph is recorded through the
    oneDNN path, so call it where gradients are not needed (inside an autograd.Function).
    """
    if (_LINEAR is not None and a.dtype == torch.float32 and b.dtype == torch.float32 and a.device.type == "cpu"
            and not torch.compiler.is_compiling()  # under torch.compile the compiler chooses its own product
            and a.shape[0] * a.shape[1] * b.shape[0] >= ONEDNN_MIN_MACS and (bias is None or bias.dtype == torch.float32)):
        return _LINEAR(a, b, bias, "none", [], "")
    if bias is None:
        return a @ b.T
    return torch.addmm(bias, a, b.T)
