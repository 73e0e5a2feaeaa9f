"""Vacancy graphs without a neighbour search on the supercell.

:func:`adex.supercell.build_vacancy_graph` needs the crystal graphs of the pristine and
of the defected supercell, as :meth:`adex.graphs.Featurizer.featurize` would build them.
Running that neighbour search on the supercell costs time proportional to the supercell,
twice per vacancy. This module builds the same two edge lists from cheaper facts:

1. **The pristine supercell is periodic in the primitive cell.** The neighbour search runs
   once on the canonical primitive host (memoised per host and featurizer settings: the
   vacancies of one host share it), keeping for every primitive atom *all* candidates
   within the cutoff as (neighbour primitive atom, integer image offset, distance), and
   the Featurizer's selection rule (:func:`adex.graphs.select_nearest`) picks the kept
   ones. Supercell atom ``p * n_cells + t`` (primitive atom ``p``, cell translation
   ``T[t]``, :func:`adex.supercell.vacancy.supercell_of` order) then has neighbour
   ``p' * n_cells + t'`` for each kept primitive edge ``(p, p', n)``, where ``t'`` is the
   cell whose translation is congruent to ``T[t] + n`` modulo the supercell lattice. The
   congruence is exact integer arithmetic: with ``adj(M) = det(M) M^-1`` (integer),
   ``v @ adj(M) mod |det M|`` is the same vector for exactly the translations ``v`` of one
   coset, so it keys a lookup table of the ``n_cells`` translations.
2. **The defected supercell differs from the pristine one only next to the vacancy.**
   Removing atom ``v`` changes the selection only of atoms that had ``v`` among their
   *selected* neighbours (a candidate beyond the kept ones does not move the k-th
   distance). Those atoms take their remaining candidates through the same selection
   rule; every other atom keeps its edges, renumbered (``j -> j - (j > v)``).

Distances come from the primitive cell; they equal the supercell's up to float rounding
(at most 2.5e-14 Å on 99 Witman supercells at 20 Å). Every decision of the Featurizer
compares a distance with a threshold (the cutoff, the k-th distance + ``tie_tolerance``,
or, with ``tie_tolerance < 0``, the rank ``max_neighbors`` inside a degenerate shell). If any candidate lies within
:data:`DECISION_GUARD` of such a threshold, rounding could flip the decision: the fast
path then declines (returns ``None``) and the caller runs the naive search, so the edge
*sets* always equal the naive ones. Edges are ordered like the Featurizer's (receiver
ascending, then distance); among neighbours whose distances differ only by rounding the
order may differ from the naive one, which orders them by its own rounding noise and the
traversal order of pymatgen's cell list.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from adex.errors import StructureError
from adex.supercell.lattice import lattice_points_in_supercell

if TYPE_CHECKING:
    from pymatgen.core import Structure

    from adex.graphs import Featurizer
    from adex.supercell.vacancy import VacancySupercell

__all__ = ["CUTOFF_GUARD_D2", "DECISION_GUARD", "HostNeighbors", "host_neighbors", "fast_supercell_graphs", "clear_caches"]

#: A candidate closer than this (Å) to a selection threshold makes the fast path decline.
#: Float noise between primitive-cell and supercell distances is ~1e-14 Å.
DECISION_GUARD = 1e-9
#: pymatgen's ``find_points_in_spheres`` keeps pairs with ``d**2 < r**2 + PYMATGEN_TOL``
#: (``Structure.get_neighbor_list``'s default numerical tolerance).
PYMATGEN_TOL = 1e-8
#: ...and below ``PYMATGEN_MIN_R`` it searches ``min_r`` and keeps ``d <= r``.
PYMATGEN_MIN_R = 1.0
#: The cutoff test is made on d^2 against r^2 + PYMATGEN_TOL; a candidate within this
#: (Å^2) of it makes the fast path decline. Smaller than PYMATGEN_TOL, so a shell lying
#: exactly on the cutoff (1e-8 inside) is not ambiguous; ~1e-10 Å in distance at r = 5-10 Å.
CUTOFF_GUARD_D2 = 2e-9
#: Extra search radius (Å) so that candidates just beyond the cutoff are seen (and can
#: make the fast path decline when they are within the guard of it).
_SEARCH_PAD = 1e-6

_HOST_CACHE_SIZE = 64
_PRISTINE_CACHE_SIZE = 4


class _LRU:
    """A small least-recently-used memo (values are read-only arrays / frozen objects)."""

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.data: OrderedDict = OrderedDict()

    def get(self, key):
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key, value) -> None:
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.maxsize:
            self.data.popitem(last=False)

    def clear(self) -> None:
        self.data.clear()


_HOSTS = _LRU(_HOST_CACHE_SIZE)
_COSETS = _LRU(_HOST_CACHE_SIZE)
_PRISTINE = _LRU(_PRISTINE_CACHE_SIZE)


def clear_caches() -> None:
    """Forget the memoised primitive neighbour lists, supercell cell tables and pristine
    supercell graphs."""
    _HOSTS.clear()
    _COSETS.clear()
    _PRISTINE.clear()


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


# --------------------------------------------------------------------------- primitive host


@dataclass(frozen=True)
class HostNeighbors:
    """All neighbour candidates of the atoms of one primitive cell (read-only arrays).

    Candidates of primitive atom ``p`` are ``ptr[p]:ptr[p+1]``, sorted by (distance,
    neighbour; exact ties in pymatgen's order); ``selected`` marks those the Featurizer's
    rule keeps.

    Attributes:
        atomic_numbers: int64 [n_prim].
        ptr: int64 [n_prim + 1].
        neighbor: int64 [m], neighbour primitive atom.
        image: int64 [m, 3], lattice translation of the neighbour (primitive basis).
        distance: float64 [m], Å.
        selected: bool [m].
        kept_per_atom: int64 [n_prim], number of selected candidates of each atom.
        ambiguous: a selection decision lies within :data:`DECISION_GUARD` of its threshold.
    """

    atomic_numbers: np.ndarray
    ptr: np.ndarray
    neighbor: np.ndarray
    image: np.ndarray
    distance: np.ndarray
    selected: np.ndarray
    kept_per_atom: np.ndarray
    ambiguous: bool

    @property
    def n_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])


def _within_cutoff(distance: np.ndarray, cutoff: float) -> tuple[np.ndarray, np.ndarray]:
    """(inside, ambiguous) masks under pymatgen's inclusion rule for radius ``cutoff``."""
    if cutoff < PYMATGEN_MIN_R:
        return distance <= cutoff, np.abs(distance - cutoff) <= DECISION_GUARD
    threshold = cutoff * cutoff + PYMATGEN_TOL
    d2 = distance * distance
    return d2 < threshold, np.abs(d2 - threshold) <= CUTOFF_GUARD_D2


def _selection_ambiguous(center: np.ndarray, distance: np.ndarray, max_neighbors: int | None, tie_tolerance: float) -> np.ndarray:
    """Centres (sorted unique values of ``center``) whose selection could flip by rounding.

    ``center``/``distance`` must be sorted by (center, distance). A radius graph
    (``max_neighbors=None``) selects by the cutoff alone: never ambiguous here.
    """
    n = center.shape[0]
    if n == 0 or max_neighbors is None:
        return np.zeros(0, dtype=center.dtype)
    starts = np.flatnonzero(np.concatenate([[True], center[1:] != center[:-1]]))
    counts = np.diff(np.append(starts, n))
    rank = np.arange(n) - np.repeat(starts, counts)
    kth = np.repeat(distance[starts + np.minimum(counts, max_neighbors) - 1], counts)
    beyond = rank >= max_neighbors
    bad = beyond & (np.abs(distance - (kth + tie_tolerance)) <= DECISION_GUARD)
    if tie_tolerance < DECISION_GUARD:  # the rank cut can split a degenerate shell
        bad |= (rank == max_neighbors) & (distance - kth <= DECISION_GUARD)
    return np.unique(center[bad])


def _host_key(primitive: "Structure", settings, numbers: np.ndarray | None = None) -> tuple:
    if numbers is None:
        numbers = np.array([site.specie.Z for site in primitive], dtype=np.int64)
    numbers = np.asarray(numbers, dtype=np.int64)
    return (
        np.ascontiguousarray(primitive.lattice.matrix, dtype=np.float64).tobytes(),
        numbers.tobytes(),
        np.ascontiguousarray(primitive.frac_coords, dtype=np.float64).tobytes(),
        float(settings.cutoff), -1 if settings.max_neighbors is None else int(settings.max_neighbors),
        float(settings.selection_tolerance),
    )


def _neighbor_list(structure: "Structure", r: float):
    """``structure.get_neighbor_list(r, exclude_self=True)`` (the same pymatgen routine,
    called without building a list of sites)."""
    try:
        from pymatgen.optimization.neighbors import find_points_in_spheres
    except ImportError:  # pragma: no cover - pymatgen without its compiled extension
        return structure.get_neighbor_list(r=r, exclude_self=True)
    coords = np.ascontiguousarray(structure.cart_coords, dtype=float)
    center, neighbor, image, distance = find_points_in_spheres(
        coords, coords, r=r, pbc=np.ascontiguousarray(structure.pbc, dtype=np.int64),
        lattice=np.ascontiguousarray(structure.lattice.matrix, dtype=float), tol=PYMATGEN_TOL,
    )
    keep = ~((center == neighbor) & (distance <= PYMATGEN_TOL))
    return center[keep], neighbor[keep], image[keep], distance[keep]


def host_neighbors(primitive: "Structure", settings, key: tuple | None = None) -> HostNeighbors:
    """Neighbour candidates of a primitive cell (memoised per cell and settings).

    Args:
        primitive: the (canonical) primitive host, ordered.
        settings: :class:`adex.graphs.FeaturizerSettings` (cutoff, max_neighbors, tie_tolerance).
        key: ``_host_key(primitive, settings)`` if already computed.
    """
    key = key or _host_key(primitive, settings)
    hit = _HOSTS.get(key)
    if hit is not None:
        return hit
    from adex.graphs import select_nearest

    n_prim = len(primitive)
    center, neighbor, image, distance = _neighbor_list(primitive, settings.cutoff + _SEARCH_PAD)
    inside, near_cutoff = _within_cutoff(distance, settings.cutoff)
    ambiguous = bool(near_cutoff.any())
    center, neighbor, distance = center[inside], neighbor[inside], distance[inside]
    image = np.rint(image[inside]).astype(np.int64)
    order = np.lexsort((neighbor, distance, center))
    center, neighbor, image, distance = center[order], neighbor[order], image[order], distance[order]
    selected = np.zeros(center.shape[0], dtype=bool)
    selected[select_nearest(center, distance, settings.max_neighbors, settings.selection_tolerance)] = True
    if _selection_ambiguous(center, distance, settings.max_neighbors, settings.selection_tolerance).size:
        ambiguous = True
    ptr = np.zeros(n_prim + 1, dtype=np.int64)
    np.cumsum(np.bincount(center, minlength=n_prim), out=ptr[1:])
    result = HostNeighbors(
        atomic_numbers=np.frombuffer(key[1], dtype=np.int64).copy(),
        ptr=ptr,
        neighbor=neighbor.astype(np.int64),
        image=image,
        distance=distance.astype(np.float64),
        selected=selected,
        kept_per_atom=np.bincount(center[selected], minlength=n_prim).astype(np.int64),
        ambiguous=ambiguous,
    )
    _readonly(result.atomic_numbers, result.ptr, result.neighbor, result.image, result.distance, result.selected,
              result.kept_per_atom)
    _HOSTS.put(key, result)
    return result


# --------------------------------------------------------------------------- supercell cosets


def _adjugate(matrix: np.ndarray) -> tuple[np.ndarray, int]:
    """(adj int64 [3, 3], det) with ``matrix @ adj == det * I`` (exact integers)."""
    m = [[int(x) for x in row] for row in np.asarray(matrix)]
    adj = np.zeros((3, 3), dtype=np.int64)
    for i in range(3):
        for j in range(3):
            rows = [r for r in range(3) if r != j]
            cols = [c for c in range(3) if c != i]
            minor = m[rows[0]][cols[0]] * m[rows[1]][cols[1]] - m[rows[0]][cols[1]] * m[rows[1]][cols[0]]
            adj[i, j] = (-1) ** (i + j) * minor
    det = sum(m[0][k] * int(adj[k, 0]) for k in range(3))
    return adj, det


@dataclass(frozen=True)
class _Cosets:
    """Integer map from primitive-lattice translations to the supercell's cells."""

    n_cells: int
    modulus: int  # |det M|
    adj: np.ndarray  # int64 [3, 3], sign(det) adj(M): v @ adj = |det M| (v @ M^-1)
    cell_residue: np.ndarray  # int64 [n_cells, 3], T[t] @ adj mod |det M|
    sorted_keys: np.ndarray  # int64 [n_cells]
    key_to_cell: np.ndarray  # int64 [n_cells]

    @classmethod
    def of(cls, matrix: np.ndarray) -> "_Cosets":
        adj, det = _adjugate(matrix)
        if det == 0:
            raise ValueError("singular supercell matrix")
        modulus = abs(det)
        adj = adj * (1 if det > 0 else -1)
        translations = lattice_points_in_supercell(matrix)
        residue = (translations @ adj) % modulus
        keys = cls._keys(residue, modulus)
        order = np.argsort(keys, kind="stable")
        if np.any(np.diff(keys[order]) == 0) or len(keys) != modulus:
            raise RuntimeError("supercell translations are not one per coset")
        return cls(len(translations), modulus, adj, residue, keys[order], order)

    @staticmethod
    def _keys(residue: np.ndarray, modulus: int) -> np.ndarray:
        return (residue[..., 0] * modulus + residue[..., 1]) * modulus + residue[..., 2]

    def image_residue(self, image: np.ndarray) -> np.ndarray:
        return image @ self.adj

    def cell(self, cells: np.ndarray, image_residue: np.ndarray) -> np.ndarray:
        """Cell index of translation ``T[cells] + image`` (``image_residue = image @ adj``)."""
        keys = self._keys((self.cell_residue[cells] + image_residue) % self.modulus, self.modulus)
        return self.key_to_cell[np.searchsorted(self.sorted_keys, keys)]


# --------------------------------------------------------------------------- graphs


@dataclass(frozen=True)
class _Pristine:
    """The pristine supercell's kept edges (read-only arrays).

    Receiver ``i = p * n_cells + t`` owns edges ``first[i] : first[i] + kept_per_atom[p]``,
    in the order of primitive atom ``p``'s kept candidates (receivers ascending).
    """

    receiver: np.ndarray  # int64 [E]
    sender: np.ndarray  # int64 [E]
    distance: np.ndarray  # float64 [E]
    distance32: np.ndarray  # float32 [E]
    first: np.ndarray  # int64 [n_atoms]
    atomic_numbers: np.ndarray  # int64 [n_atoms]


def _pristine_edges(host: HostNeighbors, cosets: _Cosets) -> _Pristine:
    n_cells = cosets.n_cells
    kept = np.flatnonzero(host.selected)
    per_atom = host.kept_per_atom  # >= 1 each (checked by the caller)
    # image table: cell of T[t] + n for each distinct image n among the kept edges
    kept_image = host.image[kept]
    low = kept_image.min(axis=0)
    span = kept_image.max(axis=0) - low + 1
    code = ((kept_image[:, 0] - low[0]) * span[1] + kept_image[:, 1] - low[1]) * span[2] + kept_image[:, 2] - low[2]
    _, first_use, image_id = np.unique(code, return_index=True, return_inverse=True)
    images = kept_image[first_use]
    cells = np.arange(n_cells)
    table = cosets.cell(cells[:, None], cosets.image_residue(images)[None, :, :])  # [n_cells, n_images]
    # edges: primitive-atom major, then cell t, then the atom's kept edges in order
    block = per_atom * n_cells
    block_start = np.cumsum(block) - block
    total = int(block.sum())
    atom = np.repeat(np.arange(host.n_atoms), block)
    local = np.arange(total) - np.repeat(block_start, block)
    cell = local // per_atom[atom]
    edge = (np.cumsum(per_atom) - per_atom)[atom] + local % per_atom[atom]
    receiver = atom * n_cells + cell
    sender = host.neighbor[kept][edge] * n_cells + table[cell, image_id[edge]]
    distance = host.distance[kept][edge]
    first = (np.repeat(block_start, n_cells) + np.tile(cells, host.n_atoms) * np.repeat(per_atom, n_cells))
    result = _Pristine(receiver, sender, distance, distance.astype(np.float32), first,
                       np.repeat(host.atomic_numbers, n_cells))
    _readonly(*(getattr(result, f) for f in ("receiver", "sender", "distance", "distance32", "first", "atomic_numbers")))
    return result


def _isolated(source: str, structure: "Structure", index: int, cutoff: float) -> StructureError:
    # the Featurizer's message, word for word
    return StructureError(
        f"{source}: atom {index} ({structure[index].specie}) has no neighbour within "
        f"the {cutoff} Å cutoff (isolated atom)"
    )


def fast_supercell_graphs(vac: "VacancySupercell", featurizer: "Featurizer"):
    """Pristine and defected supercell edge lists, equal to ``featurizer.featurize`` on
    ``vac.pristine`` and ``vac.defected`` (edge sets exactly; distances to float rounding;
    order up to rounding-level distance ties).

    Returns:
        ``None`` when a selection decision is within :data:`DECISION_GUARD` of its
        threshold (the caller then runs the naive search), else
        ``(pristine_z, (p_receiver, p_sender, p_distance), defected_z, (d_receiver,
        d_sender, d_distance))``: atomic numbers int64 and edges (int64, int64,
        float32), receivers ascending.
    Raises:
        StructureError: disordered host, or an atom without neighbours (same messages
            as the Featurizer).
        UnknownElementError: an element missing from the embedding.
    """
    from adex.graphs import _ranges, select_nearest

    settings = featurizer.settings
    primitive = vac.canonical.primitive  # ordered: canonical_host refuses disordered hosts
    host_key = _host_key(primitive, settings, vac.canonical.numbers)
    host = host_neighbors(primitive, settings, host_key)
    featurizer.check_elements(host.atomic_numbers, "pristine supercell")
    if host.ambiguous:
        return None
    n_cells = vac.n_cells
    cutoff = settings.cutoff
    per_atom = host.kept_per_atom
    if np.any(per_atom == 0):
        raise _isolated("pristine supercell", vac.pristine, int(np.flatnonzero(per_atom == 0)[0]) * n_cells, cutoff)

    matrix = np.asarray(vac.supercell_matrix, dtype=np.int64)
    key = (host_key, matrix.tobytes())
    cached = _PRISTINE.get(key)
    if cached is None:
        cosets = _COSETS.get(matrix.tobytes())
        if cosets is None:
            cosets = _Cosets.of(matrix)
            _COSETS.put(matrix.tobytes(), cosets)
        if cosets.n_cells != n_cells:
            raise RuntimeError(f"supercell has {n_cells} cells, its matrix {cosets.n_cells}")
        cached = (cosets, _pristine_edges(host, cosets))
        _PRISTINE.put(key, cached)
    cosets, pristine = cached
    z_pristine = pristine.atomic_numbers

    # ---- defected: only the atoms that kept the vacated atom as a neighbour change.
    v = int(vac.vacancy_index)
    p_v, t_v = divmod(v, n_cells)
    # Kept primitive edge (p, p_v, n) reaches v from cell t iff T[t] + n = T[t_v] (mod supercell):
    # t = cell(t_v, -n). Found from the primitive edges alone, without scanning the supercell.
    kept = np.flatnonzero(host.selected & (host.neighbor == p_v))
    kept_center = np.searchsorted(host.ptr, kept, side="right") - 1
    hit_cell = cosets.cell(np.full(len(kept), t_v), cosets.image_residue(-host.image[kept]))
    affected = np.unique(kept_center * n_cells + hit_cell)
    affected = affected[affected != v]
    # all candidates of the affected atoms, mapped onto the supercell, minus the vacated atom
    atom, cell = np.divmod(affected, n_cells)
    n_cand = host.ptr[atom + 1] - host.ptr[atom]
    owner = np.repeat(np.arange(len(affected)), n_cand)
    cand = _ranges(host.ptr[atom], n_cand)
    cand_sender = host.neighbor[cand] * n_cells + cosets.cell(cell[owner], cosets.image_residue(host.image[cand]))
    keep = cand_sender != v
    new_receiver, new_sender, new_dist = affected[owner[keep]], cand_sender[keep], host.distance[cand[keep]]
    if _selection_ambiguous(new_receiver, new_dist, settings.max_neighbors, settings.selection_tolerance).size:
        return None
    chosen = select_nearest(new_receiver, new_dist, settings.max_neighbors, settings.selection_tolerance)
    new_receiver, new_sender, new_dist = new_receiver[chosen], new_sender[chosen], new_dist[chosen]
    lonely = np.setdiff1d(affected, new_receiver)
    if lonely.size:
        first = int(lonely[0])
        raise _isolated("defected supercell", vac.defected, first - (first > v), cutoff)

    # splice: drop the vacated atom's own edges and the affected atoms' old ones, insert the new
    redone = np.append(v, affected)
    keep_edge = np.ones(len(pristine.receiver), dtype=bool)
    keep_edge[_ranges(pristine.first[redone], per_atom[redone // n_cells])] = False
    kept_receiver = pristine.receiver[keep_edge]
    at = np.searchsorted(kept_receiver, new_receiver)
    d_receiver = np.insert(kept_receiver, at, new_receiver)
    d_sender = np.insert(pristine.sender[keep_edge], at, new_sender)
    d_dist = np.insert(pristine.distance[keep_edge], at, new_dist)
    d_receiver -= d_receiver > v
    d_sender -= d_sender > v
    z_defected = np.delete(z_pristine, v)
    return (
        z_pristine, (pristine.receiver, pristine.sender, pristine.distance32),
        z_defected, (d_receiver, d_sender, d_dist.astype(np.float32)),
    )
