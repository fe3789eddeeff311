"""Where a whole model's scratch / torch gap goes, measured inside the training step.

Per-layer timings (``bench_ops.py``) miss what a layer costs inside a step: its inputs are no longer
in cache, the layers around it have evicted its reused memory, and every call pays its Python and
dispatch cost once per layer. So this script measures the step itself, two ways, in one process with
the variants interleaved (medians of ``--runs`` steps after two warm-ups, fixed threads, channels-last,
freed memory kept as training runs do):

- by op kind: the whole step with one kind of this project's ops (convolutions, max pooling, average
  pooling, batch norm) switched to torch's kernels (``backend="torch"`` on those layers only). What the
  step loses against the scratch step is that kind's share of the gap, in context.
- by phase: forward (with the loss), backward and the SGD step, each timed on its own, for the scratch
  and the torch model.

    python benchmarks/profile_models.py [--runs 9] [--only fast,googlenet-cpu] [--batch 32]

Same models and batches as ``bench_models.py``; the committed results leave out the 224 px AlexNet and VGG
(six such models alive in one process made torch's own VGG-11 step 1.5x slower than alone). Writes
benchmarks/results/profile.md.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from bench_models import cases  # noqa: E402

from cnnlab.models import create_model  # noqa: E402
from cnnlab.train.memory import keep_freed_memory  # noqa: E402

KINDS = {"conv": ("Conv",), "max pool": ("MaxPool",), "avg pool": ("AvgPool",), "batch norm": ("BatchNorm",)}


def variant(name: str, state: dict, kinds: tuple[str, ...] | None) -> torch.nn.Module:
    """The model with the layers whose class name holds one of ``kinds`` on torch's kernels (None: all of them)."""
    model = create_model(name).to(memory_format=torch.channels_last).train()
    model.load_state_dict(state)
    for module in model.modules():
        if hasattr(module, "backend") and (kinds is None or any(k in type(module).__name__ for k in kinds)):
            module.backend = "torch"
    return model


def phased_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    opt = torch.optim.SGD(model.parameters(), lr=1e-6)

    def step() -> tuple[float, float, float]:
        opt.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        return t1 - t0, t2 - t1, time.perf_counter() - t2

    return step


def measure(name: str, size: int, batch: int, runs: int, warmup: int = 2) -> dict:
    torch.manual_seed(0)
    scratch = create_model(name).to(memory_format=torch.channels_last).train()
    state = scratch.state_dict()
    models = {"scratch": scratch, "torch": variant(name, state, None)}
    present = {type(m).__name__ for m in scratch.modules() if hasattr(m, "backend")}
    for kind, names in KINDS.items():
        if any(k in p for k in names for p in present):
            models[kind] = variant(name, state, names)
    x = torch.randn(batch, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    steps = {label: phased_step(m, x, y) for label, m in models.items()}
    times: dict[str, list[tuple[float, float, float]]] = {label: [] for label in steps}
    for i in range(warmup + runs):
        order = list(steps) if i % 2 == 0 else list(reversed(steps))  # interleaved, the order alternating
        for label in order:
            phases = steps[label]()
            if i >= warmup:
                times[label].append(phases)
    step_ms = {label: statistics.median(sum(p) for p in ts) * 1e3 for label, ts in times.items()}
    phase_ms = {label: [statistics.median(p[k] for p in times[label]) * 1e3 for k in range(3)] for label in ("scratch", "torch")}
    return {"model": name, "input": size, "batch": batch, "step": step_ms, "phases": phase_ms}


def table(rows: list[dict], runs: int, threads: int) -> list[str]:
    """The Markdown table of ``measure``'s rows."""
    lines = ["# Where the scratch / torch gap goes, inside the training step", "",
             f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {threads} threads, channels-last, "
             f"median of {runs} interleaved steps after 2 warm-ups, one process, freed memory kept (train/memory.py). "
             "\"Op kind on torch\": how much faster the scratch step gets when only that kind of layer runs on torch's "
             "kernels (its in-context share of the gap). Phases: scratch / torch, ms.", "",
             "| model | input | batch | scratch ms | torch ms | gap ms | conv on torch | max pool on torch | avg pool on torch "
             "| batch norm on torch | forward | backward | SGD step |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        s, t = r["step"]["scratch"], r["step"]["torch"]
        kinds = " | ".join(f"{s - r['step'][k]:+.2f}" if k in r["step"] else "-" for k in KINDS)
        phases = " | ".join(f"{a:.2f} / {b:.2f}" for a, b in zip(r["phases"]["scratch"], r["phases"]["torch"]))
        lines.append(f"| {r['model']} | {r['input']} px | {r['batch']} | {s:.2f} | {t:.2f} | {s - t:+.2f} | {kinds} | {phases} |")
    return lines + ["", "A kind's figures need not add up to the gap: the concatenations, activations and the linear layers run "
                    "on torch's kernels in both models, and the machine's drift between steps is noise of a few percent per row."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="comma-separated model names")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "profile.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    rows = []
    for name, size, batch in cases(set(args.only.split(",")) if args.only else None, args.batch):
        r = measure(name, size, batch, args.runs)
        rows.append(r)
        s, t = r["step"]["scratch"], r["step"]["torch"]
        shares = "  ".join(f"{k} {s - r['step'][k]:+.2f}" for k in KINDS if k in r["step"])
        (sf, sb, so), (tf, tb, to) = r["phases"]["scratch"], r["phases"]["torch"]
        print(f"{name:14s} {size:3d} px  batch {batch:4d}  scratch {s:8.2f}  torch {t:8.2f} ms  gap {s - t:+.2f}  | "
              f"{shares}  | forward {sf:.2f}/{tf:.2f} backward {sb:.2f}/{tb:.2f} step {so:.2f}/{to:.2f}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(table(rows, args.runs, args.threads)) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
