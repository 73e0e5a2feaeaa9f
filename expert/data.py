"""Vacancy datasets for the expert: Witman et al. 2023 records, published splits,
combined supercell graphs (cached), advisor features, and batching.

Flow: ``(host Structure, site)`` -> :func:`adex.supercell.build_vacancy` (canonical
primitive host, supercell, site removed) -> :func:`adex.supercell.build_vacancy_graph`
(one graph, pristine + defected nodes) -> :class:`PackedVacancies` (flat arrays, the
cache format) -> :class:`VacancyBatch` (torch, global indices).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from pymatgen.core import Lattice, Structure

from adex.graphs import CrystalGraph, Featurizer, GraphBatch, PackedGraphs, _ranges
from adex.oxidation import guess_oxidation_states

GRAPH_FORMAT_VERSION = "vacancy-graph-3"
MAX_HOPS = 8  # hop distances from the vacancy neighbourhood are recorded up to this; farther nodes get MAX_HOPS + 1


# --------------------------------------------------------------------------- records


# --------------------------------------------------------------------------- packed data


@dataclass
class PackedVacancies:
    """Many vacancy graphs in flat arrays (cache format). Vacancy ``b`` owns graph ``b``
    of ``graphs`` and primitive atoms ``prim_ptr[b]:prim_ptr[b+1]``.

    Attributes:
        graphs: combined graphs (nodes: pristine then defected), ids, targets (eV).
        node_role: int8 [N] 0 pristine, 1 defected.
        node_primitive: int64 [N] local index of each node's primitive host atom.
        vacancy_node: int64 [B] local index of the vacated pristine node.
        hood_node: int64 [H] local node indices of each vacancy's neighbourhood;
            ``hood_ptr`` int64 [B+1]; ``hood_kind`` int8 [H] 0 vacated node, 1 pristine
            neighbour, 2 defected former neighbour.
        prim_lattice: float64 [B, 3, 3] Å; prim_numbers int64 [P]; prim_frac float64 [P, 3];
            prim_ptr int64 [B+1]: the canonical primitive hosts (advisors run on them).
        prim_oxidation: float32 [P] oxidation state of each primitive atom guessed by
            bond valence (:mod:`adex.oxidation`), NaN where unknown.
        info: str [B, 3] (element, wyckoff label, supercell size) for reports.
        node_hops: int8 [N] graph distance (messages' hops) from the neighbourhood nodes;
            ``MAX_HOPS + 1`` or more means farther. Used by :meth:`prune`.
        hops_from: what ``node_hops`` counts from: ``"hood"`` (the vacated node, its
            neighbours and their defected twins; the cached form) or ``"vacancy"`` (the
            vacated node only; made by ``prune(..., origin="vacancy")`` for models that
            read only that node).
    """

    graphs: PackedGraphs
    node_role: np.ndarray
    node_primitive: np.ndarray
    vacancy_node: np.ndarray
    hood_node: np.ndarray
    hood_ptr: np.ndarray
    hood_kind: np.ndarray
    prim_lattice: np.ndarray
    prim_numbers: np.ndarray
    prim_frac: np.ndarray
    prim_ptr: np.ndarray
    info: np.ndarray
    prim_oxidation: np.ndarray
    node_hops: np.ndarray
    hops_from: str = "hood"

    def __len__(self) -> int:
        return len(self.graphs)

    @property
    def ids(self) -> np.ndarray:
        return self.graphs.ids

    @property
    def targets(self) -> np.ndarray | None:
        return self.graphs.targets

    @property
    def vacated_nodes(self) -> np.ndarray:
        """Index of each vacancy's vacated node among all nodes of ``graphs``: int64 [B]."""
        return self.graphs.node_ptr[:-1] + self.vacancy_node

    @property
    def vacated_numbers(self) -> np.ndarray:
        """Atomic number of each vacancy's vacated atom: int64 [B]."""
        return self.graphs.atomic_numbers[self.vacated_nodes]

    @property
    def vacated_primitive_sites(self) -> np.ndarray:
        """Index of each vacancy's vacated atom in its canonical primitive host: int64 [B]."""
        return self.node_primitive[self.vacated_nodes]

    def primitive_structure(self, b: int) -> Structure:
        sl = slice(self.prim_ptr[b], self.prim_ptr[b + 1])
        return Structure(Lattice(self.prim_lattice[b]), self.prim_numbers[sl].tolist(), self.prim_frac[sl])

    @classmethod
    def concatenate(cls, parts: Sequence["PackedVacancies"]) -> "PackedVacancies":
        node_off = np.cumsum([0] + [p.graphs.node_ptr[-1] for p in parts])
        edge_off = np.cumsum([0] + [p.graphs.edge_ptr[-1] for p in parts])
        hood_off = np.cumsum([0] + [p.hood_ptr[-1] for p in parts])
        prim_off = np.cumsum([0] + [p.prim_ptr[-1] for p in parts])
        targets = [p.graphs.targets for p in parts]
        origins = {p.hops_from for p in parts}
        if len(origins) > 1:
            raise ValueError(f"cannot concatenate vacancies whose hop distances count from different nodes: {sorted(origins)}")
        graphs = PackedGraphs(
            atomic_numbers=np.concatenate([p.graphs.atomic_numbers for p in parts]),
            edge_index=np.concatenate([p.graphs.edge_index for p in parts], axis=1),
            edge_distance=np.concatenate([p.graphs.edge_distance for p in parts]),
            node_ptr=np.concatenate([[0]] + [p.graphs.node_ptr[1:] + o for p, o in zip(parts, node_off)]).astype(np.int64),
            edge_ptr=np.concatenate([[0]] + [p.graphs.edge_ptr[1:] + o for p, o in zip(parts, edge_off)]).astype(np.int64),
            ids=np.concatenate([p.graphs.ids for p in parts]),
            targets=None if any(t is None for t in targets) else np.concatenate(targets),
        )
        return cls(
            graphs=graphs,
            node_role=np.concatenate([p.node_role for p in parts]),
            node_primitive=np.concatenate([p.node_primitive for p in parts]),
            vacancy_node=np.concatenate([p.vacancy_node for p in parts]),
            hood_node=np.concatenate([p.hood_node for p in parts]),
            hood_ptr=np.concatenate([[0]] + [p.hood_ptr[1:] + o for p, o in zip(parts, hood_off)]).astype(np.int64),
            hood_kind=np.concatenate([p.hood_kind for p in parts]),
            prim_lattice=np.concatenate([p.prim_lattice for p in parts]),
            prim_numbers=np.concatenate([p.prim_numbers for p in parts]),
            prim_frac=np.concatenate([p.prim_frac for p in parts]),
            prim_oxidation=np.concatenate([p.prim_oxidation for p in parts]),
            prim_ptr=np.concatenate([[0]] + [p.prim_ptr[1:] + o for p, o in zip(parts, prim_off)]).astype(np.int64),
            info=np.concatenate([p.info for p in parts]),
            node_hops=np.concatenate([p.node_hops for p in parts]),
            hops_from=origins.pop() if origins else "hood",
        )

    def subset(self, indices: Sequence[int]) -> "PackedVacancies":
        idx = np.asarray(indices, dtype=np.int64)
        node_sel = _ranges(self.graphs.node_ptr[idx], self.graphs.node_ptr[idx + 1] - self.graphs.node_ptr[idx])
        n_hood = self.hood_ptr[idx + 1] - self.hood_ptr[idx]
        n_prim = self.prim_ptr[idx + 1] - self.prim_ptr[idx]
        hood_sel = _ranges(self.hood_ptr[idx], n_hood)
        prim_sel = _ranges(self.prim_ptr[idx], n_prim)
        return PackedVacancies(
            graphs=self.graphs.subset(idx),
            node_role=self.node_role[node_sel],
            node_primitive=self.node_primitive[node_sel],
            vacancy_node=self.vacancy_node[idx],
            hood_node=self.hood_node[hood_sel],
            hood_ptr=np.r_[0, np.cumsum(n_hood)].astype(np.int64),
            hood_kind=self.hood_kind[hood_sel],
            prim_lattice=self.prim_lattice[idx],
            prim_numbers=self.prim_numbers[prim_sel],
            prim_frac=self.prim_frac[prim_sel],
            prim_oxidation=self.prim_oxidation[prim_sel],
            prim_ptr=np.r_[0, np.cumsum(n_prim)].astype(np.int64),
            info=self.info[idx],
            node_hops=self.node_hops[node_sel],
            hops_from=self.hops_from,
        )

    def hops_from_vacancy(self) -> np.ndarray:
        """Message hops from each graph's vacated node alone: int8 [N] (``MAX_HOPS + 1``
        beyond ``MAX_HOPS``), one breadth-first search over all graphs at once."""
        g = self.graphs
        edge_graph = np.repeat(np.arange(len(g)), np.diff(g.edge_ptr))
        global_edges = g.edge_index + g.node_ptr[:-1][edge_graph]
        return hop_distances(global_edges, self.vacancy_node + g.node_ptr[:-1], int(g.node_ptr[-1]))

    def prune(self, max_hops: int, origin: str = "hood") -> "PackedVacancies":
        """Keep only nodes within ``max_hops`` message-passing hops of each vacancy's
        neighbourhood (``origin="hood"``) or of the vacated node alone
        (``origin="vacancy"``, for a readout of that node only), and the edges among them.

        With ``n_conv <= max_hops`` convolutions, the final embeddings of the
        neighbourhood nodes are exactly those of the full supercell graph (a node at hop
        distance d is exact up to layer ``max_hops - d``), so readouts over the
        neighbourhood (vacancy, neighborhood, attention) are unchanged in eval mode while
        the cost stops growing with the supercell size. Edges into the outermost shell
        (hop ``max_hops``) are dropped too: those nodes only ever send.
        """
        if origin not in ("hood", "vacancy"):
            raise ValueError(f"prune: origin must be 'hood' or 'vacancy', not {origin!r}")
        if self.hops_from != "hood" and origin != self.hops_from:
            raise ValueError(f"prune: hop distances already count from the {self.hops_from}; cannot prune from the {origin}")
        if max_hops > MAX_HOPS:
            return self
        g = self.graphs
        node_hops = self.node_hops if origin == self.hops_from else self.hops_from_vacancy()
        keep = node_hops <= max_hops
        n_graphs = len(g)
        graph_of_node = np.repeat(np.arange(n_graphs), np.diff(g.node_ptr))
        new_counts = np.bincount(graph_of_node[keep], minlength=n_graphs)
        new_ptr = np.r_[0, np.cumsum(new_counts)].astype(np.int64)
        new_global = np.cumsum(keep) - 1  # valid where keep
        n_edges = np.diff(g.edge_ptr)
        edge_graph = np.repeat(np.arange(n_graphs), n_edges)
        old_global = g.edge_index + g.node_ptr[:-1][edge_graph]
        # messages into the outermost shell (hop == max_hops) never reach the readout
        edge_keep = keep[old_global[0]] & keep[old_global[1]] & (node_hops[old_global[0]] < max_hops)
        new_edges = new_global[old_global[:, edge_keep]] - new_ptr[:-1][edge_graph[edge_keep]]
        new_edge_counts = np.bincount(edge_graph[edge_keep], minlength=n_graphs)

        def remap(local: np.ndarray, graph: np.ndarray) -> np.ndarray:
            return new_global[local + g.node_ptr[:-1][graph]] - new_ptr[:-1][graph]

        hood_graph = np.repeat(np.arange(n_graphs), np.diff(self.hood_ptr))
        hood_keep = keep[self.hood_node + g.node_ptr[:-1][hood_graph]]  # all of them unless origin is the vacancy
        hood_graph = hood_graph[hood_keep]
        return PackedVacancies(
            graphs=PackedGraphs(g.atomic_numbers[keep], new_edges.astype(np.int64), g.edge_distance[edge_keep], new_ptr,
                                np.r_[0, np.cumsum(new_edge_counts)].astype(np.int64), g.ids, g.targets),
            node_role=self.node_role[keep],
            node_primitive=self.node_primitive[keep],
            vacancy_node=remap(self.vacancy_node, np.arange(n_graphs)),
            hood_node=remap(self.hood_node[hood_keep], hood_graph),
            hood_ptr=np.r_[0, np.cumsum(np.bincount(hood_graph, minlength=n_graphs))].astype(np.int64),
            hood_kind=self.hood_kind[hood_keep],
            prim_lattice=self.prim_lattice,
            prim_numbers=self.prim_numbers,
            prim_frac=self.prim_frac,
            prim_oxidation=self.prim_oxidation,
            prim_ptr=self.prim_ptr,
            info=self.info,
            node_hops=node_hops[keep],
            hops_from=origin,
        )

    _ARRAYS = ("node_role", "node_primitive", "vacancy_node", "hood_node", "hood_ptr", "hood_kind",
               "prim_lattice", "prim_numbers", "prim_frac", "prim_ptr", "info", "node_hops", "prim_oxidation")

    def arrays(self) -> dict[str, np.ndarray]:
        """Every array, by name (what :meth:`save` and :meth:`to_bytes` store)."""
        g = self.graphs
        arrays = {f"graphs_{k}": getattr(g, k) for k in ("atomic_numbers", "edge_index", "edge_distance", "node_ptr", "edge_ptr")}
        arrays["graphs_ids"] = np.asarray(g.ids, dtype=str)
        if g.targets is not None:
            arrays["graphs_targets"] = g.targets
        arrays.update({k: getattr(self, k) for k in self._ARRAYS})
        arrays["info"] = np.asarray(self.info, dtype=str)
        return arrays

    @classmethod
    def from_arrays(cls, d) -> "PackedVacancies":
        graphs = PackedGraphs(
            d["graphs_atomic_numbers"], d["graphs_edge_index"], d["graphs_edge_distance"], d["graphs_node_ptr"],
            d["graphs_edge_ptr"], d["graphs_ids"], d["graphs_targets"] if "graphs_targets" in d else None,
        )
        return cls(graphs=graphs, **{k: d[k] for k in cls._ARRAYS})

    def save(self, path: Path) -> None:
        """``.npz`` file (atomic write)."""
        from io import BytesIO

        from adex.fileio import atomic_write_bytes

        buffer = BytesIO()
        np.savez(buffer, **self.arrays())
        atomic_write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> "PackedVacancies":
        with np.load(path, allow_pickle=False) as d:
            return cls.from_arrays({name: d[name] for name in d.files})

    def to_bytes(self) -> bytes:
        """Flat array file (:func:`adex.fileio.pack_arrays`): ~20x cheaper to read than an
        ``.npz`` for the small per-host entries of the prediction cache."""
        from adex.fileio import pack_arrays

        return pack_arrays(self.arrays())

    @classmethod
    def from_bytes(cls, data: bytes) -> "PackedVacancies":
        from adex.fileio import unpack_arrays

        return cls.from_arrays(unpack_arrays(data))


def pack_vacancy(graph, vac, vacancy_id: str, target: float | None) -> PackedVacancies:
    """One :class:`adex.supercell.VacancyGraph` (+ its supercell) as PackedVacancies."""
    prim = vac.canonical.primitive
    n_nodes = len(graph.atomic_numbers)
    hood = np.concatenate([[graph.vacancy_node], graph.vacancy_neighbors, graph.former_neighbors_defected]).astype(np.int64)
    kind = np.concatenate([[0], np.full(len(graph.vacancy_neighbors), 1), np.full(len(graph.former_neighbors_defected), 2)]).astype(np.int8)
    crystal = CrystalGraph(graph.atomic_numbers.astype(np.int64), graph.edge_index.astype(np.int64),
                           graph.edge_distance.astype(np.float32), np.zeros((0, 3), np.int16))
    graphs = PackedGraphs.from_graphs([crystal], [vacancy_id], None if target is None else [target])
    can = vac.canonical
    return PackedVacancies(
        node_hops=hop_distances(graph.edge_index, hood, n_nodes),
        graphs=graphs,
        node_role=graph.node_role.astype(np.int8),
        node_primitive=graph.node_primitive.astype(np.int64),
        vacancy_node=np.array([graph.vacancy_node], dtype=np.int64),
        hood_node=hood,
        hood_ptr=np.array([0, len(hood)], dtype=np.int64),
        hood_kind=kind,
        prim_lattice=prim.lattice.matrix[None].astype(np.float64),
        prim_numbers=np.array(can.numbers, dtype=np.int64),
        prim_frac=prim.frac_coords.astype(np.float64),
        prim_oxidation=guess_oxidation_states(prim, can.numbers, can.orbit),
        prim_ptr=np.array([0, len(prim)], dtype=np.int64),
        info=np.array([[can.element, can.wyckoff, str(n_nodes)]], dtype=str),
    )


def hop_distances(edge_index: np.ndarray, sources: np.ndarray, n_nodes: int) -> np.ndarray:
    """Hops from ``sources`` against the message direction (receiver -> sender): int8 [n_nodes],
    ``MAX_HOPS + 1`` for nodes farther than ``MAX_HOPS``."""
    dist = np.full(n_nodes, MAX_HOPS + 1, dtype=np.int8)
    dist[sources] = 0
    receiver, sender = edge_index
    for hop in range(1, MAX_HOPS + 1):
        reached = sender[dist[receiver] == hop - 1]
        reached = reached[dist[reached] > hop]
        if reached.size == 0:
            break
        dist[reached] = hop
    return dist


def featurize_vacancy(host: Structure, site: int, vacancy_id: str, target: float | None,
                      featurizer: Featurizer, supercell_settings, canonical=None) -> PackedVacancies:
    """Supercell + combined graph of one vacancy, packed (``canonical``: the site's
    :class:`adex.supercell.CanonicalVacancy` if already known)."""
    from adex.supercell import build_vacancy, build_vacancy_graph

    vac = build_vacancy(host, site, supercell_settings, canonical=canonical)
    return pack_vacancy(build_vacancy_graph(vac, featurizer), vac, vacancy_id, target)


# --------------------------------------------------------------------------- advisor features


# --------------------------------------------------------------------------- batches


@dataclass
class VacancyBatch(GraphBatch):
    """A batch of combined vacancy graphs (global indices).

    Extra attributes: node_role LongTensor [N]; node_flags FloatTensor [N, 3]
    (vacated node, pristine neighbour, defected former neighbour); node_hops
    LongTensor [N] message hops from the vacancy neighbourhood (or from the vacated
    node alone: ``hops_from``); node_oxidation
    FloatTensor [N] guessed oxidation state of each node's host atom (NaN: unknown);
    vacancy_node LongTensor [B]; hood_node LongTensor [H] and hood_graph LongTensor [H];
    advisor_features list of FloatTensor [N, 2 d_a], one per advisor; potential_delta
    FloatTensor [B] unrelaxed vacancy energy (eV) of a potential advisor, or None
    (:mod:`adex.expert.potential`).
    """

    node_role: torch.Tensor | None = None
    node_flags: torch.Tensor | None = None
    vacancy_node: torch.Tensor | None = None
    hood_node: torch.Tensor | None = None
    hood_graph: torch.Tensor | None = None
    node_oxidation: torch.Tensor | None = None
    node_hops: torch.Tensor | None = None
    advisor_features: list = field(default_factory=list)
    potential_delta: torch.Tensor | None = None
    hops_from: str = "hood"  # what node_hops counts from (PackedVacancies.hops_from)

    def to(self, device) -> "VacancyBatch":
        moved = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if isinstance(value, torch.Tensor):
                value = value.to(device)
            elif name == "advisor_features":
                value = [v.to(device) for v in value]
            moved[name] = value
        return VacancyBatch(**moved)


class VacancyDataset:
    """PackedVacancies + advisor features (+ unrelaxed vacancy energies ``potential_delta``,
    float64 [B] eV, of a potential advisor); ``batch(indices) -> VacancyBatch``."""

    def __init__(self, packed: PackedVacancies, advisors: Sequence[AdvisorFeatures] = (),
                 potential_delta: np.ndarray | None = None):
        self.packed = packed
        self.advisors = list(advisors)
        if potential_delta is not None and len(potential_delta) != len(packed):
            raise ValueError(f"potential_delta has {len(potential_delta)} values for {len(packed)} vacancies")
        self.potential_delta = potential_delta

    def __len__(self) -> int:
        return len(self.packed)

    @property
    def ids(self) -> np.ndarray:
        return self.packed.ids

    @property
    def targets(self) -> np.ndarray | None:
        return self.packed.targets

    def subset(self, indices: Sequence[int]) -> "VacancyDataset":
        delta = None if self.potential_delta is None else self.potential_delta[np.asarray(indices, dtype=np.int64)]
        return VacancyDataset(self.packed.subset(indices), [a.subset(self.packed, indices) for a in self.advisors], delta)

    @classmethod
    def concatenate(cls, parts: Sequence["VacancyDataset"]) -> "VacancyDataset":
        """One dataset of the vacancies of ``parts`` in order (same advisors in each)."""
        advisors = [
            AdvisorFeatures(feats[0].ref, np.concatenate([f.atom for f in feats]), np.concatenate([f.crystal for f in feats]))
            for feats in zip(*(p.advisors for p in parts))
        ]
        deltas = [p.potential_delta for p in parts]
        if any(d is None for d in deltas) and not all(d is None for d in deltas):
            raise ValueError("cannot concatenate datasets with and without potential_delta")
        delta = None if deltas[0] is None else np.concatenate(deltas)
        return cls(PackedVacancies.concatenate([p.packed for p in parts]), advisors, delta)

    def batch(self, indices: Sequence[int]) -> VacancyBatch:
        p = self.packed
        idx = np.asarray(indices, dtype=np.int64)
        base = p.graphs.batch(idx)
        n_nodes = p.graphs.node_ptr[idx + 1] - p.graphs.node_ptr[idx]
        node_sel = _ranges(p.graphs.node_ptr[idx], n_nodes)
        node_offset = np.cumsum(n_nodes) - n_nodes
        n_hood = p.hood_ptr[idx + 1] - p.hood_ptr[idx]
        hood_sel = _ranges(p.hood_ptr[idx], n_hood)
        hood_graph = np.repeat(np.arange(len(idx)), n_hood)
        hood_node = p.hood_node[hood_sel] + node_offset[hood_graph]
        vacancy_node = p.vacancy_node[idx] + node_offset
        flags = np.zeros((len(node_sel), 3), dtype=np.float32)
        flags[hood_node, p.hood_kind[hood_sel]] = 1.0
        node_graph = base.node_graph.numpy()
        advisor_features = []
        prim_global = p.prim_ptr[idx][node_graph] + p.node_primitive[node_sel]
        if self.advisors:
            for feats in self.advisors:
                advisor_features.append(torch.from_numpy(np.concatenate([feats.atom[prim_global], feats.crystal[idx][node_graph]], axis=1)))
        return VacancyBatch(
            atomic_numbers=base.atomic_numbers,
            edge_index=base.edge_index,
            edge_distance=base.edge_distance,
            node_graph=base.node_graph,
            num_graphs=base.num_graphs,
            target=base.target,
            node_role=torch.from_numpy(p.node_role[node_sel].astype(np.int64)),
            node_flags=torch.from_numpy(flags),
            vacancy_node=torch.from_numpy(vacancy_node),
            hood_node=torch.from_numpy(hood_node),
            hood_graph=torch.from_numpy(hood_graph),
            node_hops=torch.from_numpy(p.node_hops[node_sel].astype(np.int64)),
            node_oxidation=torch.from_numpy(p.prim_oxidation[prim_global].astype(np.float32)),
            advisor_features=advisor_features,
            potential_delta=None if self.potential_delta is None else torch.from_numpy(self.potential_delta[idx].astype(np.float32)),
            hops_from=p.hops_from,
        )


@dataclass
class AdvisorFeatures:
    """Frozen-advisor embeddings of each vacancy's primitive host.

    Attributes:
        ref: exact registry reference of the advisor.
        atom: float32 [P, d] per primitive atom (aligned with ``PackedVacancies.prim_*``).
        crystal: float32 [B, d] per vacancy host.
    """

    ref: str
    atom: np.ndarray
    crystal: np.ndarray

    @property
    def width(self) -> int:
        return int(self.atom.shape[1])

    def subset(self, packed: PackedVacancies, indices: Sequence[int]) -> "AdvisorFeatures":
        idx = np.asarray(indices, dtype=np.int64)
        sel = _ranges(packed.prim_ptr[idx], packed.prim_ptr[idx + 1] - packed.prim_ptr[idx])
        return AdvisorFeatures(self.ref, self.atom[sel], self.crystal[idx])
