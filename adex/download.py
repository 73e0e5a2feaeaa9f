"""Download datasets from their public origin and verify them against pinned checksums.

Like torch-geometric or matminer dataset downloads, ``adex data download NAME`` rebuilds
``<data dir>/<NAME>`` with the layout of the shipped data (see ``MANIFEST.md`` beside it).
This module runs the steps; each job lives in its own module:

1. **What**: the dataset table, :data:`adex.catalog.CATALOG` (origin at a pinned commit,
   license, layout rules).
2. **Fetch** (:mod:`adex.fetch`) one archive per source repository at a pinned commit,
   ``{base}/{owner}/{repo}/tar.gz/{commit}`` with ``base = https://codeload.github.com``
   by default (one request instead of ~40,000 single-file ones for the MP set). The base
   is overridable (``--base-url``, env ``ADEX_DOWNLOAD_URL``; ``file://`` mirrors work
   too). The archive is streamed to a temporary file with a rich progress bar.
3. **Extract** (:mod:`adex.archive`) only the members the dataset needs, renamed to the
   local layout, and **derive** (:mod:`adex.derived`) the files the shipped data derives
   (``vacancies.csv``, a deduplicated ``id_prop.csv``, the packed MP ``structures.tar.gz``).
4. **Verify** (:mod:`adex.checksums`) against ``adex/data/datasets.json``: sha256 and
   size per file, one tree digest per folder of thousands of files, a content digest
   for the packed archive.
5. **Install atomically**: everything is built in a hidden temporary folder beside the
   destination and renamed into place only once verified, so an interrupted or failing
   download leaves no partial dataset. A dataset already present and verified is not
   downloaded again (``force=True`` / ``--force`` redoes it).

The checksum manifest is generated from a copy of the shipped data with
``python -m adex.download make-manifest --from DIR``.
Importing this module does no work; rich, tarfile readers and ASE load when used.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from adex.archive import extract
from adex.catalog import BASE_URL_ENV, DEFAULT_BASE_URL, dataset_names, get_dataset
from adex.checksums import build_manifest, checksum_entry, default_manifest_path, load_manifest, verify_entry
from adex.derived import derive
from adex.errors import DataError
from adex.fetch import fetch

_WORK_PREFIX = ".adex-download-"


class _Reporter:
    """Status lines on stderr (rich), collected notes, and the progress setting."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.notes: list[str] = []

    def say(self, message: str) -> None:
        if self.progress:
            from adex.progress import console

            console().print(message, markup=False, highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.say(f"  {message}")


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return not os.environ.get("ADEX_NO_PROGRESS")


# --------------------------------------------------------------------------- download


@dataclass
class DownloadResult:
    """What :func:`download` did for one dataset."""

    name: str
    path: Path
    status: str  # "downloaded" or "present"
    files: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)


def default_download_root() -> Path:
    """Where datasets are downloaded by default: ``$ADEX_HOME/data``."""
    from adex.paths import adex_home

    return adex_home() / "data"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_stale_work_dirs(root: Path) -> None:
    """Remove temporary folders left by downloads killed on this host (their process is gone)."""
    for work in root.glob(_WORK_PREFIX + "*"):
        try:
            host, pid = (work / "owner").read_text().split()
            if host == socket.gethostname() and not _pid_alive(int(pid)):
                shutil.rmtree(work, ignore_errors=True)
        except (OSError, ValueError):
            continue


def _install(stage: Path, dest: Path, work: Path) -> None:
    """Rename the verified ``stage`` to ``dest`` (replacing an existing ``dest``)."""
    old = None
    if dest.exists():
        old = work / f"{dest.name}.replaced"
        os.replace(dest, old)
    try:
        os.replace(stage, dest)
    except OSError as exc:
        if old is not None and not dest.exists():
            os.replace(old, dest)
        raise DataError(f"cannot move the downloaded {dest.name} into {dest.parent}: {exc.strerror or exc}") from None


def download(
    names: Iterable[str],
    root: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    force: bool = False,
    manifest: Mapping | str | os.PathLike | None = None,
    progress: bool | None = None,
    timeout: float = 60.0,
) -> list[DownloadResult]:
    """Download datasets ``names`` into ``root/<name>`` (default ``$ADEX_HOME/data``).

    Args:
        names: dataset names (see :func:`adex.catalog.dataset_names`).
        root: parent folder of the dataset folders.
        base_url: archive server; default ``$ADEX_DOWNLOAD_URL`` or codeload.github.com.
        force: download even when a verified copy is present (it is replaced atomically).
        manifest: checksum manifest (dict or path); default the shipped one.
        progress: show rich progress on stderr (default: unless ``ADEX_NO_PROGRESS``).
        timeout: socket timeout in seconds.

    Datasets published in the same repository at the same commit share one archive
    download. Each dataset is built, verified and renamed into place on its own.

    Raises:
        DataError: unknown name, unreachable server, checksum mismatch, an existing
            folder that does not verify (without ``force``), unwritable destination.
    """
    if manifest is None or isinstance(manifest, (str, os.PathLike)):
        manifest = load_manifest(manifest)
    names = list(dict.fromkeys(names))
    if not names:
        raise DataError(f"no dataset named (known: {', '.join(dataset_names())})")
    entries = {name: checksum_entry(name, manifest) for name in names}
    base_url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    root = Path(root) if root is not None else default_download_root()
    report = _Reporter(_progress_enabled(progress))
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create data folder {root}: {exc.strerror or exc}") from None
    try:
        return _download_into(names, entries, root, base_url, force, timeout, report)
    except BaseException:
        for folder in created:  # leave no empty data folder behind a failed first download
            try:
                folder.rmdir()
            except OSError:
                break
        raise


def _download_into(
    names: list[str],
    entries: Mapping[str, Mapping],
    root: Path,
    base_url: str,
    force: bool,
    timeout: float,
    report: _Reporter,
) -> list[DownloadResult]:
    """The body of :func:`download` once ``root`` exists."""
    results: dict[str, DownloadResult] = {}
    pending: dict[tuple[str, str, str], list[str]] = {}
    for name in names:
        dest = root / name
        if dest.exists() and not force:
            try:
                check = verify_entry(name, dest, entries[name])
            except DataError as exc:
                raise DataError(f"{dest} exists but does not verify ({exc}); rerun with --force to replace it") from None
            results[name] = DownloadResult(name, dest, "present", check.files, check.bytes)
            report.say(f"{name}: already present and verified at {dest}")
            continue
        pending.setdefault(get_dataset(name).origin.key, []).append(name)

    if pending:
        _clean_stale_work_dirs(root)
        try:
            work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=root))
        except OSError as exc:
            raise DataError(f"cannot write in data folder {root}: {exc.strerror or exc}") from None
        try:
            (work / "owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")
            for group in pending.values():
                origin = get_dataset(group[0]).origin
                url = origin.archive_url(base_url)
                archive = work / f"{origin.repo}-{origin.commit[:12]}.tar.gz"
                report.say(f"fetching {origin.owner}/{origin.repo}@{origin.commit[:7]} for {', '.join(group)} from {url}")
                fetch(
                    url,
                    archive,
                    timeout=timeout,
                    progress=report.progress,
                    label=", ".join(group),
                    description=f"{origin.owner}/{origin.repo}",
                )
                for name in group:
                    results[name] = _build_one(name, entries[name], archive, root, work, report)
        finally:
            shutil.rmtree(work, ignore_errors=True)
    return [results[name] for name in names]


def _build_one(name: str, entry: Mapping, archive: Path, root: Path, work: Path, report: _Reporter) -> DownloadResult:
    dataset = get_dataset(name)
    stage = work / name
    stage.mkdir()
    start = len(report.notes)
    t0 = time.perf_counter()
    count = extract(archive, dataset, entry, stage)
    report.say(f"{name}: extracted {count} files")
    derive(name, stage, report.note, report.progress)
    check = verify_entry(name, stage, entry)
    if not check.byte_identical_archives:
        report.note("packed archive is content-identical to the published one (bytes differ)")
    dest = root / name
    try:
        _install(stage, dest, work)
    except DataError:
        if dest.exists():  # another process installed it meanwhile
            done = verify_entry(name, dest, entry)
            return DownloadResult(name, dest, "present", done.files, done.bytes, report.notes[start:])
        raise
    report.say(f"{name}: verified ({check.files} files, {_human(check.bytes)}) in {time.perf_counter() - t0:.1f} s")
    return DownloadResult(name, dest, "downloaded", check.files, check.bytes, report.notes[start:])


def download_dataset(name: str, root: str | os.PathLike | None = None, **kwargs) -> Path:
    """Download one dataset (see :func:`download`); returns its folder."""
    return download([name], root, **kwargs)[0].path


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"  # pragma: no cover


# --------------------------------------------------------------------------- python -m


def main(argv: list[str] | None = None) -> int:
    """``python -m adex.download make-manifest --from DIR [--out PATH]``."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m adex.download", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make-manifest", help="write the checksum manifest from a copy of the shipped data")
    make.add_argument("--from", dest="source", required=True, help="data folder holding the four datasets")
    make.add_argument("--out", default=str(default_manifest_path()), help="output JSON (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        manifest = build_manifest(args.source)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from adex.fileio import atomic_write_text

    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    atomic_write_text(Path(args.out), text)
    os.chmod(args.out, 0o644)  # package data, readable by all (mkstemp creates 0600)
    print(f"wrote {args.out} ({len(text) // 1000} KB, {len(manifest['datasets'])} datasets)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
