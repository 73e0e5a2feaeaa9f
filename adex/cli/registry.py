"""``adex registry list|show|verify|tag|remove|import-cgcnn``.

Every subcommand takes ``--registry PATH`` to use another user store than
``$ADEX_HOME/registry``. Other modules can add registry subcommands to the parser
returned by :func:`register`, sharing :func:`store_option` and :func:`open_from_args`.
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from adex.registry.store import Entry, Registry

Handler = Callable[[argparse.Namespace], int]


def store_option() -> argparse.ArgumentParser:
    """A parent parser holding the ``--registry PATH`` option."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--registry", metavar="PATH", default=None,
                        help="user registry root (default: $ADEX_HOME/registry)")
    return parent


def open_from_args(args: argparse.Namespace) -> Registry:
    """The registry selected by ``--registry`` (default: the user's)."""
    from adex.registry.store import Registry

    return Registry(root=getattr(args, "registry", None))


def register(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:
    """Add the ``registry`` command; return its subparsers so other modules can extend it."""
    parser = subparsers.add_parser(
        "registry", help="list, inspect, verify, tag and remove stored models",
        description="Stored models: ref = [store::][kind/]name[:version|@alias], e.g. advisor/bandgap@best.",
    )
    parser.set_defaults(func=lambda args: (parser.print_help(), 1)[1])
    sub = parser.add_subparsers(dest="registry_command", metavar="SUBCOMMAND")
    common = [store_option()]

    p = sub.add_parser("list", parents=common, help="table of stored models (both stores)")
    p.add_argument("--kind", help="only this kind (e.g. advisor, expert)")
    p.set_defaults(func=_warnings_to_stderr(cmd_list))

    p = sub.add_parser("show", parents=common, help="card of one model (exit 1 if it fails verification)")
    p.add_argument("ref")
    p.add_argument("--json", action="store_true", help="also print the raw card JSON")
    p.set_defaults(func=_warnings_to_stderr(cmd_show))

    p = sub.add_parser("verify", parents=common, help="check the cards and file hashes (all models if no REF)")
    p.add_argument("ref", nargs="?")
    p.set_defaults(func=_warnings_to_stderr(cmd_verify))

    p = sub.add_parser("tag", parents=common, help="point an alias at a version")
    p.add_argument("ref")
    p.add_argument("alias")
    p.set_defaults(func=_warnings_to_stderr(cmd_tag))

    p = sub.add_parser("export", parents=common, help="copy a version into another store root (e.g. to ship it)")
    p.add_argument("ref")
    p.add_argument("dest", help="destination store root, e.g. registry/builtin of a source checkout")
    p.add_argument("--renumber", action="store_true", help="take the next free version number in the destination")
    p.add_argument("--builtin-parents", action="store_true",
                   help="the destination is the built-in store: keep parents shipped there (same files), "
                        "move the others to notes.parents_not_shipped")
    p.add_argument("--name", help="file it under this name in the destination (default: its own name)")
    p.set_defaults(func=_warnings_to_stderr(cmd_export))

    p = sub.add_parser("remove", parents=common, help="delete one version (refused if others derive from it)")
    p.add_argument("ref")
    p.set_defaults(func=_warnings_to_stderr(cmd_remove))

    # the old spelling of `adex advisor import cgcnn`, kept hidden for one release
    p = sub.add_parser("import-cgcnn", parents=common, help=argparse.SUPPRESS,
                       description="Deprecated spelling of `adex advisor import cgcnn`.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("path", nargs="?", metavar="PATH", help="one CGCNN checkpoint (*.pth.tar)")
    source.add_argument("--all", metavar="DIR", help="import every regression checkpoint in DIR (classifiers are skipped)")
    p.add_argument("--name", help="advisor name (default: cgcnn-<property>, e.g. cgcnn-formation-energy)")
    p.add_argument("--trust-pickle", action="store_true", help="allow reading the pickled checkpoint")
    p.set_defaults(func=_warnings_to_stderr(cmd_import_cgcnn))
    return sub


def cmd_list(args: argparse.Namespace) -> int:
    """``adex registry list [--kind K]``."""
    from rich.console import Console
    from rich.table import Table

    registry = open_from_args(args)
    entries = registry.list(args.kind)
    console = Console()
    if not entries:
        console.print(f"no models in {registry.root} (or the built-in store)", highlight=False)
        return 0
    table = Table("store", "kind", "name", "version", "aliases", "primary metric", "created", "parents")
    for e in entries:
        table.add_row(
            e.store + ("*" if e.shadows else ""), e.kind, e.name, str(e.version), ", ".join(e.aliases),
            _metric(e), ("(unreadable card)" if not e.card else "(card fails verification)") if e.problem
            else str(e.card.get("created", "")), ", ".join(e.parents),
        )
    if any(e.shadows for e in entries):
        table.caption = "* hides the built-in model of the same name (use builtin::kind/name for it)"
    console.print(table)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    """``adex registry show REF [--json]``: the card; a version that fails verification
    (edited card, tampered or missing file) is shown with the problem in an ``integrity``
    row and a warning, and the exit code is 1 (as ``verify``)."""
    from rich.console import Console
    from rich.table import Table

    from adex.registry.store import CARD_DIGEST, REGISTRY_FIELDS

    registry = open_from_args(args)
    entry = registry.resolve(args.ref)
    problem = entry.verification_problem()
    card = entry.card
    table = Table("field", "value", show_header=False, title=entry.ref)
    rows = [
        ("ref", entry.ref),
        ("store", entry.store + (f" (hides {entry.shadows})" if entry.shadows else "")),
        ("path", str(entry.path)),
        ("aliases", ", ".join(entry.aliases)),
        ("created", str(card.get("created", ""))),
        ("primary metric", _metric(entry)),
        ("parents", ", ".join(entry.parents)),
        ("dependents", ", ".join(d.ref for d in registry.dependents(entry))),
        ("files", "\n".join(f"{f}  {m['bytes']} bytes  sha256 {m['sha256'][:16]}..."
                            for f, m in entry.files.items())),
        ("package versions", ", ".join(f"{k} {v}" for k, v in (card.get("package_versions") or {}).items())),
    ]
    rows += [(key, _value(value)) for key, value in sorted(card.items())
             if key not in REGISTRY_FIELDS and key != CARD_DIGEST]
    rows.insert(0, ("integrity", f"FAILED: {problem}" if problem else
                    "files verified; legacy card without card_sha256 (its content is not covered)" if entry.legacy
                    else "card and files verified"))
    for key, value in rows:
        table.add_row(key, value)
    Console().print(table)
    if args.json:
        print(json.dumps(card, indent=2, sort_keys=True))
    if problem:
        print(f"warning: {entry.ref} fails verification, the values shown cannot be trusted: {problem}", file=sys.stderr)
        return 1
    if entry.legacy:
        print(f"warning: {entry.ref} has a legacy card (no card_sha256): its files are verified, its content is not",
              file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """``adex registry verify [REF]``: 0 if every card matches its ``card_sha256`` and
    every file its card, else 1. Legacy cards (no ``card_sha256``) pass with a note."""
    from rich.console import Console
    from rich.text import Text

    results = open_from_args(args).verify(args.ref)
    console = Console()
    for entry, problem in results:
        line = Text.assemble(("OK    ", "green") if problem is None else ("FAILED", "bold red"), f"  {entry.ref}")
        if problem:
            line.append(f"  {problem}")
        elif entry.legacy:
            line.append("  (legacy card without card_sha256: files verified, card content not covered)")
        console.print(line, soft_wrap=True)
    if not results:
        console.print("no models to verify")
    return int(any(problem for _, problem in results))


def cmd_tag(args: argparse.Namespace) -> int:
    """``adex registry tag REF ALIAS``."""
    entry = open_from_args(args).tag(args.ref, args.alias)
    print(f"tagged {entry.ref} as @{args.alias}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """``adex registry export REF DEST_ROOT``."""
    target = open_from_args(args).export(args.ref, args.dest, renumber=args.renumber,
                                         parents_as_builtin=args.builtin_parents, name=args.name)
    print(f"exported to {target}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    """``adex registry remove REF``."""
    entry = open_from_args(args).remove(args.ref)
    print(f"removed {entry.ref}")
    return 0


def cmd_import_cgcnn(args: argparse.Namespace) -> int:
    """``adex registry import-cgcnn``: the old spelling of ``adex advisor import cgcnn``."""
    from adex.cli.advisor import cmd_import_cgcnn as import_cgcnn

    return import_cgcnn(args)


def _metric(entry: Entry) -> str:
    metric = entry.primary_metric
    return f"{metric[0]} = {metric[1]:.6g}" if metric else ""


def _value(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _warnings_to_stderr(handler: Handler) -> Handler:
    """Run ``handler`` printing warnings (e.g. shadowed built-in models) as ``warning: msg``."""

    def run(args: argparse.Namespace) -> int:
        with _short_warnings():
            return handler(args)

    run.__doc__ = handler.__doc__
    return run


@contextmanager
def _short_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        yield
