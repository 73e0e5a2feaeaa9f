"""Tar archives of datasets: take a dataset's files out of a source archive, pack a folder.

* :func:`extract` copies the members a dataset needs from a repository archive
  (codeload layout: ``<top folder>/<path in repository>``) into a staging folder,
  renamed to the local layout by the dataset's :class:`~adex.catalog.Rule` s (e.g. Witman
  ``cgcnn/id_prop.csv.train_1.00k0`` -> ``splits/train_1.00k0.csv``).
* :func:`pack_structures` packs a flat folder into a gzip tar with the conventions of
  the shipped ``mp_formation_energy/structures.tar.gz``: with GNU ``gzip`` installed the
  result is byte-identical to it.
"""
from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Callable, Mapping

from adex.catalog import PACK_DIR, Dataset
from adex.errors import DataError

_LFS_POINTER = b"version https://git-lfs.github.com/spec/"
# Packing parameters of the shipped mp_formation_energy/structures.tar.gz (GNU tar format,
# members sorted by name, fixed owner/mode/mtime, GNU gzip -n -6).
_PACK_MTIME = 1577836800  # 2020-01-01T00:00:00Z
_PACK_MODE = 0o664
_GZIP_LEVEL = 6


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def normalize_member(name: str) -> str:
    """A tar member name without leading ``./``."""
    while name.startswith("./"):
        name = name[2:]
    return name


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
        return dest in files or dest.startswith(trees) or dest.startswith(PACK_DIR + "/")

    return wanted


def extract(archive: Path, dataset: Dataset, entry: Mapping, stage: Path) -> int:
    """Copy the members ``dataset`` needs from ``archive`` into ``stage``; returns their count.

    Members are ``<top folder>/<path in repository>`` (codeload layout, the repository of
    ``dataset.origin``); only regular files whose path matches a rule and lands on a path the checksum ``entry`` expects
    are kept.
    """
    wanted = _wanted(entry)
    rules, origin = dataset.rules, dataset.origin
    chosen: dict[str, int] = {}
    try:
        with tarfile.open(archive, "r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = normalize_member(member.name)
                if "/" not in name:
                    continue
                path = name.split("/", 1)[1]
                for priority, rule in enumerate(rules):
                    dest = rule.apply(path, origin.folder)
                    if dest is None:
                        continue
                    if wanted(dest) and chosen.get(dest, len(rules)) > priority:
                        dest = _safe_relpath(dest)
                        target = stage / dest
                        target.parent.mkdir(parents=True, exist_ok=True)
                        source = tar.extractfile(member)
                        assert source is not None
                        with open(target, "wb") as out:
                            shutil.copyfileobj(source, out, 1 << 20)
                        if member.size < 512 and target.read_bytes().startswith(_LFS_POINTER):
                            raise DataError(
                                f"{dataset.name}: {path} is a Git LFS pointer in the archive, not the file itself"
                            )
                        chosen[dest] = priority
                    break
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{dataset.name}: the downloaded archive is not a readable tar.gz ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    if not chosen:
        raise DataError(
            f"{dataset.name}: the archive of {origin.owner}/{origin.repo}@{origin.commit[:7]} holds none of the "
            f"dataset's files (folder {origin.folder or '/'})"
        )
    return len(chosen)


# --------------------------------------------------------------------------- packing


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
