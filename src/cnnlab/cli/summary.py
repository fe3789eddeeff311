"""``cnnlab summary MODEL``: per-layer shapes, parameters, multiply-adds and receptive fields of any model."""

from __future__ import annotations

import argparse

from .args import _load_any_model


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from ..analysis import RENDERERS, summary

    model, default_input = _load_any_model(args.model, args.model_args)
    input_size = args.input or default_input
    if input_size is None:
        raise ValueError("--input is required for a module.path:factory model, e.g. --input 3x32x32")
    print(RENDERERS[args.format](summary(model, input_size, depth=args.depth)))
    return 0


def add_parser(sub) -> None:
    """``cnnlab summary``'s arguments."""
    summ = sub.add_parser("summary", help="per-layer shapes, parameters, multiply-adds and receptive fields")
    summ.add_argument("model", help="model name, run folder, or package.module:factory")
    summ.add_argument("--input", default=None, help="input size CxHxW, e.g. 1x28x28 (default: the model's)")
    summ.add_argument("--depth", type=int, default=None, help="show modules at this nesting depth instead of every leaf")
    summ.add_argument("--format", choices=("table", "csv", "json", "markdown"), default="table")
    summ.add_argument("--model-args", default=None, metavar="JSON", help="keyword arguments for a zoo model or a package.module:factory")
    summ.set_defaults(func=run)
