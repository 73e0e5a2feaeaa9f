"""Descriptor baseline: hand-made descriptors of a vacancy + gradient boosting.

The model every table compares the GNNs against (``adex baseline``). No graph network,
no DFT input: a vacancy (host structure, index of the vacated atom) becomes one row of
:data:`n_features` numbers in three blocks, and scikit-learn's
``HistGradientBoostingRegressor`` (NaN-aware) is trained and tested on exactly the folds
of :mod:`adex.studies.splits`.

Feature blocks: see :mod:`adex.supercell.descriptors`.

:func:`load_witman_features` featurizes the Witman set host by host (the CIFs of one
host are the same cell with the atoms permuted, atom 0 vacated; each is mapped onto the
host's first CIF so host-level work is done once), optionally in worker processes, and
caches the matrix under ``$ADEX_HOME/cache/baseline/`` keyed by the featurizer version
and settings, the matminer/pymatgen versions and the data files.
"""
from __future__ import annotations

import csv
import hashlib
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from adex.supercell.descriptors import (  # noqa: F401 - re-exported: the featurizer lived here before
    FEATURE_VERSION,
    BaselineSettings,
    DescriptorFeaturizer,
    DescriptorSettings,
    _featurizer,
    feature_names,
)
from adex.errors import AdexError, ConfigError, DataError, StructureError

LOSSES = ("auto", "absolute_error", "squared_error")
GROUPED_SCHEMES = ("group", "loeo", "l2eo")

# --------------------------------------------------------------------------- the Witman set


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
                        relaxation: bool = False, relaxation_steps: int = 0) -> FeatureTable:
    """The table with ``offset`` = the unrelaxed vacancy energies E(defected) - E(pristine)
    (eV) of the potential among ``advisors`` (CHGNet) in the canonical supercells of
    ``supercell`` (default: those of the default expert config), as the expert's
    ``model.potential_delta`` uses them (:mod:`adex.expert.potential`, cached); with
    ``relaxation`` the defected supercell is relaxed first: one line search, or
    ``relaxation_steps`` FIRE steps (``model.potential_relaxation[_steps]``)."""
    import dataclasses

    from adex.config import load_config
    from adex.expert.witman import load_witman
    from adex.expert.potential import potential_advisor, vacancy_energies
    from adex.expert.train import ExpertConfig

    entry, model = potential_advisor(advisors)
    expert = load_config(ExpertConfig, "expert", "default")
    supercell = supercell or expert.supercell
    t0 = time.perf_counter()
    packed = load_witman(expert.featurizer, supercell, data, ids=[str(i) for i in table.ids])
    offset = vacancy_energies(entry, model, packed, supercell, relaxation=relaxation, relaxation_steps=relaxation_steps)
    return dataclasses.replace(table, offset=offset, featurize_seconds=table.featurize_seconds + time.perf_counter() - t0)


def _read_rows(root: Path) -> list[dict]:
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

    featurizer = _featurizer(BaselineSettings(**settings_dict))
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
    rows = _read_rows(root)
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
    settings: BaselineSettings | None = None,
    workers: int = 1,
    use_cache: bool = True,
    log=None,
) -> FeatureTable:
    """The table ``adex baseline`` trains on: the descriptors of every Witman vacancy
    (:func:`load_witman_features`), plus the embeddings of ``advisors``
    (:func:`add_advisor_features`), plus with ``potential_delta`` the potential's vacancy
    energies as the offset (:func:`add_potential_delta`, relaxed with ``relaxation``: one
    line search, or ``relaxation_steps`` FIRE steps).

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
    log = log or (lambda line: None)
    table = load_witman_features(data, settings or BaselineSettings(), workers=workers, use_cache=use_cache)
    log(f"descriptors: {len(table.ids)} vacancies x {len(table.names)} features "
        + (f"(cache, featurized in {table.featurize_seconds:.0f} s)" if table.from_cache
           else f"(featurized in {table.featurize_seconds:.0f} s)"))
    if advisors:
        table = add_advisor_features(table, dataset_root("witman2023_vacancies", data), advisors)
        log(f"+ advisor embeddings of {', '.join(str(entry.ref) for entry, _ in advisors)}: {len(table.names)} features")
    if potential_delta:
        table = add_potential_delta(table, data, advisors, relaxation=relaxation, relaxation_steps=relaxation_steps)
        kind = (f"{relaxation_steps}-FIRE-step relaxed" if relaxation_steps else "line-search relaxed") if relaxation else "unrelaxed"
        log(f"learning dH minus the potential's {kind} vacancy energies")
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


# --------------------------------------------------------------------------- model


@dataclass(frozen=True)
class ModelSettings:
    """``HistGradientBoostingRegressor`` hyperparameters.

    ``loss="auto"`` picks absolute_error or squared_error per fold by the MAE on a
    validation set carved from that fold's training set (``validation_fraction``, by
    host for grouped schemes), then refits on the whole training set; a training set
    smaller than ``min_auto`` uses squared_error. The other defaults were set by a small
    check on validation sets carved from the training sets of ``1.00k0`` and
    ``1.00k0_struct`` (test vacancies untouched): 31 leaves beat 15, 600 iterations were
    within 0.01 eV of 1200 at half the cost, and squared_error beat absolute_error on both.
    ``host_weight_power`` p weighs each training vacancy by ``n_host ** -p`` (as the
    expert's ``training.host_weight_power``; 0: every vacancy counts once).
    """

    loss: str = "auto"
    learning_rate: float = 0.05
    max_iter: int = 600
    max_leaf_nodes: int = 31
    min_samples_leaf: int = 10
    l2_regularization: float = 1.0
    max_features: float = 0.5
    validation_fraction: float = 0.2
    min_auto: int = 30
    host_weight_power: float = 0.0

    def __post_init__(self) -> None:
        if self.host_weight_power < 0:
            raise ConfigError(f"host weight power must be >= 0, got {self.host_weight_power}")
        if self.loss not in LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r} (choose from {', '.join(LOSSES)})")

    def to_dict(self) -> dict:
        return asdict(self)


def make_regressor(settings: ModelSettings, loss: str, seed: int):
    from sklearn.ensemble import HistGradientBoostingRegressor

    return HistGradientBoostingRegressor(
        loss=loss, learning_rate=settings.learning_rate, max_iter=settings.max_iter,
        max_leaf_nodes=settings.max_leaf_nodes, min_samples_leaf=settings.min_samples_leaf,
        l2_regularization=settings.l2_regularization, max_features=settings.max_features,
        early_stopping=False, random_state=seed,
    )


def carve_validation(hosts: np.ndarray, fraction: float, seed: int, grouped: bool) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) positions of a training set: a random ``fraction`` of the
    vacancies, or of the hosts when ``grouped`` (so validation is judged like the test)."""
    n = len(hosts)
    rng = np.random.default_rng(seed)
    if grouped:
        unique = rng.permutation(np.unique(hosts))
        val_hosts = set(unique[: max(int(round(len(unique) * fraction)), 1)])
        is_val = np.array([h in val_hosts for h in hosts])
    else:
        is_val = np.zeros(n, dtype=bool)
        is_val[rng.permutation(n)[: max(int(round(n * fraction)), 1)]] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def fit_model(X: np.ndarray, y: np.ndarray, hosts: np.ndarray, settings: ModelSettings, seed: int = 0,
              grouped: bool = False) -> tuple[object, str, dict]:
    """Fit the regressor on a training set: (model, loss used, validation MAE per loss tried)."""
    from adex.expert.train import host_weights

    val_mae: dict = {}
    weight = host_weights(hosts, settings.host_weight_power) if settings.host_weight_power else None  # None: all 1
    loss = settings.loss
    if loss == "auto":
        loss = "squared_error"
        if len(y) >= settings.min_auto:
            fit_idx, val_idx = carve_validation(hosts, settings.validation_fraction, seed, grouped)
            if len(fit_idx) and len(val_idx):
                for candidate in LOSSES[1:]:
                    model = make_regressor(settings, candidate, seed).fit(X[fit_idx], y[fit_idx],
                                                                          sample_weight=None if weight is None else weight[fit_idx])
                    val_mae[candidate] = float(np.abs(model.predict(X[val_idx]) - y[val_idx]).mean())
                loss = min(val_mae, key=val_mae.get)
    return make_regressor(settings, loss, seed).fit(X, y, sample_weight=weight), loss, val_mae


def check_folds(folds, table: FeatureTable) -> None:
    """Every fold's ids are known, and train and test share none (DataError otherwise)."""
    for fold in folds:
        table.rows(fold.train)
        table.rows(fold.test)
        shared = set(fold.train) & set(fold.test)
        if shared:
            raise DataError(f"fold {fold.name}: {len(shared)} vacancies in both train and test (e.g. {sorted(shared)[0]})")
        if not fold.train or not fold.test:
            raise DataError(f"fold {fold.name}: empty {'training' if not fold.train else 'test'} set")


@dataclass
class BaselineResult:
    metrics: dict
    folds: list[dict]
    predictions: list[dict]
    out: Path


def run_baseline(
    table: FeatureTable,
    folds,
    model: ModelSettings | None = None,
    seed: int = 0,
    grouped: bool = False,
    scheme: str = "",
    out: str | os.PathLike | None = None,
    config: dict | None = None,
    threads: int = 1,
    on_fold=None,
) -> BaselineResult:
    """Train and test the baseline on every fold; write the run folder (see ``adex baseline``)."""
    from threadpoolctl import threadpool_limits

    from adex.studies.cv import fold_errors, plot_folds, summarize, write_table
    from adex.fileio import atomic_write_json, atomic_write_text
    from adex.paths import new_run_dir

    model = model or ModelSettings()
    check_folds(folds, table)
    out_dir = new_run_dir("baseline", out)
    config = dict(config or {})
    config.update({"scheme": scheme, "seed": seed, "grouped_validation": grouped, "model": model.to_dict(),
                   "folds": [f.name for f in folds], "n_features": len(table.names), "feature_version": FEATURE_VERSION,
                   "threads": threads})
    import yaml

    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    rows, predictions = [], []
    train_seconds = 0.0
    offset = np.zeros(len(table.ids)) if table.offset is None else table.offset  # eV, added to the regressor's output
    with threadpool_limits(limits=threads):
        for k, fold in enumerate(folds):
            tr, te = table.rows(fold.train), table.rows(fold.test)
            t0 = time.perf_counter()
            regressor, loss, val_mae = fit_model(table.X[tr], table.targets[tr] - offset[tr], table.hosts[tr], model, seed,
                                                 grouped)
            pred = regressor.predict(table.X[te]) + offset[te]
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            row = {"fold": fold.name, "n_train": len(tr), "n_test": len(te),
                   **fold_errors(pred, table.targets[te], table.elements[te]), "loss": loss, "train_seconds": seconds}
            rows.append(row)
            for j, r in enumerate(te):
                predictions.append({"fold": fold.name, "id": str(table.ids[r]), "element": str(table.elements[r]),
                                    "host": str(table.hosts[r]), "dH_eV": float(table.targets[r]),
                                    "dH_pred_eV": float(pred[j])})
            if on_fold is not None:
                on_fold(k, row, val_mae)
    metrics = summarize(rows, predictions, scheme)
    metrics.update({"featurize_seconds": round(table.featurize_seconds, 2),
                    "features_from_cache": table.from_cache, "train_seconds": round(train_seconds, 2),
                    "n_features": len(table.names), "losses": [r["loss"] for r in rows], "settings": config})
    write_table(out_dir / "folds.csv", rows)
    write_table(out_dir / "predictions.csv", predictions)
    atomic_write_json(out_dir / "metrics.json", metrics)
    pred = np.array([p["dH_pred_eV"] for p in predictions])
    target = np.array([p["dH_eV"] for p in predictions])
    elements = np.array([p["element"] for p in predictions])
    plot_folds(out_dir / "baseline.png", rows, pred, target, elements, f"descriptor baseline: {scheme or 'folds'}")
    return BaselineResult(metrics, rows, predictions, out_dir)
