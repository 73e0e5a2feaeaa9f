"""Hand-made descriptors of a vacancy: the features of the descriptor baseline
(:mod:`adex.studies.baseline`) and of the descriptor advisor
(:mod:`adex.advisors.descriptors`), which both import them from here (neither imports
the other).

A vacancy (host structure, index of the vacated atom) becomes one row of
:attr:`DescriptorFeaturizer.n_features` numbers (float64; NaN where undefined).

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
"""
from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np

from adex.errors import ConfigError, StructureError
from adex.io import check_site

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


@dataclass(frozen=True)
class DescriptorSettings:
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
            raise ConfigError(f"invalid descriptor featurizer settings {asdict(self)}")

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

    def __init__(self, settings: DescriptorSettings | None = None) -> None:
        from matminer.featurizers.composition import ElementProperty, Stoichiometry, ValenceOrbital
        from matminer.featurizers.site import CrystalNNFingerprint
        from pymatgen.analysis.local_env import CrystalNN

        self.settings = settings or DescriptorSettings()
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
def cached_featurizer(settings: DescriptorSettings) -> DescriptorFeaturizer:
    """One :class:`DescriptorFeaturizer` per settings, built once per process."""
    return DescriptorFeaturizer(settings)


def feature_names(settings: DescriptorSettings | None = None) -> list[str]:
    """The descriptor names for ``settings`` (default settings if None)."""
    return cached_featurizer(settings or DescriptorSettings()).feature_names



#: The name the settings had when they lived in the baseline module.
BaselineSettings = DescriptorSettings
