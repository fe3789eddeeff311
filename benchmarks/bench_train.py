"""Training throughput of the book's LeNet on Fashion-MNIST, four ways, side by side in one run.

    cnnlab (torch backend)   cnnlab.train.fit with --backend torch
    cnnlab (scratch backend) cnnlab.train.fit with cnnlab's own operations
    plain PyTorch loop       an idiomatic loop over the same in-memory float tensors (randperm + index)
    book-style loop          D2L's: a Dataset converting one sample at a time to a tensor, DataLoader
                             with 4 workers, accuracy accumulated per step

Same model (sigmoid LeNet, Xavier init), batch 256, SGD lr 0.9, same thread count. Each is
timed over whole epochs of training steps (no evaluation); the median of the per-epoch
examples/s over ``--epochs`` epochs after one warm-up epoch is reported, with ratios.

    python benchmarks/bench_train.py [--epochs 3] [--threads 2]

Writes benchmarks/results/train.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch import nn

from cnnlab.ops.kernels import compiled


def plain_lenet() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(1, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(kernel_size=2, stride=2),
        nn.Flatten(), nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, 10))
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
    return model


def plain_loop(data, epochs: int) -> list[float]:
    torch.manual_seed(0)
    x_all = data.train_images.float() / 255  # the idiomatic choice: convert once, keep floats
    y_all = data.train_labels
    model, loss_fn = plain_lenet(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.9)
    rates = []
    for _ in range(epochs + 1):
        start, seen = time.perf_counter(), 0
        order = torch.randperm(len(y_all))
        for i in range(0, len(order), 256):
            idx = order[i : i + 256]
            x, y = x_all[idx], y_all[idx]
            loss = loss_fn(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
        rates.append(seen / (time.perf_counter() - start))
    return rates[1:]


class _BookDataset(torch.utils.data.Dataset):
    """One sample at a time, converted to a float tensor in [0, 1] (torchvision's ToTensor on a PIL image)."""

    def __init__(self, images, labels):
        self.images, self.labels = images.numpy(), labels.numpy()

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        import numpy as np
        from PIL import Image

        image = Image.fromarray(self.images[i, 0])
        x = torch.from_numpy(np.array(image, dtype="float32")).div(255).unsqueeze(0)
        return x, int(self.labels[i])


def book_loop(data, epochs: int) -> list[float]:
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(_BookDataset(data.train_images, data.train_labels), batch_size=256,
                                         shuffle=True, num_workers=4, persistent_workers=True)
    model, loss_fn = plain_lenet(), nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.9)
    rates = []
    for _ in range(epochs + 1):
        start, seen, correct = time.perf_counter(), 0, 0.0
        for x, y in loader:
            y_hat = model(x)
            loss = loss_fn(y_hat, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            correct += float((y_hat.argmax(1) == y).sum())  # the book's Accumulator, every step
            seen += len(y)
        rates.append(seen / (time.perf_counter() - start))
    return rates[1:]


def cnnlab_fit(backend: str, epochs: int, out: Path) -> list[float]:
    from cnnlab.train import fit, resolve_config

    config = resolve_config("lenet", epochs=epochs + 1, backend=backend, out=str(out / backend))
    return [row["examples_per_s"] for row in fit(config, quiet=True).history[1:]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per loop (after one warm-up epoch)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from cnnlab.data import load_dataset

    data = load_dataset("fashion-mnist")
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "cnnlab train --backend torch": cnnlab_fit("torch", args.epochs, Path(tmp)),
            "cnnlab train --backend scratch": cnnlab_fit("scratch", args.epochs, Path(tmp)),
            "plain PyTorch loop (in-memory tensors)": plain_loop(data, args.epochs),
            "book-style loop (DataLoader, per-sample ToTensor, 4 workers)": book_loop(data, args.epochs),
        }
    medians = {k: statistics.median(v) for k, v in results.items()}
    plain, book = medians["plain PyTorch loop (in-memory tensors)"], medians["book-style loop (DataLoader, per-sample ToTensor, 4 workers)"]
    lines = ["| loop | examples/s (median) | per epoch | vs plain loop | vs book-style loop |", "| --- | --- | --- | --- | --- |"]
    for name, rate in medians.items():
        per_epoch = ", ".join(f"{r:,.0f}" for r in results[name])
        lines.append(f"| {name} | {rate:,.0f} | {per_epoch} | {rate / plain:.2f}x | {rate / book:.2f}x |")
    note = (f"\nLeNet (sigmoid, avg pool), Fashion-MNIST 60,000 training images, batch 256, SGD lr 0.9, "
            f"{args.threads} threads, torch {torch.__version__}; median over {args.epochs} epochs after one warm-up epoch, "
            f"training steps only (no evaluation).\n\nMachine: {compiled.machine()}.")
    print("\n".join(lines) + "\n" + note)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("# Training throughput: cnnlab vs plain PyTorch loops\n\n" + "\n".join(lines) + "\n" + note + "\n")


if __name__ == "__main__":
    main()
