"""Inputs of a screen (``adex screen``): structure files, folders, ``--input`` tables and
tar archives, read lazily as :class:`HostInput` records and cut into :class:`ScreenTask`
chunks of a bounded number of hosts.

Nothing here runs a model: the driver (:mod:`adex.expert.screening`) iterates the inputs,
the workers (:mod:`adex.expert.screen_worker`) parse the text of each host. Archives are
read member by member (``tarfile`` stream mode), never extracted to disk, so the driver
holds only the tasks in flight, whatever the size of the input.
"""
from __future__ import annotations

import csv
import hashlib
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from adex.errors import AdexError

#: Version of the partition layout and of the task key; a change makes old partitions stale.
SCREEN_FORMAT = "adex-screen-2"  # 2: trust columns

_SUFFIX_FORMATS = {".cif": "cif", ".mcif": "cif", ".extxyz": "extxyz", ".xyz": "extxyz", ".vasp": "poscar",
                   ".poscar": "poscar"}
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def structure_format(name: str) -> str | None:
    """``"cif"``, ``"extxyz"`` or ``"poscar"`` from a file name, None for anything else."""
    base = Path(name).name
    suffix = Path(base).suffix.lower()
    if suffix in _SUFFIX_FORMATS:
        return _SUFFIX_FORMATS[suffix]
    if base.upper().startswith(("POSCAR", "CONTCAR")):
        return "poscar"
    return None


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(_ARCHIVE_SUFFIXES)


def host_id_of(name: str) -> str:
    """The id of a host: its file name without the structure suffix (``mp-1234``)."""
    base = Path(name).name
    return base[: -len(Path(base).suffix)] if structure_format(base) and Path(base).suffix else base


@dataclass(frozen=True)
class HostInput:
    """One host to screen.

    Attributes:
        host_id: file name without its suffix (``mp-1234``).
        source: where it came from (a path, or ``archive.tar.gz:member``).
        fmt: ``cif``, ``extxyz`` or ``poscar``.
        text: the file's contents ("" when it could not be read: see ``error``).
        sites: atom indices to vacate (0-based, file order), or None for every
            symmetry-distinct site.
        error: why the file could not be read (the host then goes to the errors table).
    """

    host_id: str
    source: str
    fmt: str
    text: str
    sites: tuple[int, ...] | None = None
    error: str | None = None

    def digest(self) -> str:
        """sha256 of everything that decides this host's rows (id, sites, contents)."""
        sites = "all" if self.sites is None else ",".join(map(str, self.sites))
        payload = "\0".join([self.host_id, self.fmt, sites, self.error or "", self.text])
        return hashlib.sha256(payload.encode("utf-8", "surrogateescape")).hexdigest()


@dataclass(frozen=True)
class ScreenTask:
    """A chunk of consecutive hosts: the unit of work, of resumption and of output
    (one partition file per table)."""

    index: int
    hosts: tuple[HostInput, ...]
    key: str  # sha256 hex of (format, expert identity, settings, hosts)

    @property
    def name(self) -> str:
        """Partition file stem: ``part-000012-<key[:16]>``."""
        return f"part-{self.index:06d}-{self.key[:16]}"


def _decode(data: bytes, source: str) -> tuple[str, str | None]:
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError:
        try:
            return data.decode("latin-1"), None
        except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes anything
            return "", f"{source}: cannot decode ({exc})"


def _file_host(path: Path, sites: tuple[int, ...] | None = None, fmt: str | None = None) -> HostInput:
    fmt = fmt or structure_format(path.name) or "cif"
    try:
        text, error = _decode(path.read_bytes(), str(path))
    except OSError as exc:
        text, error = "", f"{path}: cannot read ({exc.strerror or exc})"
    return HostInput(host_id_of(path.name), str(path), fmt, text, sites, error)


def iter_archive(path: Path) -> Iterator[HostInput]:
    """The structure files of a tar archive, in archive order, read in stream mode
    (one member in memory at a time; nothing written to disk)."""
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if not member.isfile() or structure_format(member.name) is None:
                    continue
                if Path(member.name).name.startswith("."):
                    continue  # e.g. macOS resource forks ._foo.cif
                source = f"{path.name}:{member.name}"
                handle = archive.extractfile(member)
                text, error = _decode(handle.read() if handle is not None else b"", source)
                yield HostInput(host_id_of(member.name), source, structure_format(member.name), text, None, error)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AdexError(f"{path}: cannot read the archive ({type(exc).__name__}: {exc})") from None


def count_archive(path: Path) -> int:
    """Number of structure files in a tar archive (one streaming pass over its headers)."""
    n = 0
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if member.isfile() and structure_format(member.name) and not Path(member.name).name.startswith("."):
                    n += 1
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise AdexError(f"{path}: cannot read the archive ({type(exc).__name__}: {exc})") from None
    return n


def folder_files(folder: Path) -> list[Path]:
    """Structure files under ``folder`` (recursively, hidden files skipped), sorted by path."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and structure_format(p.name)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_table(path: Path) -> list[tuple[Path, tuple[int, ...] | None]]:
    """``--input`` table: CSV with a ``structure`` column (paths relative to the table's
    folder) and an optional ``site`` column (0-based atom index; empty = every distinct
    site). Rows of the same file are merged, in order of first appearance."""
    if not path.is_file():
        raise AdexError(f"{path}: no such file")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        if "structure" not in columns:
            raise AdexError(f"{path}: missing column 'structure' (columns: structure[,site])")
        order: dict[str, set[int] | None] = {}
        for line, row in enumerate(reader, start=2):
            name = (row.get("structure") or "").strip()
            if not name:
                raise AdexError(f"{path}:{line}: empty 'structure' field")
            file = Path(name).expanduser()
            file = str((file if file.is_absolute() else path.parent / file).resolve())
            site = (row.get("site") or "").strip() if "site" in columns else ""
            if not site:
                order[file] = None
                continue
            try:
                index = int(site)
            except ValueError:
                raise AdexError(f"{path}:{line}: site {site!r} is not an integer atom index") from None
            if index < 0:
                raise AdexError(f"{path}:{line}: site {index} is negative")
            if file in order and order[file] is None:
                continue  # every site already asked for
            order.setdefault(file, set()).add(index)
    if not order:
        raise AdexError(f"{path}: no rows (need a 'structure' column, optionally 'site')")
    return [(Path(f), None if s is None else tuple(sorted(s))) for f, s in order.items()]


@dataclass(frozen=True)
class ScreenInputs:
    """What to screen: positional paths (files, folders, archives) and/or a table."""

    paths: tuple[str, ...] = ()
    table: str | None = None

    def check(self) -> None:
        if not self.paths and not self.table:
            raise AdexError("nothing to screen: give structure files, a folder, an archive or --input TABLE.csv")
        for p in self.paths:
            if not Path(p).exists():
                raise AdexError(f"{p}: no such file or folder")
        if self.table and not Path(self.table).is_file():
            raise AdexError(f"{self.table}: no such file")

    def describe(self) -> list[str]:
        """Absolute paths of the inputs (recorded in the manifest)."""
        out = [str(Path(p).resolve()) for p in self.paths]
        return out + ([f"table:{Path(self.table).resolve()}"] if self.table else [])

    def count(self) -> int:
        """Number of hosts (archives are scanned once; tables and folders are listed)."""
        n = 0
        for p in map(Path, self.paths):
            if p.is_dir():
                n += len(folder_files(p))
            elif is_archive(p):
                n += count_archive(p)
            else:
                n += 1
        if self.table:
            n += len(read_table(Path(self.table)))
        return n

    def __iter__(self) -> Iterator[HostInput]:
        for p in map(Path, self.paths):
            if p.is_dir():
                for f in folder_files(p):
                    yield _file_host(f)
            elif is_archive(p):
                yield from iter_archive(p)
            else:
                yield _file_host(p)
        if self.table:
            for f, sites in read_table(Path(self.table)):
                yield _file_host(f, sites)


def plan_tasks(hosts: Iterable[HostInput], hosts_per_task: int, identity: str) -> Iterator[ScreenTask]:
    """Consecutive hosts in chunks of ``hosts_per_task``; each task's key is the sha256 of
    the screen format, ``identity`` (expert and settings) and its hosts' digests, so a
    partition is reused only for the same expert, settings and input hosts."""
    if hosts_per_task < 1:
        raise AdexError(f"--hosts-per-task must be >= 1, not {hosts_per_task}")
    chunk: list[HostInput] = []
    index = 0

    def task() -> ScreenTask:
        digest = hashlib.sha256(f"{SCREEN_FORMAT}|{identity}".encode())
        for host in chunk:
            digest.update(host.digest().encode())
        return ScreenTask(index, tuple(chunk), digest.hexdigest())

    for host in hosts:
        chunk.append(host)
        if len(chunk) >= hosts_per_task:
            yield task()
            chunk, index = [], index + 1
    if chunk:
        yield task()
