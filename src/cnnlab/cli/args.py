"""What several commands parse: counts, ports, JSON keyword arguments, a model by name, run or factory, an input image."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path


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
        from ..models.factory import parse_model_args

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


def _load_any_model(spec: str, model_args: str | None = None):
    """A zoo name, a run folder, or ``package.module:factory`` (a function or class making an nn.Module)."""
    from ..models import create_model, list_models, model_info
    from ..models.factory import is_factory_spec, load_factory, parse_model_args

    kwargs = parse_model_args(model_args)
    if Path(spec).is_dir():
        from ..train import load_run_model

        model, meta = load_run_model(spec)
        return model, (meta["in_channels"], meta["image_size"], meta["image_size"])
    if is_factory_spec(spec):
        return load_factory(spec, kwargs), None
    if spec not in list_models():
        raise ValueError(f"{spec!r} is not a model name ({', '.join(list_models())}), a run folder or package.module:factory")
    size = model_info(spec)["input_size"]
    return create_model(spec, backend="torch", **kwargs), (1, size, size)


def _run_input(meta: dict, image: Path | None, test_index: int | None, data_dir=None):
    """The picture to look at, as stored (C, H, W) uint8, and the model's input (1, C, S, S)."""
    from ..data import load_dataset, preprocess, read_image

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
