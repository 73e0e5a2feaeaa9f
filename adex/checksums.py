"""Checksums of dataset folders: digests, the manifest ``adex/data/datasets.json``, verification.

The manifest holds, for each dataset of :data:`adex.catalog.CATALOG`, only checksums:
sha256 and size per file; for folders of thousands of files (``structures/``) one tree
digest (sha256 over the sorted ``"<relative path> <sha256>\\n"`` lines) plus the file
count; for a packed archive (``structures.tar.gz``) the same digest over its members
(names and bytes), since a re-packed ``tar.gz`` need not be byte-identical. What a
dataset is, where it comes from and its layout live in the catalogue, not here.

The manifest is generated from a copy of the shipped data with
``python -m adex.download make-manifest --from DIR`` (:func:`build_manifest`).
"""
from __future__ import annotations

import hashlib
import json
import os
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from adex.archive import normalize_member
from adex.catalog import CATALOG, Dataset, get_dataset
from adex.errors import DataError
from adex.fileio import sha256_file

MANIFEST_FORMAT = 2  # 2: checksums only (format 1 repeated the catalogue's description, license and origin)
TREE_DIGEST_RULE = 'sha256 over the sorted lines "<path relative to the folder> <sha256 of the file>\\n"'


# --------------------------------------------------------------------------- digests


def tree_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """Digest of a set of files given as ``(relative path, sha256 hex)`` pairs.

    sha256 over the lines ``"<path> <sha256>\\n"`` sorted by path. Used for folders of
    thousands of files and for the members of a tar archive alike.
    """
    digest = hashlib.sha256()
    for path, sha in sorted(pairs):
        digest.update(f"{path} {sha}\n".encode("utf-8"))
    return digest.hexdigest()


def _tree_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def directory_digest(folder: Path) -> tuple[str, int, int]:
    """``(tree digest, file count, total bytes)`` of every file below ``folder``."""
    pairs: list[tuple[str, str]] = []
    size = 0
    for path in _tree_files(folder):
        pairs.append((path.relative_to(folder).as_posix(), sha256_file(path)))
        size += path.stat().st_size
    return tree_digest(pairs), len(pairs), size


def tar_content_digest(path: Path) -> tuple[str, int]:
    """``(digest over (member name, sha256 of member bytes), member count)`` of a tar file.

    Independent of compression, member order and metadata: two archives holding the
    same files have the same digest even when their bytes differ.
    """
    pairs: list[tuple[str, str]] = []
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                if not member.isfile():
                    continue
                handle = archive.extractfile(member)
                assert handle is not None
                pairs.append((normalize_member(member.name), hashlib.sha256(handle.read()).hexdigest()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({type(exc).__name__}: {exc})") from None
    return tree_digest(pairs), len(pairs)


# --------------------------------------------------------------------------- manifest


def default_manifest_path() -> Path:
    """The checksum manifest shipped with adex (``adex/data/datasets.json``)."""
    return Path(__file__).resolve().parent / "data" / "datasets.json"


def load_manifest(path: str | os.PathLike | None = None) -> dict:
    """Read and sanity-check a checksum manifest (default: the shipped one)."""
    path = Path(path) if path else default_manifest_path()
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"dataset manifest {path} not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"dataset manifest {path} unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(
        manifest.get("datasets"), dict
    ):
        raise DataError(f"dataset manifest {path}: not a format-{MANIFEST_FORMAT} adex dataset manifest")
    return manifest


def checksum_entry(name: str, manifest: Mapping | None = None) -> dict:
    """Checksums of dataset ``name``; DataError listing the known names if unknown."""
    get_dataset(name)
    manifest = manifest if manifest is not None else load_manifest()
    entry = manifest["datasets"].get(name)
    if entry is None:
        raise DataError(
            f"the dataset manifest has no checksums for {name}; regenerate it with "
            "`python -m adex.download make-manifest --from DIR`"
        )
    return entry


def describe_dataset(root: Path, dataset: Dataset) -> dict:
    """Checksums of the dataset folder ``root`` laid out as ``dataset`` says."""
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    files: dict[str, dict] = {}
    trees: dict[str, dict] = {}
    archives: dict[str, dict] = {}
    for tree in dataset.trees:
        if not (root / tree).is_dir():
            raise DataError(f"{root / tree}: folder missing")
        digest, count, size = directory_digest(root / tree)
        trees[tree] = {"digest": digest, "count": count, "size": size}
    for name in dataset.archives:
        path = root / name
        if not path.is_file():
            raise DataError(f"{path}: archive missing")
        digest, count = tar_content_digest(path)
        archives[name] = {
            "content_digest": digest,
            "count": count,
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
        }
    for path in _tree_files(root):
        rel = path.relative_to(root).as_posix()
        if rel in archives or any(rel.startswith(t + "/") for t in trees):
            continue
        files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    entry: dict = {"files": files}
    if trees:
        entry["trees"] = trees
    if archives:
        entry["archives"] = archives
    return entry


def build_manifest(shared_root: str | os.PathLike, names: Iterable[str] | None = None) -> dict:
    """Checksum manifest of the datasets found in ``shared_root`` (the shipped data)."""
    shared_root = Path(shared_root)
    datasets = {}
    for name in names or CATALOG:
        datasets[name] = describe_dataset(shared_root / name, get_dataset(name))
    return {
        "format": MANIFEST_FORMAT,
        "about": "sha256 checksums of the adex datasets (the dataset table itself: adex/catalog.py); "
        "regenerate with `python -m adex.download make-manifest --from DIR`",
        "tree_digest": TREE_DIGEST_RULE,
        "datasets": datasets,
    }


# --------------------------------------------------------------------------- verification


@dataclass
class VerifyResult:
    """Outcome of a successful verification."""

    name: str
    root: Path
    files: int
    bytes: int
    byte_identical_archives: bool = True


def _short(sha: str) -> str:
    return sha[:12]


def verify_dataset(name: str, root: str | os.PathLike, manifest: Mapping | None = None) -> VerifyResult:
    """Check ``root`` (the folder of dataset ``name``) against the manifest.

    Files are checked in path order; the first missing or mismatching one raises
    :class:`DataError` naming it. Files not in the manifest (outside the digested
    folders) are ignored.
    """
    entry = checksum_entry(name, manifest)
    return verify_entry(name, Path(root), entry)


def verify_entry(name: str, root: Path, entry: Mapping) -> VerifyResult:
    """Check ``root`` against the checksums ``entry`` (see :func:`verify_dataset`)."""
    if not root.is_dir():
        raise DataError(f"{name}: not found at {root}")
    checks: list[tuple[str, str, Mapping]] = []
    checks += [(rel, "file", spec) for rel, spec in entry.get("files", {}).items()]
    checks += [(rel, "tree", spec) for rel, spec in entry.get("trees", {}).items()]
    checks += [(rel, "archive", spec) for rel, spec in entry.get("archives", {}).items()]
    n_files = n_bytes = 0
    identical = True
    for rel, kind, spec in sorted(checks, key=lambda c: c[0]):
        path = root / rel
        if kind == "file":
            if not path.is_file():
                raise DataError(f"{name}: {rel} is missing (in {root})")
            size = path.stat().st_size
            if size != spec["size"]:
                raise DataError(f"{name}: {rel} does not match its checksum (size {size}, expected {spec['size']})")
            sha = sha256_file(path)
            if sha != spec["sha256"]:
                raise DataError(
                    f"{name}: {rel} does not match its checksum (sha256 {_short(sha)}…, expected {_short(spec['sha256'])}…)"
                )
            n_files, n_bytes = n_files + 1, n_bytes + size
        elif kind == "tree":
            if not path.is_dir():
                raise DataError(f"{name}: folder {rel}/ is missing (in {root})")
            digest, count, size = directory_digest(path)
            if count != spec["count"]:
                raise DataError(f"{name}: {rel}/ does not match its checksum ({count} files, expected {spec['count']})")
            if digest != spec["digest"]:
                raise DataError(
                    f"{name}: {rel}/ does not match its checksum (tree digest {_short(digest)}…, expected "
                    f"{_short(spec['digest'])}…; a file was changed or renamed)"
                )
            n_files, n_bytes = n_files + count, n_bytes + size
        else:
            if not path.is_file():
                raise DataError(f"{name}: {rel} is missing (in {root})")
            digest, count = tar_content_digest(path)
            if count != spec["count"]:
                raise DataError(f"{name}: {rel} does not match its checksum ({count} members, expected {spec['count']})")
            if digest != spec["content_digest"]:
                raise DataError(
                    f"{name}: {rel} does not match its checksum (content digest {_short(digest)}…, expected "
                    f"{_short(spec['content_digest'])}…)"
                )
            size = path.stat().st_size
            if "sha256" in spec:
                identical = identical and size == spec.get("size") and sha256_file(path) == spec["sha256"]
            n_files, n_bytes = n_files + 1, n_bytes + size
    return VerifyResult(name, root, n_files, n_bytes, identical)


def quick_status(name: str, root: str | os.PathLike, manifest: Mapping | None = None) -> str:
    """``"missing"``, ``"present"`` or ``"incomplete (...)"`` from file existence and sizes only."""
    entry = checksum_entry(name, manifest)
    root = Path(root)
    if not root.is_dir():
        return "missing"
    for rel, spec in sorted(entry.get("files", {}).items()):
        path = root / rel
        if not path.is_file():
            return f"incomplete ({rel} missing)"
        if path.stat().st_size != spec["size"]:
            return f"incomplete ({rel} has the wrong size)"
    for rel in sorted(entry.get("trees", {})):
        if not (root / rel).is_dir():
            return f"incomplete ({rel}/ missing)"
    for rel in sorted(entry.get("archives", {})):
        if not (root / rel).is_file():
            return f"incomplete ({rel} missing)"
    return "present"
