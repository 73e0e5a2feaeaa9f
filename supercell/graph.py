"""The expert's input: pristine and defected supercell graphs joined into one graph.

Nodes ``0 .. P-1`` are the pristine supercell's atoms, nodes ``P .. P+D-1`` the defected
supercell's atoms (``D = P - 1``), both in :class:`~adex.supercell.vacancy.VacancySupercell`
order. Edges follow :mod:`adex.graphs`: ``edge_index[0]`` is the receiving atom ``i``,
``edge_index[1]`` the sending neighbour ``j`` (messages flow ``j -> i``).
Edges come in four blocks, in this order:

====  ==================================  =======================================
type  block                               edge ``i <- j``
====  ==================================  =======================================
0     pristine bonds                      ``i, j`` pristine, ``edge_distance`` Å
1     defected bonds                      ``i, j`` defected, ``edge_distance`` Å
2     correspondence defected -> pristine ``j`` defected, ``i`` its pristine twin, 0 Å
3     correspondence pristine -> defected ``j`` pristine, ``i`` its defected twin, 0 Å
====  ==================================  =======================================

Only numpy here (no torch): batching lives in adex core.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np

from adex.errors import StructureError
from adex.supercell.vacancy import VacancySupercell

if TYPE_CHECKING:  # adex.graphs imports torch; keep this module torch-free at import
    from adex.graphs import Featurizer

__all__ = ["EDGE_PRISTINE", "EDGE_DEFECTED", "EDGE_DEFECTED_TO_PRISTINE", "EDGE_PRISTINE_TO_DEFECTED",
           "GRAPH_METHODS", "ROLE_PRISTINE", "ROLE_DEFECTED", "VacancyGraph", "build_vacancy_graph"]

ROLE_PRISTINE, ROLE_DEFECTED = 0, 1
EDGE_PRISTINE, EDGE_DEFECTED, EDGE_DEFECTED_TO_PRISTINE, EDGE_PRISTINE_TO_DEFECTED = 0, 1, 2, 3

_ARRAY_FIELDS = (
    "atomic_numbers", "node_role", "node_primitive", "edge_index", "edge_distance", "edge_type",
    "vacancy_neighbors", "former_neighbors_defected",
)
_SCALAR_FIELDS = ("n_pristine", "vacancy_node", "vacancy_element")


@dataclass
class VacancyGraph:
    """One vacancy as a single graph of numpy arrays (P pristine + D = P - 1 defected nodes,
    N = P + D nodes, E edges).

    Attributes:
        atomic_numbers: int64 [N], Z of each node.
        node_role: int8 [N], 0 pristine node, 1 defected node.
        node_primitive: int64 [N], primitive-cell atom each node copies (index into
            ``VacancySupercell.canonical.primitive``; for advisor embeddings computed on the
            primitive cell).
        edge_index: int64 [2, E], row 0 receiving node i, row 1 sending node j.
        edge_distance: float32 [E], Å (0 for correspondence edges).
        edge_type: int8 [E], 0 pristine bond, 1 defected bond, 2 correspondence
            defected -> pristine twin, 3 correspondence pristine -> defected twin.
        n_pristine: P; nodes ``0..P-1`` are pristine, ``P..N-1`` defected.
        vacancy_node: pristine node index of the vacated atom.
        vacancy_neighbors: int64 [k], pristine node indices of the atoms joined to the
            vacated atom by a pristine edge in either direction (its neighbours and the
            atoms that had it as a neighbour), ascending.
        former_neighbors_defected: int64 [k], the defected node indices (>= P) of the same
            atoms, in the same order: the twins that lost a neighbour.
        vacancy_element: Z of the vacated atom.
    """

    atomic_numbers: np.ndarray
    node_role: np.ndarray
    node_primitive: np.ndarray
    edge_index: np.ndarray
    edge_distance: np.ndarray
    edge_type: np.ndarray
    n_pristine: int
    vacancy_node: int
    vacancy_neighbors: np.ndarray
    former_neighbors_defected: np.ndarray
    vacancy_element: int

    @property
    def n_nodes(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def n_defected(self) -> int:
        return self.n_nodes - self.n_pristine

    @property
    def n_edges(self) -> int:
        return int(self.edge_distance.shape[0])

    def to_dict(self) -> dict[str, np.ndarray | int]:
        """Plain arrays and ints (for npz files and for packing many graphs)."""
        out: dict[str, np.ndarray | int] = {name: getattr(self, name) for name in _ARRAY_FIELDS}
        out.update({name: int(getattr(self, name)) for name in _SCALAR_FIELDS})
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "VacancyGraph":
        """Inverse of :meth:`to_dict` (dtypes restored)."""
        dtypes = {
            "atomic_numbers": np.int64, "node_role": np.int8, "node_primitive": np.int64,
            "edge_index": np.int64, "edge_distance": np.float32, "edge_type": np.int8,
            "vacancy_neighbors": np.int64, "former_neighbors_defected": np.int64,
        }
        kwargs = {name: np.asarray(data[name], dtype=dtypes[name]) for name in _ARRAY_FIELDS}
        kwargs.update({name: int(np.asarray(data[name])) for name in _SCALAR_FIELDS})
        return cls(**kwargs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VacancyGraph):
            return NotImplemented
        return all(np.array_equal(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))


#: Graph construction methods of :func:`build_vacancy_graph`.
GRAPH_METHODS = ("fast", "naive")


def build_vacancy_graph(vac: VacancySupercell, featurizer: "Featurizer", method: str = "fast") -> VacancyGraph:
    """The combined pristine + defected graph of one vacancy.

    Args:
        vac: the vacancy supercell.
        featurizer: :class:`adex.graphs.Featurizer` (its settings define the bonds).
        method: ``"fast"`` (default): neighbour candidates from the primitive host
            (memoised per host) mapped onto the supercell, and the defected graph derived
            from the pristine one by re-selecting only the neighbours of the vacated atom
            (:mod:`adex.supercell.fast_graph`); it falls back to ``"naive"`` when a
            candidate distance lies within 1e-9 Å of a selection threshold (there float
            rounding could flip the naive decision), or when the featurizer overrides
            ``featurize``. ``"naive"``: ``featurizer.featurize`` on
            the pristine and on the defected supercell. Both give the same edges (tested);
            the fast path's distances differ by float rounding (~1e-14 Å before the
            float32 cast), and neighbours of one atom whose distances differ only by such
            rounding may come in a different order.
    Raises:
        StructureError: from the featurizer (e.g. an atom isolated by the vacancy), or a
            one-atom supercell (nothing left once the atom is removed).
        UnknownElementError: an element missing from the featurizer's embedding.
        ValueError: unknown ``method``.
    """
    if method not in GRAPH_METHODS:
        raise ValueError(f"unknown graph method {method!r} (choose from {', '.join(GRAPH_METHODS)})")
    if len(vac.defected_to_pristine) == 0:
        raise StructureError(
            "defected supercell: no atom left (one-atom supercell); use a larger min_image_distance"
        )
    if method == "fast" and _has_standard_featurize(featurizer):
        from adex.supercell.fast_graph import fast_supercell_graphs

        parts = fast_supercell_graphs(vac, featurizer)
        if parts is not None:
            z_p, (p_recv, p_send, p_dist), z_d, (d_recv, d_send, d_dist) = parts
            return _join(vac, z_p, np.stack([p_recv, p_send]), p_dist, z_d, np.stack([d_recv, d_send]), d_dist)
    pristine = featurizer.featurize(vac.pristine, source="pristine supercell")
    defected = featurizer.featurize(vac.defected, source="defected supercell")
    return _join(vac, pristine.atomic_numbers, pristine.edge_index, pristine.edge_distance,
                 defected.atomic_numbers, defected.edge_index, defected.edge_distance)


def _has_standard_featurize(featurizer) -> bool:
    """The fast path reproduces :meth:`adex.graphs.Featurizer.featurize` only."""
    from adex.graphs import Featurizer

    return isinstance(featurizer, Featurizer) and type(featurizer).featurize is Featurizer.featurize


def _join(vac: VacancySupercell, pristine_z: np.ndarray, pristine_edges: np.ndarray, pristine_dist: np.ndarray,
          defected_z: np.ndarray, defected_edges: np.ndarray, defected_dist: np.ndarray) -> VacancyGraph:
    """Join the pristine and defected supercell graphs (edges [2, E], row 0 receiver)."""
    p, d = len(pristine_z), len(defected_z)
    twins = vac.defected_to_pristine  # [D] pristine twin of each defected atom
    vacancy = vac.vacancy_index
    n_p_edges, n_d_edges = pristine_edges.shape[1], defected_edges.shape[1]

    pristine_to_defected = np.full(p, -1, dtype=np.int64)
    pristine_to_defected[twins] = np.arange(d)

    defected_nodes = np.arange(d, dtype=np.int64) + p
    corr_d2p = np.stack([twins, defected_nodes])  # i = pristine twin <- j = defected atom
    corr_p2d = np.stack([defected_nodes, twins])  # i = defected atom <- j = pristine twin
    edge_index = np.concatenate(
        [pristine_edges, defected_edges + p, corr_d2p, corr_p2d], axis=1
    ).astype(np.int64)
    edge_distance = np.concatenate(
        [pristine_dist, defected_dist, np.zeros(2 * d, dtype=np.float32)]
    ).astype(np.float32)
    edge_type = np.concatenate([
        np.full(n_p_edges, EDGE_PRISTINE, dtype=np.int8),
        np.full(n_d_edges, EDGE_DEFECTED, dtype=np.int8),
        np.full(d, EDGE_DEFECTED_TO_PRISTINE, dtype=np.int8),
        np.full(d, EDGE_PRISTINE_TO_DEFECTED, dtype=np.int8),
    ])

    center, neighbor = pristine_edges
    touching = np.concatenate([neighbor[center == vacancy], center[neighbor == vacancy]])
    neighbors = np.unique(touching[touching != vacancy]).astype(np.int64)

    return VacancyGraph(
        atomic_numbers=np.concatenate([pristine_z, defected_z]).astype(np.int64),
        node_role=np.concatenate([np.full(p, ROLE_PRISTINE, np.int8), np.full(d, ROLE_DEFECTED, np.int8)]),
        node_primitive=np.concatenate([vac.pristine_to_primitive, vac.pristine_to_primitive[twins]]).astype(np.int64),
        edge_index=edge_index,
        edge_distance=edge_distance,
        edge_type=edge_type,
        n_pristine=int(p),
        vacancy_node=int(vacancy),
        vacancy_neighbors=neighbors,
        former_neighbors_defected=pristine_to_defected[neighbors] + p,
        vacancy_element=int(pristine_z[vacancy]),
    )
