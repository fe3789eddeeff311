"""``cnnlab explore RUN``: a local web page to look inside a trained model."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import _port


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from ..explorer import serve

    serve(args.run, host=args.host, port=args.port, data_dir=args.data_dir)
    return 0


def add_parser(sub) -> None:
    """``cnnlab explore``'s arguments."""
    explore = sub.add_parser("explore", help="a local web page to look inside a trained model")
    explore.add_argument("run", type=Path)
    explore.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    explore.add_argument("--port", type=_port, default=8765, help="port to listen on, 0 for any free one (default: 8765)")
    explore.add_argument("--data-dir", default=None)
    explore.set_defaults(func=run)
