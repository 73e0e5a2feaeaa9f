"""The ``adex`` command line: ``main(argv) -> int``.

Each command group is one module of this package; each exposes
``register(subparsers)`` that adds its parsers with ``set_defaults(func=handler)``,
where ``handler(args) -> int``. Heavy imports happen inside handlers, so ``adex --help``
is quick and importing the CLI does no work.

Errors: an :class:`AdexError` (bad input, data, model or config) and an ``OSError`` (the
environment: a folder that is a file, no permission, disk full) print one ``error:``
line and exit with code 2; anything else is a bug and shows a traceback (``ADEX_DEBUG=1``
shows it for OSErrors too). Commands with the training options are checked before they
start (``adex.cli.common.check_training_args``: ``--out``, ``--limit``, writable folders).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from adex import __version__
from adex.errors import AdexError

SUBCOMMAND_MODULES = (
    "adex.cli.data",
    "adex.cli.advisor",
    "adex.cli.registry",
    "adex.cli.expert",
    "adex.cli.predict",
    "adex.cli.screen",
    "adex.cli.search",
    "adex.cli.baseline",
    "adex.cli.evaluate",
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
        if getattr(args, "training_command", False):
            from adex.cli.common import check_training_args

            check_training_args(args)
        return int(args.func(args) or 0)
    except AdexError as exc:
        print(f"error: {_one_line(str(exc))}", file=sys.stderr)
        return 2
    except OSError as exc:
        if os.environ.get("ADEX_DEBUG"):
            raise
        print(f"error: {_one_line(_os_error(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _one_line(message: str) -> str:
    return " ".join(message.split()) if "\n" in message or "\r" in message else message


def _os_error(exc: OSError) -> str:
    """One line for an OSError: ``<file>: <reason>`` (both files for a rename)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    files = [str(f) for f in (exc.filename, exc.filename2) if f is not None]
    return f"{' -> '.join(files)}: {reason}" if files else reason


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
