"""Crystal graphs: featurizer settings, element embeddings, graphs and batches.

A crystal graph has one node per atom of the (periodic) cell and a directed edge
``i <- j`` for each of the ``max_neighbors`` nearest periodic images ``j`` of atom ``i``
within ``cutoff``. Neighbours tied in distance with the last one kept are all kept, so
that symmetry-equivalent atoms get identical neighbourhoods.

With ``max_neighbors=None`` the graph is a *radius graph*: every periodic image within
``cutoff``, and the models weigh each message by a smooth envelope of the distance that
vanishes at the cutoff (:func:`adex.nn.cutoff_envelope`), as modern interatomic
potentials do. A count cut is discontinuous: displacing atoms by 0.01 Å can swap which
atoms of a nearly degenerate shell are kept, and embeddings jump. A radius graph with an
envelope changes continuously with the positions (tested).

With ``shell_width > 0`` the count cut itself becomes smooth (a *soft k-NN* graph): every
neighbour within ``d_k + tie_tolerance`` (``d_k`` the distance of the k-th nearest) weighs
1 as before, those up to ``shell_width`` further weigh a smooth step falling from 1 to 0
(:func:`adex.nn.neighbor_shell_weights`), the rest are not kept. ``d_k`` is a continuous
function of the positions, so the weights are too. On a crystal whose next shell lies
more than ``tie_tolerance + shell_width`` beyond ``d_k`` the graph and its weights equal
the hard count graph exactly, so models trained on count graphs keep their meaning.

Conventions (shapes in brackets):

* ``edge_index``: LongTensor [2, n_edges]; row 0 = receiving (centre) atom ``i``,
  row 1 = sending (neighbour) atom ``j``; messages flow ``j -> i``.
* ``edge_distance``: FloatTensor [n_edges], Å.
* ``atomic_numbers``: LongTensor [n_atoms].
* ``node_graph``: LongTensor [n_atoms], index of the crystal each atom belongs to.

Distances are stored raw; the Gaussian expansion happens inside the model
(:class:`adex.nn.GaussianExpansion`), so caches stay small and a model owns its basis.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from pymatgen.core import Structure

from adex.errors import ConfigError, StructureError, UnknownElementError

# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class FeaturizerSettings:
    """Everything that determines a crystal graph; saved with every model.

    Attributes:
        cutoff: neighbour search radius, Å.
        max_neighbors: neighbours kept per atom (nearest first; ties kept), or None for a
            radius graph (every neighbour within ``cutoff``, messages weighted by a smooth
            cutoff envelope: embeddings continuous in the atomic positions).
        gaussian_step: spacing of the Gaussian distance basis centres (0 .. cutoff), Å.
        gaussian_width: width of each Gaussian, Å (CGCNN uses the step).
        element_embedding: name of the element feature table (``cgcnn92`` or ``magpie``).
        tie_tolerance: distances within this of the last kept neighbour count as ties and
            are kept too, Å. A negative value keeps exactly ``max_neighbors`` (CGCNN's rule,
            used for imported CGCNN checkpoints).
        shell_width: 0 for a hard count cut; > 0 (Å) for a soft k-NN graph: neighbours
            beyond ``d_k + tie_tolerance`` are kept up to ``shell_width`` further, their
            messages weighted by a smooth step from 1 to 0 (embeddings continuous in the
            positions; identical to the hard graph when no neighbour lies in that band).
    """

    cutoff: float = 8.0
    max_neighbors: int | None = 12
    gaussian_step: float = 0.2
    gaussian_width: float = 0.2
    element_embedding: str = "cgcnn92"
    tie_tolerance: float = 1e-3
    shell_width: float = 0.0

    def __post_init__(self) -> None:
        if self.cutoff <= 0 or self.gaussian_step <= 0 or self.gaussian_width <= 0:
            raise ConfigError("featurizer: cutoff, gaussian_step and gaussian_width must be > 0")
        if self.max_neighbors is not None and (isinstance(self.max_neighbors, bool) or self.max_neighbors < 1):
            raise ConfigError("featurizer: max_neighbors must be >= 1, or null for a radius graph")
        if isinstance(self.shell_width, bool) or not self.shell_width >= 0:
            raise ConfigError(f"featurizer: shell_width must be >= 0 Å, got {self.shell_width!r}")
        if self.shell_width > 0 and (self.max_neighbors is None or self.tie_tolerance < 0):
            raise ConfigError("featurizer: shell_width > 0 smooths a count cut: it needs max_neighbors >= 1 "
                              "and tie_tolerance >= 0")
        if self.element_embedding not in ELEMENT_EMBEDDINGS:
            raise ConfigError(
                f"featurizer: unknown element_embedding {self.element_embedding!r} "
                f"(choose from {sorted(ELEMENT_EMBEDDINGS)})"
            )

    @property
    def smooth(self) -> bool:
        """Whether graphs are radius graphs whose messages carry a cutoff envelope."""
        return self.max_neighbors is None

    @property
    def soft_neighbors(self) -> bool:
        """Whether graphs are soft k-NN graphs (count cut smoothed over ``shell_width``)."""
        return self.shell_width > 0

    @property
    def selection_tolerance(self) -> float:
        """How far beyond the k-th distance neighbours are kept, Å (ties plus the soft shell)."""
        return self.tie_tolerance + self.shell_width

    @property
    def n_gaussians(self) -> int:
        """Number of Gaussian basis functions (centres 0, step, ..., cutoff)."""
        return int(round(self.cutoff / self.gaussian_step)) + 1

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        if not self.shell_width:  # hard count cut: the settings (and fingerprints) of older models
            del data["shell_width"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "FeaturizerSettings":
        from adex.config import build_dataclass

        return build_dataclass(cls, data, "featurizer")

    def fingerprint(self) -> str:
        """sha256 of the settings and of the element table's contents."""
        payload = json.dumps(self.to_dict(), sort_keys=True) + element_table_sha256(self.element_embedding)
        return hashlib.sha256(payload.encode()).hexdigest()


# --------------------------------------------------------------------------- elements

MAX_Z = 100


def _cgcnn92() -> np.ndarray:
    text = resources.files("adex").joinpath("data/atom_init.json").read_text()
    table = np.zeros((MAX_Z + 1, 92), dtype=np.float32)
    known = np.zeros(MAX_Z + 1, dtype=bool)
    for z, vector in json.loads(text).items():
        table[int(z)] = vector
        known[int(z)] = True
    return table, known


_MAGPIE_PROPERTIES = (
    "Number", "MendeleevNumber", "AtomicWeight", "MeltingT", "Column", "Row",
    "CovalentRadius", "Electronegativity", "NsValence", "NpValence", "NdValence",
    "NfValence", "NValence", "NsUnfilled", "NpUnfilled", "NdUnfilled", "NfUnfilled",
    "NUnfilled", "GSvolume_pa", "GSbandgap", "GSmagmom", "SpaceGroupNumber",
)


def _magpie() -> np.ndarray:
    """matminer's Magpie element properties (shipped offline), standardised per column."""
    from matminer.utils.data import MagpieData
    from pymatgen.core.periodic_table import Element

    data = MagpieData()
    raw = np.full((MAX_Z + 1, len(_MAGPIE_PROPERTIES)), np.nan)
    for z in range(1, MAX_Z + 1):
        symbol = Element.from_Z(z).symbol
        for k, prop in enumerate(_MAGPIE_PROPERTIES):
            value = data.all_elemental_props[prop].get(symbol)
            raw[z, k] = np.nan if value is None else float(value)
    known = np.zeros(MAX_Z + 1, dtype=bool)
    known[1:] = ~np.isnan(raw[1:, :8]).any(axis=1)
    mean = np.nanmean(raw[1:], axis=0)
    std = np.nanstd(raw[1:], axis=0)
    table = np.nan_to_num((raw - mean) / np.where(std > 0, std, 1.0)).astype(np.float32)
    table[0] = 0.0
    return table, known


ELEMENT_EMBEDDINGS = {"cgcnn92": _cgcnn92, "magpie": _magpie}


@functools.lru_cache(maxsize=None)
def element_table(name: str) -> tuple[np.ndarray, np.ndarray]:
    """(table [MAX_Z+1, d] float32, known [MAX_Z+1] bool) for an embedding name."""
    table, known = ELEMENT_EMBEDDINGS[name]()
    table.setflags(write=False)
    known.setflags(write=False)
    return table, known


@functools.lru_cache(maxsize=None)
def element_table_sha256(name: str) -> str:
    return hashlib.sha256(element_table(name)[0].tobytes()).hexdigest()


# --------------------------------------------------------------------------- graphs


@dataclass
class CrystalGraph:
    """One crystal as arrays (numpy; batched into torch by :class:`GraphBatch`).

    Attributes:
        atomic_numbers: int64 [n_atoms].
        edge_index: int64 [2, n_edges]; row 0 receiving atom i, row 1 neighbour j.
        edge_distance: float32 [n_edges], Å.
        edge_image: int16 [n_edges, 3], lattice translation of neighbour j.
    """

    atomic_numbers: np.ndarray
    edge_index: np.ndarray
    edge_distance: np.ndarray
    edge_image: np.ndarray

    @property
    def n_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def n_edges(self) -> int:
        return int(self.edge_distance.shape[0])


def select_nearest(
    center: np.ndarray, distance: np.ndarray, max_neighbors: int | None, tie_tolerance: float
) -> np.ndarray:
    """Indices of the kept edges: per centre the ``max_neighbors`` nearest, ties kept
    (every pair for ``max_neighbors=None``, a radius graph).

    Args:
        center: int [n_pairs] receiving atom of each candidate pair.
        distance: float [n_pairs] pair distance, Å.
    Returns:
        int [n_kept] indices into the pairs, sorted by (centre, distance).
    """
    order = np.lexsort((distance, center))
    if max_neighbors is None:
        return order
    center_sorted = center[order]
    dist_sorted = distance[order]
    n = center_sorted.shape[0]
    if n == 0:
        return order
    starts = np.flatnonzero(np.r_[True, center_sorted[1:] != center_sorted[:-1]])
    counts = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, counts)
    kth_pos = starts + np.minimum(counts, max_neighbors) - 1
    kth_dist = np.repeat(dist_sorted[kth_pos], counts)
    keep = (rank < max_neighbors) | (dist_sorted <= kth_dist + tie_tolerance)
    return order[keep]


class Featurizer:
    """Turns pymatgen structures into :class:`CrystalGraph` objects.

    Neighbour search is vectorised (``Structure.get_neighbor_list``); no Python loop
    over atoms.
    """

    def __init__(self, settings: FeaturizerSettings | None = None):
        self.settings = settings or FeaturizerSettings()
        self._known = element_table(self.settings.element_embedding)[1]

    def check_elements(self, atomic_numbers: np.ndarray, source: str = "structure") -> None:
        """Raise :class:`UnknownElementError` for elements without an embedding row."""
        z = np.asarray(atomic_numbers)
        bad = (z < 1) | (z > MAX_Z)
        bad[~bad] = ~self._known[z[~bad]]
        if bad.any():
            from pymatgen.core.periodic_table import Element

            names = sorted({Element.from_Z(int(v)).symbol if 0 < v <= 118 else str(v) for v in z[bad]})
            raise UnknownElementError(
                f"{source}: element(s) {', '.join(names)} not in the "
                f"{self.settings.element_embedding!r} element embedding"
            )

    def featurize(self, structure: Structure, source: str = "structure") -> CrystalGraph:
        """Build the graph of one ordered periodic structure.

        Raises:
            StructureError: disordered structure, or an atom with no neighbour within cutoff.
            UnknownElementError: an element the embedding does not cover.
        """
        if not structure.is_ordered:
            raise StructureError(f"{source}: disordered sites (partial occupancy); adex needs an ordered structure")
        atomic_numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
        self.check_elements(atomic_numbers, source)
        s = self.settings
        center, neighbor, image, distance = structure.get_neighbor_list(r=s.cutoff, exclude_self=True)
        keep = select_nearest(center, distance, s.max_neighbors, s.selection_tolerance)
        center, neighbor = center[keep], neighbor[keep]
        has_neighbor = np.zeros(len(structure), dtype=bool)
        has_neighbor[center] = True
        if not has_neighbor.all():
            lonely = int(np.flatnonzero(~has_neighbor)[0])
            raise StructureError(
                f"{source}: atom {lonely} ({structure[lonely].specie}) has no neighbour within "
                f"the {s.cutoff} Å cutoff (isolated atom)"
            )
        return CrystalGraph(
            atomic_numbers=atomic_numbers,
            edge_index=np.stack([center, neighbor]).astype(np.int64),
            edge_distance=distance[keep].astype(np.float32),
            edge_image=image[keep].astype(np.int16),
        )


# --------------------------------------------------------------------------- batches


@dataclass
class GraphBatch:
    """Several crystals as one disconnected graph (torch tensors).

    Attributes:
        atomic_numbers: LongTensor [n_atoms].
        edge_index: LongTensor [2, n_edges], global atom indices.
        edge_distance: FloatTensor [n_edges], Å.
        node_graph: LongTensor [n_atoms], crystal index of each atom.
        num_graphs: number of crystals B.
        target: FloatTensor [B] or None (in the target's unit, not normalised).
    """

    atomic_numbers: torch.Tensor
    edge_index: torch.Tensor
    edge_distance: torch.Tensor
    node_graph: torch.Tensor
    num_graphs: int
    target: torch.Tensor | None = None

    def to(self, device: str | torch.device) -> "GraphBatch":
        moved = {
            f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor) else getattr(self, f.name))
            for f in dataclasses.fields(self)
        }
        return GraphBatch(**moved)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of ``arange(s, s + n)`` for each (s, n), without a Python loop."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths
    return np.repeat(starts - offsets, lengths) + np.arange(total)


@dataclass
class PackedGraphs:
    """Many crystal graphs in flat arrays (the on-disk cache format and the data source
    of training). Graph ``g`` owns nodes ``node_ptr[g]:node_ptr[g+1]`` and edges
    ``edge_ptr[g]:edge_ptr[g+1]``; edge indices are local to their graph.
    """

    atomic_numbers: np.ndarray  # int64 [total_atoms]
    edge_index: np.ndarray  # int64 [2, total_edges], local indices
    edge_distance: np.ndarray  # float32 [total_edges], Å
    node_ptr: np.ndarray  # int64 [n_graphs + 1]
    edge_ptr: np.ndarray  # int64 [n_graphs + 1]
    ids: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))  # str [n_graphs]
    targets: np.ndarray | None = None  # float64 [n_graphs]

    def __len__(self) -> int:
        return int(self.node_ptr.shape[0] - 1)

    @classmethod
    def from_graphs(
        cls, graphs: Sequence[CrystalGraph], ids: Iterable[str] | None = None, targets: Iterable[float] | None = None
    ) -> "PackedGraphs":
        n_nodes = np.array([g.n_atoms for g in graphs], dtype=np.int64)
        n_edges = np.array([g.n_edges for g in graphs], dtype=np.int64)
        return cls(
            atomic_numbers=np.concatenate([g.atomic_numbers for g in graphs]) if graphs else np.zeros(0, np.int64),
            edge_index=np.concatenate([g.edge_index for g in graphs], axis=1) if graphs else np.zeros((2, 0), np.int64),
            edge_distance=np.concatenate([g.edge_distance for g in graphs]) if graphs else np.zeros(0, np.float32),
            node_ptr=np.r_[0, np.cumsum(n_nodes)].astype(np.int64),
            edge_ptr=np.r_[0, np.cumsum(n_edges)].astype(np.int64),
            ids=np.array(list(ids) if ids is not None else [str(i) for i in range(len(graphs))]),
            targets=None if targets is None else np.asarray(list(targets), dtype=np.float64),
        )

    def subset(self, indices: Sequence[int]) -> "PackedGraphs":
        """A new PackedGraphs holding graphs ``indices`` in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        n_nodes = self.node_ptr[idx + 1] - self.node_ptr[idx]
        n_edges = self.edge_ptr[idx + 1] - self.edge_ptr[idx]
        node_sel = _ranges(self.node_ptr[idx], n_nodes)
        edge_sel = _ranges(self.edge_ptr[idx], n_edges)
        return PackedGraphs(
            atomic_numbers=self.atomic_numbers[node_sel],
            edge_index=self.edge_index[:, edge_sel],
            edge_distance=self.edge_distance[edge_sel],
            node_ptr=np.r_[0, np.cumsum(n_nodes)].astype(np.int64),
            edge_ptr=np.r_[0, np.cumsum(n_edges)].astype(np.int64),
            ids=self.ids[idx],
            targets=None if self.targets is None else self.targets[idx],
        )

    def batch(self, indices: Sequence[int] | None = None) -> GraphBatch:
        """Collate graphs ``indices`` (default: all) into one :class:`GraphBatch`."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        n_nodes = self.node_ptr[idx + 1] - self.node_ptr[idx]
        n_edges = self.edge_ptr[idx + 1] - self.edge_ptr[idx]
        node_sel = _ranges(self.node_ptr[idx], n_nodes)
        edge_sel = _ranges(self.edge_ptr[idx], n_edges)
        new_node_offset = np.cumsum(n_nodes) - n_nodes
        edge_shift = np.repeat(new_node_offset, n_edges)
        edge_index = self.edge_index[:, edge_sel] + edge_shift
        target = None if self.targets is None else torch.as_tensor(self.targets[idx], dtype=torch.float32)
        return GraphBatch(
            atomic_numbers=torch.from_numpy(self.atomic_numbers[node_sel]),
            edge_index=torch.from_numpy(np.ascontiguousarray(edge_index)),
            edge_distance=torch.from_numpy(self.edge_distance[edge_sel]),
            node_graph=torch.from_numpy(np.repeat(np.arange(len(idx), dtype=np.int64), n_nodes)),
            num_graphs=int(len(idx)),
            target=target,
        )

    # ---- persistence (npz: plain arrays, no pickle)
    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) as an uncompressed npz."""
        from adex.fileio import atomic_write_bytes

        buffer = __import__("io").BytesIO()
        arrays = {k: getattr(self, k) for k in ("atomic_numbers", "edge_index", "edge_distance", "node_ptr", "edge_ptr")}
        arrays["ids"] = np.asarray(self.ids, dtype=str)
        if self.targets is not None:
            arrays["targets"] = self.targets
        np.savez(buffer, **arrays)
        atomic_write_bytes(Path(path), buffer.getvalue())

    @classmethod
    def load(cls, path: str | Path) -> "PackedGraphs":
        with np.load(path, allow_pickle=False) as data:
            return cls(
                atomic_numbers=data["atomic_numbers"],
                edge_index=data["edge_index"],
                edge_distance=data["edge_distance"],
                node_ptr=data["node_ptr"],
                edge_ptr=data["edge_ptr"],
                ids=data["ids"],
                targets=data["targets"] if "targets" in data.files else None,
            )
