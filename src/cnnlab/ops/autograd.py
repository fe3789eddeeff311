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

__all__ = ["graph_backward", "wants_graph"]


def wants_graph() -> bool:
    """True inside a backward pass that must itself be differentiable (``create_graph=True``)."""
    return torch.is_grad_enabled()


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
        result[i] = torch.zeros_like(inputs[i]) if g is None else g
    return tuple(result)
