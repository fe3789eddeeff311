"""The operator contract as one table, in the spirit of PyTorch's OpInfo: ops x properties.

Each op is a sample (small float64 tensors, arguments chosen to exercise stride, padding,
dilation, groups, ceil_mode, ...); each property is a check comparing cnnlab's op with torch's.
A new op or property is one line. ``tests/ops/test_parity.py`` runs every cell;
``python tests/ops/parity.py`` prints the table (the README shows it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import grad, hessian, jvp, vmap

from cnnlab import ops

TOL = 1e-10  # float64 relative error, the project's standard for values and every derivative


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item() if b.numel() else 0.0
    return (a - b).abs().max().item() / (scale or 1.0) if b.numel() else 0.0


@dataclass
class Sample:
    name: str
    ours: Callable
    theirs: Callable
    shapes: tuple  # shapes of the inputs; the first is the data (N, C, *S)
    channels_last: bool = True  # 4-D/5-D data: a memory format exists

    def inputs(self, seed: int = 0, dtype=torch.float64) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)
        ts = [torch.randn(s, generator=gen, dtype=torch.float64) for s in self.shapes]
        if self.name.startswith("batch_norm"):
            ts[1] = ts[1].abs() + 0.5  # a positive scale
        return [t.to(dtype) for t in ts]


RM, RV = torch.randn(4, dtype=torch.float64), torch.rand(4, dtype=torch.float64) + 0.5

SAMPLES = [
    Sample("conv1d", lambda x, w, b: ops.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2),
           lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2), ((2, 4, 9), (6, 2, 3), (6,)), False),
    Sample("conv2d", lambda x, w, b: ops.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2),
           lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2), ((2, 4, 7, 6), (4, 2, 3, 2), (4,))),
    Sample("conv2d, 16 channels", lambda x, w: ops.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1),
           ((1, 16, 6, 6), (3, 16, 3, 3))),
    Sample("conv3d", lambda x, w, b: ops.conv3d(x, w, b, padding=1), lambda x, w, b: F.conv3d(x, w, b, padding=1),
           ((1, 2, 4, 4, 3), (3, 2, 2, 2, 2), (3,))),
    Sample("max_pool1d", lambda x: ops.max_pool1d(x, 3, 2, 1, ceil_mode=True), lambda x: F.max_pool1d(x, 3, 2, 1, ceil_mode=True),
           ((2, 3, 9),), False),
    Sample("max_pool2d", lambda x: ops.max_pool2d(x, (3, 2), 2, 1, dilation=(1, 2)),
           lambda x: F.max_pool2d(x, (3, 2), 2, 1, dilation=(1, 2)), ((2, 3, 7, 8),)),
    Sample("max_pool3d", lambda x: ops.max_pool3d(x, 2, ceil_mode=True), lambda x: F.max_pool3d(x, 2, ceil_mode=True), ((1, 2, 5, 4, 5),)),
    Sample("avg_pool1d", lambda x: ops.avg_pool1d(x, 3, 2, 1, count_include_pad=False),
           lambda x: F.avg_pool1d(x, 3, 2, 1, count_include_pad=False), ((2, 3, 9),), False),
    Sample("avg_pool2d", lambda x: ops.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=4),
           lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, divisor_override=4), ((2, 3, 7, 6),)),
    Sample("avg_pool3d", lambda x: ops.avg_pool3d(x, 2, 1, 1, count_include_pad=False),
           lambda x: F.avg_pool3d(x, 2, 1, 1, count_include_pad=False), ((1, 2, 4, 4, 3),)),
    Sample("adaptive_avg_pool2d", lambda x: ops.adaptive_avg_pool2d(x, (3, 2)), lambda x: F.adaptive_avg_pool2d(x, (3, 2)),
           ((2, 3, 7, 5),)),
    Sample("batch_norm (training)", lambda x, w, b: ops.batch_norm(x, None, None, w, b, training=True),
           lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True), ((3, 4, 3, 3), (4,), (4,))),
    Sample("batch_norm (eval)", lambda x, w, b: ops.batch_norm(x, RM.to(x.dtype), RV.to(x.dtype), w, b),
           lambda x, w, b: F.batch_norm(x, RM.to(x.dtype), RV.to(x.dtype), w, b), ((3, 4, 3, 3), (4,), (4,))),
]


def _grads(fn, inputs, seed=1):
    ts = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*ts)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return out, torch.autograd.grad(out, ts, g)


def forward(s: Sample) -> bool:
    xs = s.inputs()
    return rel(s.ours(*xs), s.theirs(*xs)) < TOL


def gradients(s: Sample) -> bool:
    xs = s.inputs()
    (_, ga), (_, gb) = _grads(s.ours, xs), _grads(s.theirs, xs)
    return all(rel(a, b) < TOL for a, b in zip(ga, gb))


def gradcheck(s: Sample) -> bool:
    return torch.autograd.gradcheck(s.ours, [t.requires_grad_() for t in s.inputs()], fast_mode=True)


def gradgradcheck(s: Sample) -> bool:
    return torch.autograd.gradgradcheck(s.ours, [t.requires_grad_() for t in s.inputs()], fast_mode=True)


def _square_sum(fn):
    return lambda *xs: fn(*xs).pow(2).sum()


def hessian_(s: Sample) -> bool:
    xs = s.inputs()
    if xs[0].numel() > 300:
        xs[0] = xs[0][:1]
    return rel(hessian(_square_sum(s.ours))(*xs), hessian(_square_sum(s.theirs))(*xs)) < TOL


def jvp_(s: Sample) -> bool:
    xs, ts = s.inputs(0), s.inputs(1)
    return rel(jvp(s.ours, tuple(xs), tuple(ts))[1], jvp(s.theirs, tuple(xs), tuple(ts))[1]) < TOL


def vmap_(s: Sample) -> bool:
    xs = s.inputs()
    stacked = torch.stack([xs[0], xs[0].flip(0)])  # a new leading axis to map over
    dims = (0, *([None] * (len(xs) - 1)))
    return rel(vmap(s.ours, in_dims=dims)(stacked, *xs[1:]), vmap(s.theirs, in_dims=dims)(stacked, *xs[1:])) < TOL


def per_sample_grads(s: Sample) -> bool:
    xs = s.inputs()
    arg = 1 if len(xs) > 1 else 0  # the weight, or the data

    def loss(fn):
        return lambda x, *rest: fn(x.unsqueeze(0), *rest).pow(2).sum()

    dims = (0, *([None] * (len(xs) - 1)))
    ours = vmap(grad(loss(s.ours), argnums=arg), in_dims=dims)(*xs)
    theirs = vmap(grad(loss(s.theirs), argnums=arg), in_dims=dims)(*xs)
    return rel(ours, theirs) < TOL


def _low_precision(s: Sample, dtype) -> bool:
    xs = s.inputs()
    truth = s.theirs(*xs)
    low = [t.to(dtype) for t in xs]
    ours = s.ours(*low)
    try:
        theirs_error = rel(s.theirs(*low), truth)
    except NotImplementedError:  # torch has no CPU kernel for this dtype: a few roundings of the output is the bar
        theirs_error = 2 * torch.finfo(dtype).eps
    return ours.dtype == dtype and rel(ours, truth) <= 2 * theirs_error + 4 * torch.finfo(dtype).eps


def float16(s: Sample) -> bool:
    return _low_precision(s, torch.float16)


def bfloat16(s: Sample) -> bool:
    return _low_precision(s, torch.bfloat16)


def autocast(s: Sample) -> bool:
    xs = [t.float() for t in s.inputs()]
    truth = s.theirs(*[t.double() for t in xs])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours, theirs = s.ours(*xs), s.theirs(*xs)
    return ours.dtype == theirs.dtype and rel(ours, truth) <= 2 * rel(theirs, truth) + 0.02


def empty_batch(s: Sample) -> bool:
    xs = s.inputs()
    xs[0] = xs[0][:0]
    (oa, ga), (ob, gb) = _grads(s.ours, xs), _grads(s.theirs, xs)
    return oa.shape == ob.shape and all(a.shape == b.shape and rel(a, b) == 0 for a, b in zip(ga, gb))


def non_contiguous(s: Sample) -> bool:
    xs = s.inputs()
    wide = torch.cat([xs[0], xs[0]], -1)[..., ::2]  # the same values, every other element of a wider tensor
    xs[0] = wide
    (oa, ga), (ob, gb) = _grads(s.ours, xs), _grads(s.theirs, xs)
    return rel(oa, ob) < TOL and all(rel(a, b) < TOL for a, b in zip(ga, gb))


def channels_last(s: Sample) -> bool | None:
    if not s.channels_last:
        return None  # no memory format for 3-D tensors
    xs = s.inputs()
    fmt = torch.channels_last if xs[0].dim() == 4 else torch.channels_last_3d
    xs[0] = xs[0].contiguous(memory_format=fmt)
    (oa, ga), (ob, gb) = _grads(s.ours, xs), _grads(s.theirs, xs)
    same_format = oa.is_contiguous(memory_format=fmt) == ob.is_contiguous(memory_format=fmt)
    return same_format and rel(oa, ob) < TOL and all(rel(a, b) < TOL for a, b in zip(ga, gb))


def inference_mode(s: Sample) -> bool:
    xs = s.inputs()
    with torch.inference_mode():
        return rel(s.ours(*xs), s.theirs(*xs)) < TOL


def torch_compile(s: Sample) -> bool:
    torch._dynamo.reset()
    compiled = torch.compile(s.ours, backend="aot_eager", fullgraph=False)
    xs = s.inputs()
    (oa, ga), (ob, gb) = _grads(compiled, xs), _grads(s.theirs, xs)
    return rel(oa, ob) < TOL and all(rel(a, b) < TOL for a, b in zip(ga, gb))


PROPERTIES: dict[str, Callable[[Sample], bool | None]] = {
    "forward": forward, "gradients": gradients, "gradcheck": gradcheck, "gradgradcheck": gradgradcheck, "Hessian": hessian_,
    "jvp": jvp_, "vmap": vmap_, "per-sample grads": per_sample_grads, "float16": float16, "bfloat16": bfloat16,
    "autocast": autocast, "empty batch": empty_batch, "non-contiguous": non_contiguous, "channels-last": channels_last,
    "inference mode": inference_mode, "torch.compile": torch_compile,
}


def table() -> str:
    """The op x property table as markdown: pass, FAIL (or n/a where a property does not apply)."""
    import warnings

    lines = ["| op | " + " | ".join(PROPERTIES) + " |", "| --- |" + " :-: |" * len(PROPERTIES)]
    passed = total = 0
    for s in SAMPLES:
        cells = []
        for check in PROPERTIES.values():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    ok = check(s)
                except Exception as err:  # a failure to run is a failure
                    ok = False
                    print(f"{s.name} / {check.__name__}: {type(err).__name__}: {err}")
            if ok is None:
                cells.append("n/a")
                continue
            total += 1
            passed += bool(ok)
            cells.append("pass" if ok else "FAIL")
        lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{passed} of {total} checks pass."


if __name__ == "__main__":
    print(table())
