"""Descriptor baseline: hand-made descriptors of a vacancy + gradient boosting.

The model every table compares the GNNs against (``adex baseline``). No graph network,
no DFT input: a vacancy (host structure, index of the vacated atom) becomes one row of
:data:`n_features` numbers in three blocks, and scikit-learn's
``HistGradientBoostingRegressor`` (NaN-aware) is trained and tested on exactly the folds
of :mod:`adex.expert.splits`.

Feature blocks (names are :meth:`DescriptorFeaturizer.feature_names`; eV, Å, degrees):

* ``vac_*`` (31) the vacated element: 27 Magpie element properties (matminer's offline
  ``MagpieData``: the 22 of the ``magpie`` preset plus heat of vaporization, first
  ionization energy, electron affinity, polarizability, boiling point), its oxidation
  state guessed by bond valence (:func:`adex.oxidation.guess_oxidation_states`), the
  ionization energies of its ``n``-th and ``n+1``-th electron for oxidation state ``n``
  (pymatgen, cations only) and its atomic fraction in the host;
* ``site_*`` (120) the local environment of the vacated site: CrystalNN coordination
  number and weight sum, bond lengths (also relative to the sum of covalent radii),
  bond angles, mean/min/max of neighbour properties (electronegativity, Mendeleev
  number, covalent radius, valence electrons, row, column, oxidation state and its
  ionization energies: how easily the neighbours are reduced/oxidized), mean absolute
  property differences site-neighbours, fraction of same-element neighbours, the
  ``n_distances`` nearest distances and counts within 3/4/5 Å, nearest same-element
  distance, bond-valence sum (and its ratio to the oxidation state), Ewald site energy
  and Madelung potential (bond-valence charges), fraction of the cell's atoms in the
  site's orbit, and matminer's ``CrystalNNFingerprint`` (``ops`` preset, 61);
* ``host_*`` (97) the host: matminer ``ElementProperty`` (18 Magpie properties x min,
  max, mean, mean absolute deviation), ``Stoichiometry``, ``ValenceOrbital``, oxidation
  state statistics, number of elements, O fraction, volume per atom, density, space
  group number, Ewald energy per atom.

Undefined values are NaN (e.g. no bond-valence charges, fewer neighbours than
``n_distances`` within ``cutoff``, ionization energies of anions); the vacated-element
and host composition blocks are always finite. A vacancy's features depend on the
host and the site only, not on the cell or atom order given (tested).

:func:`load_witman_features` featurizes the Witman set host by host (the CIFs of one
host are the same cell with the atoms permuted, atom 0 vacated; each is mapped onto the
host's first CIF so host-level work is done once), optionally in worker processes, and
caches the matrix under ``$ADEX_HOME/cache/baseline/`` keyed by the featurizer version
and settings, the matminer/pymatgen versions and the data files.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

from adex.errors import AdexError, ConfigError, DataError, StructureError

#: Bump when the features change: the cache key includes it.
FEATURE_VERSION = "baseline-features-1"

MAGPIE_PRESET = ("Number", "MendeleevNumber", "AtomicWeight", "MeltingT", "Column", "Row", "CovalentRadius",
                 "Electronegativity", "NsValence", "NpValence", "NdValence", "NfValence", "NValence", "NsUnfilled",
                 "NpUnfilled", "NdUnfilled", "NfUnfilled", "NUnfilled", "GSvolume_pa", "GSbandgap", "GSmagmom",
                 "SpaceGroupNumber")
VACATED_PROPERTIES = MAGPIE_PRESET + ("HeatVaporization", "FirstIonizationEnergy", "ElectronAffinity",
                                      "Polarizability", "BoilingT")
HOST_PROPERTIES = tuple(p for p in MAGPIE_PRESET if p not in ("NfValence", "NfUnfilled", "GSmagmom", "SpaceGroupNumber"))
HOST_STATS = ("minimum", "maximum", "mean", "avg_dev")
NEIGHBOR_PROPERTIES = ("Electronegativity", "MendeleevNumber", "CovalentRadius", "NValence", "Row", "Column")
DIFFERENCE_PROPERTIES = ("Electronegativity", "MendeleevNumber", "CovalentRadius")
COUNT_RADII = (3.0, 4.0, 5.0)
LOSSES = ("auto", "absolute_error", "squared_error")
GROUPED_SCHEMES = ("group", "loeo", "l2eo")


@dataclass(frozen=True)
class BaselineSettings:
    """Featurizer settings (part of the cache key).

    Attributes:
        cutoff: radius (Å) of the neighbour shell for the distance features.
        n_distances: number of nearest-atom distances kept (NaN-padded).
        bv_radius: neighbour radius (Å) of the bond-valence sum.
        symprec: spglib tolerance (Å) for the space group and the site's orbit.
    """

    cutoff: float = 6.0
    n_distances: int = 8
    bv_radius: float = 4.0
    symprec: float = 0.01

    def __post_init__(self) -> None:
        if not (self.cutoff > 0 and self.bv_radius > 0 and self.symprec > 0 and self.n_distances >= 0):
            raise ConfigError(f"invalid baseline featurizer settings {asdict(self)}")

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """sha256 of the feature version, settings and the versions of the libraries that compute them."""
        import matminer
        import pymatgen.core

        text = json.dumps({"version": FEATURE_VERSION, "settings": self.to_dict(),
                           "matminer": getattr(matminer, "__version__", "?"),
                           "pymatgen": getattr(pymatgen.core, "__version__", "?")}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- element data


@lru_cache(maxsize=None)
def _magpie():
    from matminer.utils.data import MagpieData

    return MagpieData()


@lru_cache(maxsize=4096)
def element_property(symbol: str, prop: str) -> float:
    """A Magpie property of an element (NaN when missing)."""
    from pymatgen.core import Element

    try:
        value = _magpie().get_elemental_property(Element(symbol), prop)
    except (KeyError, ValueError):
        return math.nan
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value if math.isfinite(value) else math.nan


@lru_cache(maxsize=4096)
def ionization_energy(symbol: str, k: int) -> float:
    """Energy (eV) to remove the ``k``-th electron (``k`` >= 1) of an element; NaN if unknown."""
    from pymatgen.core import Element

    if k < 1:
        return math.nan
    energies = Element(symbol).ionization_energies
    value = energies[k - 1] if k - 1 < len(energies) else None
    return float(value) if value is not None else math.nan


def _ion_energies(symbol: str, state: float) -> tuple[float, float]:
    """(IE_n, IE_n+1) for a cation of oxidation state ``n`` (rounded); NaN otherwise."""
    if not np.isfinite(state) or round(state) < 1:
        return math.nan, math.nan
    n = int(round(state))
    return ionization_energy(symbol, n), ionization_energy(symbol, n + 1)


def _stats3(values: Sequence[float]) -> list[float]:
    """mean, min, max of the finite values (NaN when none)."""
    arr = np.asarray(values, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return [math.nan] * 3
    return [float(arr.mean()), float(arr.min()), float(arr.max())]


# --------------------------------------------------------------------------- featurizer


@dataclass
class _HostContext:
    """Per-host quantities shared by all its sites."""

    oxidation: np.ndarray  # [n] bond-valence states (NaN unknown)
    site_energy: np.ndarray  # [n] Ewald site energies, eV (NaN unknown)
    orbit_fraction: np.ndarray  # [n] fraction of the cell's atoms in each atom's orbit
    vector: np.ndarray  # host block


class DescriptorFeaturizer:
    """Descriptors of a vacancy: ``featurize(host, site)`` -> float64 [n_features].

    ``site`` is the 0-based index of the vacated atom in ``host`` (a pymatgen Structure
    read with :func:`adex.io.read_structure`, so the file's atom order).
    """

    def __init__(self, settings: BaselineSettings | None = None) -> None:
        from matminer.featurizers.composition import ElementProperty, Stoichiometry, ValenceOrbital
        from matminer.featurizers.site import CrystalNNFingerprint
        from pymatgen.analysis.local_env import CrystalNN

        self.settings = settings or BaselineSettings()
        self._cnn = CrystalNN()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._fingerprint = CrystalNNFingerprint.from_preset("ops")
            self._element_property = ElementProperty("magpie", list(HOST_PROPERTIES), list(HOST_STATS))
        self._stoichiometry = Stoichiometry()
        self._valence = ValenceOrbital()
        self._names = self._build_names()

    # ----------------------------------------------------------------- names
    def _build_names(self) -> list[str]:
        vac = [f"vac_{p}" for p in VACATED_PROPERTIES] + ["vac_oxidation", "vac_ie_n", "vac_ie_n+1", "vac_fraction_in_host"]
        site = ["site_cn", "site_cn_weight", "site_bond_mean", "site_bond_min", "site_bond_max", "site_bond_std",
                "site_bond_rel_mean", "site_bond_rel_min", "site_angle_mean", "site_angle_std", "site_angle_min"]
        for prop in NEIGHBOR_PROPERTIES + ("oxidation", "ie_n", "ie_n+1"):
            site += [f"site_nb_{prop}_{s}" for s in ("mean", "min", "max")]
        site += [f"site_diff_{p}" for p in DIFFERENCE_PROPERTIES]
        site += ["site_frac_same_neighbors"]
        site += [f"site_dist_{k + 1}" for k in range(self.settings.n_distances)]
        site += [f"site_n_within_{r:g}" for r in COUNT_RADII] + ["site_nearest_same"]
        site += ["site_bv_sum", "site_bv_ratio", "site_ewald_energy", "site_madelung", "site_orbit_fraction"]
        site += [f"site_cnnfp_{label}" for label in self._fingerprint.feature_labels()]
        host = [f"host_{s}_{p}" for p in HOST_PROPERTIES for s in HOST_STATS]
        host += [f"host_stoich_{label}" for label in self._stoichiometry.feature_labels()]
        host += [f"host_{label.replace(' ', '_')}" for label in self._valence.feature_labels()]
        host += ["host_ox_min", "host_ox_max", "host_ox_range", "host_ox_std", "host_ox_known"]
        host += ["host_n_elements", "host_O_fraction", "host_volume_per_atom", "host_density", "host_spacegroup",
                 "host_ewald_per_atom"]
        return vac + site + host

    @property
    def feature_names(self) -> list[str]:
        return list(self._names)

    @property
    def n_features(self) -> int:
        return len(self._names)

    def block(self, prefix: str) -> np.ndarray:
        """Column indices of a block: ``"vac_"``, ``"site_"`` or ``"host_"``."""
        return np.array([k for k, n in enumerate(self._names) if n.startswith(prefix)], dtype=np.int64)

    # ----------------------------------------------------------------- public
    def featurize(self, structure, site: int) -> np.ndarray:
        """Descriptors of the vacancy at ``site`` of ``structure``: float64 [n_features]."""
        return self.featurize_sites(structure, [site])[0]

    def featurize_sites(self, structure, sites: Sequence[int]) -> np.ndarray:
        """Descriptors of several vacancies of one host (host-level work done once):
        float64 [len(sites), n_features]."""
        from adex.supercell.symmetry import check_site

        sites = [check_site(structure, s) for s in sites]
        context = self._host_context(structure)
        rows = []
        for site in sites:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                row = np.concatenate([self._vacated(structure, site, context), self._site(structure, site, context),
                                      context.vector])
            rows.append(row)
        out = np.array(rows, dtype=np.float64).reshape(len(sites), self.n_features)
        out[~np.isfinite(out)] = np.nan
        return out

    # ----------------------------------------------------------------- blocks
    def _host_context(self, structure) -> _HostContext:
        from adex.oxidation import guess_oxidation_states

        n = len(structure)
        comp = structure.composition
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ox = guess_oxidation_states(structure).astype(np.float64)
            site_energy = np.full(n, np.nan)
            ewald_per_atom = math.nan
            if np.isfinite(ox).all():
                try:
                    from pymatgen.analysis.ewald import EwaldSummation

                    decorated = structure.copy()
                    decorated.add_oxidation_state_by_site(ox.tolist())
                    ewald = EwaldSummation(decorated)
                    matrix = ewald.total_energy_matrix
                    site_energy = np.asarray(matrix.sum(axis=1), dtype=np.float64)
                    ewald_per_atom = float(ewald.total_energy) / n
                except Exception:  # noqa: BLE001 - charges pymatgen rejects: features stay NaN
                    pass
            orbit_fraction = np.full(n, np.nan)
            space_group = math.nan
            try:
                from adex.supercell.symmetry import analyze_host

                sym = analyze_host(structure, self.settings.symprec)
                orbit = sym.orbit[sym.input_to_primitive]
                orbit_fraction = np.bincount(orbit, minlength=len(sym.primitive))[orbit] / n
                space_group = float(sym.space_group_number)
            except StructureError:
                pass
            vector = list(self._element_property.featurize(comp))
            vector += list(self._stoichiometry.featurize(comp))
            vector += list(self._valence.featurize(comp))
            finite = ox[np.isfinite(ox)]
            if finite.size == n:
                vector += [finite.min(), finite.max(), finite.max() - finite.min(), finite.std(), 1.0]
            else:
                vector += [math.nan] * 4 + [0.0]
            vector += [float(len(comp.elements)), float(comp.get_atomic_fraction("O")), structure.volume / n,
                       float(structure.density), space_group, ewald_per_atom]
        return _HostContext(ox, site_energy, orbit_fraction, np.array(vector, dtype=np.float64))

    def _vacated(self, structure, site: int, context: _HostContext) -> list[float]:
        symbol = structure[site].specie.symbol
        state = float(context.oxidation[site])
        ie_n, ie_next = _ion_energies(symbol, state)
        return ([element_property(symbol, p) for p in VACATED_PROPERTIES]
                + [state, ie_n, ie_next, float(structure.composition.get_atomic_fraction(symbol))])

    def _site(self, structure, site: int, context: _HostContext) -> list[float]:
        s = self.settings
        center = structure[site]
        symbol = center.specie.symbol
        out: list[float] = []
        # CrystalNN neighbours
        try:
            nn = self._cnn.get_nn_info(structure, site)
        except Exception:  # noqa: BLE001 - CrystalNN can fail on odd geometries: NaN block
            nn = None
        if nn:
            vectors = np.array([n["site"].coords - center.coords for n in nn])
            dist = np.linalg.norm(vectors, axis=1)
            nb_symbols = [n["site"].specie.symbol for n in nn]
            nb_index = [int(n["site_index"]) for n in nn]
            r0 = element_property(symbol, "CovalentRadius")
            rel = dist / ((r0 + np.array([element_property(e, "CovalentRadius") for e in nb_symbols])) / 100.0)
            if len(nn) >= 2:
                unit = vectors / dist[:, None]
                cos = np.clip(unit @ unit.T, -1.0, 1.0)[np.triu_indices(len(nn), 1)]
                angles = np.degrees(np.arccos(cos))
                angle_stats = [float(angles.mean()), float(angles.std()), float(angles.min())]
            else:
                angle_stats = [math.nan] * 3
            out += [float(len(nn)), float(sum(n["weight"] for n in nn)), float(dist.mean()), float(dist.min()),
                    float(dist.max()), float(dist.std()), float(np.nanmean(rel)) if np.isfinite(rel).any() else math.nan,
                    float(np.nanmin(rel)) if np.isfinite(rel).any() else math.nan] + angle_stats
            for prop in NEIGHBOR_PROPERTIES:
                out += _stats3([element_property(e, prop) for e in nb_symbols])
            nb_ox = [float(context.oxidation[j]) for j in nb_index]
            ies = [_ion_energies(e, o) for e, o in zip(nb_symbols, nb_ox)]
            out += _stats3(nb_ox) + _stats3([i[0] for i in ies]) + _stats3([i[1] for i in ies])
            for prop in DIFFERENCE_PROPERTIES:
                p0 = element_property(symbol, prop)
                diffs = [abs(p0 - element_property(e, prop)) for e in nb_symbols]
                out.append(_stats3(diffs)[0])
            out.append(float(np.mean([e == symbol for e in nb_symbols])))
        else:
            out += [math.nan] * (11 + 3 * (len(NEIGHBOR_PROPERTIES) + 3) + len(DIFFERENCE_PROPERTIES) + 1)
        # distance shell
        neighbors = structure.get_neighbors(center, s.cutoff)
        distances = np.sort(np.array([n.nn_distance for n in neighbors], dtype=float))
        padded = np.full(s.n_distances, np.nan)
        padded[: min(len(distances), s.n_distances)] = distances[: s.n_distances]
        out += padded.tolist()
        out += [float((distances <= r).sum()) for r in COUNT_RADII]
        same = [n.nn_distance for n in neighbors if n.specie.symbol == symbol]
        out.append(float(min(same)) if same else math.nan)
        # bond valence
        state = float(context.oxidation[site])
        try:
            from pymatgen.analysis.bond_valence import calculate_bv_sum

            bv = float(calculate_bv_sum(center, [n for n in neighbors if n.nn_distance <= s.bv_radius]))
        except (KeyError, ValueError):
            bv = math.nan
        out += [bv, abs(bv) / abs(state) if np.isfinite(state) and state != 0 else math.nan]
        # electrostatics and symmetry
        energy = float(context.site_energy[site])
        out += [energy, 2.0 * energy / state if np.isfinite(state) and state != 0 else math.nan,
                float(context.orbit_fraction[site])]
        # CrystalNN fingerprint
        try:
            out += [float(v) for v in self._fingerprint.featurize(structure, site)]
        except Exception:  # noqa: BLE001
            out += [math.nan] * len(self._fingerprint.feature_labels())
        return out


@lru_cache(maxsize=4)
def _featurizer(settings: BaselineSettings) -> DescriptorFeaturizer:
    return DescriptorFeaturizer(settings)


def feature_names(settings: BaselineSettings | None = None) -> list[str]:
    return _featurizer(settings or BaselineSettings()).feature_names


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
    host once (:func:`adex.expert.data.embed_hosts`) and the vacated site's row is that of
    its orbit representative, as the expert reads it.

    Args:
        advisors: ``(registry entry, frozen model)`` pairs, e.g. from
            :func:`adex.expert.train.load_advisors`.
    """
    import dataclasses

    from adex.expert.data import embed_hosts, host_bytes
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
    from adex.expert.data import load_witman
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

    from adex.expert.cv import fold_errors, plot_folds, summarize, write_table
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
