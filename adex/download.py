"""Download datasets from their public origin and verify them against pinned checksums.

Like torch-geometric or matminer dataset downloads, ``adex data download NAME`` rebuilds
``<data dir>/<NAME>`` with the layout of the shipped data (see ``MANIFEST.md`` beside it):

1. **Fetch** one archive per source repository at a pinned commit,
   ``{base}/{owner}/{repo}/tar.gz/{commit}`` with ``base = https://codeload.github.com``
   by default (one request instead of ~40,000 single-file ones for the MP set). The base
   is overridable (``--base-url``, env ``ADEX_DOWNLOAD_URL``; ``file://`` mirrors work
   too). The archive is streamed to a temporary file with a rich progress bar.
2. **Extract** only the members the dataset needs, renamed to the local layout by the
   :data:`RECIPES` rules (e.g. Witman ``cgcnn/id_prop.csv.train_1.00k0`` ->
   ``splits/train_1.00k0.csv``), and **derive** the files the shipped data derives:
   ``witman2023_vacancies/vacancies.csv`` (from the CIFs read in file order and
   ``id_prop.csv``), ``oxide_bandgaps/id_prop.csv`` (repeated rows dropped, CIFs without
   a row dropped) and ``mp_formation_energy/structures.tar.gz`` (the source's CIFs packed).
3. **Verify** against ``adex/data/datasets.json``: sha256 and size per file; for folders
   of thousands of files (``structures/``) one tree digest (sha256 over the sorted
   ``"<relative path> <sha256>\\n"`` lines) plus the file count; for the packed MP
   archive the same digest over its members (names and bytes), since a re-packed
   ``tar.gz`` need not be byte-identical (it is when GNU ``gzip`` is installed).
4. **Install atomically**: everything is built in a hidden temporary folder beside the
   destination and renamed into place only once verified, so an interrupted or failing
   download leaves no partial dataset. A dataset already present and verified is not
   downloaded again (``force=True`` / ``--force`` redoes it).

The checksum manifest is generated from a copy of the shipped data with
``python -m adex.download make-manifest --from DIR``.
Importing this module does no work; rich, tarfile readers and ASE load when used.
"""
from __future__ import annotations

import csv
import hashlib
import http.client
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Iterable, Mapping

from adex.errors import DataError
from adex.fileio import sha256_file

DEFAULT_BASE_URL = "https://codeload.github.com"
BASE_URL_ENV = "ADEX_DOWNLOAD_URL"
MANIFEST_FORMAT = 1
TREE_DIGEST_RULE = 'sha256 over the sorted lines "<path relative to the folder> <sha256 of the file>\\n"'
_WORK_PREFIX = ".adex-download-"
_PACK_DIR = ".pack"
# Packing parameters of the shipped mp_formation_energy/structures.tar.gz (GNU tar format,
# members sorted by name, fixed owner/mode/mtime, GNU gzip -n -6): with GNU gzip installed
# the re-packed archive is byte-identical to the shipped one.
_PACK_MTIME = 1577836800  # 2020-01-01T00:00:00Z
_PACK_MODE = 0o664
_GZIP_LEVEL = 6
_LFS_POINTER = b"version https://git-lfs.github.com/spec/"


# --------------------------------------------------------------------------- recipes


@dataclass(frozen=True)
class Origin:
    """Where a dataset is published: a folder of a GitHub repository at a fixed commit."""

    owner: str
    repo: str
    commit: str
    folder: str

    def archive_url(self, base_url: str | None = None) -> str:
        """URL of the repository archive at :attr:`commit` (codeload layout)."""
        base = (base_url or DEFAULT_BASE_URL).rstrip("/")
        return f"{base}/{self.owner}/{self.repo}/tar.gz/{self.commit}"

    @property
    def web_url(self) -> str:
        """Human-readable address of the source folder."""
        return f"https://github.com/{self.owner}/{self.repo}/tree/{self.commit}/{self.folder}".rstrip("/")

    @property
    def key(self) -> tuple[str, str, str]:
        """Identifies the archive: datasets with the same key share one download."""
        return (self.owner, self.repo, self.commit)

    def to_dict(self) -> dict[str, str]:
        return {"owner": self.owner, "repo": self.repo, "commit": self.commit, "folder": self.folder}

    @classmethod
    def from_dict(cls, data: Mapping[str, str]) -> "Origin":
        try:
            return cls(str(data["owner"]), str(data["repo"]), str(data["commit"]), str(data.get("folder", "")))
        except KeyError as exc:
            raise DataError(f"dataset manifest: origin lacks {exc.args[0]!r}") from None


@dataclass(frozen=True)
class Rule:
    """Maps source paths matching ``pattern`` to the local path ``dest``.

    ``pattern`` is a regular expression matched against the whole path relative to the
    origin folder (relative to the repository root if ``from_root``); ``dest`` is a
    :meth:`str.format` template filled with the pattern's named groups.
    """

    pattern: str
    dest: str
    from_root: bool = False

    def apply(self, path: str, folder: str) -> str | None:
        """Local path for repository path ``path``, or None if the rule does not match."""
        prefix = "" if self.from_root or not folder.strip("/") else folder.strip("/") + "/"
        if not path.startswith(prefix):
            return None
        match = re.fullmatch(self.pattern, path[len(prefix):])
        if match is None:
            return None
        return self.dest.format(**match.groupdict())


Deriver = Callable[[Path, "_Reporter"], None]


@dataclass(frozen=True)
class Recipe:
    """How to rebuild one dataset folder from its origin's archive.

    Rules are tried in order; the first that matches a member decides its local path,
    and when several members map to the same local path the earliest rule wins.
    ``trees`` are folders checked by one digest; ``archives`` are tar files checked by
    the digest of their members. ``derive`` builds the derived files in the staging
    folder after extraction.
    """

    name: str
    description: str
    license: str
    origin: Origin
    rules: tuple[Rule, ...]
    trees: tuple[str, ...] = ()
    archives: tuple[str, ...] = ()
    derive: Deriver | None = None


_LICENSE_RULE = Rule(r"LICENSE", "LICENSE", from_root=True)


def _derive_witman(stage: Path, report: "_Reporter") -> None:
    build_vacancies_csv(stage, progress=report.progress)


def _derive_oxide(stage: Path, report: "_Reporter") -> None:
    removed_rows, stray = dedupe_id_prop(stage)
    if removed_rows:
        report.note(f"dropped {removed_rows} repeated rows of id_prop.csv")
    for name in stray:
        report.note(f"dropped {name}: no row in id_prop.csv (stray duplicate)")


def _derive_mp(stage: Path, report: "_Reporter") -> None:
    source = stage / _PACK_DIR / "structures"
    if not source.is_dir():
        raise DataError("mp_formation_energy: the archive holds no pretraindata/*.cif")
    byte_identical = pack_structures(source, stage / "structures.tar.gz")
    if not byte_identical:
        report.note("structures.tar.gz packed with zlib (GNU gzip not found): content-equal, not byte-identical")
    shutil.rmtree(stage / _PACK_DIR)


_WITMAN_FOLDER = "cgcnndefect/examples/OxideMLpaper1"
_GARRIGUS = ("justinmgarrigus", "cgcnndefect", "415ee8ca56c4b7c17e436dcd43fc8587b54117dc")

RECIPES: dict[str, Recipe] = {
    "witman2023_vacancies": Recipe(
        name="witman2023_vacancies",
        description="1,481 neutral vacancy formation enthalpies in 199 oxide hosts (Witman et al. 2023)",
        license="MIT",
        origin=Origin("mwitman1", "cgcnndefect", "985a248f3cd72c94a63090cb387e043b603ac2f3", _WITMAN_FOLDER),
        rules=(
            _LICENSE_RULE,
            Rule(r"cgcnn/(?P<name>[^/]+\.cif)", "structures/{name}"),
            Rule(r"cgcnn/id_prop\.csv\.all", "id_prop.csv"),
            Rule(r"cgcnn/id_prop\.csv\.(?P<split>(?:train|hold)_[^/]+)", "splits/{split}.csv"),
            Rule(r"csvs/(?P<name>[^/]+\.csv)", "hosts/{name}"),
        ),
        trees=("structures",),
        derive=_derive_witman,
    ),
    "mp_formation_energy": Recipe(
        name="mp_formation_energy",
        description="36,835 Materials Project crystals, formation energy per atom (eV/atom)",
        license="MIT (code repository); Materials Project data CC BY 4.0",
        origin=Origin(*_GARRIGUS, f"{_WITMAN_FOLDER}/pretraindata"),
        rules=(
            _LICENSE_RULE,
            Rule(r"id_prop\.csv", "id_prop.csv"),
            Rule(r"(?P<name>[^/]+\.cif)", f"{_PACK_DIR}/structures/{{name}}"),
        ),
        archives=("structures.tar.gz",),
        derive=_derive_mp,
    ),
    "oxide_bandgaps": Recipe(
        name="oxide_bandgaps",
        description="824 oxide crystals with DFT band gaps (eV), Kumagai et al.",
        license="MIT (code repository); data CC BY 4.0",
        origin=Origin(*_GARRIGUS, f"{_WITMAN_FOLDER}/bandgapdata"),
        rules=(
            _LICENSE_RULE,
            Rule(r"(?P<name>[^/]+\.cif)", "structures/{name}"),
            Rule(r"id_prop\.csv\.bandgap", "id_prop.csv"),
        ),
        trees=("structures",),
        derive=_derive_oxide,
    ),
    "cgcnn_pretrained": Recipe(
        name="cgcnn_pretrained",
        description="original CGCNN pretrained checkpoints and atom_init.json (Xie & Grossman 2018)",
        license="MIT",
        origin=Origin("txie-93", "cgcnn", "f42ab233c4ee0c416879d6bc2d22a264418413ad", "pre-trained"),
        rules=(
            _LICENSE_RULE,
            Rule(r"(?P<name>[^/]+\.pth\.tar)", "{name}"),
            Rule(r"README\.md", "README.md"),
            # atom_init.json: beside the checkpoints if there, else the one the CGCNN
            # README's predict example uses (identical in both sample data folders).
            Rule(r"atom_init\.json", "atom_init.json"),
            Rule(r"data/sample-regression/atom_init\.json", "atom_init.json", from_root=True),
        ),
    ),
}


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
                pairs.append((_normalize_member(member.name), hashlib.sha256(handle.read()).hexdigest()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        raise DataError(f"{path}: not a readable tar archive ({type(exc).__name__}: {exc})") from None
    return tree_digest(pairs), len(pairs)


def _normalize_member(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


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


def dataset_names(manifest: Mapping | None = None) -> list[str]:
    """Names of the datasets that can be downloaded, sorted."""
    manifest = manifest if manifest is not None else load_manifest()
    return sorted(manifest["datasets"])


def dataset_entry(name: str, manifest: Mapping | None = None) -> dict:
    """Manifest entry of ``name``; DataError listing the known names if unknown."""
    manifest = manifest if manifest is not None else load_manifest()
    entry = manifest["datasets"].get(name)
    if entry is None or name not in RECIPES:
        known = ", ".join(n for n in sorted(manifest["datasets"]) if n in RECIPES)
        raise DataError(f"unknown dataset {name!r} (known: {known})")
    return entry


def describe_dataset(root: Path, recipe: Recipe) -> dict:
    """Manifest entry (origin and checksums) for the dataset folder ``root``."""
    if not root.is_dir():
        raise DataError(f"{root}: no such dataset folder")
    files: dict[str, dict] = {}
    trees: dict[str, dict] = {}
    archives: dict[str, dict] = {}
    for tree in recipe.trees:
        if not (root / tree).is_dir():
            raise DataError(f"{root / tree}: folder missing")
        digest, count, size = directory_digest(root / tree)
        trees[tree] = {"digest": digest, "count": count, "size": size}
    for name in recipe.archives:
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
    entry: dict = {
        "description": recipe.description,
        "license": recipe.license,
        "origin": recipe.origin.to_dict(),
        "source": recipe.origin.web_url,
        "files": files,
    }
    if trees:
        entry["trees"] = trees
    if archives:
        entry["archives"] = archives
    return entry


def build_manifest(shared_root: str | os.PathLike, names: Iterable[str] | None = None) -> dict:
    """Checksum manifest of the datasets found in ``shared_root`` (the shipped data)."""
    shared_root = Path(shared_root)
    datasets = {}
    for name in names or RECIPES:
        if name not in RECIPES:
            raise DataError(f"unknown dataset {name!r} (known: {', '.join(sorted(RECIPES))})")
        datasets[name] = describe_dataset(shared_root / name, RECIPES[name])
    return {
        "format": MANIFEST_FORMAT,
        "about": "sha256 checksums of the adex datasets; regenerate with "
        "`python -m adex.download make-manifest --from DIR`",
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
    entry = dataset_entry(name, manifest)
    return _verify_entry(name, Path(root), entry)


def _verify_entry(name: str, root: Path, entry: Mapping) -> VerifyResult:
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
    entry = dataset_entry(name, manifest)
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


# --------------------------------------------------------------------------- derived files


VACANCY_COLUMNS = ("id", "host", "site_label", "element", "frac_x", "frac_y", "frac_z", "n_atoms", "dH_eV")


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return [row for row in csv.reader(handle) if row and row[0].strip()]


def _vacated_sites(paths: list[str]) -> list[tuple[str, float, float, float, int] | str]:
    """Element, fractional coordinates of atom 0 and atom count of each CIF (or an error)."""
    from adex.errors import StructureError
    from adex.io import read_structure

    out: list[tuple[str, float, float, float, int] | str] = []
    for path in paths:
        try:
            structure = read_structure(path)
        except StructureError as exc:
            out.append(str(exc))
            continue
        site = structure[0]
        x, y, z = (float(v) for v in site.frac_coords)
        out.append((site.specie.symbol, x, y, z, len(structure)))
    return out


def build_vacancies_csv(root: Path, workers: int | None = None, progress: bool = False) -> Path:
    """Write ``root/vacancies.csv`` from ``root/structures/*.cif`` and ``root/id_prop.csv``.

    One row per ``id_prop.csv`` row, in its order: ``id,host,site_label,element,
    frac_x,frac_y,frac_z,n_atoms,dH_eV``, where the vacated atom is atom 0 of the CIF as
    written (read with :func:`adex.io.read_structure`, which keeps the file's order),
    ``host``/``site_label`` are the parts of the id around its first ``-`` and ``dH_eV``
    is copied verbatim. Reproduces the shipped file byte for byte.
    """
    rows = _read_rows(root / "id_prop.csv")
    paths = [str(root / "structures" / f"{row[0].strip()}.cif") for row in rows]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"witman2023_vacancies: {Path(missing[0]).name} is missing (named in id_prop.csv)")
    chunk = 64
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(paths) > 200 else 1
    results: list[tuple[str, float, float, float, int] | str] = []
    with _progress_bar(progress, counts=True) as bar:
        task = bar.add_task("reading CIFs", total=len(paths))
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            import adex.io  # noqa: F401  (imported once here, inherited by forked workers)

            with ProcessPoolExecutor(workers) as pool:
                for part in pool.map(_vacated_sites, chunks):
                    results.extend(part)
                    bar.advance(task, len(part))
        else:
            for paths_chunk in chunks:
                part = _vacated_sites(paths_chunk)
                results.extend(part)
                bar.advance(task, len(part))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(VACANCY_COLUMNS)
    for row, site in zip(rows, results):
        if isinstance(site, str):
            raise DataError(f"witman2023_vacancies: cannot build vacancies.csv: {site}")
        vid, value = row[0].strip(), row[1].strip()
        host, _, label = vid.partition("-")
        element, x, y, z, n_atoms = site
        writer.writerow([vid, host, label, element, f"{x:.6f}", f"{y:.6f}", f"{z:.6f}", n_atoms, value])
    out = root / "vacancies.csv"
    with open(out, "w", newline="") as handle:
        handle.write(buffer.getvalue())
    return out


def dedupe_id_prop(root: Path) -> tuple[int, list[str]]:
    """Drop repeated rows of ``root/id_prop.csv`` and CIFs in ``root/structures`` without a row.

    Returns ``(number of rows dropped, names of the CIFs removed)``. The first occurrence
    of each row is kept, in order, bytes unchanged.
    """
    path = root / "id_prop.csv"
    seen: set[bytes] = set()
    kept: list[bytes] = []
    dropped = 0
    for line in path.read_bytes().splitlines(keepends=True):
        key = line.rstrip(b"\r\n").strip()
        if not key:
            continue
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(line)
    path.write_bytes(b"".join(kept))
    ids = {line.split(b",", 1)[0].strip().decode("utf-8") for line in kept}
    structures = root / "structures"
    stray: list[str] = []
    if structures.is_dir():
        present = set()
        for cif in sorted(structures.iterdir()):
            if cif.suffix == ".cif" and cif.stem in ids:
                present.add(cif.stem)
            else:
                stray.append(cif.name)
                cif.unlink()
        lacking = sorted(ids - present)
        if lacking:
            raise DataError(f"{root.name}: no structure for {lacking[0]} (named in id_prop.csv)")
    return dropped, stray


def _tar_info(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = _PACK_MODE
    info.mtime = _PACK_MTIME
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


class _ZlibGzipWriter(io.RawIOBase):
    """Minimal write-only gzip stream via zlib (fallback when GNU gzip is absent)."""

    def __init__(self, out: IO[bytes]) -> None:
        self._out = out
        self._compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        self._out.write(self._compressor.compress(bytes(data)))
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._out.write(self._compressor.flush())
        super().close()


def _write_tar(folder: Path, names: list[str], stream: IO[bytes]) -> None:
    with tarfile.open(fileobj=stream, mode="w|", format=tarfile.GNU_FORMAT) as archive:
        for name in names:
            data = (folder / name).read_bytes()
            archive.addfile(_tar_info(name, len(data)), io.BytesIO(data))


def pack_structures(folder: Path, out: Path) -> bool:
    """Pack the files of ``folder`` (flat, sorted by name) into the gzip tar ``out``.

    Uses the shipped archive's conventions; with GNU ``gzip`` on PATH the result is
    byte-identical to it, otherwise zlib compresses (same members, other bytes).
    Returns whether GNU gzip was used.
    """
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    gzip_bin = shutil.which("gzip")
    with open(out, "wb") as handle:
        if gzip_bin:
            proc = subprocess.Popen([gzip_bin, "-n", f"-{_GZIP_LEVEL}", "-c"], stdin=subprocess.PIPE, stdout=handle)
            assert proc.stdin is not None
            try:
                _write_tar(folder, names, proc.stdin)
            finally:
                proc.stdin.close()
                code = proc.wait()
            if code != 0:
                raise DataError(f"gzip failed (exit {code}) while packing {out.name}")
            return True
        writer = _ZlibGzipWriter(handle)
        _write_tar(folder, names, writer)  # type: ignore[arg-type]
        writer.close()
        return False


# --------------------------------------------------------------------------- fetching


class _Reporter:
    """Status lines on stderr (rich), collected notes, and the progress setting."""

    def __init__(self, progress: bool) -> None:
        self.progress = progress
        self.notes: list[str] = []

    def say(self, message: str) -> None:
        if self.progress:
            from rich.console import Console

            Console(stderr=True, highlight=False, soft_wrap=True).print(message, markup=False)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self.say(f"  {message}")


def _progress_enabled(progress: bool | None) -> bool:
    if progress is not None:
        return progress
    return not os.environ.get("ADEX_NO_PROGRESS")


class _NullBar:
    def __enter__(self) -> "_NullBar":
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def advance(self, *args, **kwargs) -> None:
        return None

    def update(self, *args, **kwargs) -> None:
        return None


def _progress_bar(enabled: bool, counts: bool = False):
    """A rich progress bar on stderr (bytes, or counts), or a no-op one."""
    if not enabled:
        return _NullBar()
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
        if counts
        else [
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
        ]
    )
    return Progress(*columns, console=Console(stderr=True), transient=False)


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def fetch(
    url: str, target: Path, *, timeout: float = 60.0, progress: bool = False, label: str = "", description: str = ""
) -> int:
    """Stream ``url`` into the file ``target``; returns the byte count.

    ``label`` names what is downloaded in error messages, ``description`` in the
    progress bar. Raises DataError with a one-line message when the host is
    unreachable, answers with an HTTP error, or the transfer stops early.
    """
    from adex import __version__

    label = label or url
    request = urllib.request.Request(url, headers={"User-Agent": f"adex/{__version__} (dataset download)"})
    host = urllib.parse.urlsplit(url).netloc or url
    written = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress_bar(progress) as bar:
                task = bar.add_task(f"downloading {description or label}", total=total)
                while block := response.read(1 << 20):
                    out.write(block)
                    written += len(block)
                    bar.advance(task, len(block))
            if total is not None and written < total:
                raise DataError(f"download of {label} interrupted: got {written} of {total} bytes from {url}")
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot download {label}: HTTP {exc.code} {_one_line(exc.reason)} from {url}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, (socket.timeout, TimeoutError)):
            raise DataError(f"cannot download {label}: {host} did not answer within {timeout:g} s") from None
        raise DataError(
            f"cannot download {label}: {host} unreachable ({_one_line(reason)}); "
            f"check the network, or use a mirror (--base-url / {BASE_URL_ENV})"
        ) from None
    except (socket.timeout, TimeoutError):
        raise DataError(f"download of {label} interrupted: {host} stopped answering after {written} bytes") from None
    except (OSError, EOFError, ValueError, http.client.HTTPException) as exc:  # reset, IncompleteRead...
        if isinstance(exc, OSError) and getattr(exc, "filename", None) == str(target):
            raise DataError(f"cannot write {target}: {exc.strerror}") from None
        raise DataError(
            f"download of {label} interrupted after {written} bytes ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    return written


# --------------------------------------------------------------------------- extraction


def _safe_relpath(dest: str) -> str:
    path = PurePosixPath(dest)
    if path.is_absolute() or not path.parts or any(part in ("", ".", "..") for part in path.parts):
        raise DataError(f"refusing unsafe path {dest!r} from the archive")
    return path.as_posix()


def _wanted(entry: Mapping) -> Callable[[str], bool]:
    files = set(entry.get("files", {}))
    trees = tuple(t + "/" for t in entry.get("trees", {}))

    def wanted(dest: str) -> bool:
        return dest in files or dest.startswith(trees) or dest.startswith(_PACK_DIR + "/")

    return wanted


def extract(archive: Path, recipe: Recipe, origin: Origin, entry: Mapping, stage: Path) -> int:
    """Copy the members the dataset needs from ``archive`` into ``stage``; returns their count.

    Members are ``<top folder>/<path in repository>`` (codeload layout); only regular
    files whose path matches a rule and lands on a path the manifest expects are kept.
    """
    wanted = _wanted(entry)
    chosen: dict[str, int] = {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = _normalize_member(member.name)
                if "/" not in name:
                    continue
                path = name.split("/", 1)[1]
                for priority, rule in enumerate(recipe.rules):
                    dest = rule.apply(path, origin.folder)
                    if dest is None:
                        continue
                    if wanted(dest) and chosen.get(dest, len(recipe.rules)) > priority:
                        dest = _safe_relpath(dest)
                        target = stage / dest
                        target.parent.mkdir(parents=True, exist_ok=True)
                        source = tar.extractfile(member)
                        assert source is not None
                        with open(target, "wb") as out:
                            shutil.copyfileobj(source, out, 1 << 20)
                        if member.size < 512 and target.read_bytes().startswith(_LFS_POINTER):
                            raise DataError(
                                f"{recipe.name}: {path} is a Git LFS pointer in the archive, not the file itself"
                            )
                        chosen[dest] = priority
                    break
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{recipe.name}: the downloaded archive is not a readable tar.gz ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    if not chosen:
        raise DataError(
            f"{recipe.name}: the archive of {origin.owner}/{origin.repo}@{origin.commit[:7]} holds none of the "
            f"dataset's files (folder {origin.folder or '/'})"
        )
    return len(chosen)


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
        names: dataset names (see :func:`dataset_names`).
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
        raise DataError(f"no dataset named (known: {', '.join(dataset_names(manifest))})")
    entries = {name: dataset_entry(name, manifest) for name in names}
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
                check = _verify_entry(name, dest, entries[name])
            except DataError as exc:
                raise DataError(f"{dest} exists but does not verify ({exc}); rerun with --force to replace it") from None
            results[name] = DownloadResult(name, dest, "present", check.files, check.bytes)
            report.say(f"{name}: already present and verified at {dest}")
            continue
        origin = Origin.from_dict(entries[name]["origin"])
        pending.setdefault(origin.key, []).append(name)

    if pending:
        _clean_stale_work_dirs(root)
        try:
            work = Path(tempfile.mkdtemp(prefix=_WORK_PREFIX, dir=root))
        except OSError as exc:
            raise DataError(f"cannot write in data folder {root}: {exc.strerror or exc}") from None
        try:
            (work / "owner").write_text(f"{socket.gethostname()} {os.getpid()}\n")
            for group in pending.values():
                origin = Origin.from_dict(entries[group[0]]["origin"])
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
    recipe = RECIPES[name]
    origin = Origin.from_dict(entry["origin"])
    stage = work / name
    stage.mkdir()
    start = len(report.notes)
    t0 = time.perf_counter()
    count = extract(archive, recipe, origin, entry, stage)
    report.say(f"{name}: extracted {count} files")
    if recipe.derive is not None:
        recipe.derive(stage, report)
    check = _verify_entry(name, stage, entry)
    if not check.byte_identical_archives:
        report.note("packed archive is content-identical to the published one (bytes differ)")
    dest = root / name
    try:
        _install(stage, dest, work)
    except DataError:
        if dest.exists():  # another process installed it meanwhile
            done = _verify_entry(name, dest, entry)
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
