"""``cnnlab tour``: the chapter's worked examples, computed with cnnlab.ops and checked against the book."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from ..tour import STEPS, run_tour

    if args.list:
        for step in STEPS:
            print(f"{step.name:15s} {step.title}")
        return 0
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder for the figures")
    return 0 if run_tour(args.names or None, args.out) else 1


def add_parser(sub) -> None:
    """``cnnlab tour``'s arguments."""
    tour = sub.add_parser("tour", help="the chapter's worked examples, computed and checked")
    tour.add_argument("names", nargs="*", help="steps to run (default: all)")
    tour.add_argument("--list", action="store_true")
    tour.add_argument("--out", default=None, help="folder for the figures")
    tour.set_defaults(func=run)
