"""The feature table of the descriptor baseline: descriptors of every Witman vacancy, cached.

:func:`load_witman_features` featurizes the Witman set host by host (the CIFs of one
host are the same cell with the atoms permuted, atom 0 vacated; each is mapped onto the
host's first CIF so host-level work is done once), optionally in worker processes, and
caches the matrix under ``$ADEX_HOME/cache/baseline/`` keyed by the featurizer version
and settings, the matminer/pymatgen versions and the data files. The descriptors
themselves are :mod:`adex.supercell.descriptors`.

:func:`baseline_table` is the table ``adex baseline`` trains on: those descriptors,
optionally plus advisor embeddings (:func:`add_advisor_features`) and a potential's
vacancy energies as an offset for delta-learning (:func:`add_potential_delta`).
"""
from __future__ import annotations

import csv
import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from adex.errors import AdexError, ConfigError, DataError, StructureError
from adex.supercell.descriptors import FEATURE_VERSION, BaselineSettings, cached_featurizer, feature_names


@dataclass
class FeatureTable:
    """Descriptors of the Witman vacancies.

    Attributes:
        ids, hosts, elements: str [n] per vacancy (``vacancies.csv`` order).
        targets: float64 [n] dH (eV).
        X: float64 [n, n_features] (NaN where undefined).
        names: feature names.
        featurize_seconds: wall time of the featurization that produced ``X`` (also
            when it was read from the cache).
        offset: with :func:`add_potential_delta`, a potential's unrelaxed vacancy
            energies (eV) [n]: the regressor learns ``targets - offset``.
        from_cache: whether ``X`` was read from the cache.
        cache_path: the cache file.
    """

    ids: np.ndarray
    hosts: np.ndarray
    elements: np.ndarray
    targets: np.ndarray
    X: np.ndarray
    names: list[str]
    featurize_seconds: float
    from_cache: bool = False
    cache_path: Path | None = None
    load_seconds: float = 0.0
    offset: np.ndarray | None = None  # float64 [n] eV added to the regressor's output (delta-learning), or None

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row indices of ``ids`` (DataError for an unknown id)."""
        position = self._position()
        try:
            return np.array([position[i] for i in ids], dtype=np.int64)
        except KeyError as exc:
            raise DataError(f"vacancy id {exc.args[0]!r} is not in the featurized data set") from None

    def _position(self) -> dict:
        if not hasattr(self, "_pos"):
            self._pos = {str(i): k for k, i in enumerate(self.ids)}
        return self._pos


def add_advisor_features(table: FeatureTable, root: Path, advisors: list[tuple[object, object]]) -> FeatureTable:
    """The descriptors plus, per advisor, its embedding of the vacated site and of the host
    crystal (``<name>_site_k``, ``<name>_crystal_k``; 2 d columns per advisor).

    Each Witman CIF (atom 0 vacated) is mapped onto its host's canonical primitive cell
    (:func:`adex.supercell.canonical_host`); the advisor embeds every distinct primitive
    host once (:func:`adex.expert.advisor_features.embed_hosts`) and the vacated site's row is that of
    its orbit representative, as the expert reads it.

    Args:
        advisors: ``(registry entry, frozen model)`` pairs, e.g. from
            :func:`adex.expert.train.load_advisors`.
    """
    import dataclasses

    from adex.expert.advisor_features import embed_hosts, host_bytes
    from adex.io import read_structure
    from adex.progress import progress_bar
    from adex.supercell import canonical_host

    t0 = time.perf_counter()
    host_index: dict[bytes, int] = {}
    primitives, representative, vacancy_host = [], [], []
    with progress_bar() as progress:
        task = progress.add_task("vacancies -> primitive hosts", total=len(table.ids))
        for vacancy_id in table.ids:
            can = canonical_host(read_structure(root / "structures" / f"{vacancy_id}.cif"), 0)
            key = host_bytes(can.primitive.lattice.matrix, can.numbers, can.primitive.frac_coords)
            if key not in host_index:
                host_index[key] = len(primitives)
                primitives.append(can.primitive)
            vacancy_host.append(host_index[key])
            representative.append(can.site)
            progress.advance(task)
    vacancy_host = np.asarray(vacancy_host)
    starts = np.r_[0, np.cumsum([len(p) for p in primitives])[:-1]]
    blocks, names = [table.X], list(table.names)
    for entry, model in advisors:
        atom, crystal = embed_hosts(model, primitives, [f"host{u}" for u in range(len(primitives))])
        site_rows = starts[vacancy_host] + np.asarray(representative)
        blocks += [atom[site_rows].astype(np.float64), crystal[vacancy_host].astype(np.float64)]
        name = getattr(entry, "name", str(entry.ref))
        names += [f"{name}_site_{k}" for k in range(atom.shape[1])] + [f"{name}_crystal_{k}" for k in range(crystal.shape[1])]
    return dataclasses.replace(table, X=np.hstack(blocks), names=names,
                               featurize_seconds=table.featurize_seconds + time.perf_counter() - t0)


def add_potential_delta(table: FeatureTable, data, advisors: list[tuple[object, object]], supercell=None,
                        relaxation: bool = False, relaxation_steps: int = 0, min_image_distance: float = 0.0) -> FeatureTable:
    """The table with ``offset`` = the unrelaxed vacancy energies E(defected) - E(pristine)
    (eV) of the potential among ``advisors`` (CHGNet) in the canonical supercells of
    ``supercell`` (default: those of the default expert config), as the expert's
    ``model.potential_delta`` uses them (:mod:`adex.expert.potential`, cached); with
    ``relaxation`` the defected supercell is relaxed first: one line search, or
    ``relaxation_steps`` FIRE steps (``model.potential_relaxation[_steps]``); the energies
    are taken in supercells of at least ``min_image_distance`` Å between images when that
    is larger (``model.potential_min_image_distance``)."""
    import dataclasses

    from adex.config import load_config
    from adex.expert.witman import load_witman
    from adex.expert.potential import potential_advisor, potential_supercell, vacancy_energies
    from adex.expert.train import ExpertConfig

    entry, model = potential_advisor(advisors)
    expert = load_config(ExpertConfig, "expert", "default")
    supercell = supercell or expert.supercell
    t0 = time.perf_counter()
    packed = load_witman(expert.featurizer, supercell, data, ids=[str(i) for i in table.ids])
    offset = vacancy_energies(entry, model, packed, potential_supercell(supercell, min_image_distance), relaxation=relaxation,
                              relaxation_steps=relaxation_steps)
    return dataclasses.replace(table, offset=offset, featurize_seconds=table.featurize_seconds + time.perf_counter() - t0)


def read_rows(root: Path) -> list[dict]:
    """The rows of ``root/vacancies.csv`` (dicts keyed by its header)."""
    with open(root / "vacancies.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def _match_site(structure, reference) -> int | None:
    """Index in ``reference`` of atom 0 of ``structure`` when both are the same cell
    with the atoms permuted; None otherwise."""
    if len(structure) != len(reference) or not np.allclose(structure.lattice.matrix, reference.lattice.matrix, atol=1e-4):
        return None
    delta = reference.frac_coords - structure.frac_coords[0]
    delta -= np.round(delta)
    cart = np.linalg.norm(delta @ reference.lattice.matrix, axis=1)
    j = int(np.argmin(cart))
    if cart[j] > 1e-3 or reference[j].specie != structure[0].specie:
        return None
    if structure.composition != reference.composition:
        return None
    return j


def _featurize_host_chunk(args) -> list[tuple[str, list[float] | str]]:
    """Featurize the vacancies of one host: [(id, row or error message)]."""
    settings_dict, items = args
    from adex.io import read_structure

    featurizer = cached_featurizer(BaselineSettings(**settings_dict))
    out: list[tuple[str, list[float] | str]] = []
    reference = None
    mapped: list[tuple[str, int]] = []
    for vacancy_id, path, element in items:
        try:
            structure = read_structure(path)
            if structure[0].specie.symbol != element:
                raise StructureError(f"{path}: atom 0 is {structure[0].specie}, vacancies.csv says {element}")
            if reference is None:
                reference = structure
            j = _match_site(structure, reference)
            if j is None:  # not a permutation of the host's first CIF: featurize on its own
                out.append((vacancy_id, featurizer.featurize(structure, 0).tolist()))
            else:
                mapped.append((vacancy_id, j))
        except AdexError as exc:
            out.append((vacancy_id, str(exc)))
    if mapped:
        try:
            X = featurizer.featurize_sites(reference, [j for _, j in mapped])
            out += [(vid, row.tolist()) for (vid, _), row in zip(mapped, X)]
        except AdexError as exc:
            out += [(vid, str(exc)) for vid, _ in mapped]
    return out


def _cache_path(key_parts: list[str]) -> Path:
    from adex.paths import cache_dir

    key = hashlib.sha256("|".join(key_parts).encode()).hexdigest()[:24]
    return cache_dir() / "baseline" / f"witman-{key}.npz"


def load_witman_features(
    data: str | os.PathLike | None = None,
    settings: BaselineSettings | None = None,
    workers: int = 1,
    use_cache: bool = True,
) -> FeatureTable:
    """Descriptors of every Witman vacancy (cached on disk; see the module docstring).

    Args:
        data: data directory holding ``witman2023_vacancies`` (``--data``/``$ADEX_DATA``).
        workers: processes (1: in this process).
    Raises:
        DataError: missing data, or vacancies that could not be featurized.
    """
    from adex.datasets import dataset_root, fingerprint_files

    settings = settings or BaselineSettings()
    root = dataset_root("witman2023_vacancies", data)
    rows = read_rows(root)
    ids = np.array([r["id"] for r in rows], dtype=str)
    meta = dict(ids=ids, hosts=np.array([r["host"] for r in rows], dtype=str),
                elements=np.array([r["element"] for r in rows], dtype=str),
                targets=np.array([float(r["dH_eV"]) for r in rows], dtype=np.float64))
    path = _cache_path([FEATURE_VERSION, settings.fingerprint(), fingerprint_files([root / "vacancies.csv", root / "structures"])])
    if use_cache and path.is_file():
        t0 = time.perf_counter()
        with np.load(path, allow_pickle=False) as d:
            if list(d["ids"]) == list(ids):
                return FeatureTable(**meta, X=d["X"], names=[str(n) for n in d["names"]],
                                    featurize_seconds=float(d["featurize_seconds"]), from_cache=True, cache_path=path,
                                    load_seconds=time.perf_counter() - t0)
    t0 = time.perf_counter()
    X, names = featurize_records(root, rows, settings, workers)
    seconds = time.perf_counter() - t0
    if use_cache:
        from io import BytesIO

        from adex.fileio import atomic_write_bytes

        buffer = BytesIO()
        np.savez(buffer, X=X, ids=ids, names=np.array(names, dtype=str), featurize_seconds=np.float64(seconds))
        atomic_write_bytes(path, buffer.getvalue())
    return FeatureTable(**meta, X=X, names=names, featurize_seconds=seconds, from_cache=False, cache_path=path)


def baseline_table(
    data: str | os.PathLike | None = None,
    advisors: list[tuple[object, object]] = (),
    potential_delta: bool = False,
    relaxation: bool = False,
    relaxation_steps: int = 0,
    potential_min_image_distance: float = 0.0,
    settings: BaselineSettings | None = None,
    workers: int = 1,
    use_cache: bool = True,
    log=None,
) -> FeatureTable:
    """The table ``adex baseline`` trains on: the descriptors of every Witman vacancy
    (:func:`load_witman_features`), plus the embeddings of ``advisors``
    (:func:`add_advisor_features`), plus with ``potential_delta`` the potential's vacancy
    energies as the offset (:func:`add_potential_delta`, relaxed with ``relaxation``: one
    line search, or ``relaxation_steps`` FIRE steps), taken in supercells of at least
    ``potential_min_image_distance`` Å between images (0: the default expert's supercells;
    as the expert's ``model.potential_min_image_distance``).

    Args:
        advisors: ``(registry entry, frozen model)`` pairs (:func:`adex.expert.train.load_advisors`).
        log: called with one line after each step (e.g. a console's ``print``), or None.
    Raises:
        ConfigError: ``potential_delta`` without a potential among the advisors, or
            ``relaxation`` without ``potential_delta``, ``relaxation_steps`` without
            ``relaxation`` (before anything is featurized).
    """
    from adex.datasets import dataset_root
    from adex.expert.potential import potential_advisor

    if potential_delta:
        potential_advisor(advisors)  # the check add_potential_delta makes, before the descriptors load
    if relaxation and not potential_delta:
        raise ConfigError("potential relaxation needs potential_delta")
    if relaxation_steps and not relaxation:
        raise ConfigError("relaxation steps need potential relaxation")
    if relaxation_steps < 0:
        raise ConfigError(f"relaxation steps must be >= 0, got {relaxation_steps}")
    if potential_min_image_distance and not potential_delta:
        raise ConfigError("a potential supercell distance needs potential_delta")
    if not (math.isfinite(potential_min_image_distance) and potential_min_image_distance >= 0):
        raise ConfigError(f"potential supercell distance must be a finite number >= 0 (Å), got {potential_min_image_distance}")
    log = log or (lambda line: None)
    table = load_witman_features(data, settings or BaselineSettings(), workers=workers, use_cache=use_cache)
    log(f"descriptors: {len(table.ids)} vacancies x {len(table.names)} features "
        + (f"(cache, featurized in {table.featurize_seconds:.0f} s)" if table.from_cache
           else f"(featurized in {table.featurize_seconds:.0f} s)"))
    if advisors:
        table = add_advisor_features(table, dataset_root("witman2023_vacancies", data), advisors)
        log(f"+ advisor embeddings of {', '.join(str(entry.ref) for entry, _ in advisors)}: {len(table.names)} features")
    if potential_delta:
        table = add_potential_delta(table, data, advisors, relaxation=relaxation, relaxation_steps=relaxation_steps,
                                    min_image_distance=potential_min_image_distance)
        kind = (f"{relaxation_steps}-FIRE-step relaxed" if relaxation_steps else "line-search relaxed") if relaxation else "unrelaxed"
        where = f" in >= {potential_min_image_distance:g} Å supercells" if potential_min_image_distance else ""
        log(f"learning dH minus the potential's {kind} vacancy energies{where}")
    return table


def featurize_records(root: Path, rows: list[dict], settings: BaselineSettings, workers: int = 1) -> tuple[np.ndarray, list[str]]:
    """Feature matrix of ``vacancies.csv`` rows (in their order) and the feature names."""
    from concurrent.futures import ProcessPoolExecutor

    from adex.progress import progress_bar

    by_host: dict[str, list[tuple[str, str, str]]] = {}
    for r in rows:
        by_host.setdefault(r["host"], []).append((r["id"], str(root / "structures" / f"{r['id']}.cif"), r["element"]))
    chunks = [(settings.to_dict(), items) for items in by_host.values()]
    names = feature_names(settings)
    results: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    workers = max(int(workers or 1), 1)
    with progress_bar() as progress:
        task = progress.add_task("descriptors (witman2023)", total=len(rows))
        executor = ProcessPoolExecutor(workers) if workers > 1 else None
        try:
            mapper = executor.map if executor else map
            for chunk_result in mapper(_featurize_host_chunk, chunks):
                for vid, value in chunk_result:
                    (errors.__setitem__(vid, value) if isinstance(value, str) else results.__setitem__(vid, value))
                progress.advance(task, len(chunk_result))
        finally:
            if executor:
                executor.shutdown()
    if errors:
        first = next(iter(errors.items()))
        raise DataError(f"{len(errors)} vacancies could not be featurized (first: {first[0]}: {first[1]})")
    X = np.array([results[r["id"]] for r in rows], dtype=np.float64).reshape(len(rows), len(names))
    return X, names
