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
import sys

from . import data, evaluate, explore, predict, summary, tour, train, viz

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse, answering a usage error in one line (the full usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(prog="cnnlab", description="Convolutional neural networks from first principles.")
    parser.add_argument("--version", action="version", version=f"cnnlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (train, evaluate, predict, summary, viz, tour, explore, data):  # the order --help lists them in
        command.add_parser(sub)
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
