"""An advisor: a CGCNN-style backbone plus a property head, trained on pristine crystals.

Its product is embeddings: ``embed(batch)`` gives per-atom [n_atoms, F] and per-crystal
[B, F] features that the expert reads through linear adapters.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from adex.graphs import FeaturizerSettings, GraphBatch
from adex.nn import Backbone, BackboneConfig, MLPHead, Normalizer
from adex.training import TrainingConfig


@dataclass
class AdvisorModelConfig:
    """Architecture. ``atom_fea_len``: width F; ``n_conv``: convolutions; ``pooling``:
    mean | sum | max | attention; ``head_hidden`` / ``head_layers``: MLP head; ``dropout``
    in the head; ``head_input_softplus``: softplus on the pooled features before the head
    (as in the original CGCNN, used for imported checkpoints)."""

    atom_fea_len: int = 64
    n_conv: int = 3
    pooling: str = "mean"
    head_hidden: int = 128
    head_layers: int = 1
    dropout: float = 0.0
    head_input_softplus: bool = False

    def __post_init__(self) -> None:
        from adex.errors import ConfigError

        if self.pooling not in ("mean", "sum", "max", "attention"):
            raise ConfigError(f"model.pooling: expected one of mean, sum, max, attention, got {self.pooling!r}")
        if self.atom_fea_len < 1 or self.n_conv < 0 or self.head_hidden < 1 or self.head_layers < 1:
            raise ConfigError("model: atom_fea_len, head_hidden and head_layers must be >= 1 and n_conv >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout: expected a value in [0, 1), got {self.dropout}")

    def backbone(self) -> BackboneConfig:
        return BackboneConfig(atom_fea_len=self.atom_fea_len, n_conv=self.n_conv, pooling=self.pooling)  # type: ignore[arg-type]


@dataclass
class AdvisorConfig:
    """A full advisor training recipe (``configs/advisors/<name>.yaml``)."""

    name: str
    dataset: str
    featurizer: FeaturizerSettings = field(default_factory=FeaturizerSettings)
    model: AdvisorModelConfig = field(default_factory=AdvisorModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)

    def __post_init__(self) -> None:
        if self.training.host_weight_power:
            raise ValueError("training.host_weight_power is for experts (vacancies grouped by host); an advisor's crystals have no hosts")


class Advisor(nn.Module):
    """Backbone + head + target normaliser.

    ``forward(batch)`` -> normalised prediction [B]; ``predict(batch)`` -> [B] in
    ``unit``; ``embed(batch)`` -> (atom [n_atoms, F], crystal [B, F]).
    """

    def __init__(self, featurizer: FeaturizerSettings, config: AdvisorModelConfig, target: str, unit: str, mean: float = 0.0, std: float = 1.0):
        super().__init__()
        self.featurizer_settings = featurizer
        self.config = config
        self.target = target
        self.unit = unit
        self.backbone = Backbone(featurizer, config.backbone())
        self.head = MLPHead(config.atom_fea_len, config.head_hidden, config.head_layers, config.dropout,
                            config.head_input_softplus)
        self.normalizer = Normalizer(mean, std)

    @property
    def embedding_width(self) -> int:
        return self.config.atom_fea_len

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        _, crystal = self.backbone(batch)
        return self.head(crystal)

    @torch.no_grad()
    def predict(self, batch: GraphBatch) -> torch.Tensor:
        return self.normalizer.denorm(self.forward(batch))

    def embed(self, batch: GraphBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone(batch)

    # ---- serialisation (see adex.checkpoint)
    def architecture(self) -> dict:
        """Everything needed to rebuild this module before loading its weights."""
        from adex.config import to_dict

        return {
            "class": "advisor",
            "featurizer": self.featurizer_settings.to_dict(),
            "model": to_dict(self.config),
            "target": self.target,
            "unit": self.unit,
        }

    @classmethod
    def from_architecture(cls, arch: dict) -> "Advisor":
        from adex.config import build_dataclass

        return cls(
            FeaturizerSettings.from_dict(arch["featurizer"]),
            build_dataclass(AdvisorModelConfig, arch["model"], "model"),
            arch["target"],
            arch["unit"],
        )
