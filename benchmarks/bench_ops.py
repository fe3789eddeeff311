"""Scratch ops against torch's own kernels, side by side in one run.

For each layer shape of LeNet, AlexNet, VGG and ResNet (batch 64-256), and the layers and whole
blocks (Inception, dense) of the CPU recipes' models in the channels-last layout training uses
("CL", batch 128): the median time of
the forward pass and of forward + backward, for cnnlab.ops and torch.nn.functional, and
their ratio (scratch / torch; lower is better, 1.0 = as fast as torch). The first layer of
a network needs no input gradient, so those rows ask for none, as training does.

    python benchmarks/bench_ops.py [--runs 5] [--threads 2] [--only conv] [--tensor-routes] [--default-allocator]

Ours and torch's calls are interleaved in rotating order, and freed memory is kept for reuse as training
runs keep it (``--default-allocator`` leaves glibc's defaults: then a large layer's time depends on
which allocations came before it, and one side's can move the other's by 2x). ``--tensor-routes``
switches the compiled loops off (their tensor routes).

Writes the table to benchmarks/results/ops.md.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_models import routes_note

from cnnlab import ops
from cnnlab.ops.kernels import compiled
from cnnlab.train.memory import keep_freed_memory


def _input(shape, requires_grad=True, channels_last=False):
    x = torch.randn(shape)
    if channels_last:  # the layout cnnlab train uses
        x = x.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(requires_grad)


def conv(cin, cout, k, hw, n, stride=1, padding=0, input_grad=True, cl=False):
    x = _input((n, cin, hw, hw), input_grad, cl)
    w = (torch.randn(cout, cin, k, k) / (cin * k * k) ** 0.5).requires_grad_()
    b = torch.zeros(cout, requires_grad=True)
    return (x, w, b), {"stride": stride, "padding": padding}, ops.conv2d, F.conv2d


def pool(kind, c, hw, n, k, stride, padding=0, cl=False):
    x = _input((n, c, hw, hw), True, cl)
    ours, theirs = (ops.max_pool2d, F.max_pool2d) if kind == "max" else (ops.avg_pool2d, F.avg_pool2d)
    return (x,), {"kernel_size": k, "stride": stride, "padding": padding}, ours, theirs


def adaptive(c, hw, n, out):
    x = torch.randn(n, c, hw, hw, requires_grad=True)
    return (x,), {"output_size": out}, ops.adaptive_avg_pool2d, F.adaptive_avg_pool2d


def bn(shape, cl=False):
    x = _input(shape, True, cl)
    c = shape[1]
    w, b = torch.ones(c, requires_grad=True), torch.zeros(c, requires_grad=True)
    rm, rv = torch.zeros(c), torch.ones(c)
    return (x, rm, rv, w, b), {"training": True}, ops.batch_norm, F.batch_norm


def block(model: str, index: int, n: int = 128):
    """``model.features[index]`` whole (an Inception block's four branches and their concatenation, a
    dense block's layers and concatenations), scratch backend against torch backend with the same
    weights, on the input it gets in the model, channels-last, in training mode."""
    from cnnlab.models import create_model

    torch.manual_seed(0)
    ours = create_model(model).to(memory_format=torch.channels_last).train()
    theirs = create_model(model, backend="torch").to(memory_format=torch.channels_last).train()
    theirs.load_state_dict(ours.state_dict())
    seen = {}
    hook = ours.features[index].register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0].detach().clone()))
    with torch.no_grad():
        ours(torch.randn(n, 1, 28, 28).contiguous(memory_format=torch.channels_last))
    hook.remove()
    return (seen["x"].requires_grad_(),), {}, ours.features[index], theirs.features[index]


CASES = [
    ("LeNet conv1 1->6 5x5 p2 28x28 (first layer)", "conv", lambda: conv(1, 6, 5, 28, 256, padding=2, input_grad=False)),
    ("LeNet avgpool 2x2 s2 6x28x28", "pool", lambda: pool("avg", 6, 28, 256, 2, 2)),
    ("LeNet conv2 6->16 5x5 14x14", "conv", lambda: conv(6, 16, 5, 14, 256)),
    ("LeNet avgpool 2x2 s2 16x10x10", "pool", lambda: pool("avg", 16, 10, 256, 2, 2)),
    ("LeNet maxpool 2x2 s2 6x28x28", "pool", lambda: pool("max", 6, 28, 256, 2, 2)),
    ("AlexNet conv1 1->96 11x11 s4 224 (first layer)", "conv", lambda: conv(1, 96, 11, 224, 64, stride=4, padding=1, input_grad=False)),
    ("AlexNet maxpool 3x3 s2 96x54x54", "pool", lambda: pool("max", 96, 54, 64, 3, 2)),
    ("AlexNet conv2 96->256 5x5 p2 26x26", "conv", lambda: conv(96, 256, 5, 26, 64, padding=2)),
    ("AlexNet conv3 256->384 3x3 p1 12x12", "conv", lambda: conv(256, 384, 3, 12, 64, padding=1)),
    ("VGG-11/4 conv 32->64 3x3 p1 56x56", "conv", lambda: conv(32, 64, 3, 56, 64, padding=1)),
    ("VGG maxpool 2x2 s2 64x56x56", "pool", lambda: pool("max", 64, 56, 64, 2, 2)),
    ("ResNet stem maxpool 3x3 s2 p1 64x48x48", "pool", lambda: pool("max", 64, 48, 64, 3, 2, 1)),
    ("ResNet conv 64->64 3x3 p1 24x24", "conv", lambda: conv(64, 64, 3, 24, 64, padding=1)),
    ("ResNet conv 128->128 3x3 p1 12x12", "conv", lambda: conv(128, 128, 3, 12, 64, padding=1)),
    ("ResNet conv 256->256 3x3 p1 6x6", "conv", lambda: conv(256, 256, 3, 6, 64, padding=1)),
    ("ResNet shortcut 1x1 s2 64->128 24x24", "conv", lambda: conv(64, 128, 1, 24, 64, stride=2)),
    ("ResNet global avgpool 512x3x3", "pool", lambda: adaptive(512, 3, 64, 1)),
    ("NiN adaptive avgpool 10x5x5 -> 1", "pool", lambda: adaptive(10, 5, 128, 1)),
    ("BatchNorm2d 64x24x24", "norm", lambda: bn((64, 64, 24, 24))),
    ("BatchNorm1d 120 (BN-LeNet)", "norm", lambda: bn((256, 120))),
    # the layers the CPU recipes' whole-model profiles show matter: channels-last, batch 128 (their recipes')
    ("CL lenet-modern conv2 32->64 5x5 14x14", "conv", lambda: conv(32, 64, 5, 14, 128, cl=True)),
    ("CL fast conv 16->32 3x3 p1 14x14", "conv", lambda: conv(16, 32, 3, 14, 128, padding=1, cl=True)),
    ("CL alexnet-cpu conv2 16->32 5x5 p2 14x14", "conv", lambda: conv(16, 32, 5, 14, 128, padding=2, cl=True)),
    ("CL densenet-cpu growth conv 68->12 3x3 p1 14x14", "conv", lambda: conv(68, 12, 3, 14, 128, padding=1, cl=True)),
    ("CL googlenet-cpu 1x1 conv 88->32 7x7", "conv", lambda: conv(88, 32, 1, 7, 128, cl=True)),
    ("CL googlenet-cpu 5x5 branch 8->16 p2 14x14", "conv", lambda: conv(8, 16, 5, 14, 128, padding=2, cl=True)),
    ("CL nin-cpu 1x1 conv 24->24 28x28", "conv", lambda: conv(24, 24, 1, 28, 128, cl=True)),
    ("CL resnet-cpu conv 64->64 3x3 p1 7x7", "conv", lambda: conv(64, 64, 3, 7, 128, padding=1, cl=True)),
    ("CL maxpool 2x2 s2 16x28x28", "pool", lambda: pool("max", 16, 28, 128, 2, 2, cl=True)),
    ("CL maxpool 3x3 s2 p1 32x28x28", "pool", lambda: pool("max", 32, 28, 128, 3, 2, 1, cl=True)),
    ("CL BatchNorm2d 32x14x14", "norm", lambda: bn((128, 32, 14, 14), cl=True)),
    ("CL small batch: ResNet conv 64->64 3x3 p1 24x24, batch 8", "conv", lambda: conv(64, 64, 3, 24, 8, padding=1, cl=True)),
    # whole blocks: branches or layers, batch norms, ReLUs and the concatenations between them
    ("CL googlenet-cpu Inception block 24->56 14x14 (4 branches, concatenated)", "block", lambda: block("googlenet-cpu", 4)),
    ("CL googlenet-cpu Inception block 88->112 7x7", "block", lambda: block("googlenet-cpu", 7)),
    ("CL densenet-cpu dense block 32->80 14x14 (4 layers, concatenated)", "block", lambda: block("densenet-cpu", 1)),
    ("CL small batch: googlenet-cpu Inception block 24->56 14x14, batch 32", "block", lambda: block("googlenet-cpu", 4, 32)),
]


def measure(make, runs: int, warmup: int = 3) -> list[float]:
    """Forward and forward + backward, ours and torch's, each timed ``runs`` times after ``warmup`` calls,
    the four interleaved in rotating order (so that the machine's drift and the allocator's state fall on
    both sides alike); medians in ms and the ratios."""
    inputs, kwargs, ours, theirs = make()

    def forward(op):
        with torch.no_grad():
            op(*inputs, **kwargs)

    def forward_backward(op):
        out = op(*inputs, **kwargs)
        out.backward(torch.ones_like(out))
        for t in inputs:
            t.grad = None

    steps = [lambda: forward(ours), lambda: forward(theirs), lambda: forward_backward(ours), lambda: forward_backward(theirs)]
    times: list[list[float]] = [[] for _ in steps]
    for i in range(warmup + runs):  # the allocator and page faults settle over the first calls
        for k in range(len(steps)):
            j = (i + k) % len(steps)
            start = time.perf_counter()
            steps[j]()
            if i >= warmup:
                times[j].append(time.perf_counter() - start)
    of, tf, ob, tb = (1000 * statistics.median(t) for t in times)
    return [of, tf, of / tf, ob, tb, ob / tb]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per measurement (median reported)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both sides")
    parser.add_argument("--only", default="", help="run only cases whose kind or name contains this")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "ops.md"))
    parser.add_argument("--tensor-routes", action="store_true",
                        help="switch cnnlab's compiled loops off (cnnlab.ops.compiled.disabled()): every op on its tensor route")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's allocator as it is (training runs keep freed memory: cnnlab/train/memory.py)")
    args = parser.parse_args()
    kept = False if args.default_allocator else keep_freed_memory()  # as cnnlab.fit does before training
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    routes = compiled.disabled() if args.tensor_routes else contextlib.nullcontext()
    routes.__enter__()  # for the whole run
    header = "| layer (batch 256 for LeNet, 128 for CL, 64 otherwise) | fwd scratch ms | fwd torch ms | fwd ratio | fwd+bwd scratch ms | fwd+bwd torch ms | fwd+bwd ratio |"
    lines = [header, "|" + " --- |" * 7]
    print(header)
    ratios = []
    for name, kind, make in CASES:
        if args.only and args.only not in kind and args.only not in name:
            continue
        row = measure(make, args.runs)
        ratios.append(row[5])
        line = f"| {name} | {row[0]:.2f} | {row[1]:.2f} | {row[2]:.2f}x | {row[3]:.2f} | {row[4]:.2f} | {row[5]:.2f}x |"
        print(line, flush=True)
        lines.append(line)
    geo = statistics.geometric_mean(ratios) if ratios else float("nan")
    summary = (f"\nGeometric mean of the fwd+bwd ratios: {geo:.2f}x over {len(ratios)} layers. "
               f"Median of {args.runs} runs after three warm-up runs, ours and torch's interleaved, float32, {args.threads} threads, "
               f"{'freed memory kept for reuse as training runs do (train/memory.py)' if kept else 'glibc allocator defaults'}, "
               f"{routes_note(args.tensor_routes)}.\n\nMachine: {compiled.machine()}.")
    print(summary)
    if not args.only:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("# Scratch ops vs torch (time ratio, lower is better)\n\n" + "\n".join(lines) + "\n" + summary + "\n")


if __name__ == "__main__":
    main()
