"""Neural-network building blocks shared by advisors and the expert.

The convolution is CGCNN's gated graph convolution (Xie & Grossman, PRL 120, 145301),
written over an edge list with scatter sums so batches of any size run as one graph.
Parameter names (``embedding``, ``convs.K.fc_full``, ``bn1``, ``bn2``) follow the original
CGCNN code, so its published checkpoints load directly (see ``adex.advisors.cgcnn``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from adex.graphs import FeaturizerSettings, GraphBatch, element_table
from adex.scatter import scatter_max, scatter_mean, scatter_softmax, scatter_sum

CrystalPooling = Literal["mean", "sum", "max", "attention"]


class GaussianExpansion(nn.Module):
    """Distances [n_edges] (Å) -> Gaussian features [n_edges, n_gaussians].

    ``exp(-(d - mu_k)^2 / width^2)`` with centres ``mu_k = 0, step, ..., cutoff``.
    """

    def __init__(self, cutoff: float, step: float, width: float):
        super().__init__()
        n = int(round(cutoff / step)) + 1
        self.register_buffer("centers", torch.arange(n, dtype=torch.float32) * step)
        self.width = float(width)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        return torch.exp(-((distance.unsqueeze(-1) - self.centers) ** 2) / self.width**2)


#: Exponent of :func:`cutoff_envelope` (DimeNet's p; nequip's default ``PolynomialCutoff`` p=6).
ENVELOPE_EXPONENT = 6


def cutoff_envelope(distance: torch.Tensor, cutoff: float, p: int = ENVELOPE_EXPONENT) -> torch.Tensor:
    """Smooth cutoff weights of edges: [n_edges] distances (Å) -> [n_edges] in [0, 1].

    ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for
    ``x = d / cutoff < 1``, 0 beyond (Klicpera et al., DimeNet): 1 at ``d = 0`` and, with
    its first and second derivatives, 0 at the cutoff, so a neighbour entering or leaving
    the cutoff sphere changes nothing abruptly.
    """
    x = (distance / cutoff).clamp(min=0.0, max=1.0)
    xp = x**p
    u = 1.0 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
    return torch.where(x < 1.0, u, torch.zeros_like(u))


#: Edges at most this long (Å) are correspondence edges between twin nodes (the expert's
#: pristine <-> defected links, at 0 Å), not bonds: a soft k-NN graph gives them weight 1.
TWIN_DISTANCE = 1e-6


def neighbor_shell_weights(
    receiver: torch.Tensor, distance: torch.Tensor, max_neighbors: int, tie_tolerance: float, shell_width: float
) -> torch.Tensor:
    """Message weights of a soft k-NN graph: [n_edges] receivers and distances (Å) -> [n_edges] in [0, 1].

    Per receiver ``i`` with ``d_k`` its ``max_neighbors``-th smallest bond distance:
    ``w = 1`` for ``d <= d_k + tie_tolerance``, then ``1 - S(x)`` with
    ``x = (d - d_k - tie_tolerance) / shell_width`` and the quintic smooth step
    ``S(x) = 10x^3 - 15x^4 + 6x^5`` (0 and 1 with zero first and second derivatives at
    ``x = 0, 1``), 0 beyond. ``d_k`` is continuous in the positions, so the weights are.
    A receiver with fewer than ``max_neighbors`` bonds weighs all of them 1. Edges of at
    most :data:`TWIN_DISTANCE` (correspondence edges) weigh 1 and do not count as bonds.
    Every receiver's bonds up to ``d_k + tie_tolerance + shell_width`` must be in the edge
    list (:func:`adex.graphs.select_nearest` keeps exactly those).
    """
    n_edges = distance.shape[0]
    if n_edges == 0:
        return distance.new_ones(0)
    bond = distance > TWIN_DISTANCE
    inf = torch.tensor(float("inf"), dtype=distance.dtype, device=distance.device)
    bond_distance = torch.where(bond, distance, inf)
    # order edges by (receiver, distance): stable sort by distance, then by receiver
    order = torch.argsort(bond_distance, stable=True)
    order = order.index_select(0, torch.argsort(receiver.index_select(0, order), stable=True))
    sorted_receiver = receiver.index_select(0, order)
    n_nodes = int(receiver.max()) + 1
    counts = torch.bincount(sorted_receiver, minlength=n_nodes)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n_edges, device=distance.device) - starts.index_select(0, sorted_receiver)
    within = rank < max_neighbors
    kth = torch.full((n_nodes,), -inf.item(), dtype=distance.dtype, device=distance.device)
    kth = kth.scatter_reduce(0, sorted_receiver[within], bond_distance.index_select(0, order)[within], reduce="amax")
    # a receiver with fewer than k bonds has d_k = inf: x = -inf, clamped to 0 (weight 1)
    x = ((distance - kth.index_select(0, receiver) - tie_tolerance) / shell_width).clamp(0.0, 1.0)
    weight = 1.0 - x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)
    return torch.where(bond, weight, torch.ones_like(weight))


def edge_weights(settings: FeaturizerSettings, edge_index: torch.Tensor, edge_distance: torch.Tensor) -> torch.Tensor | None:
    """Per-message weights [n_edges] the featurizer settings call for, or None (hard count
    graph): the cutoff envelope of a radius graph (:func:`cutoff_envelope`; 1 at 0 Å, so
    correspondence edges weigh 1) or the soft k-NN weights (:func:`neighbor_shell_weights`).
    """
    if settings.smooth:
        return cutoff_envelope(edge_distance, settings.cutoff)
    if settings.soft_neighbors:
        return neighbor_shell_weights(edge_index[0], edge_distance, settings.max_neighbors,
                                      settings.tie_tolerance, settings.shell_width)
    return None


class ElementEmbedding(nn.Module):
    """Atomic numbers [n_atoms] -> learned features [n_atoms, width].

    The fixed element table (e.g. CGCNN's 92-d one-hot) is a buffer, so it is saved
    inside every checkpoint together with the learned projection.
    """

    def __init__(self, table_name: str, width: int):
        super().__init__()
        table, _ = element_table(table_name)
        self.register_buffer("table", torch.tensor(table))
        self.embedding = nn.Linear(table.shape[1], width)

    def forward(self, atomic_numbers: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.table.index_select(0, atomic_numbers))


class CGCNNConv(nn.Module):
    """Gated convolution: ``x_i <- softplus(x_i + BN(sum_j sigmoid(f_ij) * softplus(c_ij)))``
    with ``[f_ij, c_ij] = BN(W [x_i, x_j, e_ij])``.

    Args:
        width: node feature width F.
        edge_width: edge feature width G.
    Shapes: x [n_atoms, F], edge_index [2, n_edges], edge_attr [n_edges, G],
    edge_weight [n_edges] (optional: each message is multiplied by it, e.g. a smooth cutoff
    envelope for radius graphs) -> [n_atoms, F].
    """

    def __init__(self, width: int, edge_width: int):
        super().__init__()
        self.fc_full = nn.Linear(2 * width + edge_width, 2 * width)
        self.bn1 = nn.BatchNorm1d(2 * width)
        self.bn2 = nn.BatchNorm1d(width)
        self.sigmoid = nn.Sigmoid()
        self.softplus1 = nn.Softplus()
        self.softplus2 = nn.Softplus()

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor,
                active: torch.Tensor | None = None, edge_weight: torch.Tensor | None = None) -> torch.Tensor:
        """Updated node features [n_atoms, F].

        ``active`` (LongTensor [n_active], optional): update only these nodes; every
        edge's receiver must be among them, other nodes pass through unchanged and take
        no part in the batch-norm statistics. Used by the expert to skip messages whose
        results its readout never sees.
        """
        receiver, sender = edge_index[0], edge_index[1]
        # fc_full(cat[x_i, x_j, e_ij]) computed as W_i x_i + W_j x_j + W_e e_ij + b: the two
        # node terms are computed once per atom, not once per edge (same numbers, ~3x fewer flops).
        width = x.shape[1]
        weight = self.fc_full.weight
        node_terms = x @ torch.cat([weight[:, :width], weight[:, width : 2 * width]], dim=0).T  # [n_atoms, 4F]
        as_receiver, as_sender = node_terms.split(2 * width, dim=1)
        pre = torch.addmm(self.fc_full.bias, edge_attr, weight[:, 2 * width :].T)
        gated = self.bn1(pre + as_receiver.index_select(0, receiver) + as_sender.index_select(0, sender))
        filt, core = gated.chunk(2, dim=1)
        messages = self.sigmoid(filt) * self.softplus1(core)
        if edge_weight is not None:
            messages = messages * edge_weight.unsqueeze(1)
        summed = scatter_sum(messages, receiver, x.shape[0])
        if active is None:
            return self.softplus2(x + self.bn2(summed))
        updated = self.softplus2(x.index_select(0, active) + self.bn2(summed.index_select(0, active)))
        return x.index_copy(0, active, updated)


class Pooling(nn.Module):
    """Per-atom [n_atoms, F] -> per-crystal [B, F] by mean, sum, max or attention.

    ``attention``: weights ``softmax_i(w . x_i)`` within each crystal, then a weighted sum.
    """

    def __init__(self, kind: CrystalPooling, width: int):
        super().__init__()
        if kind not in ("mean", "sum", "max", "attention"):
            raise ValueError(f"unknown pooling {kind!r}")
        self.kind = kind
        self.gate = nn.Linear(width, 1) if kind == "attention" else None

    def forward(self, x: torch.Tensor, node_graph: torch.Tensor, num_graphs: int) -> torch.Tensor:
        if self.kind == "mean":
            return scatter_mean(x, node_graph, num_graphs)
        if self.kind == "sum":
            return scatter_sum(x, node_graph, num_graphs)
        if self.kind == "max":
            return scatter_max(x, node_graph, num_graphs)
        weights = scatter_softmax(self.gate(x), node_graph, num_graphs)
        return scatter_sum(weights * x, node_graph, num_graphs)


@dataclass
class BackboneConfig:
    """CGCNN-style backbone. Attributes: ``atom_fea_len`` node width F; ``n_conv`` number
    of gated convolutions; ``pooling`` crystal readout (mean, sum, max, attention)."""

    atom_fea_len: int = 64
    n_conv: int = 3
    pooling: CrystalPooling = "mean"

    def __post_init__(self) -> None:
        if self.atom_fea_len < 1 or self.n_conv < 0:
            raise ValueError("atom_fea_len must be >= 1 and n_conv >= 0")


class Backbone(nn.Module):
    """Element embedding + Gaussian distances + ``n_conv`` gated convolutions + pooling.

    ``forward(batch)`` returns ``(atom_embedding [n_atoms, F], crystal_embedding [B, F])``.
    """

    def __init__(self, featurizer: FeaturizerSettings, config: BackboneConfig):
        super().__init__()
        self.featurizer = featurizer
        self.config = config
        width = config.atom_fea_len
        self.embedding = ElementEmbedding(featurizer.element_embedding, width)
        self.gaussian = GaussianExpansion(featurizer.cutoff, featurizer.gaussian_step, featurizer.gaussian_width)
        self.convs = nn.ModuleList(CGCNNConv(width, featurizer.n_gaussians) for _ in range(config.n_conv))
        self.pooling = Pooling(config.pooling, width)

    @property
    def width(self) -> int:
        return self.config.atom_fea_len

    def atom_features(self, batch: GraphBatch) -> torch.Tensor:
        """Per-atom embeddings after all convolutions: [n_atoms, F]."""
        x = self.embedding(batch.atomic_numbers)
        edge_attr = self.gaussian(batch.edge_distance)
        weight = edge_weights(self.featurizer, batch.edge_index, batch.edge_distance)
        for conv in self.convs:
            x = conv(x, batch.edge_index, edge_attr, edge_weight=weight)
        return x

    def forward(self, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        atoms = self.atom_features(batch)
        return atoms, self.pooling(atoms, batch.node_graph, batch.num_graphs)


class MLPHead(nn.Module):
    """Crystal embedding [B, F] -> scalar [B] (normalised units).

    CGCNN's head: [softplus], ``conv_to_fc`` (F -> h), softplus, ``n_h - 1`` hidden layers,
    ``fc_out``. The original CGCNN applies a softplus to the pooled features before
    ``conv_to_fc`` (``input_softplus=True``); adex's own advisors do not.
    """

    def __init__(self, in_width: int, hidden: int = 128, n_hidden: int = 1, dropout: float = 0.0, input_softplus: bool = False):
        super().__init__()
        self.input_softplus = input_softplus
        self.conv_to_fc = nn.Linear(in_width, hidden)
        self.conv_to_fc_softplus = nn.Softplus()
        self.fcs = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(max(n_hidden - 1, 0)))
        self.softpluses = nn.ModuleList(nn.Softplus() for _ in range(max(n_hidden - 1, 0)))
        self.dropout = nn.Dropout(dropout)
        self.fc_out = nn.Linear(hidden, 1)

    def forward(self, crystal: torch.Tensor) -> torch.Tensor:
        if self.input_softplus:
            crystal = self.conv_to_fc_softplus(crystal)
        h = self.dropout(self.conv_to_fc_softplus(self.conv_to_fc(crystal)))
        for fc, act in zip(self.fcs, self.softpluses):
            h = self.dropout(act(fc(h)))
        return self.fc_out(h).squeeze(-1)


class Normalizer(nn.Module):
    """Target scaling ``(y - mean) / std``; mean and std are buffers saved with the model."""

    def __init__(self, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std) if std > 0 else 1.0))

    def norm(self, y: torch.Tensor) -> torch.Tensor:
        return (y - self.mean) / self.std

    def denorm(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean

    def to_dict(self) -> dict:
        return {"mean": float(self.mean), "std": float(self.std)}
