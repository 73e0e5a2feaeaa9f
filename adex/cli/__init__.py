"""The ``adex`` command line, one module per command group (as mace's ``cli/``).

``adex.cli.app.main(argv) -> int`` is the entry point; each command module exposes
``register(subparsers)``. Importing this package does no work.
"""
from __future__ import annotations


def main(argv: list[str] | None = None) -> int:
    """Run the ``adex`` command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    from adex.cli.app import main as _main

    return _main(argv)


__all__ = ["main"]
