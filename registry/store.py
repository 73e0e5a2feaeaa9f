"""Folder-backed model registry: immutable, hash-verified versions plus a JSON card.

Layout of a store (the user's is writable, the built-in one shipped in the package is not)::

    <root>/<kind>/<name>/versions/<N>/{<files...>, card.json}
    <root>/<kind>/<name>/versions/<N>.removed     # tombstone: N is never reused
    <root>/<kind>/<name>/aliases.json             # {"latest": 2, "best": 1, "mytag": 1}
    <root>/<kind>/<name>/.lock                    # flock'ed while aliases change

A registration writes everything into a private staging folder next to the versions and
publishes it with one ``rename`` to the next free number, so readers never see a partial
version and concurrent registrations each get their own number. The registry knows
nothing about what the files contain.

Integrity: the card records the sha256 and size of every file, and ``card_sha256``, a
digest of the card itself (:func:`card_digest`: sha256 of its canonical JSON without that
field), so an edited metric, config or parent list fails verification like an edited
weights file. A card without ``card_sha256`` (written by adex before it existed) is a
*legacy* card: its files are verified, its content is not (``Entry.legacy``).

A staging folder holds an ``flock``-ed ``.owner`` file while its writer lives; a writer
killed mid-registration leaves a staging folder whose owner lock is free, and the next
registration in the store removes it (:meth:`Registry.clean_stale`).
"""
from __future__ import annotations

import errno
import fcntl
import importlib.metadata
import json
import math
import os
import platform
import shutil
import tempfile
import uuid
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from adex.errors import IntegrityError, RegistryError
from adex.fileio import atomic_write_json, sha256_bytes, sha256_file
from adex.paths import registry_dir

from .refs import check_alias, check_token, parse_ref

CARD = "card.json"
#: card field holding :func:`card_digest` of the rest of the card.
CARD_DIGEST = "card_sha256"
STAGING_PREFIX = ".staging-"
TRASH_PREFIX = ".trash-"
#: file inside a staging folder, flock-ed by the process writing it (see :meth:`Registry.clean_stale`).
OWNER = ".owner"
#: a staging folder without an owner file is left alone for this long (its writer may be
#: between creating it and locking, or between unlocking and publishing it).
STALE_UNOWNED_SECONDS = 3600
ALIASES = "aliases.json"
LOCK = ".lock"
TOMBSTONE = ".removed"
#: card fields written by the registry (they override the caller's values).
REGISTRY_FIELDS = ("kind", "name", "version", "created", "files", "parents", "primary_metric", "package_versions")
_PACKAGES = ("adex", "torch", "pymatgen", "numpy")
_MAX_PUBLISH_ATTEMPTS = 1000


class ShadowWarning(UserWarning):
    """A user-store model hides a built-in model of the same kind and name."""


def _json_form(card: Mapping) -> dict:
    """``card`` as it reads back from ``card.json`` (tuples as lists, keys as strings,
    other objects as their ``str``, as :func:`adex.fileio.atomic_write_json` writes them)."""
    return json.loads(json.dumps(dict(card), default=str))


def card_digest(card: Mapping) -> str:
    """sha256 (hex) of ``card`` without its ``card_sha256`` field, as canonical JSON
    (keys sorted, no whitespace, ASCII): what ``card_sha256`` must equal."""
    body = {k: v for k, v in _json_form(card).items() if k != CARD_DIGEST}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return sha256_bytes(text.encode("ascii"))


def seal_card(card: Mapping) -> dict:
    """A copy of ``card`` (in its JSON form) with ``card_sha256`` set to :func:`card_digest`.

    The registry seals every card it writes; a tool that edits a card on purpose (e.g. a
    one-off migration of the built-in store) must seal it again."""
    sealed = {k: v for k, v in _json_form(card).items() if k != CARD_DIGEST}
    sealed[CARD_DIGEST] = card_digest(sealed)
    return sealed


def default_builtin_root() -> Path:
    """The read-only store shipped inside the package (``registry/builtin/``; may be absent).

    ``ADEX_BUILTIN_REGISTRY`` points it elsewhere (the tests use an empty one, so that
    they do not depend on which models ship)."""
    override = os.environ.get("ADEX_BUILTIN_REGISTRY")
    return Path(override).expanduser() if override else Path(__file__).resolve().parent / "builtin"


@dataclass
class Entry:
    """One stored version: its location, card and the aliases pointing at it."""

    kind: str
    name: str
    version: int
    store: str  # "user" | "builtin"
    path: Path  # the version folder
    card: dict
    aliases: tuple[str, ...] = ()
    shadows: str | None = None  # "builtin" when this user entry hides a built-in one
    problem: str | None = field(default=None, repr=False, compare=False)  # unreadable or edited card
    legacy: bool = field(default=False, repr=False, compare=False)  # card without card_sha256 (older adex)

    @property
    def ref(self) -> str:
        """Exact reference ``kind/name:version`` (``builtin::`` prefixed for built-in entries)."""
        prefix = "builtin::" if self.store == "builtin" else ""
        return f"{prefix}{self.kind}/{self.name}:{self.version}"

    @property
    def files(self) -> dict[str, dict]:
        """``{filename: {"sha256": ..., "bytes": ...}}`` as recorded in the card."""
        return dict(self.card.get("files") or {})

    @property
    def parents(self) -> list[str]:
        """Exact references of the entries this one was derived from."""
        return list(self.card.get("parents") or [])

    @property
    def primary_metric(self) -> tuple[str, float] | None:
        """``(name, value)`` of the metric ranking versions (lower is better), if any."""
        metric = self.card.get("primary_metric")
        return (metric["name"], float(metric["value"])) if metric else None

    def read_file(self, filename: str) -> bytes:
        """Bytes of a stored file, after checking its size and sha256 against the card."""
        meta = self._meta(filename)
        path = self.path / filename
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise self._missing(filename) from None
        self._check(filename, meta, len(data), lambda: sha256_bytes(data))
        return data

    def file_path(self, filename: str) -> Path:
        """Path of a stored file, after checking its size and sha256 against the card."""
        meta = self._meta(filename)
        path = self.path / filename
        if not path.is_file():
            raise self._missing(filename)
        self._check(filename, meta, path.stat().st_size, lambda: sha256_file(path))
        return path

    def verify(self) -> None:
        """Check the card (readable, in its own folder, its ``card_sha256``) and every file
        it lists; raise :class:`IntegrityError` on the first problem. A legacy card (no
        ``card_sha256``) passes if its files do."""
        if self.problem:
            raise IntegrityError(self.problem)
        for filename in self.files:
            self.file_path(filename)

    def verification_problem(self) -> str | None:
        """The message of :meth:`verify`'s error, or None if the entry verifies."""
        try:
            self.verify()
        except IntegrityError as exc:
            return str(exc)
        return None

    def _meta(self, filename: str) -> dict:
        if self.problem:
            raise IntegrityError(self.problem)
        files = self.files
        if filename not in files:
            raise RegistryError(f"{self.ref} has no file {filename!r} (files: {', '.join(sorted(files)) or 'none'})")
        return files[filename]

    def _missing(self, filename: str) -> IntegrityError:
        return IntegrityError(f"{self.ref}: {filename} is listed in the card but missing from {self.path}")

    def _check(self, filename: str, meta: dict, size: int, digest: Callable[[], str]) -> None:
        expected_size, expected_sha = int(meta["bytes"]), meta["sha256"]
        found = digest() if size == expected_size else None
        if size != expected_size or found != expected_sha:
            detail = f"{size} bytes" if found is None else f"sha256 {found[:12]}..."
            raise IntegrityError(
                f"{self.ref}: {filename}: sha256 mismatch: tampered or truncated "
                f"(card: {expected_size} bytes, sha256 {expected_sha[:12]}...; found {detail})"
            )


class _Store:
    """Read access to one folder store."""

    def __init__(self, label: str, root: Path) -> None:
        self.label = label
        self.root = root

    def kinds(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def names(self, kind: str) -> list[str]:
        """Names of ``kind`` having at least one live version."""
        folder = self.root / kind
        if not folder.is_dir():
            return []
        return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".") and self.versions(kind, p.name))

    def has(self, kind: str, name: str) -> bool:
        return bool(self.versions(kind, name))

    def versions(self, kind: str, name: str) -> list[int]:
        folder = self.root / kind / name / "versions"
        if not folder.is_dir():
            return []
        return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.is_dir())

    def aliases(self, kind: str, name: str) -> dict[str, int]:
        """Effective aliases: stale ones dropped; ``latest`` is always the highest version."""
        versions = self.versions(kind, name)
        try:
            stored = json.loads((self.root / kind / name / ALIASES).read_text())
        except (FileNotFoundError, ValueError):
            stored = {}
        aliases = {k: v for k, v in stored.items() if isinstance(v, int) and v in versions}
        if versions:
            aliases["latest"] = versions[-1]
        return aliases

    def entry(self, kind: str, name: str, version: int, aliases: Mapping[str, int] | None = None) -> Entry:
        """Load one version (a broken card is recorded in ``Entry.problem``, not raised)."""
        aliases = self.aliases(kind, name) if aliases is None else aliases
        path = self.root / kind / name / "versions" / str(version)
        entry = Entry(kind, name, version, self.label, path, {},
                      tuple(sorted(a for a, v in aliases.items() if v == version)))
        try:
            card = json.loads((path / CARD).read_text())
            if not isinstance(card, dict):
                raise ValueError("not a JSON object")
        except (OSError, ValueError) as exc:
            entry.problem = f"{entry.ref}: card.json is missing or unreadable ({exc})"
            return entry
        entry.card = card
        where = (card.get("kind"), card.get("name"), card.get("version"))
        if where != (kind, name, version):
            entry.problem = (f"{entry.ref}: card.json describes {where[0]}/{where[1]}:{where[2]}, "
                             "not the folder it is stored in")
        elif CARD_DIGEST not in card:
            entry.legacy = True
        else:
            try:
                found = card_digest(card)
            except (TypeError, ValueError) as exc:  # e.g. a non-finite number written by hand
                found = f"unreadable ({exc})"
            if found != card[CARD_DIGEST]:
                entry.problem = (f"{entry.ref}: card.json was edited after registration (card_sha256 mismatch: "
                                 f"recorded {str(card[CARD_DIGEST])[:12]}..., content {found[:12]}...)")
        return entry

    def entries(self, kind: str | None = None) -> Iterator[Entry]:
        for k in [kind] if kind else self.kinds():
            for name in self.names(k):
                aliases = self.aliases(k, name)
                for version in self.versions(k, name):
                    yield self.entry(k, name, version, aliases)


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    versions["python"] = platform.python_version()
    return versions


def _highest_version(versions_dir: Path) -> int:
    """Highest version number ever published here (live or removed), 0 if none."""
    numbers = [0]
    for p in versions_dir.iterdir():
        stem = p.name[: -len(TOMBSTONE)] if p.name.endswith(TOMBSTONE) else p.name
        if stem.isdigit():
            numbers.append(int(stem))
    return max(numbers)


def _check_filename(filename: str) -> None:
    check_token(filename, "file name")
    if filename == CARD:
        raise RegistryError(f"file name {CARD!r} is reserved for the card")


class Registry:
    """The user's writable store backed by the read-only built-in store.

    ``root`` defaults to ``$ADEX_HOME/registry``; ``builtin_root`` to the ``builtin/``
    folder shipped in the package. Lookups try the user store first, then the built-in one.
    """

    def __init__(self, root: Path | None = None, builtin_root: Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else registry_dir()
        self.builtin_root = Path(builtin_root) if builtin_root is not None else default_builtin_root()
        self._user = _Store("user", self.root)
        self._builtin = _Store("builtin", self.builtin_root)

    # ------------------------------------------------------------------ writing
    def register(
        self,
        kind: str,
        name: str,
        files: Mapping[str, bytes],
        card: Mapping,
        parents: Sequence[str] = (),
        primary_metric: tuple[str, float] | None = None,
        aliases: Sequence[str] = (),
    ) -> Entry:
        """Store ``files`` and ``card`` as the next version of ``kind/name`` in the user store.

        The card gains the fields in :data:`REGISTRY_FIELDS`. ``parents`` are references
        that must resolve; their exact refs are recorded. ``latest`` moves to the new
        version, ``best`` too if ``primary_metric`` (lower is better) beats the current
        best's; every alias in ``aliases`` is set to it.
        """
        check_token(kind, "kind")
        check_token(name, "name")
        for alias in aliases:
            self._check_settable_alias(alias)
        blobs: dict[str, bytes] = {}
        for filename, data in files.items():
            _check_filename(filename)
            if not isinstance(data, (bytes, bytearray, memoryview)):
                raise TypeError(f"file {filename!r}: expected bytes, got {type(data).__name__}")
            blobs[filename] = bytes(data)
        metric = None
        if primary_metric is not None:
            metric_name, value = primary_metric
            if not isinstance(metric_name, str) or not metric_name or not math.isfinite(float(value)):
                raise RegistryError(f"invalid primary metric {primary_metric!r}: need (name, finite value)")
            metric = {"name": metric_name, "value": float(value)}

        full_card = dict(card)
        full_card.update(
            kind=kind,
            name=name,
            version=None,
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            files={f: {"sha256": sha256_bytes(b), "bytes": len(b)} for f, b in blobs.items()},
            parents=[self.resolve(p).ref for p in parents],
            primary_metric=metric,
            package_versions=_package_versions(),
        )

        base = self.root / kind / name
        versions_dir = base / "versions"
        with self._writing(versions_dir):
            versions_dir.mkdir(parents=True, exist_ok=True)
            self.clean_stale()
            staging, owner = _new_staging(versions_dir)
            try:
                for filename, data in blobs.items():
                    with open(staging / filename, "wb") as handle:
                        handle.write(data)
                        handle.flush()
                        os.fsync(handle.fileno())
                version = self._publish(staging, versions_dir, full_card)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            finally:
                owner.close()

            with self._locked(base):
                current = self._user.aliases(kind, name)  # "latest" = highest version, ours included
                if metric is not None and self._beats_best(kind, name, current.get("best"), metric):
                    current["best"] = version
                for alias in aliases:
                    current[alias] = version
                atomic_write_json(base / ALIASES, current)
        return self._user.entry(kind, name, version)

    def check_writable(self, kind: str, name: str) -> None:
        """Raise :class:`RegistryError` unless a new version of ``kind/name`` can be
        registered in the user store (checked before a training, so that a read-only
        registry is found before hours of work, not at registration).

        Probes with a temporary file each existing folder a registration writes in
        (``versions/`` and the name's folder), or else the nearest existing ancestor."""
        check_token(kind, "kind")
        check_token(name, "name")
        base = self.root / kind / name
        targets = [p for p in (base / "versions", base) if p.exists()]
        if not targets:
            ancestor = base.parent
            while not ancestor.exists() and ancestor != ancestor.parent:
                ancestor = ancestor.parent
            targets = [ancestor]
        for folder in targets:
            with self._writing(folder):
                if not folder.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, "not a folder", str(folder))
                try:
                    fd, probe = tempfile.mkstemp(prefix=".probe-", dir=folder)
                except OSError as exc:
                    raise OSError(exc.errno, exc.strerror, str(folder)) from None
                os.close(fd)
                os.unlink(probe)

    def clean_stale(self) -> list[Path]:
        """Remove what killed writers left in the user store: staging folders whose
        ``.owner`` lock is free (their writer died; an owner-less one once older than
        :data:`STALE_UNOWNED_SECONDS`) and ``.trash-*`` folders of interrupted removals.
        Returns the removed folders. Called by every registration."""
        removed: list[Path] = []
        for kind in self._user.kinds():
            kind_dir = self.root / kind
            for name_dir in kind_dir.iterdir():
                versions_dir = name_dir / "versions"
                if name_dir.name.startswith(".") or not versions_dir.is_dir():
                    continue
                for path in versions_dir.iterdir():
                    if path.name.startswith(TRASH_PREFIX) or (path.name.startswith(STAGING_PREFIX) and _is_stale(path)):
                        shutil.rmtree(path, ignore_errors=True)
                        removed.append(path)
        return removed

    def export(self, ref: str, dest_root: Path, card_notes: Mapping | None = None, renumber: bool = False,
               parents_as_builtin: bool = False, name: str | None = None) -> Path:
        """Copy the (verified) version ``ref`` into another store root.

        Used to ship models in the built-in store (``registry/builtin``) or to move them
        between machines. The version keeps its number, or with ``renumber`` becomes the
        next free number of that name in the destination. ``card_notes`` are merged into
        the copied card under ``notes``. ``name`` files it under another name there (e.g.
        a second default under its own name). With ``parents_as_builtin`` (the destination is
        the built-in store) parents that exist there keep a ``builtin::`` reference and the
        others move to ``notes.parents_not_shipped`` (their lineage stays readable). The
        copy is staged and renamed into place; an existing version is never replaced.
        """
        entry = self.resolve(ref)
        entry.verify()
        dest = _Store("destination", Path(dest_root))
        name = name or entry.name
        if name != entry.name:
            check_token(name, "name")
        version = (max(dest.versions(entry.kind, name), default=0) + 1) if renumber else entry.version
        target = Path(dest_root) / entry.kind / name / "versions" / str(version)
        if target.exists():
            raise RegistryError(f"{target} exists already; versions are immutable")
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=target.parent))
        try:
            os.chmod(staging, 0o755)
            for filename in entry.files:
                shutil.copy2(entry.path / filename, staging / filename)
            card = dict(entry.card)
            card["exported_from"] = entry.ref
            card["version"] = version
            card["name"] = name
            notes = dict(card.get("notes", {}))
            if parents_as_builtin:
                kept, elsewhere = [], []
                for parent in card.get("parents", []):
                    source_parent = self.resolve(parent)
                    same = None
                    if source_parent.version in dest.versions(source_parent.kind, source_parent.name):
                        same = dest.entry(source_parent.kind, source_parent.name, source_parent.version)
                    if same is not None and same.files == source_parent.files:  # the very same files
                        kept.append(f"builtin::{source_parent.kind}/{source_parent.name}:{source_parent.version}")
                    else:
                        elsewhere.append(source_parent.ref)
                card["parents"] = kept
                if elsewhere:
                    notes["parents_not_shipped"] = elsewhere
            if card_notes:
                notes.update(dict(card_notes))
            if notes:
                card["notes"] = notes
            atomic_write_json(staging / CARD, seal_card(card))
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target

    def tag(self, ref: str, alias: str) -> Entry:
        """Point ``alias`` (created or moved) at the version ``ref`` resolves to."""
        self._check_settable_alias(alias)
        entry = self._writable(self.resolve(ref), "tag")
        problem = entry.verification_problem()
        if problem:
            raise IntegrityError(f"cannot tag {entry.ref}: it fails verification: {problem}")
        base = self.root / entry.kind / entry.name
        with self._locked(base):
            if not entry.path.is_dir():
                raise RegistryError(f"{entry.ref} was removed meanwhile")
            current = self._user.aliases(entry.kind, entry.name)
            current[alias] = entry.version
            atomic_write_json(base / ALIASES, current)
        return self._user.entry(entry.kind, entry.name, entry.version)

    def remove(self, ref: str) -> Entry:
        """Delete one user-store version unless another user entry lists it as a parent.

        The number is never reused (a tombstone stays). ``latest`` moves to the highest
        remaining version; other aliases pointing at the removed one are dropped.

        Parents are read from verified cards only: if another user entry's card fails
        verification (edited or unreadable), whether it derives from ``ref`` is unknown and
        the removal is refused. A version that itself fails verification can be removed
        (with a warning): removing it is the remedy.
        """
        entry = self._writable(self.resolve(ref), "remove")
        base = self.root / entry.kind / entry.name
        with self._writing(base), self._locked(base):
            if not entry.path.is_dir():
                raise RegistryError(f"{entry.ref} was removed meanwhile")
            others = [e for e in self.list() if e.store == "user" and e.ref != entry.ref]
            dependents = [d for d in others if entry.ref in d.parents]
            if dependents:
                raise RegistryError(
                    f"cannot remove {entry.ref}: {', '.join(d.ref for d in dependents)} "
                    "list it as a parent (remove those first)"
                )
            unknown = [e for e in others if e.problem]
            if unknown:
                raise RegistryError(
                    f"cannot remove {entry.ref}: the card of {unknown[0].ref} fails verification, so whether it "
                    f"derives from {entry.ref} is unknown ({unknown[0].problem}); remove or restore it first"
                )
            problem = entry.verification_problem()
            if problem:
                warnings.warn(f"{entry.ref} fails verification ({problem}); removing it", stacklevel=2)
            versions_dir = entry.path.parent
            atomic_write_json(versions_dir / f"{entry.version}{TOMBSTONE}",
                              {"removed": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "card": entry.card})
            trash = versions_dir / f"{TRASH_PREFIX}{entry.version}-{uuid.uuid4().hex}"
            os.rename(entry.path, trash)
            shutil.rmtree(trash, ignore_errors=True)
            # effective aliases drop the removed version and recompute "latest"
            atomic_write_json(base / ALIASES, self._user.aliases(entry.kind, entry.name))
        return entry

    # ------------------------------------------------------------------ reading
    def resolve(self, ref: str, kind: str | None = None) -> Entry:
        """The entry ``ref`` names; ``kind`` is the default kind when ``ref`` has none.

        The user store wins over the built-in one; if both hold the name a
        :class:`ShadowWarning` is emitted and ``Entry.shadows`` is ``"builtin"``.
        """
        parsed = parse_ref(ref)
        kind = parsed.kind or (check_token(kind, "kind") if kind else None)
        stores = [self._store(parsed.store)] if parsed.store else [self._user, self._builtin]
        prefix = f"{parsed.store}::" if parsed.store else ""
        name = parsed.name
        if kind is None:
            kinds = sorted({k for s in stores for k in s.kinds() if s.has(k, name)})
            if not kinds:
                known = sorted({f"{k}/{n}" for s in stores for k in s.kinds() for n in s.names(k)})
                raise RegistryError(f"no model {prefix + name!r} (known: {', '.join(known) or 'none'})")
            if len(kinds) > 1:
                raise RegistryError(
                    f"{name!r} is ambiguous ({', '.join(f'{k}/{name}' for k in kinds)}): write kind/name"
                )
            kind = kinds[0]
        holders = [s for s in stores if s.has(kind, name)]
        if not holders:
            known = sorted({n for s in stores for n in s.names(kind)})
            raise RegistryError(f"no {kind} {prefix + name!r} (known: {', '.join(known) or 'none'})")
        store, shadows = holders[0], None
        if len(holders) > 1:
            shadows = holders[1].label
            warnings.warn(
                f"user model {kind}/{name} shadows the built-in one; using the user's "
                f"(write builtin::{kind}/{name} for the built-in model)",
                ShadowWarning,
                stacklevel=2,
            )
        versions = store.versions(kind, name)
        aliases = store.aliases(kind, name)
        label = f"{'builtin::' if store.label == 'builtin' else ''}{kind}/{name}"
        if parsed.version is not None:
            if parsed.version not in versions:
                raise RegistryError(
                    f"no version {parsed.version} of {label} (versions: {', '.join(map(str, versions))})"
                )
            version = parsed.version
        elif parsed.selector in aliases:
            version = aliases[parsed.selector]
        else:
            raise RegistryError(f"no alias @{parsed.selector} for {label} (aliases: {', '.join(sorted(aliases))})")
        entry = store.entry(kind, name, version, aliases)
        entry.shadows = shadows
        return entry

    def list(self, kind: str | None = None) -> list[Entry]:
        """Every entry of both stores (optionally one kind), sorted by kind, name, store, version."""
        entries = list(self._user.entries(kind))
        for entry in entries:
            if self._builtin.has(entry.kind, entry.name):
                entry.shadows = "builtin"
        entries += self._builtin.entries(kind)
        return sorted(entries, key=lambda e: (e.kind, e.name, e.store != "user", e.version))

    def dependents(self, entry: Entry) -> list[Entry]:
        """Entries (both stores) that list ``entry`` among their parents."""
        return [e for e in self.list() if entry.ref in e.parents]

    def verify(self, ref: str | None = None) -> list[tuple[Entry, str | None]]:
        """Check hashes of one entry (``ref``) or all: ``(entry, None)`` if OK, else the error."""
        results: list[tuple[Entry, str | None]] = []
        for entry in [self.resolve(ref)] if ref else self.list():
            try:
                entry.verify()
                results.append((entry, None))
            except IntegrityError as exc:
                results.append((entry, str(exc)))
        return results

    # ------------------------------------------------------------------ helpers
    def _store(self, label: str) -> _Store:
        return self._user if label == "user" else self._builtin

    @staticmethod
    def _check_settable_alias(alias: str) -> None:
        check_alias(alias)
        if alias == "latest":
            raise RegistryError("alias 'latest' is managed automatically (it is always the newest version)")

    @staticmethod
    def _writable(entry: Entry, action: str) -> Entry:
        if entry.store != "user":
            raise RegistryError(f"cannot {action} {entry.ref}: the built-in store is read-only")
        return entry

    def _beats_best(self, kind: str, name: str, best: int | None, metric: dict) -> bool:
        """Whether ``metric`` (lower is better) should take ``best`` from version ``best``."""
        if best is None:
            return True
        best_entry = self._user.entry(kind, name, best)
        current = best_entry.card.get("primary_metric")
        if not current or best_entry.problem:  # no metric, or one that cannot be trusted
            return True
        if current["name"] != metric["name"]:
            warnings.warn(
                f"{kind}/{name}: not moving @best: new metric {metric['name']!r} is not comparable "
                f"with {current['name']!r} of version {best}",
                stacklevel=3,
            )
            return False
        return metric["value"] < float(current["value"])

    @staticmethod
    def _publish(staging: Path, versions_dir: Path, card: dict) -> int:
        """Rename ``staging`` to the next free version number (retrying on races)."""
        version = _highest_version(versions_dir) + 1
        owner = staging / OWNER
        for _ in range(_MAX_PUBLISH_ATTEMPTS):
            card["version"] = version
            atomic_write_json(staging / CARD, seal_card(card))
            target = versions_dir / str(version)
            if not target.exists():
                # the owner file must not be published; its lock stays held (the file
                # handle is open) until the rename, and a folder without one is left
                # alone while young (see clean_stale)
                if owner.exists():
                    os.unlink(owner)
                try:
                    os.rename(staging, target)
                    return version
                except OSError as exc:
                    if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            version = max(version + 1, _highest_version(versions_dir) + 1)
        raise RegistryError(f"could not publish a new version in {versions_dir} (too much contention)")

    def _writing(self, folder: Path):
        """Context: an OSError while writing the user store becomes a one-line RegistryError."""
        return _registry_write_errors(self.root, folder)

    @staticmethod
    @contextmanager
    def _locked(base: Path) -> Iterator[None]:
        base.mkdir(parents=True, exist_ok=True)
        with open(base / LOCK, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _registry_write_errors(root: Path, folder: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        where = exc.filename or folder
        reason = exc.strerror or type(exc).__name__
        raise RegistryError(
            f"the registry {root} is not writable: {where}: {reason} "
            "(give another one with --registry PATH, or train with --no-register)"
        ) from None


def _new_staging(versions_dir: Path):
    """A fresh staging folder in ``versions_dir`` and the open, flock-ed handle of its
    ``.owner`` file (closing the handle releases the lock; so does the process dying).
    The owner file is locked before it gets its name, so a cleaner never sees it unlocked
    while its writer lives."""
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=versions_dir))
    try:
        os.chmod(staging, 0o755)
        handle = open(staging / f"{OWNER}.new", "wb")
        fcntl.flock(handle, fcntl.LOCK_EX)
        os.rename(staging / f"{OWNER}.new", staging / OWNER)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return staging, handle


def _is_stale(staging: Path) -> bool:
    """Whether the writer of a staging folder is gone (its owner lock is free)."""
    import time

    try:
        handle = open(staging / OWNER, "rb")
    except FileNotFoundError:
        try:
            return time.time() - staging.stat().st_mtime > STALE_UNOWNED_SECONDS
        except FileNotFoundError:
            return False  # published or removed meanwhile
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # its writer holds the lock
        return True


def open_registry() -> Registry:
    """The user's registry (``$ADEX_HOME/registry``) backed by the built-in store."""
    return Registry()
