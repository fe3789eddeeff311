"""Whole-model training steps: every zoo model with the scratch backend against the torch backend.

One training step = forward, cross-entropy, backward, SGD step, channels-last, on a fixed random
batch. The two backends share the weights and are timed interleaved (scratch step, torch step,
scratch step, ...) in one process with fixed threads, so the machine's drift hits both alike.
Reports the median step time of each, examples/s and the ratio (scratch / torch; lower is
better, 1.0 = as fast as PyTorch's own kernels).

    python benchmarks/bench_models.py [--runs 7] [--threads 2] [--only lenet,resnet18] [--batch 64] [--default-allocator]
                                      [--inference] [--tensor-routes]

``--tensor-routes`` switches cnnlab's compiled loops (max pooling, batch norm: ``cnnlab.ops.compiled``)
off, so the tensor routes are timed. ``--inference`` times the forward pass alone instead (models in eval mode, under ``torch.no_grad()``,
as evaluation runs them) and writes benchmarks/results/models_inference.md.

The 28-pixel LeNets run at batches 64 and 256; the CPU recipes' models (28 px) at batches 32 and
128; the book's large families at batch 32 and the smallest of 32/64/96 px they take; AlexNet and
VGG, whose classifiers are sized for 224 px, at 224 px and batch 8. Like a training run, it first sets
glibc to keep freed memory for the next step (cnnlab/train/memory.py; --default-allocator leaves
the allocator as it is). Writes benchmarks/results/models.md.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cnnlab.models import create_model, list_models, model_info
from cnnlab.ops.kernels import compiled
from cnnlab.train.memory import keep_freed_memory

SMALL = {"lenet", "bn-lenet", "lenet-modern"}


def cases(only: set[str] | None, batch: int | None) -> list[tuple[str, int, int]]:
    out = []
    for name in list_models():
        if only and name not in only:
            continue
        if name in SMALL:
            out += [(name, 28, b) for b in ([batch] if batch else [64, 256])]
        elif model_info(name)["input_size"] <= 32:  # the CPU recipes' models: batch 32 and their recipes' 128
            out += [(name, model_info(name)["input_size"], b) for b in ([batch] if batch else [32, 128])]
        else:
            size = smallest_input(name)
            out.append((name, size, batch or (32 if size <= 96 else 8)))  # 224 px (a fixed classifier): batch 8
    return out


def smallest_input(name: str) -> int:
    """The smallest of 32, 64, 96 px the model takes (AlexNet's and NiN's 11x11 stride-4 stems need 64)."""
    from cnnlab.train.loop import check_input_fits

    model = create_model(name, backend="torch")
    for size in (32, 64, 96):
        try:
            check_input_fits(model, (1, size, size), 10, name)
            return size
        except ValueError:
            continue
    return 224


def step_fn(model, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    return step


def forward_fn(model, x):
    @torch.no_grad()
    def forward():
        model(x)

    return forward


def measure(name: str, size: int, batch: int, runs: int, warmup: int = 2, inference: bool = False) -> dict:
    torch.manual_seed(0)
    scratch = create_model(name).to(memory_format=torch.channels_last).train(not inference)
    native = create_model(name, backend="torch").to(memory_format=torch.channels_last).train(not inference)
    native.load_state_dict(scratch.state_dict())
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    if inference:
        steps = {"scratch": forward_fn(scratch, x), "torch": forward_fn(native, x)}
    else:
        steps = {"scratch": step_fn(scratch, x, y), "torch": step_fn(native, x, y)}
    times: dict[str, list[float]] = {"scratch": [], "torch": []}
    for i in range(warmup + runs):
        for backend, step in steps.items():  # interleaved
            t = time.perf_counter()
            step()
            if i >= warmup:
                times[backend].append(time.perf_counter() - t)
    s, t = statistics.median(times["scratch"]), statistics.median(times["torch"])
    return {"model": name, "input": size, "batch": batch, "scratch_ms": s * 1e3, "torch_ms": t * 1e3,
            "scratch_ex_s": batch / s, "torch_ex_s": batch / t, "ratio": s / t}


def routes_note(tensor_only: bool) -> str:
    """Which routes convolution, max pooling and batch norm took: their compiled loops or their tensor forms."""
    if tensor_only:
        return "convolution, max pooling and batch norm on their tensor routes (--tensor-routes)"
    names = ("direct_conv", "max_pool", "batch_norm")
    built = all(compiled.library(name) is not None for name in names)
    return ("convolution (where conv._planar_loops or conv._direct_loops take it), max pooling and batch norm as compiled loops" if built
            else "tensor routes (" + "; ".join(compiled.status(name) for name in names) + ")")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--out", default=None, help="default: benchmarks/results/models.md (models_inference.md with --inference)")
    parser.add_argument("--inference", action="store_true", help="time the forward pass alone (eval mode, no grad)")
    parser.add_argument("--tensor-routes", action="store_true",
                        help="switch cnnlab's compiled loops off (cnnlab.ops.compiled.disabled()): every op on its tensor route")
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's allocator as it is (training runs keep freed memory: cnnlab/train/memory.py)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = False if args.default_allocator else keep_freed_memory()  # as cnnlab.fit does before training
    routes = compiled.disabled() if args.tensor_routes else contextlib.nullcontext()
    rows = []
    for name, size, batch in cases(set(args.only.split(",")) if args.only else None, args.batch):
        with routes:
            row = measure(name, size, batch, args.runs, inference=args.inference)
        rows.append(row)
        print(f"{name:14s} {size:3d} px  batch {batch:4d}  scratch {row['scratch_ms']:8.1f} ms  torch {row['torch_ms']:8.1f} ms  "
              f"ratio {row['ratio']:.2f}x", flush=True)
    geo = statistics.geometric_mean([r["ratio"] for r in rows])
    what = "forward passes in eval mode under torch.no_grad() (as evaluation runs them)" if args.inference else "steps"
    title = "Whole-model inference (evaluation forward pass)" if args.inference else "Whole-model training steps"
    lines = [f"# {title}: scratch backend vs torch backend", "",
             f"Machine: {compiled.machine()}.", "",
             f"Channels-last, "
             f"median of {args.runs} interleaved {what} after 2 warm-ups, one process, "
             f"{'freed memory kept for reuse as training runs do (train/memory.py)' if kept else 'glibc allocator defaults'}, "
             f"{routes_note(args.tensor_routes)}. "
             "Ratio = scratch / torch (lower is better).", "",
             "| model | input | batch | scratch ms | torch ms | scratch ex/s | torch ex/s | ratio |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['input']} px | {r['batch']} | {r['scratch_ms']:.1f} | {r['torch_ms']:.1f} | {r['scratch_ex_s']:,.0f} | "
              f"{r['torch_ex_s']:,.0f} | {r['ratio']:.2f}x |" for r in rows]
    lines += ["", f"Geometric mean of the ratios: {geo:.2f}x."]
    out = Path(args.out or Path(__file__).parent / "results" / ("models_inference.md" if args.inference else "models.md"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"geometric mean {geo:.2f}x on {compiled.machine()}; wrote {out}")


if __name__ == "__main__":
    main()
