"""The second half of every op's autograd contract: a backward that is itself differentiable.

Each op's ``autograd.Function`` has two backward passes:

    no graph asked for (every training step)   the fast hand-derived backward in the op's file
    a graph asked for (``create_graph=True``:  :func:`graph_backward`: the op's *reference* form,
    gradient penalties, Hessians, torch.func)  written with plain differentiable tensor operations
                                                (pad, strided window view, products, gather, sums),
                                                is differentiated by autograd with ``create_graph``

so the gradient of the gradient is exact (autograd's own chain rule through plain operations),
to any order, and the fast path pays nothing for it. The reference forms are the textbook
definitions (a window times a kernel, summed; the window's maximum at the first winner; the
window's mean; the normalised value), never torch's convolution, pooling or batch-norm kernels.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch._C._functorch import is_functorch_wrapped_tensor
from torch.autograd.forward_ad import unpack_dual

__all__ = ["anchored", "graph_backward", "unviewed", "wants_graph"]


def wants_graph() -> bool:
    """True inside a backward pass that must itself be differentiable (``create_graph=True``)."""
    return torch.is_grad_enabled()


def unviewed(t: torch.Tensor) -> torch.Tensor:
    """``t`` itself (same memory, sizes and strides) but not marked as a view of another tensor.

    An ``autograd.Function`` that returns a view of a tensor it made (a ``movedim`` to the
    public layout, a slice of a larger buffer) gets an output autograd refuses to change in
    place, so ``nn.ReLU(inplace=True)`` after the layer would fail. Use only where nothing saved
    for the backward pass shares the memory: an in-place change is then harmless.
    """
    if not t._is_view():
        return t
    return t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def graph_backward(reference: Callable[..., torch.Tensor], inputs: Sequence[torch.Tensor | None], needs: Sequence[bool],
                   grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """Gradients of ``reference(*inputs)`` against ``grad_out`` for the inputs in ``needs``, as a graph.

    Returns one entry per input: a tensor where ``needs`` is true (zeros if the output does not
    depend on it), ``None`` elsewhere.
    """
    wanted = [i for i, (t, need) in enumerate(zip(inputs, needs)) if need and t is not None]
    with torch.enable_grad():
        out = reference(*inputs)
        grads = torch.autograd.grad(out, [inputs[i] for i in wanted], grad_out, create_graph=True, allow_unused=True)
    result: list[torch.Tensor | None] = [None] * len(inputs)
    for i, g in zip(wanted, grads):
        result[i] = anchored(torch.zeros_like(inputs[i]) if g is None else g, inputs)
    return tuple(result)


def anchored(grad: torch.Tensor, inputs: Sequence[torch.Tensor | None]) -> torch.Tensor:
    """``grad`` plus an exact zero that depends on every input that requires grad, so that a gradient which
    does not depend on an input (a pool's: linear in the incoming gradient alone) stays in the graph as
    torch's does: it requires grad, and its derivative with respect to that input is zeros rather than an
    error. The zero is the sum of an empty slice (``narrow``: a view, no copy), so no value of the input
    enters it and an infinity there gives no NaN."""
    zeros = [t.narrow(0, 0, 0).sum() for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad and t.dim() > 0]
    return grad + sum(zeros) if zeros else grad


def transformed(*tensors) -> bool:
    """True when a torch.func transform (vmap, grad, jvp, jacrev, ...) or forward-mode AD is at work on
    these tensors. The ops then run their reference forms, whose every step torch.func and forward-mode
    AD already know (batching rules, tangents), so jvp, vmap, per-sample gradients and Hessians equal
    torch's; the hand-written fast paths are for ordinary (reverse-mode) training."""
    for t in tensors:
        if isinstance(t, torch.Tensor) and (is_functorch_wrapped_tensor(t) or unpack_dual(t).tangent is not None):
            return True
    return False


def reference_windows(x: torch.Tensor, pads, kernel, stride, dilation, out_size=None, value: float = 0.0) -> torch.Tensor:
    """All windows of ``x`` (N, C, *S) as (N, *S_out, *K, C), built from a padding and index selections
    (out-of-place, differentiable, batchable): the reference forms' window view."""
    import torch.nn.functional as F

    d = len(kernel)
    xl = x.movedim(1, -1)  # (N, *S, C)
    flat_pads = [0, 0]
    for lo, hi in reversed(pads):
        flat_pads += [lo, hi]
    xp = F.pad(xl, flat_pads, value=value)
    for a, (k, s, dl) in enumerate(zip(kernel, stride, dilation)):
        pos = 1 + 2 * a
        o = out_size[a] if out_size is not None else (xp.shape[pos] - dl * (k - 1) - 1) // s + 1
        index = (torch.arange(o, device=x.device)[:, None] * s + torch.arange(k, device=x.device)[None, :] * dl).flatten()
        xp = xp.index_select(pos, index).unflatten(pos, (o, k))
    order = [0, *(1 + 2 * a for a in range(d)), *(2 + 2 * a for a in range(d)), 1 + 2 * d]
    return xp.permute(order)
