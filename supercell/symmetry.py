"""Canonical primitive cells and crystallographic orbits (spglib).

:func:`canonical_host` replaces (host cell, vacated site) by (standardized primitive
cell, lowest-index primitive atom of the vacated site's orbit). Two inputs describing
the same crystal and symmetry-equivalent vacancies therefore map to the same primitive
cell and the same representative atom, whatever cell, origin or atom order they were
given in.

spglib conventions used (checked against the positions in :func:`_primitive_map`):
``dataset.mapping_to_primitive[i]`` is the index, in the primitive cell returned by
``spglib.standardize_cell(cell, to_primitive=True, no_idealize=False)``, of input atom
``i``; ``std_mapping_to_primitive`` does the same for the atoms of the standardized
*conventional* cell (``std_positions``), not for the input.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import spglib
from pymatgen.core import Lattice, Structure

from adex.errors import StructureError
from adex.io import check_site

__all__ = ["CanonicalVacancy", "HostSymmetry", "SiteInfo", "analyze_host", "canonical_host", "distinct_sites", "check_site"]


@dataclass(frozen=True)
class HostSymmetry:
    """Symmetry analysis of a host cell (everything :func:`canonical_host` needs).

    Attributes:
        primitive: standardized primitive cell (spglib, idealized), atoms sorted by
            (Z, fractional x, y, z); symmetrized positions.
        input_to_primitive: int64 [n_input], primitive atom of each input atom.
        orbit: int64 [n_prim], lowest primitive index of each primitive atom's orbit.
        numbers: int64 [n_prim], atomic number of each primitive atom (read-only).
        wyckoff: tuple[str] [n_prim], Wyckoff letter of each primitive atom.
        multiplicity: int64 [n_prim], Wyckoff multiplicity (conventional cell).
        space_group: international symbol, e.g. ``"Fm-3m"``.
        space_group_number: 1..230.
    """

    primitive: Structure
    input_to_primitive: np.ndarray
    orbit: np.ndarray
    numbers: np.ndarray
    wyckoff: tuple[str, ...]
    multiplicity: np.ndarray
    space_group: str
    space_group_number: int


@dataclass(frozen=True)
class CanonicalVacancy:
    """A vacancy expressed on the canonical primitive cell of its host.

    Attributes:
        primitive: standardized primitive cell of the host (see :class:`HostSymmetry`).
        site: index in ``primitive`` of the vacated atom's orbit representative.
        element: element symbol of the vacated atom.
        numbers: int64 [n_prim], atomic numbers of ``primitive`` (read-only, shared).
        wyckoff: Wyckoff label with multiplicity, e.g. ``"4a"``.
        multiplicity: Wyckoff multiplicity (conventional cell), e.g. 4.
        input_site: the site index as given (in the input structure).
        input_to_primitive: int64 [n_input], primitive atom of each input atom.
        space_group: international symbol of the host.
        space_group_number: 1..230.
        orbit: int64 [n_prim], lowest primitive index of each primitive atom's orbit
            (read-only, shared; ``HostSymmetry.orbit``), or None.
    """

    primitive: Structure
    site: int
    element: str
    numbers: np.ndarray
    wyckoff: str
    multiplicity: int
    input_site: int
    input_to_primitive: np.ndarray
    space_group: str
    space_group_number: int
    orbit: np.ndarray | None = None


@dataclass(frozen=True)
class SiteInfo:
    """One symmetry-distinct site (orbit) of a host cell.

    Attributes:
        index: lowest input-site index of the orbit (site indices of the structure given).
        element: element symbol.
        wyckoff: Wyckoff label with multiplicity, e.g. ``"4a"``.
        multiplicity: Wyckoff multiplicity (conventional cell).
        members: int64 [k], all input-site indices of the orbit, ascending.
    """

    index: int
    element: str
    wyckoff: str
    multiplicity: int
    members: np.ndarray

    @property
    def count(self) -> int:
        """Number of atoms of the orbit in the input cell."""
        return int(len(self.members))




#: Closer atoms than this (Å) are reported as overlapping.
OVERLAP_DISTANCE = 0.5


def _cell(structure: Structure, symprec: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """spglib cell (lattice [3, 3] Å, fractional coordinates [n, 3], atomic numbers [n])
    of an ordered structure; ``symprec`` must be a positive distance (Å)."""
    if not structure.is_ordered:
        raise StructureError("host has disordered sites (partial occupancy); adex needs an ordered structure")
    if not (np.isfinite(symprec) and symprec > 0):
        raise StructureError(f"symprec must be > 0 (Å), got {symprec!r}")
    numbers = np.array(structure.atomic_numbers, dtype=np.intc)
    return structure.lattice.matrix.copy(), structure.frac_coords.copy(), numbers


def _check_distances(structure: Structure, symprec: float) -> None:
    """Refuse overlapping atoms and a ``symprec`` that is not small against the closest
    atom-atom distance (spglib can crash on huge tolerances)."""
    from adex.supercell.lattice import shortest_vector_length

    closest = shortest_vector_length(structure.lattice.matrix)
    pair = None
    if len(structure) > 1:
        distances = structure.distance_matrix  # minimum-image distances, Å
        np.fill_diagonal(distances, np.inf)
        i, j = np.unravel_index(np.argmin(distances), distances.shape)
        if distances[i, j] < closest:
            closest, pair = float(distances[i, j]), (int(min(i, j)), int(max(i, j)))
    if pair is not None and closest < OVERLAP_DISTANCE:
        raise StructureError(f"host: atoms {pair[0]} and {pair[1]} are only {closest:.3f} Å apart (overlapping atoms)")
    if symprec >= 0.25 * closest:
        raise StructureError(
            f"symprec={symprec} Å is too large for this host (closest atoms {closest:.3f} Å apart); "
            "use a tolerance well below the interatomic distances"
        )


def _dataset(cell, symprec: float, what: str):
    try:
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec)
    except Exception as exc:  # spglib >= 2.5 may raise instead of returning None
        dataset, message = None, str(exc)
    else:
        message = spglib.get_error_message() if dataset is None else ""
    if dataset is None:
        raise StructureError(
            f"{what}: spglib symmetry search failed at symprec={symprec} ({message or 'no dataset'}); "
            "check for overlapping atoms or try another symprec"
        )
    return dataset


def _primitive_map(cell, dataset, prim_lattice, prim_pos, prim_types, symprec: float) -> np.ndarray:
    """Input atom -> standardized primitive atom, from ``mapping_to_primitive``, verified
    by positions: every input atom must lie nearest to its mapped primitive atom (same
    element) once carried into the standardized frame (``x_s = P x + p``)."""
    lattice, frac, numbers = cell
    mapping = np.asarray(dataset.mapping_to_primitive, dtype=np.int64)
    if mapping.shape != (len(numbers),) or mapping.min() < 0 or mapping.max() >= len(prim_types):
        raise StructureError(f"spglib returned an invalid primitive mapping (symprec={symprec})")
    std_frac = frac @ np.asarray(dataset.transformation_matrix).T + np.asarray(dataset.origin_shift)
    prim_frac = std_frac @ np.asarray(dataset.std_lattice) @ np.linalg.inv(prim_lattice)
    delta = prim_frac[:, None, :] - prim_pos[None, :, :]
    delta -= np.round(delta)
    dist = np.linalg.norm(delta @ prim_lattice, axis=-1)  # [n_input, n_prim], Å
    dist[numbers[:, None] != prim_types[None, :]] = np.inf
    nearest = dist.argmin(axis=1)
    if not np.array_equal(nearest, mapping):
        bad = int(np.flatnonzero(nearest != mapping)[0])
        raise StructureError(
            f"spglib primitive cell does not match the input positions at atom {bad} "
            f"(symprec={symprec}); try another symprec"
        )
    return mapping


#: spglib's centering matrices (``spacegroup.c``): primitive basis vectors as columns in the
#: basis of the standardized conventional cell, per centering letter of the space group
#: (``R``: the hexagonal setting spglib standardizes rhombohedral groups to).
_CENTERING = {
    "P": np.eye(3),
    "A": np.array([[1.0, 0.0, 0.0], [0.0, 0.5, -0.5], [0.0, 0.5, 0.5]]),
    "C": np.array([[0.5, 0.5, 0.0], [-0.5, 0.5, 0.0], [0.0, 0.0, 1.0]]),
    "R": np.array([[2 / 3, -1 / 3, -1 / 3], [1 / 3, 1 / 3, -2 / 3], [1 / 3, 1 / 3, 1 / 3]]),
    "I": np.array([[-0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.5, 0.5, -0.5]]),
    "F": np.array([[0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]]),
}


def _primitive_from_dataset(dataset):
    """The cell ``spglib.standardize_cell(cell, to_primitive=True, no_idealize=False)``
    returns, built from the dataset already computed instead of a second symmetry search:
    the standardized conventional cell carried into the primitive basis by the centering
    matrix, one atom per ``std_mapping_to_primitive`` index, in that order (so that
    ``mapping_to_primitive`` indexes it). Equal to spglib's own to 1e-15 on 600 Materials
    Project and Witman hosts; :func:`_standardize` verifies it against the input positions
    and falls back to spglib's function if it does not match. None for an unknown centering."""
    centering = _CENTERING.get(str(dataset.international)[:1])
    if centering is None:
        return None
    lattice = centering.T @ np.asarray(dataset.std_lattice, dtype=np.float64)
    _, first = np.unique(np.asarray(dataset.std_mapping_to_primitive), return_index=True)
    positions = np.asarray(dataset.std_positions, dtype=np.float64)[first] @ np.linalg.inv(centering).T
    return lattice, positions, np.asarray(dataset.std_types)[first]


def _standardize(cell, symprec: float, what: str):
    """(dataset, standardized primitive cell, input -> primitive atom map) of one cell."""
    dataset = _dataset(cell, symprec, what)
    derived = _primitive_from_dataset(dataset)
    if derived is not None:
        try:
            return dataset, *_checked_primitive(cell, dataset, derived, symprec, what)
        except StructureError:
            pass  # spglib's own standardization decides (and names the problem)
    try:
        standardized = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False, symprec=symprec)
    except Exception:
        standardized = None
    if standardized is None:
        raise StructureError(f"{what}: spglib could not build the primitive cell at symprec={symprec}")
    return dataset, *_checked_primitive(cell, dataset, standardized, symprec, what)


def _checked_primitive(cell, dataset, standardized, symprec: float, what: str):
    """(primitive cell with positions in [0, 1), input -> primitive map), verified."""
    prim_lattice, prim_pos, prim_types = (np.asarray(x) for x in standardized)
    prim_pos = prim_pos - np.floor(prim_pos)
    n_prim, n_atoms = len(prim_types), len(cell[2])
    if n_atoms % n_prim:
        raise StructureError(f"{what}: primitive cell of {n_prim} atoms does not divide the {n_atoms}-atom cell")
    mapping = _primitive_map(cell, dataset, prim_lattice, prim_pos, prim_types, symprec)
    return (prim_lattice, prim_pos, prim_types.astype(np.intc)), mapping


def analyze_host(structure: Structure, symprec: float = 0.01) -> HostSymmetry:
    """Standardized primitive cell, input->primitive map, orbits and Wyckoff positions.

    Near a tolerance edge, spglib can find a higher symmetry in the idealized primitive
    cell than in the input; the standardization is then repeated on the primitive cell
    (at most a few times) until its space group is stable, so that the result is the
    same whichever of the equivalent inputs is given.

    Results are memoised per crystal (whatever the atom order of the input): the
    ``primitive`` structure and the arrays other than ``input_to_primitive`` are shared
    between calls and must be treated as read-only (copy before modifying).

    Raises:
        StructureError: disordered host, overlapping atoms, spglib failure or inconsistent
            spglib output.
    """
    if len(structure) == 0:
        raise StructureError("host has no atoms")
    cell = _cell(structure, symprec)
    # spglib's result at a tolerance edge can depend on the atom order: give it the atoms
    # in a canonical order (Z, then wrapped fractional coordinates) and map back after.
    lattice, frac, numbers = cell
    wrapped = np.round(frac % 1.0, 5) % 1.0
    input_order = np.lexsort((wrapped[:, 2], wrapped[:, 1], wrapped[:, 0], numbers))
    cell = (lattice, frac[input_order], numbers[input_order])
    # The same crystal given with its atoms in another order (one CIF per vacancy, each
    # with its vacated atom first) is the same sorted cell: analysed once, memoised.
    key = hashlib.sha256(b"".join(np.ascontiguousarray(a).tobytes() for a in cell) + repr(float(symprec)).encode())
    key = key.hexdigest()
    if key in _SORTED_CELL_MEMO:
        _SORTED_CELL_MEMO.move_to_end(key)
        sorted_sym = _SORTED_CELL_MEMO[key]
    else:
        _check_distances(structure, symprec)  # a function of the cell: checked once per sorted cell
        sorted_sym = _analyze_sorted_cell(cell, symprec)
        _SORTED_CELL_MEMO[key] = sorted_sym
        if len(_SORTED_CELL_MEMO) > _MEMO_SIZE:
            _SORTED_CELL_MEMO.popitem(last=False)
    mapping = np.empty_like(sorted_sym.input_to_primitive)
    mapping[input_order] = sorted_sym.input_to_primitive
    return dataclasses.replace(sorted_sym, input_to_primitive=mapping)


_SORTED_CELL_MEMO: "OrderedDict[str, HostSymmetry]" = OrderedDict()
_MEMO_SIZE = 256


def _analyze_sorted_cell(cell, symprec: float) -> HostSymmetry:
    """:func:`analyze_host` of a cell whose atoms are already in canonical order;
    ``input_to_primitive`` refers to that order."""
    dataset, prim_cell, mapping = _standardize(cell, symprec, "host")
    for attempt in range(4):
        prim_dataset = _certified_primitive_dataset(cell, dataset, prim_cell, symprec) if attempt == 0 else None
        if prim_dataset is None:
            prim_dataset = _dataset(prim_cell, symprec, "primitive cell")
        if prim_dataset.number == dataset.number and len(prim_dataset.mapping_to_primitive) == len(prim_cell[2]) \
                and len(set(prim_dataset.mapping_to_primitive)) == len(prim_cell[2]):
            break
        dataset, next_cell, next_mapping = _standardize(prim_cell, symprec, "primitive cell")
        mapping = next_mapping[mapping]
        prim_cell = next_cell
    else:
        raise StructureError(
            f"host: space group not stable under standardization at symprec={symprec}; try another symprec"
        )
    prim_lattice, prim_pos, prim_types = prim_cell
    n_prim = len(prim_types)

    # canonical atom order of the primitive cell: (Z, x, y, z), coordinates in [0, 1)
    rounded = np.round(prim_pos, 6) % 1.0
    order = np.lexsort((rounded[:, 2], rounded[:, 1], rounded[:, 0], prim_types))
    rank = np.empty(n_prim, dtype=np.int64)
    rank[order] = np.arange(n_prim)
    prim_pos, prim_types = prim_pos[order], prim_types[order]
    mapping = rank[mapping]
    # orbits and Wyckoff letters of the primitive cell (its own dataset), carried into the
    # new order: ``labels`` are orbit ids (old indices), equal for equivalent atoms
    labels = np.asarray(prim_dataset.equivalent_atoms, dtype=np.int64)[order]
    wyckoff = [prim_dataset.wyckoffs[i] for i in order]
    orbit = np.full(n_prim, n_prim, dtype=np.int64)
    np.minimum.at(orbit, labels, np.arange(n_prim))
    orbit = orbit[labels]  # lowest primitive index of each atom's orbit
    orbit_size = np.bincount(orbit, minlength=n_prim)[orbit]
    cells_per_conventional = len(prim_dataset.std_types) // n_prim
    primitive = Structure(Lattice(prim_lattice), prim_types.tolist(), prim_pos, coords_are_cartesian=False)
    multiplicity = (orbit_size * cells_per_conventional).astype(np.int64)
    numbers = prim_types.astype(np.int64)
    orbit.flags.writeable = multiplicity.flags.writeable = numbers.flags.writeable = False  # shared through the memo
    return HostSymmetry(
        primitive=primitive,
        input_to_primitive=mapping,
        orbit=orbit,
        numbers=numbers,
        wyckoff=tuple(wyckoff),
        multiplicity=multiplicity,
        space_group=str(prim_dataset.international),
        space_group_number=int(prim_dataset.number),
    )


#: Let :func:`_analyze_sorted_cell` take the primitive cell's dataset from the input's when
#: :func:`_certified_primitive_dataset` proves the search cannot find another (tests turn
#: it off to compare with the search).
CERTIFY_PRIMITIVE_SEARCH = True
#: The space groups of point group 6/mmm (order 24): like m-3m (order 48), a maximal
#: crystallographic point group (in no other), so no lattice that has it has more rotations.
_HEXAGONAL_HOLOHEDRY = frozenset(range(191, 195))
#: The m-3m space groups with two origin choices (Pn-3n, Pn-3m, Fd-3m, Fd-3c): spglib's
#: search on the standardized primitive cell can settle on the other origin, and so on
#: other Wyckoff letters (a/d instead of b/c in Fd-3m spinels), than on the input.
_TWO_ORIGINS = frozenset({222, 224, 227, 228})


@dataclass(frozen=True)
class _DerivedDataset:
    """The fields of a spglib dataset :func:`_analyze_sorted_cell` reads from the primitive
    cell's own search, derived from the input cell's (:func:`_certified_primitive_dataset`)."""

    number: int
    international: str
    equivalent_atoms: np.ndarray
    wyckoffs: list
    std_types: np.ndarray
    mapping_to_primitive: np.ndarray


def _certified_primitive_dataset(cell, dataset, prim_cell, symprec: float):
    """The primitive cell's dataset without its spglib search, or None (search it).

    The primitive cell is the input's standardized primitive cell, its atoms moved onto
    exact positions of the input's space group G, so its own search at the same tolerance
    finds all of G's operations again, and possibly more: the loop of
    :func:`_analyze_sorted_cell` exists for that case. It cannot find more when G already
    has the 48 rotations of m-3m or the 24 of 6/mmm (maximal point groups: no lattice
    with them has more) and the cell has no pure translation (each rotation then has one
    translation, so G's operations are all there can be): checked
    here, with a 10x margin on the tolerance (:func:`_near_pure_translation`). Then the
    search would return G, and its orbits, space group and conventional cell size are
    those of the input's dataset carried to the primitive atoms. So are its Wyckoff letters
    (which also depend on the origin spglib settles on) except in the four m-3m groups with
    two origin choices (:data:`_TWO_ORIGINS`), left to the search (an observation, not a
    proof: equal to the search on the first 12,000 Materials Project hosts, 2,389 of them
    certified, scratch check; tested in ``tests/test_screen_speed_symmetry.py``). The cubic
    hosts are those whose search is slowest here (cubic F/I/P: 12 ms against 0.4-3 ms for
    lower symmetry with spglib 2.8).
    """
    if not CERTIFY_PRIMITIVE_SEARCH:
        return None
    lattice, positions, types = (np.asarray(x) for x in prim_cell)
    n_input, n_prim = len(cell[2]), len(types)
    number = int(dataset.number)
    order = len(dataset.rotations) * n_prim  # rotations per primitive cell, times n_input
    maximal = order == 48 * n_input or (order == 24 * n_input and number in _HEXAGONAL_HOLOHEDRY)
    if not maximal or number in _TWO_ORIGINS:
        return None
    mapping = np.asarray(dataset.mapping_to_primitive, dtype=np.int64)
    if mapping.shape != (n_input,) or len(np.unique(mapping)) != n_prim:
        return None
    if _near_pure_translation(lattice, positions, types, 10.0 * symprec):
        return None
    representative = np.empty(n_prim, dtype=np.int64)
    representative[mapping] = np.arange(n_input)  # an input atom of each primitive atom
    equivalent = mapping[np.asarray(dataset.equivalent_atoms, dtype=np.int64)[representative]]
    wyckoffs = [dataset.wyckoffs[i] for i in representative]
    return _DerivedDataset(int(dataset.number), str(dataset.international), equivalent, wyckoffs,
                           np.asarray(dataset.std_types), np.arange(n_prim))


def _near_pure_translation(lattice: np.ndarray, positions: np.ndarray, types: np.ndarray, threshold: float) -> bool:
    """Whether some translation between two atoms of one species carries every atom to
    within ``threshold`` Å of an atom of its species (27 images around the nearest: exact
    for the reduced bases of the standardized cubic and hexagonal primitive cells this is
    used on).
    True also when the cell is too large to check cheaply."""
    types = np.asarray(types)
    species, counts = np.unique(types, return_counts=True)
    same = np.flatnonzero(types == species[np.argmin(counts)])
    n, m = len(types), len(same) - 1
    if m == 0:
        return False
    if m * n * n * 27 > 2_000_000:
        return True
    shifts = positions[same[1:]] - positions[same[0]]  # [m, 3]
    delta = positions[None, :, None, :] + shifts[:, None, None, :] - positions[None, None, :, :]  # [m, n, n, 3]
    delta -= np.round(delta)
    images = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), axis=-1).reshape(-1, 3)
    cart = (delta[..., None, :] + images) @ lattice  # [m, n, n, 27, 3]
    dist = np.sqrt((cart * cart).sum(-1)).min(-1)  # [m, n, n]
    dist[:, types[:, None] != types[None, :]] = np.inf
    worst = dist.min(axis=2).max(axis=1)  # [m]: farthest atom from an atom of its species
    return bool((worst < threshold).any())


def canonical_host(structure: Structure, site: int, symprec: float = 0.01) -> CanonicalVacancy:
    """Map a vacancy (host, site index) onto the host's canonical primitive cell.

    Args:
        structure: host cell; ``site`` indexes its atoms in their given order.
        site: index of the vacated atom in ``structure``.
        symprec: spglib distance tolerance, Å.
    Raises:
        StructureError: site out of range, disorder, or spglib failure.
    """
    return canonical_host_sites(structure, [site], symprec)[0]


def canonical_host_sites(structure: Structure, sites, symprec: float = 0.01) -> list[CanonicalVacancy]:
    """:func:`canonical_host` of several sites of one host (the host is analysed once).

    Raises:
        StructureError: a site out of range, disorder, or spglib failure.
    """
    sites = [check_site(structure, site) for site in sites]
    sym = analyze_host(structure, symprec)
    return [_canonical_vacancy(sym, site) for site in sites]


def _canonical_vacancy(sym: HostSymmetry, site: int) -> CanonicalVacancy:
    rep = int(sym.orbit[sym.input_to_primitive[site]])
    return CanonicalVacancy(
        primitive=sym.primitive,
        site=rep,
        element=sym.primitive[rep].specie.symbol,
        numbers=sym.numbers,
        wyckoff=f"{int(sym.multiplicity[rep])}{sym.wyckoff[rep]}",
        multiplicity=int(sym.multiplicity[rep]),
        input_site=site,
        input_to_primitive=sym.input_to_primitive,
        space_group=sym.space_group,
        space_group_number=sym.space_group_number,
        orbit=sym.orbit,
    )


def distinct_sites(structure: Structure, symprec: float = 0.01) -> list[SiteInfo]:
    """One entry per symmetry-distinct site of ``structure``, ordered by the lowest
    input index of each orbit (which is the entry's ``index``)."""
    sym = analyze_host(structure, symprec)
    input_orbit = sym.orbit[sym.input_to_primitive]  # [n_input], orbit id of each input atom
    order = np.lexsort((np.arange(len(input_orbit)), input_orbit))
    sorted_orbit = input_orbit[order]
    starts = np.flatnonzero(np.r_[True, sorted_orbit[1:] != sorted_orbit[:-1]])
    groups = np.split(order, starts[1:])
    infos = []
    for members in groups:  # one iteration per orbit, not per atom
        prim = int(input_orbit[members[0]])
        infos.append(
            SiteInfo(
                index=int(members[0]),
                element=sym.primitive[prim].specie.symbol,
                wyckoff=f"{int(sym.multiplicity[prim])}{sym.wyckoff[prim]}",
                multiplicity=int(sym.multiplicity[prim]),
                members=np.sort(members).astype(np.int64),
            )
        )
    return sorted(infos, key=lambda info: info.index)
