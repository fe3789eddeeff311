"""The ``cnnlab`` command line: ``cnnlab <command> ...`` and ``python -m cnnlab <command> ...``.

    train      train a model (default: the book's LeNet on Fashion-MNIST for 10 epochs)
    evaluate   test accuracy, per-class accuracy and confusion matrix of a run
    predict    classify image files with a run's model
    data       where each data set was found, or fetch one
    summary    per-layer shapes, parameters, multiply-adds and receptive fields of any model
    viz        kernels, feature maps and receptive fields as pictures
    tour       the chapter's worked examples, computed by cnnlab.ops and checked
    explore    a local web page to look inside a trained model

The training flags are derived from :class:`cnnlab.train.TrainConfig`, one per field.
Heavy imports (torch, matplotlib) happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import subprocess
import sys
import types
import typing
from pathlib import Path

__all__ = ["main"]


def _field_type(annotation) -> type:
    """The argparse type of a dataclass field annotated ``int``, ``float | None``, ``'str | None'``..."""
    if isinstance(annotation, str):
        annotation = eval(annotation, {}, {})  # noqa: S307 (our own annotations: builtins only)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _add_train_flags(parser: argparse.ArgumentParser) -> None:
    from .train.config import CHOICES, PRESETS, TrainConfig

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


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a whole number >= 1, got {text!r}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} must be >= 1, got {value}")
        return value

    return parse


def _json_object(flag: str):
    def parse(text: str) -> dict:
        from .models.factory import parse_model_args

        try:
            return parse_model_args(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).replace("--model-args", flag)) from None

    return parse


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--port must be a number in 0..65535, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"--port must be in 0..65535 (0: any free port), got {value}")
    return value


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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


def cmd_train(args: argparse.Namespace, argv: list[str]) -> int:
    from .models import list_models
    from .train import PRESETS, fit, resolve_config

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

    from .analysis import summary
    from .models import create_model, model_info

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


def cmd_evaluate(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from .data import Batches, load_dataset
    from .train import load_run_model, predict_probabilities
    from .viz import confusion_matrix

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


def cmd_predict(args: argparse.Namespace, argv: list[str]) -> int:
    """Classify each image; a file that cannot be read is reported and the others still are (exit 1 if any failed)."""
    import torch

    from .data import DataFormatError, preprocess, read_image
    from .train import load_run_model

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


def cmd_data(args: argparse.Namespace, argv: list[str]) -> int:
    from .data import SPECS, download, locate, search_dirs

    names = [args.name] if args.name else list(SPECS)
    for name in names:
        if name not in SPECS:
            raise ValueError(f"unknown data set {name!r}; choose one of: {', '.join(SPECS)}")
        spec = SPECS[name]
        found = locate(spec, args.data_dir)
        if found is None and args.fetch:
            found = download(spec, progress=True)
        print(f"{name:14s} " + (f"found: {found}" if found else "not found; looked in: " + ", ".join(map(str, search_dirs(name, args.data_dir)))))
    return 0


def _load_any_model(spec: str, model_args: str | None = None):
    """A zoo name, a run folder, or ``package.module:factory`` (a function or class making an nn.Module)."""
    from .models import create_model, list_models, model_info
    from .models.factory import is_factory_spec, load_factory, parse_model_args

    kwargs = parse_model_args(model_args)
    if Path(spec).is_dir():
        from .train import load_run_model

        model, meta = load_run_model(spec)
        return model, (meta["in_channels"], meta["image_size"], meta["image_size"])
    if is_factory_spec(spec):
        return load_factory(spec, kwargs), None
    if spec not in list_models():
        raise ValueError(f"{spec!r} is not a model name ({', '.join(list_models())}), a run folder or package.module:factory")
    size = model_info(spec)["input_size"]
    return create_model(spec, backend="torch", **kwargs), (1, size, size)


def cmd_summary(args: argparse.Namespace, argv: list[str]) -> int:
    from .analysis import RENDERERS, summary

    model, default_input = _load_any_model(args.model, args.model_args)
    input_size = args.input or default_input
    if input_size is None:
        raise ValueError("--input is required for a module.path:factory model, e.g. --input 3x32x32")
    print(RENDERERS[args.format](summary(model, input_size, depth=args.depth)))
    return 0


def _run_input(meta: dict, image: Path | None, test_index: int | None, data_dir=None):
    """The picture to look at, as stored (C, H, W) uint8, and the model's input (1, C, S, S)."""
    from .data import load_dataset, preprocess, read_image

    size = meta["image_size"]
    if image is not None:
        picture = read_image(image, meta["in_channels"], (size, size))
    else:
        data = load_dataset(meta["dataset"], data_dir, fetch=False)
        if not 0 <= test_index < len(data.test_labels):
            raise ValueError(f"--test-index must be in 0..{len(data.test_labels) - 1}, got {test_index}")
        picture = data.test_images[test_index]
    x = preprocess(picture[None], meta["mean"], meta["std"], meta["normalize"], size)
    return picture, x


def _unit(text: str) -> tuple[int, int]:
    parts = text.split(",")
    try:
        row, col = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"--unit must be row,column (two whole numbers, e.g. 3,4), got {text!r}") from None
    return row, col


def _viz_patches(args, model, meta, out: Path) -> int:
    """The top test-image patches of every channel of one layer (one batched pass over the test set)."""
    import time

    import torch

    from .analysis.patches import top_patches
    from .data import Batches, load_dataset
    from .viz import inside

    data = load_dataset(meta["dataset"], args.data_dir, fetch=False, image_size=meta["image_size"])
    batches = Batches(data.test_images, data.test_labels, 512, mean=meta["mean"], std=meta["std"], normalize=meta["normalize"],
                      image_size=meta["image_size"])
    started = time.perf_counter()
    result = top_patches(model, batches.epoch(0), args.layer, k=args.k)
    seconds = time.perf_counter() - started
    channels = [int(c) for c in args.channels.split(",")] if args.channels else list(result)[:16]
    bad = [c for c in channels if c not in result]
    if bad:
        raise ValueError(f"--channels: layer {args.layer!r} has channels 0..{len(result) - 1}, got {bad[0]}")
    pictures = data.test_images
    if pictures.shape[-1] != meta["image_size"]:
        pictures = torch.nn.functional.interpolate(pictures.float(), size=(meta["image_size"],) * 2, mode="bilinear").round().to(torch.uint8)
    inside.plot_top_patches(pictures, result, out, channels=channels,
                            title=f"{meta['model']} layer {args.layer}: top {args.k} test patches per channel "
                                  f"({len(data.test_labels):,} images, {seconds:.1f} s)")
    print(f"{out} ({len(data.test_labels):,} test images in {seconds:.1f} s)")
    return 0


def cmd_viz(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from .train import load_run_model
    from .viz import inside

    model, meta = load_run_model(args.run)
    out = Path(args.out or Path(args.run) / f"{args.what}.png")
    if args.what == "patches":
        return _viz_patches(args, model, meta, out)
    if args.what == "kernels":
        layer = args.layer or inside.conv_layers(model)[0]
        modules = dict(model.named_modules())
        if layer not in modules or not isinstance(modules[layer], torch.nn.Conv2d):
            raise ValueError(f"--layer must name a convolution; choose one of: {', '.join(inside.conv_layers(model))}")
        inside.plot_kernels(modules[layer].weight, out, title=f"{meta['model']} {layer} kernels")
    else:
        if (args.image is None) == (args.test_index is None):
            raise ValueError("give exactly one of --image PATH or --test-index K")
        picture, x = _run_input(meta, args.image, args.test_index, args.data_dir)
        layers = args.layers.split(",") if getattr(args, "layers", None) else inside.window_layers(model)
        if args.what in ("receptive", "cam", "unit"):
            layers = [args.layer] if args.layer else []
        logits, maps = inside.activations(model, x, layers)
        probs = torch.softmax(logits.float(), 0)
        guess = f"predicted {meta['classes'][int(probs.argmax())]} ({float(probs.max()):.1%})"
        if args.what == "unit":
            from .analysis.unit import unit_computation, unit_text

            computation = unit_computation(model, x, args.layer, _unit(args.unit), args.channel)
            print(f"{meta['model']} layer {args.layer}, channel {args.channel}, unit {args.unit} ({guess}):")
            print(unit_text(computation))
            return 0
        if args.what == "cam":
            from .analysis.attribution import explain

            attribution = explain(model, x, args.layer, args.target)
            inside.plot_attribution(picture if picture.shape[-1] == x.shape[-1] else x[0], attribution, out, classes=meta["classes"],
                                    title=f"{meta['model']}: why {meta['classes'][attribution.target]}? ({guess})")
        elif args.what == "features":
            inside.plot_features(picture, maps, out, title=f"{meta['model']}: {guess}")
        else:
            from .analysis import receptive_field_for_unit

            unit = _unit(args.unit)
            field = receptive_field_for_unit(model, tuple(x.shape[1:]), args.layer, unit)
            (y0, y1), (x0, x1) = field["clipped"]
            inside.plot_receptive(x[0] if picture.shape[-1] != x.shape[-1] else picture, field, out,
                                  title=f"{args.layer} unit {unit}: rows {y0}-{y1}, columns {x0}-{x1}; {guess}")
    print(out)
    return 0


def cmd_tour(args: argparse.Namespace, argv: list[str]) -> int:
    from .tour import STEPS, run_tour

    if args.list:
        for step in STEPS:
            print(f"{step.name:15s} {step.title}")
        return 0
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a file; give a folder for the figures")
    return 0 if run_tour(args.names or None, args.out) else 1


def cmd_explore(args: argparse.Namespace, argv: list[str]) -> int:
    from .explorer import serve

    serve(args.run, host=args.host, port=args.port, data_dir=args.data_dir)
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, answering a usage error in one line (the full usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="cnnlab", description="Convolutional neural networks from first principles.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model on an image data set")
    _add_train_flags(train)
    train.set_defaults(func=cmd_train)

    evaluate = sub.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix of a run")
    evaluate.add_argument("run", type=Path, help="run folder")
    evaluate.add_argument("--data-dir", default=None, help="look here first for the data set")
    evaluate.add_argument("--tta", choices=("none", "flip"), default="none",
                          help="test-time augmentation: flip averages the class probabilities of each image and its mirror image "
                               "(default: none, the accuracy training reports)")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(func=cmd_evaluate)

    predict = sub.add_parser("predict", help="classify image files with a run's model")
    predict.add_argument("run", type=Path, help="run folder")
    predict.add_argument("images", nargs="+", type=Path, help="image files (any size and mode)")
    predict.add_argument("--top", type=_positive_int("--top"), default=3, help="classes to show per image (at least 1)")
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(func=cmd_predict)

    summ = sub.add_parser("summary", help="per-layer shapes, parameters, multiply-adds and receptive fields")
    summ.add_argument("model", help="model name, run folder, or package.module:factory")
    summ.add_argument("--input", default=None, help="input size CxHxW, e.g. 1x28x28 (default: the model's)")
    summ.add_argument("--depth", type=int, default=None, help="show modules at this nesting depth instead of every leaf")
    summ.add_argument("--format", choices=("table", "csv", "json", "markdown"), default="table")
    summ.add_argument("--model-args", default=None, metavar="JSON", help="keyword arguments for a zoo model or a package.module:factory")
    summ.set_defaults(func=cmd_summary)

    viz = sub.add_parser("viz", help="pictures of a run's model: kernels, feature maps, receptive fields")
    what = viz.add_subparsers(dest="what", required=True)
    for name, text in (("kernels", "a convolution layer's kernels as a grid"),
                       ("features", "the feature maps of every conv and pooling layer for one image"),
                       ("receptive", "the receptive field of one unit drawn on the input"),
                       ("cam", "why the model decided: Grad-CAM at a convolution or pooling layer and the input saliency"),
                       ("unit", "how one value of a convolution or pooling layer is computed, written out"),
                       ("patches", "what each channel responds to: its top test-image patches")):
        p = what.add_parser(name, help=text)
        p.add_argument("run", type=Path)
        p.add_argument("--out", default=None, help="PNG to write (default: RUN/<what>.png)")
        p.add_argument("--data-dir", default=None)
        if name == "kernels":
            p.add_argument("--layer", default=None, help="convolution layer name (default: the first)")
        elif name == "patches":
            p.add_argument("--layer", required=True, help="a convolution or pooling layer")
            p.add_argument("--k", type=_positive_int("--k"), default=9, help="images per channel (default 9)")
            p.add_argument("--channels", default=None, help="comma-separated channels to draw (default: the first 16)")
        else:
            p.add_argument("--image", type=Path, default=None, help="an image file")
            p.add_argument("--test-index", type=int, default=None, help="a test image of the run's data set")
        if name == "features":
            p.add_argument("--layers", default=None, help="comma-separated layer names (default: every conv and pooling layer)")
        if name == "receptive":
            p.add_argument("--layer", required=True)
            p.add_argument("--unit", required=True, help="row,column of the unit in that layer's output")
        if name == "unit":
            p.add_argument("--layer", required=True, help="a convolution or pooling layer")
            p.add_argument("--unit", required=True, help="row,column of the unit in that layer's output")
            p.add_argument("--channel", type=int, default=0, help="output channel (default 0)")
        if name == "cam":
            p.add_argument("--layer", default=None, help="convolution or pooling layer (default: the last with a spatial map)")
            p.add_argument("--target", type=int, default=None, help="class index to explain (default: the predicted class)")
        p.set_defaults(func=cmd_viz)

    tour = sub.add_parser("tour", help="the chapter's worked examples, computed and checked")
    tour.add_argument("names", nargs="*", help="steps to run (default: all)")
    tour.add_argument("--list", action="store_true")
    tour.add_argument("--out", default=None, help="folder for the figures")
    tour.set_defaults(func=cmd_tour)

    explore = sub.add_parser("explore", help="a local web page to look inside a trained model")
    explore.add_argument("run", type=Path)
    explore.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    explore.add_argument("--port", type=_port, default=8765, help="port to listen on, 0 for any free one (default: 8765)")
    explore.add_argument("--data-dir", default=None)
    explore.set_defaults(func=cmd_explore)

    data = sub.add_parser("data", help="where each data set was found, or fetch one")
    data.add_argument("name", nargs="?", default=None)
    data.add_argument("--fetch", action="store_true", help="download it into the user cache if not found")
    data.add_argument("--data-dir", default=None)
    data.set_defaults(func=cmd_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return args.func(args, argv)
    except KeyboardInterrupt:
        print("cnnlab: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as err:  # the user's input: a usage error
        print(f"cnnlab: error: {err}", file=sys.stderr)
        return 2
    except (OSError, RuntimeError) as err:  # files, the network, training itself
        print(f"cnnlab: error: {_os_message(err) if type(err) in _OS_TYPES else err}", file=sys.stderr)
        return 1


_OS_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError, OSError)


def _os_message(err: OSError) -> str:
    """'could not open PATH: Permission denied' rather than '[Errno 13] Permission denied: PATH'."""
    if err.filename is None:
        return str(err)
    return f"{err.filename}: {err.strerror or err}"


if __name__ == "__main__":
    sys.exit(main())
