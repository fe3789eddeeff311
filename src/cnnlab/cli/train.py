"""``cnnlab train``: the training flags, one per field of ``TrainConfig``, the model list, and torchrun for ``--nproc``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import types
import typing

from .args import _free_port, _json_object, _positive_int


def _field_type(annotation) -> type:
    """The argparse type of a dataclass field annotated ``int``, ``float | None``, ``'str | None'``..."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {}, {})  # noqa: S307 (our own annotations: builtins only)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from ..train.config import CHOICES, PRESETS, TrainConfig

    parser.add_argument("model", nargs="?", default=None, help="a zoo name (default: lenet; see 'cnnlab train --list') or package.module:factory")
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model":
            continue
        kind = _field_type(f.type)
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        preset = any(f.name in p for p in PRESETS.values())
        if "default" in help_text:
            pass
        elif f.default is None:
            help_text += " (default: the model preset)" if preset else ""
        else:
            help_text += f" (default: {f.default}{', or the model preset' if preset else ''})"
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is dict:
            parser.add_argument(flag, type=_json_object(flag), default=None, metavar="JSON", help=help_text)
        else:
            parser.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name), help=help_text)
    parser.add_argument("--resume", metavar="RUN", help="continue a run folder from its last checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace the run already in --out (never done without it)")
    parser.add_argument("--nproc", type=_positive_int("--nproc"), default=1, help="processes on this machine (launches torchrun)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--json", action="store_true", help="one JSON object per epoch and a summary, instead of text")
    parser.add_argument("--list", action="store_true", help="list models with their presets and exit")
    parser.epilog = "presets: " + "; ".join(f"{m}: " + ", ".join(f"{k}={v}" for k, v in p.items()) for m, p in PRESETS.items())


def _launch_torchrun(argv: list[str], nproc: int) -> int:
    """Re-run this command under torchrun with ``nproc`` processes on this machine (loopback)."""
    rest, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        rest.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={nproc}", "--master-addr=127.0.0.1",
               f"--master-port={_free_port()}", "-m", "cnnlab", *rest]
    return subprocess.call(command)


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from ..models import list_models
    from ..train import PRESETS, fit, resolve_config

    if args.list:
        print(models_table(list_models(), PRESETS))
        return 0
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(argv, args.nproc)
    overrides = {k: v for k, v in vars(args).items()
                 if k not in {"model", "resume", "overwrite", "nproc", "quiet", "json", "list", "command", "func"} and v is not None}
    if args.resume:
        if args.overwrite:
            raise ValueError("--resume and --overwrite exclude each other: resuming continues the run in its own folder")
        if args.model is not None:
            overrides["model"] = args.model  # a different model is refused, not ignored
        result = fit(resume=args.resume, quiet=args.quiet, json_lines=args.json, **overrides)
    else:
        config = resolve_config(args.model or "lenet", **overrides)
        result = fit(config, overwrite=args.overwrite, quiet=args.quiet, json_lines=args.json)
    return 130 if result.status == "interrupted" else 0


def models_table(names: list[str], presets: dict) -> str:
    """``cnnlab train --list``: each model's input, size and cost, what its recipe reached here, and the recipe."""
    from importlib import resources

    from ..analysis import summary
    from ..models import create_model, model_info

    measured = json.loads(resources.files("cnnlab.train").joinpath("recipes.json").read_text())
    lines = [f"{'model':14s} {'input':>7s} {'params':>11s} {'mult-adds':>10s}  {'measured (2 CPU threads, scratch)':34s} recipe"]
    for name in names:
        size = model_info(name)["input_size"]
        kwargs = {"ratio": presets[name]["ratio"]} if "ratio" in presets.get(name, {}) else {}
        totals = summary(create_model(name, backend="torch", **kwargs), (1, size, size)).totals
        m = measured.get(name)
        result = f"{m['test_acc']:.3f} in {m['train_s']:.0f} s ({m['epochs']} epochs)" if m else "-"
        recipe = ", ".join(f"{k}={v}" for k, v in presets.get(name, {}).items())
        lines.append(f"{name:14s} {size:>4d} px {totals['params']:>11,} {totals['mult_adds'] / 1e6:>8.1f} M  {result:34s} {recipe}")
    lines.append("On a CPU, train the -cpu models (or fast); the others are the book's, sized for a GPU (224 or 96 px).")
    return "\n".join(lines)


def add_parser(sub) -> None:
    """``cnnlab train``'s arguments."""
    train = sub.add_parser("train", help="train a model on an image data set")
    _add_train_flags(train)
    train.set_defaults(func=run)
