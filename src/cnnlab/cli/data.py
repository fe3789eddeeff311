"""``cnnlab data [NAME]``: where each data set was found, or fetch one."""

from __future__ import annotations

import argparse


def run(args: argparse.Namespace, argv: list[str]) -> int:
    from ..data import SPECS, download, locate, search_dirs

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


def add_parser(sub) -> None:
    """``cnnlab data``'s arguments."""
    data = sub.add_parser("data", help="where each data set was found, or fetch one")
    data.add_argument("name", nargs="?", default=None)
    data.add_argument("--fetch", action="store_true", help="download it into the user cache if not found")
    data.add_argument("--data-dir", default=None)
    data.set_defaults(func=run)
