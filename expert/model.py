"""The expert: a defect GNN on the combined pristine + defected supercell graph.

Inputs per vacancy (see :class:`adex.expert.data.VacancyBatch`): the pristine supercell's
nodes (role 0) and the defected supercell's nodes (role 1), bonds within each, and
correspondence edges (distance 0) between every defected atom and its pristine twin.
The vacated pristine node and its neighbourhood are flagged.

Advisors enter through adapters: for advisor ``a`` with width ``d_a``, the per-atom
embedding of each node's host atom and the host's crystal embedding (both computed on
the pristine primitive host, frozen, cached) are concatenated ``[2 d_a]`` and mapped by
one ``Linear(2 d_a -> adapter_width)``. Any advisor width fits.

Readout (``pooling``):

* ``vacancy``: the vacated pristine node;
* ``neighborhood``: mean over the vacated node, its pristine neighbours and their
  defected twins;
* ``attention``: learned softmax weights over that neighbourhood;
* ``mean`` / ``max``: over all nodes of the combined graph;
* ``random``: one random node per vacancy while training, the average of per-node
  predictions at evaluation (the expectation of the training readout).

Because the supercell is built from the canonical primitive host, every readout is
invariant to the input cell and to the choice among symmetry-equivalent sites.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from adex.graphs import FeaturizerSettings
from adex.nn import CGCNNConv, ElementEmbedding, GaussianExpansion, MLPHead, Normalizer, edge_weights
from adex.scatter import scatter_max, scatter_mean, scatter_softmax, scatter_sum

ExpertPooling = Literal["vacancy", "neighborhood", "attention", "mean", "max", "random"]
POOLINGS: tuple[str, ...] = ("vacancy", "neighborhood", "attention", "mean", "max", "random")
LOCAL_POOLINGS: tuple[str, ...] = ("vacancy", "neighborhood", "attention")


@dataclass
class ExpertModelConfig:
    """Architecture of the expert.

    Attributes:
        atom_fea_len: node width F.
        n_conv: gated convolutions over the combined graph.
        pooling: readout, one of ``POOLINGS``.
        adapter_width: output width of each advisor adapter.
        head_hidden, head_layers: MLP head.
        dropout: dropout in the head (and on adapter outputs).
        oxidation_states: add each node's bond-valence oxidation state (guessed from
            the pristine host, :mod:`adex.oxidation`; no DFT) to its input features.
        element_reference: predict ``reference[vacated element] + network output``,
            the reference being the training-set mean dH per vacated element (an
            "atom reference" as in matgl/CHGNet; unseen elements get the overall mean);
            the network then learns the residual.
        potential_delta: delta-learning on a universal-potential advisor (CHGNet): also add
            the unrelaxed vacancy energy E(defected) - E(pristine) (eV) of the supercell
            that advisor computes (:mod:`adex.expert.potential`); the element reference
            and the network learn what it misses (relaxation, chemical potentials).
        potential_relaxation: with ``potential_delta``, take the defected supercell's
            energy after one steepest-descent line search on the potential's forces
            (:meth:`adex.advisors.chgnet.CHGNetAdvisor.relaxed_energies`), so dE already
            holds an estimate of the relaxation energy around the vacancy.
        potential_relaxation_steps: with ``potential_relaxation``, 0 keeps that single line
            search; N >= 1 relaxes the defected supercell with N FIRE steps at fixed cell
            instead (:meth:`~adex.advisors.chgnet.CHGNetAdvisor.fire_relaxed_energies`,
            N+1 force evaluations; a closer relaxation, though on the Witman data no
            better a baseline than the line search: README "A closer relaxation").
        potential_min_image_distance: with ``potential_delta``, the potential's dE is taken in
            a supercell with at least this distance (Å) between the vacancy and its images,
            or the graph's supercell if that is larger; 0 (default): the graph's supercell.
            CHGNet's dE converges slowly with supercell size (its 4 message passings reach
            ~20 Å): for the spinel 0009491 the O / Al dE is 10.76 / 13.38 eV at 8 Å (56
            atoms), 10.54 / 12.99 at 12 Å (182) and 10.52 / 12.95 at 18 Å (504). A host too
            big or too distorted for symmetry to reduce gets its own, larger supercell, so a
            dE far from converged makes the prediction depend on how the host is written
            (issue 25); 12 Å keeps the jittered spinel's dE within 0.1 eV.
    """

    atom_fea_len: int = 64
    n_conv: int = 3
    pooling: ExpertPooling = "attention"
    adapter_width: int = 16
    head_hidden: int = 128
    head_layers: int = 2
    dropout: float = 0.1
    oxidation_states: bool = False
    element_reference: bool = False
    potential_delta: bool = False
    potential_relaxation: bool = False
    potential_relaxation_steps: int = 0
    potential_min_image_distance: float = 0.0

    def __post_init__(self) -> None:
        for key, least in (("atom_fea_len", 1), ("n_conv", 1), ("adapter_width", 1), ("head_hidden", 1), ("head_layers", 0)):
            value = getattr(self, key)
            if value < least:
                raise ValueError(f"model.{key} must be >= {least}, got {value}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.potential_relaxation and not self.potential_delta:
            raise ValueError("model.potential_relaxation needs model.potential_delta: true")
        if self.potential_relaxation_steps < 0:
            raise ValueError(f"model.potential_relaxation_steps must be >= 0, got {self.potential_relaxation_steps}")
        if self.potential_relaxation_steps and not self.potential_relaxation:
            raise ValueError("model.potential_relaxation_steps needs model.potential_relaxation: true")
        if not (math.isfinite(self.potential_min_image_distance) and self.potential_min_image_distance >= 0):
            raise ValueError(f"model.potential_min_image_distance must be a finite number >= 0 (Å), got {self.potential_min_image_distance}")
        if self.potential_min_image_distance and not self.potential_delta:
            raise ValueError("model.potential_min_image_distance needs model.potential_delta: true")


class OxidationEncoding(nn.Module):
    """Oxidation states [n] (NaN: unknown) -> features [n, width]: a Gaussian basis
    (centres -3..+8, width 0.5, so fractional averages fall between integers) plus an
    "unknown" flag, projected linearly."""

    CENTERS = tuple(float(c) for c in range(-3, 9))

    def __init__(self, width: int):
        super().__init__()
        self.register_buffer("centers", torch.tensor(self.CENTERS))
        self.project = nn.Linear(len(self.CENTERS) + 1, width, bias=False)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        unknown = torch.isnan(states)
        value = torch.where(unknown, torch.zeros_like(states), states)
        basis = torch.exp(-((value.unsqueeze(1) - self.centers) ** 2) / 0.25) * (~unknown).unsqueeze(1)
        return self.project(torch.cat([basis, unknown.unsqueeze(1).to(basis.dtype)], dim=1))


@dataclass
class AdvisorSlot:
    """An advisor as the expert sees it: registry ref (exact version), width, and the
    sha256 of its weights and of its ``model.json`` (architecture: featurizer settings,
    pooling; two advisors can share weights and differ there, e.g. CHGNet's sum and mean
    crystal readouts). Empty hashes: not recorded (older experts)."""

    ref: str
    width: int
    weights_sha256: str = ""
    model_sha256: str = ""

    def to_dict(self) -> dict:
        data = {"ref": self.ref, "width": self.width, "weights_sha256": self.weights_sha256}
        if self.model_sha256:  # older experts' model.json stays byte for byte
            data["model_sha256"] = self.model_sha256
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "AdvisorSlot":
        return cls(data["ref"], int(data["width"]), data.get("weights_sha256", ""), data.get("model_sha256", ""))


class Expert(nn.Module):
    """dGNN-style vacancy model. ``forward(batch)`` -> normalised dH [B];
    ``predict(batch)`` -> dH [B] in eV."""

    N_FLAGS = 3  # is vacated node, is pristine neighbour of it, is defected former neighbour

    def __init__(
        self,
        featurizer: FeaturizerSettings,
        config: ExpertModelConfig,
        advisors: list[AdvisorSlot] | None = None,
        mean: float = 0.0,
        std: float = 1.0,
        supercell: dict | None = None,
        training_elements: list[str] | None = None,
    ):
        super().__init__()
        self.training_elements = sorted(training_elements or [])
        self.featurizer_settings = featurizer
        self.config = config
        self.advisors = list(advisors or [])
        self.supercell = dict(supercell or {})
        width = config.atom_fea_len
        self.embedding = ElementEmbedding(featurizer.element_embedding, width)
        self.role_embedding = nn.Embedding(2, width)
        self.flag_embedding = nn.Linear(self.N_FLAGS, width, bias=False)
        self.oxidation = OxidationEncoding(width) if config.oxidation_states else None
        self.adapters = nn.ModuleList(nn.Linear(2 * slot.width, config.adapter_width) for slot in self.advisors)
        self.adapter_dropout = nn.Dropout(config.dropout)
        if self.advisors:
            self.mix = nn.Linear(width + config.adapter_width * len(self.advisors), width)
        self.gaussian = GaussianExpansion(featurizer.cutoff, featurizer.gaussian_step, featurizer.gaussian_width)
        self.convs = nn.ModuleList(CGCNNConv(width, featurizer.n_gaussians) for _ in range(config.n_conv))
        if config.pooling not in POOLINGS:
            raise ValueError(f"unknown expert pooling {config.pooling!r} (choose from {POOLINGS})")
        self.gate = nn.Linear(width, 1) if config.pooling == "attention" else None
        self.head = MLPHead(width, config.head_hidden, config.head_layers, config.dropout)
        self.normalizer = Normalizer(mean, std)
        if config.element_reference:  # eV [119], indexed by atomic number of the vacated atom
            self.register_buffer("element_reference", torch.zeros(119))
        self.frozen_modules: list[nn.Module] = []

    def train(self, mode: bool = True) -> "Expert":
        """As ``nn.Module.train``, but frozen (transferred) modules stay in eval mode,
        so their batch-norm statistics are not updated either."""
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()
        return self

    @property
    def receptive_hops(self) -> int | None:
        """Hops of context the readout needs (``n_conv``) for the local readouts
        (vacancy, neighborhood, attention), None for whole-graph ones. Graphs may be
        pruned to this many hops around the vacancy without changing eval outputs."""
        return self.config.n_conv if self.config.pooling in LOCAL_POOLINGS else None

    @property
    def hops_origin(self) -> str:
        """Where the receptive field is centred: ``"vacancy"`` (the vacated node, for the
        ``vacancy`` readout) or ``"hood"`` (the vacated node, its neighbours and their
        defected twins)."""
        return "vacancy" if self.config.pooling == "vacancy" else "hood"

    @property
    def reads_oxidation_states(self) -> bool:
        return self.config.oxidation_states

    @property
    def needs_potential_delta(self) -> bool:
        """Whether batches must carry a potential's vacancy energies (``potential_delta``)."""
        return self.config.potential_delta

    @property
    def potential_relaxation(self) -> bool:
        """Whether those energies are relaxed (``potential_relaxation``)."""
        return self.config.potential_relaxation

    @property
    def potential_relaxation_steps(self) -> int:
        """FIRE steps of that relaxation; 0: one line search (``potential_relaxation_steps``)."""
        return self.config.potential_relaxation_steps

    @property
    def potential_kind(self) -> tuple[bool, int, float] | None:
        """Which potential vacancy energies the batches must carry: ``(relaxation,
        relaxation_steps, min_image_distance)`` with ``potential_delta``, else None."""
        if not self.config.potential_delta:
            return None
        c = self.config
        return (c.potential_relaxation, c.potential_relaxation_steps, float(c.potential_min_image_distance))

    def prepare(self, packed):
        """The packed vacancy graphs this model needs: pruned to its receptive field."""
        hops = self.receptive_hops
        return packed if hops is None else packed.prune(hops, origin=self.hops_origin)

    # ---------------------------------------------------------------- forward
    def node_features(self, batch) -> torch.Tensor:
        """Initial node features [n_nodes, F]: element + role + flags (+ oxidation state)
        (+ adapted advisors)."""
        x = self.embedding(batch.atomic_numbers) + self.role_embedding(batch.node_role) + self.flag_embedding(batch.node_flags)
        if self.oxidation is not None:
            x = x + self.oxidation(batch.node_oxidation)
        if self.advisors:
            adapted = [self.adapter_dropout(adapter(feat)) for adapter, feat in zip(self.adapters, batch.advisor_features)]
            x = self.mix(torch.cat([x, *adapted], dim=1))
        return x

    def node_embeddings(self, batch) -> torch.Tensor:
        """Node embeddings after the convolutions: [n_nodes, F].

        With a local readout, convolution ``k`` (0-based) only updates nodes within
        ``n_conv - 1 - k`` hops of the vacancy neighbourhood (of the vacated node for the
        ``vacancy`` readout), from the edges into them:
        the others' updates never reach the readout. The readout's inputs are the same
        as with every node updated (in eval mode exactly; in training the batch-norm
        statistics are taken over the nodes and edges that matter).
        """
        x = self.node_features(batch)
        edge_attr = self.gaussian(batch.edge_distance)
        # radius or soft k-NN graphs: messages weighted smoothly (twin edges, at 0 Å, weigh 1)
        weight = edge_weights(self.featurizer_settings, batch.edge_index, batch.edge_distance)
        hops = batch.node_hops if self.receptive_hops is not None else None
        if hops is not None and batch.hops_from != self.hops_origin and batch.hops_from != "hood":
            # hops from the hood bound those from the vacancy, never the other way round
            raise ValueError(f"{self.config.pooling} readout needs hop distances from the {self.hops_origin}, "
                             f"the batch counts them from the {batch.hops_from} (prepare the graphs with this model)")
        if hops is not None:
            receiver_hops = hops.index_select(0, batch.edge_index[0])  # [n_edges]
        for k, conv in enumerate(self.convs):
            if hops is None:
                x = conv(x, batch.edge_index, edge_attr, edge_weight=weight)
                continue
            reach = self.config.n_conv - 1 - k
            keep = receiver_hops <= reach
            active = torch.nonzero(hops <= reach).squeeze(1)
            x = conv(x, batch.edge_index[:, keep], edge_attr[keep], active=active,
                     edge_weight=None if weight is None else weight[keep])
        return x

    def readout(self, x: torch.Tensor, batch) -> torch.Tensor:
        """Per-vacancy embedding [B, F] (``random`` is handled in :meth:`forward`)."""
        kind, B = self.config.pooling, batch.num_graphs
        if kind == "vacancy":
            return x.index_select(0, batch.vacancy_node)
        if kind == "mean":
            return scatter_mean(x, batch.node_graph, B)
        if kind == "max":
            return scatter_max(x, batch.node_graph, B)
        hood = x.index_select(0, batch.hood_node)
        if kind == "neighborhood":
            return scatter_mean(hood, batch.hood_graph, B)
        weights = scatter_softmax(self.gate(hood), batch.hood_graph, B)
        return scatter_sum(weights * hood, batch.hood_graph, B)

    def forward(self, batch) -> torch.Tensor:
        x = self.node_embeddings(batch)
        if self.config.pooling != "random":
            return self.head(self.readout(x, batch))
        if self.training:
            counts = torch.bincount(batch.node_graph, minlength=batch.num_graphs)
            starts = torch.cumsum(counts, 0) - counts
            pick = starts + (torch.rand(batch.num_graphs, device=x.device) * counts).long().clamp(max=counts.max() - 1)
            return self.head(x.index_select(0, pick))
        return scatter_mean(self.head(x), batch.node_graph, batch.num_graphs)

    def target_offset(self, batch) -> torch.Tensor:
        """Per-vacancy offset [B] (eV) added to the denormalised output: the vacated
        element's reference with ``element_reference`` plus the potential's unrelaxed
        vacancy energy ``batch.potential_delta`` with ``potential_delta``, else 0."""
        offset = torch.zeros(batch.num_graphs, device=batch.vacancy_node.device)
        if self.config.element_reference:
            offset = offset + self.element_reference.index_select(0, batch.atomic_numbers.index_select(0, batch.vacancy_node))
        if self.config.potential_delta:
            if batch.potential_delta is None:
                raise ValueError("this expert adds a potential's vacancy energies (model.potential_delta), "
                                 "but the batch has none")
            offset = offset + batch.potential_delta
        return offset

    @staticmethod
    def fit_element_reference(vacated_z: "np.ndarray", dH: "np.ndarray") -> torch.Tensor:
        """Mean dH (eV) per vacated element [119]; elements absent from ``vacated_z``
        get the overall mean."""
        import numpy as np

        z = np.asarray(vacated_z, dtype=np.int64)
        y = np.asarray(dH, dtype=np.float64)
        total, count = np.bincount(z, y, minlength=119), np.bincount(z, minlength=119)
        reference = np.where(count > 0, total / np.maximum(count, 1), y.mean())
        return torch.tensor(reference, dtype=torch.float32)

    @torch.no_grad()
    def predict(self, batch) -> torch.Tensor:
        """dH (eV) [B]."""
        return self.normalizer.denorm(self.forward(batch)) + self.target_offset(batch)

    # ---------------------------------------------------------------- transfer learning
    def init_from_backbone(self, backbone) -> list[str]:
        """Copy an advisor backbone's element embedding and convolutions into the expert.

        The advisor's Gaussian basis must start like the expert's (same step and width,
        expert cutoff <= advisor cutoff): the expert's edge columns are then a prefix of
        the advisor's. Widths must match. Returns the names of the copied tensors.
        """
        from adex.errors import ConfigError

        a, e = backbone.featurizer, self.featurizer_settings
        if ((a.gaussian_step, a.gaussian_width, a.element_embedding, a.smooth) != (e.gaussian_step, e.gaussian_width, e.element_embedding, e.smooth)
                or e.cutoff > a.cutoff):
            raise ConfigError(
                "init-from: advisor and expert featurizers are incompatible (need equal gaussian_step, gaussian_width, "
                "element_embedding, both or neither a radius graph (max_neighbors null), and expert cutoff <= advisor "
                f"cutoff; advisor {a.to_dict()}, expert {e.to_dict()})"
            )
        if backbone.width != self.config.atom_fea_len:
            raise ConfigError(f"init-from: advisor width {backbone.width} != expert atom_fea_len {self.config.atom_fea_len}")
        copied = []
        with torch.no_grad():
            self.embedding.embedding.load_state_dict(backbone.embedding.embedding.state_dict())
            copied.append("embedding")
            n_edge = e.n_gaussians
            for k, (mine, theirs) in enumerate(zip(self.convs, backbone.convs)):
                width = self.config.atom_fea_len
                mine.fc_full.weight.copy_(theirs.fc_full.weight[:, : 2 * width + n_edge])
                mine.fc_full.bias.copy_(theirs.fc_full.bias)
                mine.bn1.load_state_dict(theirs.bn1.state_dict())
                mine.bn2.load_state_dict(theirs.bn2.state_dict())
                copied.append(f"convs.{k}")
        return copied

    def transferable_modules(self) -> list[nn.Module]:
        """Modules initialised by :meth:`init_from_backbone`, in input-to-output order."""
        return [self.embedding, *self.convs]

    # ---------------------------------------------------------------- serialisation
    def architecture(self) -> dict:
        from adex.config import to_dict

        model = to_dict(self.config)
        if not model["potential_min_image_distance"]:  # experts without it keep their model.json byte for byte
            del model["potential_min_image_distance"]
        return {
            "class": "expert",
            "featurizer": self.featurizer_settings.to_dict(),
            "model": model,
            "advisors": [s.to_dict() for s in self.advisors],
            "supercell": self.supercell,
            "training_elements": self.training_elements,
            "target": "vacancy_formation_enthalpy",
            "unit": "eV",
        }

    @classmethod
    def from_architecture(cls, arch: dict) -> "Expert":
        from adex.config import build_dataclass

        return cls(
            FeaturizerSettings.from_dict(arch["featurizer"]),
            build_dataclass(ExpertModelConfig, arch["model"], "model"),
            [AdvisorSlot.from_dict(a) for a in arch.get("advisors", [])],
            supercell=arch.get("supercell", {}),
            training_elements=arch.get("training_elements", []),
        )
