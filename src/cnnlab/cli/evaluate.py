"""``cnnlab evaluate RUN``: test accuracy, per-class accuracy and the confusion matrix of a run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from ..data import Batches, load_dataset
    from ..train import load_run_model, predict_probabilities
    from ..viz import confusion_matrix

    model, meta = load_run_model(args.run)
    data = load_dataset(meta["dataset"], args.data_dir, image_size=meta["image_size"])
    batches = Batches(data.test_images, data.test_labels, 1024, mean=meta["mean"], std=meta["std"], normalize=meta["normalize"],
                      image_size=meta["image_size"])
    predicted = torch.cat([predict_probabilities(model, x, args.tta).argmax(1) for x, _, _ in batches.epoch(0)])
    labels = data.test_labels
    matrix = confusion_matrix(labels, predicted, len(meta["classes"]))
    per_class = [int(d) / max(int(n), 1) for d, n in zip(matrix.diag(), matrix.sum(1))]
    correct = int((predicted == labels).sum())
    accuracy = correct / len(labels)
    if args.json:
        print(json.dumps({"run": str(args.run), "test_acc": accuracy, "count": len(labels), "tta": args.tta,
                          "per_class": dict(zip(meta["classes"], per_class)), "confusion": matrix.tolist()}))
        return 0
    tta = " with flip averaging" if args.tta == "flip" else ""
    print(f"{args.run}: {meta['model']} on {data.name}: test accuracy{tta} {accuracy:.4f} ({correct}/{len(labels)})")
    width = max(len(c) for c in meta["classes"])
    print("\nper-class accuracy")
    for name, acc in zip(meta["classes"], per_class):
        print(f"  {name:<{width}}  {acc:.3f}")
    print("\nconfusion matrix (rows: true, columns: predicted)")
    print(" " * (width + 2) + " ".join(f"{i:>5}" for i in range(len(meta["classes"]))))
    for i, name in enumerate(meta["classes"]):
        print(f"  {name:<{width}}" + " ".join(f"{int(v):>5}" for v in matrix[i]))
    return 0


def add_parser(sub) -> None:
    """``cnnlab evaluate``'s arguments."""
    evaluate = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a run")
    evaluate.add_argument("run", type=Path, help="run folder")
    evaluate.add_argument("--data-dir", default=None, help="look here first for the data set")
    evaluate.add_argument("--tta", choices=("none", "flip"), default="none",
                          help="test-time augmentation: flip averages the class probabilities of each image and its mirror image "
                               "(default: none, the accuracy training reports)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=run)
