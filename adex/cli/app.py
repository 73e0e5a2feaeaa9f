"""The ``adex`` command line: ``main(argv) -> int``.

Each command group is one module of this package; each exposes
``register(subparsers)`` that adds its parsers with ``set_defaults(func=handler)``,
where ``handler(args) -> int``. Heavy imports happen inside handlers, so ``adex --help``
is quick and importing the CLI does no work.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from adex import __version__
from adex.errors import AdexError

SUBCOMMAND_MODULES = (
    "adex.cli.data",
    "adex.cli.advisor",
    "adex.cli.registry",
    "adex.cli.expert",
    "adex.cli.predict",
    "adex.cli.search",
    "adex.cli.baseline",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adex",
        description="ADvisor-EXpert GNNs for vacancy formation energies in crystals.",
    )
    parser.add_argument("--version", action="version", version=f"adex {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except AdexError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
