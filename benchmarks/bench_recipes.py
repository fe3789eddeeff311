"""Train every CPU recipe on the full data set and tabulate what it reached, in how long.

Each recipe runs as its own ``cnnlab train NAME`` process (its preset, scratch backend, fixed
threads, seed 0) into ``benchmarks/runs/NAME``; then ``cnnlab evaluate --tta flip`` scores it
once more with flip averaging. From each run's own metrics.csv this writes:

    benchmarks/results/recipes.md      model, params, MFLOPs per image, examples/s, epochs,
                                        training seconds, test accuracy (and with flips), backend
    benchmarks/results/recipes.json    the same rows, machine-readable
    src/cnnlab/train/recipes.json      the measured accuracy and time that ``cnnlab train --list`` shows
    docs/images/recipes.png            test accuracy against training seconds, one line per recipe

Training seconds are the wall time of the training loop (every step, batch preparation and
augmentation included; the per-epoch test evaluation excluded), as the runs record it.

    python benchmarks/bench_recipes.py [--only fast,resnet-cpu] [--threads 2] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["fast", "alexnet-cpu", "vgg-cpu", "nin-cpu", "googlenet-cpu", "resnet-cpu", "densenet-cpu"]


def cnnlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cnnlab", *args], check=True, capture_output=True, text=True)


def train(name: str, runs: Path, threads: int, data_dir: str | None) -> dict:
    folder = runs / name
    extra = ["--data-dir", data_dir] if data_dir else []
    load = os.getloadavg()[0]
    started = time.perf_counter()
    cnnlab("train", name, "--threads", str(threads), "--out", str(folder), "--overwrite", "--quiet", *extra)
    wall = time.perf_counter() - started
    with open(folder / "metrics.csv") as f:
        history = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    config = json.loads((folder / "config.json").read_text())
    flip = json.loads(cnnlab("evaluate", str(folder), "--tta", "flip", "--json", *extra).stdout)
    elapsed = list(itertools.accumulate(row["epoch_s"] for row in history))  # training seconds at the end of each epoch
    examples = sum(row["examples_per_s"] * row["epoch_s"] for row in history)
    return {"model": name, **size_of(name), "epochs": len(history), "train_s": elapsed[-1], "examples_per_s": examples / elapsed[-1],
            "test_acc": history[-1]["test_acc"], "test_acc_flip": flip["test_acc"], "backend": config["backend"],
            "batch_size": config["batch_size"], "seed": config["seed"], "load_before": load, "wall_s": wall,
            "curve": [(t, row["test_acc"]) for t, row in zip(elapsed, history)], "machine": machine()}


def machine() -> str:
    from cnnlab.ops import compiled

    return compiled.machine()


# rows measured before the results recorded their machine: the 2-core AMD EPYC (Zen 5, AVX-512) of that time,
# on the code before the per-variant loops
EARLIER = "AMD EPYC Zen 5 (2 cores; AVX-512), earlier code: the rows measured before results named their machine"


def size_of(name: str) -> dict:
    from cnnlab.analysis import summary
    from cnnlab.models import create_model

    totals = summary(create_model(name), (1, 28, 28)).totals
    return {"params": totals["params"], "mflops": 2 * totals["mult_adds"] / 1e6}  # one multiply-add = 2 FLOPs


def table(rows: list[dict], threads: int) -> str:
    machines = list(dict.fromkeys(r.get("machine", EARLIER) for r in rows))  # each row says where it ran: A, B, ...
    mark = {m: chr(ord("A") + i) for i, m in enumerate(machines)}
    lines = ["# CPU recipes: accuracy and training time on Fashion-MNIST", "",
             f"Full training (60,000) and test (10,000) sets; `cnnlab train NAME` with its preset, seed 0, {threads} threads. Training "
             "seconds: the wall time of the training loop (steps, batch preparation, augmentation; not the per-epoch test evaluation). "
             "One run each; load average before each run noted. Machines:", "",
             *(f"- {mark[m]}: {m}" for m in machines), "",
             "| model | params | MFLOPs / image | examples/s | epochs | training s | test acc | with flip (`--tta flip`) | backend | load | machine |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['params']:,} | {r['mflops']:.1f} | {r['examples_per_s']:,.0f} | {r['epochs']} | {r['train_s']:.0f} | "
              f"{r['test_acc']:.4f} | {r['test_acc_flip']:.4f} | {r['backend']} | {r['load_before']:.1f} | {mark[r.get('machine', EARLIER)]} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from cnnlab.files import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for r in rows:
        seconds, acc = zip(*r["curve"])
        ax.plot(seconds, acc, marker="o", markersize=3, label=f"{r['model']} ({r['test_acc']:.3f})")
    ax.axhline(0.91, color="0.6", linestyle="--", linewidth=0.8)
    for seconds, text in ((60, "1 minute"), (600, "10 minutes")):
        ax.axvline(seconds, color="0.6", linestyle=":", linewidth=0.8)
        ax.text(seconds * 0.97, 0.938, text, rotation=90, ha="right", va="top", fontsize=7, color="0.4")
    ax.set(xlabel="training seconds (2 CPU threads, scratch backend)", ylabel="test accuracy", xscale="log",
           title="Fashion-MNIST: CPU recipes, test accuracy after each epoch")
    ticks = [15, 30, 60, 100, 200, 300, 600]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_ylim(0.80, 0.94)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=None, help="comma-separated recipe names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--runs", default=str(ROOT / "benchmarks" / "runs"), help="where the run folders go")
    args = parser.parse_args()
    results = ROOT / "benchmarks" / "results" / "recipes.json"
    previous = {r["model"]: r for r in json.loads(results.read_text())} if results.exists() else {}
    for name in args.only.split(",") if args.only else RECIPES:
        row = train(name, Path(args.runs), args.threads, args.data_dir)
        previous[name] = row
        print(f"{name:14s} {row['epochs']:3d} epochs  {row['train_s']:6.0f} s  {row['examples_per_s']:6.0f} ex/s  "
              f"test acc {row['test_acc']:.4f}  with flip {row['test_acc_flip']:.4f}  (load before {row['load_before']:.1f})", flush=True)
    rows = [previous[n] for n in RECIPES if n in previous]
    results.write_text(json.dumps(rows, indent=1) + "\n")
    (ROOT / "benchmarks" / "results" / "recipes.md").write_text(table(rows, args.threads))
    listed = {r["model"]: {k: r[k] for k in ("test_acc", "test_acc_flip", "train_s", "epochs")} for r in rows}
    (ROOT / "src" / "cnnlab" / "train" / "recipes.json").write_text(json.dumps(listed, indent=1) + "\n")
    figure(rows, ROOT / "docs" / "images" / "recipes.png")
    print("wrote benchmarks/results/recipes.md, recipes.json, src/cnnlab/train/recipes.json and docs/images/recipes.png")


if __name__ == "__main__":
    main()
