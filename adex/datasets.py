"""Pristine-crystal datasets for advisors, featurized once and cached on disk.

The datasets are the entries of the dataset table :data:`adex.catalog.CATALOG` that have
a regression target (:data:`DATASETS`, derived from it; folders of the data directory,
see ``../shared/data/MANIFEST.md``):

* ``mp_formation_energy``: 36,835 Materials Project crystals, formation energy per atom
  (eV/atom); structures read straight from ``structures.tar.gz``.
* ``oxide_bandgaps``: 824 oxides, DFT band gap (eV).

The cache key is a sha256 of the input files' contents, the featurizer fingerprint and
the ``limit``: change any of them and the graphs are rebuilt. Cache files are written
atomically, so two processes featurizing at once both end with a valid cache.
"""
from __future__ import annotations

import csv
import hashlib
import os
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from adex.catalog import CATALOG, Dataset, dataset_names
from adex.errors import AdexError, DataError
from adex.graphs import CrystalGraph, Featurizer, FeaturizerSettings, PackedGraphs
from adex.io import structure_from_text
from adex.paths import cache_dir, data_dir


@dataclass(frozen=True)
class DatasetSpec:
    """A pristine-crystal regression dataset (from its :class:`~adex.catalog.Dataset`) and
    how to read it: ``records`` gives ``(id, target)`` pairs, ``texts`` the CIF texts of ids."""

    name: str
    target: str
    unit: str
    description: str
    required: tuple[str, ...]
    records: Callable[[Path], list[tuple[str, float]]]
    texts: Callable[[Path, list[str]], Iterator[tuple[str, str]]]


def _read_id_prop(path: Path) -> list[tuple[str, float]]:
    with open(path, newline="") as handle:
        return [(row[0].strip(), float(row[1])) for row in csv.reader(handle) if row and row[0].strip()]


def _archive_texts(archive: str) -> Callable[[Path, list[str]], Iterator[tuple[str, str]]]:
    """Reader of CIF texts packed in ``root/<archive>`` (a tar file)."""

    def texts(root: Path, ids: list[str]) -> Iterator[tuple[str, str]]:
        wanted = set(ids)
        with tarfile.open(root / archive) as tar:
            for member in tar:
                stem = Path(member.name).stem
                if member.isfile() and stem in wanted:
                    yield stem, tar.extractfile(member).read().decode()

    return texts


def _folder_texts(root: Path, ids: list[str]) -> Iterator[tuple[str, str]]:
    for item in ids:
        path = root / "structures" / f"{item}.cif"
        if path.is_file():  # a listed but absent file is reported as skipped by the caller
            yield item, path.read_text()


def _spec(dataset: Dataset) -> DatasetSpec:
    """The pristine-set reader of a catalogue entry with a target: targets from
    ``id_prop.csv``; structures from its archive if it has one, else ``structures/``."""
    assert dataset.target is not None and dataset.unit is not None
    return DatasetSpec(
        name=dataset.name,
        target=dataset.target,
        unit=dataset.unit,
        description=dataset.description,
        required=dataset.required,
        records=lambda root: _read_id_prop(root / "id_prop.csv"),
        texts=_archive_texts(dataset.archives[0]) if dataset.archives else _folder_texts,
    )


# The advisor datasets: the catalogue entries with a regression target.
DATASETS: dict[str, DatasetSpec] = {name: _spec(d) for name, d in CATALOG.items() if d.target is not None}


def dataset_root(name: str, data: str | os.PathLike | None = None) -> Path:
    """Folder of dataset ``name``; DataError says how to get it when missing."""
    dataset = CATALOG.get(name)
    if dataset is None:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(dataset_names())})")
    root = data_dir(data) / name
    missing = [r for r in dataset.required if not (root / r).exists()]
    if missing:
        raise DataError(
            f"dataset {name} not found at {root} (missing {missing[0]}); pass --data DIR, set ADEX_DATA, "
            f"or run `adex data download {name}`"
        )
    return root


def fingerprint_files(paths: list[Path]) -> str:
    """sha256 over the contents of files (folders: every file below, sorted)."""
    digest = hashlib.sha256()
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(file.name.encode())
            with open(file, "rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
    return digest.hexdigest()


def _select(records: list[tuple[str, float]], limit: int | None, seed: int) -> list[tuple[str, float]]:
    """All records, or ``limit`` of them drawn with a fixed seed (order kept)."""
    if limit is None or limit >= len(records):
        return records
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(records), size=limit, replace=False))
    return [records[i] for i in keep]


def _featurize_chunk(args: tuple[dict, list[tuple[str, str]]]) -> list[tuple[str, CrystalGraph | str]]:
    settings, items = args
    featurizer = Featurizer(FeaturizerSettings(**settings))
    out: list[tuple[str, CrystalGraph | str]] = []
    for item_id, text in items:
        try:
            out.append((item_id, featurizer.featurize(structure_from_text(text, "cif", item_id), item_id)))
        except AdexError as exc:
            out.append((item_id, str(exc)))
    return out


def featurize_texts(
    items: Iterator[tuple[str, str]],
    total: int,
    settings: FeaturizerSettings,
    workers: int = 1,
    description: str = "featurizing",
) -> tuple[dict[str, CrystalGraph], dict[str, str]]:
    """Featurize CIF texts, in ``workers`` processes, with a rich progress bar.

    Returns ``(graphs by id, error message by id)``: structures that cannot be used
    (e.g. an isolated atom) are reported, not fatal.
    """
    from adex.progress import progress_bar

    graphs: dict[str, CrystalGraph] = {}
    errors: dict[str, str] = {}
    chunk_size = 256

    def chunks():
        chunk: list[tuple[str, str]] = []
        for item in items:
            chunk.append(item)
            if len(chunk) == chunk_size:
                yield settings.to_dict(), chunk
                chunk = []
        if chunk:
            yield settings.to_dict(), chunk

    with progress_bar() as progress:
        task = progress.add_task(description, total=total)
        if workers > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_featurize_chunk, chunks())
                for result in results:
                    _collect(result, graphs, errors)
                    progress.advance(task, len(result))
        else:
            for args in chunks():
                result = _featurize_chunk(args)
                _collect(result, graphs, errors)
                progress.advance(task, len(result))
    return graphs, errors


def _collect(result, graphs: dict, errors: dict) -> None:
    for item_id, value in result:
        if isinstance(value, str):
            errors[item_id] = value
        else:
            graphs[item_id] = value


@dataclass
class FeaturizedDataset:
    """Graphs and targets of one dataset plus what identifies them."""

    name: str
    target: str
    unit: str
    graphs: PackedGraphs
    fingerprint: str  # sha256 of input files + featurizer + selection
    cache_path: Path | None
    skipped: dict[str, str]


def load_dataset(
    name: str,
    settings: FeaturizerSettings,
    data: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
    workers: int | None = None,
    use_cache: bool = True,
) -> FeaturizedDataset:
    """Featurized dataset ``name`` from the cache, or built (and cached) now."""
    spec = DATASETS.get(name)
    if spec is None:
        raise DataError(f"unknown advisor dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    root = dataset_root(name, data)
    inputs = fingerprint_files([root / r for r in spec.required])
    selection = "all" if limit is None else f"{limit}|{seed}"
    key = hashlib.sha256(f"{name}|{inputs}|{settings.fingerprint()}|{selection}".encode()).hexdigest()
    cache_path = cache_dir() / "graphs" / f"{name}-{key[:24]}.npz"
    skipped_path = cache_path.with_suffix(".skipped.json")
    if use_cache and cache_path.is_file():
        import json

        skipped = json.loads(skipped_path.read_text()) if skipped_path.is_file() else {}
        return FeaturizedDataset(name, spec.target, spec.unit, PackedGraphs.load(cache_path), key, cache_path, skipped)

    records = _select(spec.records(root), limit, seed)
    ids = [r[0] for r in records]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(ids) > 2000 else 1
    graphs, errors = featurize_texts(spec.texts(root, ids), len(ids), settings, workers, f"featurizing {name}")
    missing = [i for i in ids if i not in graphs and i not in errors]
    for item in missing:
        errors[item] = "structure file missing"
    kept = [(i, y) for i, y in records if i in graphs]
    if not kept:
        raise DataError(f"dataset {name}: no usable structure (first problem: {next(iter(errors.values()), 'none')})")
    packed = PackedGraphs.from_graphs([graphs[i] for i, _ in kept], [i for i, _ in kept], [y for _, y in kept])
    if use_cache:
        from adex.fileio import atomic_write_json

        packed.save(cache_path)
        atomic_write_json(skipped_path, errors)
    return FeaturizedDataset(name, spec.target, spec.unit, packed, key, cache_path if use_cache else None, errors)
