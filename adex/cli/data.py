"""``adex data``: list, download and verify the datasets.

* ``adex data list [--data DIR]``: the datasets, their origin and whether they are present.
* ``adex data download NAME... | --all [--dest DIR] [--base-url URL] [--force]``: fetch
  from the public origin into ``DIR/<NAME>`` (default ``$ADEX_HOME/data``), verified
  against the shipped sha256 manifest; see :mod:`adex.download`.
* ``adex data verify [NAME...] [--data DIR]``: recompute the checksums of datasets in
  the data directory (``--data`` > ``$ADEX_DATA`` > ``$ADEX_HOME/data``).

Handlers take the parsed arguments and return the exit code; problems raise
:class:`~adex.errors.DataError` (the CLI prints ``error: ...`` and exits 2).
"""
from __future__ import annotations

import argparse
import os
import sys

from adex.errors import DataError


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command and its ``list``/``download``/``verify`` actions."""
    data = subparsers.add_parser(
        "data",
        help="list, download and verify datasets",
        description="List, download and verify the datasets adex trains on.",
    )
    actions = data.add_subparsers(dest="data_action", metavar="ACTION")
    data.set_defaults(func=lambda args: _help(data))

    manifest_help = argparse.SUPPRESS  # alternative checksum manifest (mirrors, tests)

    p_list = actions.add_parser("list", help="datasets, origins and local status")
    p_list.add_argument("--data", metavar="DIR", help="data directory (default: $ADEX_DATA or $ADEX_HOME/data)")
    p_list.add_argument("--manifest", help=manifest_help)
    p_list.set_defaults(func=cmd_list)

    p_get = actions.add_parser(
        "download",
        help="fetch datasets from their public origin (sha256-verified)",
        description="Fetch datasets from their public GitHub origin at pinned commits into DIR/<NAME>, "
        "rebuild the derived files and verify every file against the shipped sha256 manifest. "
        "The dataset is built beside the destination and moved into place only once verified.",
    )
    p_get.add_argument("names", nargs="*", metavar="NAME", help="dataset(s) to download (see `adex data list`)")
    p_get.add_argument("--all", action="store_true", help="download every dataset")
    p_get.add_argument("--dest", metavar="DIR", help="folder to put NAME/ in (default: $ADEX_HOME/data)")
    p_get.add_argument(
        "--base-url",
        metavar="URL",
        help="archive server, fetched as URL/OWNER/REPO/tar.gz/COMMIT "
        "(default: $ADEX_DOWNLOAD_URL or https://codeload.github.com)",
    )
    p_get.add_argument("--force", action="store_true", help="download again even if a verified copy is present")
    p_get.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds (default: 60)")
    p_get.add_argument("--no-progress", action="store_true", help="no progress bars")
    p_get.add_argument("--manifest", help=manifest_help)
    p_get.set_defaults(func=cmd_download)

    p_verify = actions.add_parser("verify", help="recompute the checksums of downloaded datasets")
    p_verify.add_argument("names", nargs="*", metavar="NAME", help="dataset(s) to check (default: all present)")
    p_verify.add_argument("--data", metavar="DIR", help="data directory (default: $ADEX_DATA or $ADEX_HOME/data)")
    p_verify.add_argument("--manifest", help=manifest_help)
    p_verify.set_defaults(func=cmd_verify)


def _help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 1


def cmd_list(args: argparse.Namespace) -> int:
    """Print one line per dataset: name, status in the data directory, origin, description."""
    from adex.catalog import dataset_names, get_dataset
    from adex.checksums import load_manifest, quick_status
    from adex.paths import data_dir

    manifest = load_manifest(args.manifest)
    root = data_dir(args.data)
    names = dataset_names()
    width = max(len(n) for n in names)
    print(f"datasets in {root}:")
    for name in names:
        dataset = get_dataset(name)
        origin = dataset.origin
        status = quick_status(name, root / name, manifest)
        print(f"  {name:<{width}}  {status}")
        print(f"    {dataset.description}")
        print(f"    from github.com/{origin.owner}/{origin.repo}@{origin.commit[:7]} {origin.folder}/")
    print("download with `adex data download NAME`, check with `adex data verify`")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """Download the named datasets (or all); prints where each one is."""
    from adex.catalog import dataset_names
    from adex.checksums import load_manifest
    from adex.download import download

    manifest = load_manifest(args.manifest)
    if args.all:
        names = dataset_names()
    elif args.names:
        names = list(args.names)
    else:
        raise DataError(f"name a dataset to download, or pass --all (known: {', '.join(dataset_names())})")
    results = download(
        names,
        args.dest,
        base_url=args.base_url,
        force=args.force,
        manifest=manifest,
        progress=False if args.no_progress else None,
        timeout=args.timeout,
    )
    for result in results:
        what = "downloaded and verified" if result.status == "downloaded" else "already present and verified"
        print(f"{result.name}: {what} ({result.files} files) at {result.path}")
        for note in result.notes:
            print(f"  note: {note}")
    env_data = os.environ.get("ADEX_DATA")
    if env_data and results and os.path.abspath(env_data) != os.path.abspath(results[0].path.parent):
        print(f"note: ADEX_DATA={env_data}: adex reads datasets from there, not {results[0].path.parent}", file=sys.stderr)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    """Verify the named datasets (default: every dataset present in the data directory)."""
    from adex.catalog import dataset_names
    from adex.checksums import checksum_entry, load_manifest, verify_dataset
    from adex.paths import data_dir

    manifest = load_manifest(args.manifest)
    root = data_dir(args.data)
    if args.names:
        names = list(dict.fromkeys(args.names))
        for name in names:
            checksum_entry(name, manifest)  # unknown name -> DataError listing the known ones
    else:
        names = [n for n in dataset_names() if (root / n).exists()]
        if not names:
            raise DataError(f"no dataset in {root} (download with `adex data download NAME`)")
    failures: list[str] = []
    for name in names:
        try:
            result = verify_dataset(name, root / name, manifest)
        except DataError as exc:
            print(f"{name}: FAILED: {exc}")
            failures.append(str(exc))
            continue
        print(f"{name}: ok ({result.files} files, {result.bytes / 1e6:.1f} MB) at {result.root}")
    if failures:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        raise DataError(f"{failures[0]}{more}")
    return 0
