"""``cnnlab viz WHAT RUN``: kernels, feature maps, receptive fields, Grad-CAM, one unit written out, top patches."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import _positive_int, _run_input, _unit


def _viz_patches(args, model, meta, out: Path) -> int:
    """The top test-image patches of every channel of one layer (one batched pass over the test set)."""
    import time

    import torch

    from ..analysis.patches import top_patches
    from ..data import Batches, load_dataset
    from ..viz import inside

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


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from ..train import load_run_model
    from ..viz import inside

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
            from ..analysis.unit import unit_computation, unit_text

            computation = unit_computation(model, x, args.layer, _unit(args.unit), args.channel)
            print(f"{meta['model']} layer {args.layer}, channel {args.channel}, unit {args.unit} ({guess}):")
            print(unit_text(computation))
            return 0
        if args.what == "cam":
            from ..analysis.attribution import explain

            attribution = explain(model, x, args.layer, args.target)
            inside.plot_attribution(picture if picture.shape[-1] == x.shape[-1] else x[0], attribution, out, classes=meta["classes"],
                                    title=f"{meta['model']}: why {meta['classes'][attribution.target]}? ({guess})")
        elif args.what == "features":
            inside.plot_features(picture, maps, out, title=f"{meta['model']}: {guess}")
        else:
            from ..analysis import receptive_field_for_unit

            unit = _unit(args.unit)
            field = receptive_field_for_unit(model, tuple(x.shape[1:]), args.layer, unit)
            (y0, y1), (x0, x1) = field["clipped"]
            inside.plot_receptive(x[0] if picture.shape[-1] != x.shape[-1] else picture, field, out,
                                  title=f"{args.layer} unit {unit}: rows {y0}-{y1}, columns {x0}-{x1}; {guess}")
    print(out)
    return 0


def add_parser(sub) -> None:
    """``cnnlab viz``'s arguments."""
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
        p.set_defaults(func=run)
