"""``cnnlab predict RUN IMAGE...``: classify image files with a run's model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .args import _positive_int


def run(args: argparse.Namespace, argv: list[str]) -> int:
    """Classify each image; a file that cannot be read is reported and the others still are (exit 1 if any failed)."""
    import torch

    from ..data import DataFormatError, preprocess, read_image
    from ..train import load_run_model

    model, meta = load_run_model(args.run)
    size = meta["image_size"]
    results, failed = [], 0
    for path in args.images:
        try:
            image = read_image(path, meta["in_channels"], (size, size))
        except (DataFormatError, OSError) as err:
            failed += 1
            results.append({"image": str(path), "error": str(err)})
            continue
        x = preprocess(image[None], meta["mean"], meta["std"], meta["normalize"], None)
        with torch.no_grad():
            probs = torch.softmax(model(x)[0].float(), 0)
        top = probs.topk(min(args.top, len(probs)))
        results.append({"image": str(path), "predictions": [{"class": meta["classes"][i], "index": int(i), "probability": float(p)}
                                                             for p, i in zip(top.values, top.indices)]})
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0]))
    else:
        for r in results:
            if "error" in r:
                print(f"cnnlab: error: {r['error']}", file=sys.stderr)
                continue
            print(r["image"])
            for p in r["predictions"]:
                print(f"  {p['probability']:7.2%}  {p['class']}")
    return 1 if failed else 0


def add_parser(sub) -> None:
    """``cnnlab predict``'s arguments."""
    predict = sub.add_parser("predict", help="classify image files with a run's model")
    predict.add_argument("run", type=Path, help="run folder")
    predict.add_argument("images", nargs="+", type=Path, help="image files (any size and mode)")
    predict.add_argument("--top", type=_positive_int("--top"), default=3, help="classes to show per image (at least 1)")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=run)
