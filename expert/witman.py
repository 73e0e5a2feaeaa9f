"""The Witman et al. 2023 vacancy set for the expert: records, published splits, and the
whole set featurized into :class:`adex.expert.data.PackedVacancies` (cached).

Flow: ``(host Structure, site)`` -> :func:`adex.supercell.build_vacancy` ->
:func:`adex.supercell.build_vacancy_graph` -> :func:`adex.expert.data.pack_vacancy`.
"""
from __future__ import annotations

import csv
import hashlib
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence


from adex.errors import AdexError, DataError, StructureError
from adex.expert.data import GRAPH_FORMAT_VERSION, PackedVacancies, featurize_vacancy
from adex.graphs import Featurizer, FeaturizerSettings
from adex.paths import cache_dir


@dataclass(frozen=True)
class VacancyRecord:
    """One labelled vacancy of the Witman set: the host CIF has the vacated atom at index 0."""

    id: str
    host: str
    site_label: str
    element: str
    path: Path
    dH_eV: float


def read_witman(root: Path) -> list[VacancyRecord]:
    """Rows of ``vacancies.csv`` with their CIF paths (1,481 in the shipped set)."""
    with open(root / "vacancies.csv", newline="") as handle:
        return [
            VacancyRecord(r["id"], r["host"], r["site_label"], r["element"], root / "structures" / f"{r['id']}.cif", float(r["dH_eV"]))
            for r in csv.DictReader(handle)
        ]


def published_splits(root: Path) -> list[str]:
    """Names of the published splits, e.g. ``1.00k0``, ``1.00k0_struct``, ``CS_Ba``."""
    names = sorted(p.name[len("train_") : -len(".csv")] for p in (root / "splits").glob("train_*.csv"))
    return [n for n in names if (root / "splits" / f"hold_{n}.csv").is_file()]


def read_split(root: Path, name: str) -> tuple[list[str], list[str]]:
    """(train ids, holdout ids) of published split ``name``."""
    train, hold = root / "splits" / f"train_{name}.csv", root / "splits" / f"hold_{name}.csv"
    if not train.is_file() or not hold.is_file():
        known = published_splits(root)
        raise DataError(f"unknown split {name!r} (e.g. {', '.join(known[:6])} ... {len(known)} in all)")

    def ids(path: Path) -> list[str]:
        with open(path, newline="") as handle:
            return [row[0].strip() for row in csv.reader(handle) if row and row[0].strip()]

    return ids(train), ids(hold)


def _featurize_records_chunk(args) -> list[tuple[str, PackedVacancies | str]]:
    settings, supercell_dict, items = args
    from adex.io import read_structure
    from adex.supercell import SupercellSettings

    featurizer = Featurizer(FeaturizerSettings(**settings))
    sc = SupercellSettings(**supercell_dict)
    out = []
    for vacancy_id, path, element, target in items:
        try:
            host = read_structure(path)
            if host[0].specie.symbol != element:
                raise StructureError(f"{path}: atom 0 is {host[0].specie}, vacancies.csv says {element}")
            out.append((vacancy_id, featurize_vacancy(host, 0, vacancy_id, target, featurizer, sc)))
        except AdexError as exc:
            out.append((vacancy_id, str(exc)))
    return out


def load_witman(
    featurizer_settings: FeaturizerSettings,
    supercell_settings,
    data: str | os.PathLike | None = None,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    workers: int | None = None,
    use_cache: bool = True,
) -> PackedVacancies:
    """The Witman vacancies as combined supercell graphs (cached on disk).

    ``ids`` restricts to those vacancies (in that order); ``limit`` keeps the first N.
    """
    from adex.datasets import dataset_root, fingerprint_files
    from adex.progress import progress_bar

    root = dataset_root("witman2023_vacancies", data)
    all_records = read_witman(root)
    records = all_records
    if ids is not None:
        by_id = {r.id: r for r in records}
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise DataError(f"vacancy id {unknown[0]!r} not in {root / 'vacancies.csv'}")
        records = [by_id[i] for i in ids]
    if limit is not None:
        records = records[:limit]
    inputs = fingerprint_files([root / "vacancies.csv", root / "structures"])

    def cache_path(selection: list[VacancyRecord]) -> Path:
        key_text = "|".join([GRAPH_FORMAT_VERSION, inputs, featurizer_settings.fingerprint(),
                             repr(sorted(supercell_settings.to_dict().items())), ",".join(r.id for r in selection)])
        return cache_dir() / "vacancies" / f"witman-{hashlib.sha256(key_text.encode()).hexdigest()[:24]}.npz"

    full_path, path = cache_path(all_records), cache_path(records)
    if use_cache and full_path.is_file():  # the whole set is cached: any selection is a subset of it
        full = PackedVacancies.load(full_path)
        position = {str(i): k for k, i in enumerate(full.ids)}
        return full.subset([position[r.id] for r in records])
    if use_cache and path.is_file():
        return PackedVacancies.load(path)
    selection = records
    if len(records) >= len(all_records) // 2:  # featurize and cache everything, then select
        records, path = all_records, full_path
    items = [(r.id, str(r.path), r.element, r.dH_eV) for r in records]
    chunks = [(featurizer_settings.to_dict(), supercell_settings.to_dict(), items[i : i + 32]) for i in range(0, len(items), 32)]
    workers = workers or (min(os.cpu_count() or 1, 8) if len(items) > 64 else 1)
    results: dict[str, PackedVacancies] = {}
    errors: dict[str, str] = {}
    with progress_bar() as progress:
        task = progress.add_task("supercell graphs (witman2023)", total=len(items))
        mapper = ProcessPoolExecutor(workers).map if workers > 1 else map
        for chunk_result in mapper(_featurize_records_chunk, chunks):
            for vid, value in chunk_result:
                (errors.__setitem__(vid, value) if isinstance(value, str) else results.__setitem__(vid, value))
            progress.advance(task, len(chunk_result))
    if errors:
        first = next(iter(errors.items()))
        raise DataError(f"{len(errors)} vacancies could not be featurized (first: {first[0]}: {first[1]})")
    packed = PackedVacancies.concatenate([results[r.id] for r in records])
    if use_cache:
        packed.save(path)
    if selection is not records:
        position = {str(i): k for k, i in enumerate(packed.ids)}
        packed = packed.subset([position[r.id] for r in selection])
    return packed
