"""Hand-made descriptors as an advisor: the descriptor baseline's features
(:class:`adex.supercell.descriptors.DescriptorFeaturizer`: matminer/Magpie element properties,
CrystalNN coordination, bond lengths and angles, bond-valence sums, Ewald site energies,
host composition statistics) given to the expert through the same adapters as the GNN
advisors, so one network sees both the graph and the descriptors.

``adex advisor import descriptors`` registers ``advisor/descriptors:N``: no trained
weights, only the standardisation (mean and scale of every descriptor, fitted on a
seeded sample of Materials Project crystals, never on the vacancy data) and the
descriptor names, which loading checks against the installed featurizer.

Embeddings: per atom, the descriptors of that atom's site as if it were the vacated one,
standardised, unknown values 0, clipped to ±:data:`CLIP` ([n_atoms, n_features]); per
crystal, their mean over the atoms ([n_features]). Deterministic per host, but slow
(CrystalNN: tens of ms per site), so the expert's training caches them per host
(``cache_embeddings``) in ``$ADEX_HOME/cache/advisors`` like ``adex predict --cache``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adex.errors import RegistryError

CLIP = 8.0  # standard deviations


class DescriptorAdvisor(nn.Module):
    """``embed_structures(structures)`` -> (atom float32 [sum n_atoms, F], crystal float32 [B, F]),
    F = ``embedding_width`` standardised descriptors."""

    unit = ""
    cache_embeddings = True  # the expert's training reuses per-host embeddings (deterministic, slow)

    def __init__(self, settings: dict, feature_names: list[str]):
        super().__init__()
        self.settings = dict(settings)
        self.feature_names = list(feature_names)
        n = len(self.feature_names)
        self.register_buffer("mean", torch.zeros(n, dtype=torch.float64))  # [F] descriptor units
        self.register_buffer("scale", torch.ones(n, dtype=torch.float64))  # [F] descriptor units, > 0
        self._featurizer = None

    @property
    def embedding_width(self) -> int:
        return len(self.feature_names)

    def featurizer(self):
        """The installed :class:`DescriptorFeaturizer`, checked to compute the stored descriptors."""
        if self._featurizer is None:
            from adex.supercell.descriptors import DescriptorFeaturizer, DescriptorSettings

            featurizer = DescriptorFeaturizer(DescriptorSettings(**self.settings))
            if featurizer.feature_names != self.feature_names:
                raise RegistryError("descriptor advisor: this adex computes other descriptors than the stored ones "
                                    f"({featurizer.n_features} against {self.embedding_width}); re-import it")
            self._featurizer = featurizer
        return self._featurizer

    def raw_descriptors(self, structure) -> np.ndarray:
        """Descriptors of every site of ``structure`` as the vacated one: float64 [n_atoms, F] (NaN: unknown)."""
        return self.featurizer().featurize_sites(structure, list(range(len(structure))))

    def standardize(self, raw: np.ndarray) -> np.ndarray:
        """float64 [..., F] -> float32 [..., F]: (raw - mean) / scale, NaN -> 0, clipped to ±CLIP."""
        z = (raw - self.mean.numpy()) / self.scale.numpy()
        z = np.where(np.isfinite(z), z, 0.0)
        return np.clip(z, -CLIP, CLIP).astype(np.float32)

    def embed_structures(self, structures) -> tuple[np.ndarray, np.ndarray]:
        """Per-atom [sum n, F] and per-crystal [B, F] standardised descriptors (float32)."""
        atoms, crystals = [], []
        for structure in structures:
            z = self.standardize(self.raw_descriptors(structure))
            atoms.append(z)
            crystals.append(z.mean(axis=0))
        width = self.embedding_width
        if not atoms:
            return np.zeros((0, width), np.float32), np.zeros((0, width), np.float32)
        return np.concatenate(atoms), np.stack(crystals)

    def architecture(self) -> dict:
        return {"class": "descriptor_advisor", "settings": self.settings, "feature_names": self.feature_names,
                "embedding_width": self.embedding_width, "unit": self.unit}

    @classmethod
    def from_architecture(cls, arch: dict) -> "DescriptorAdvisor":
        return cls(arch["settings"], arch["feature_names"])


def fit_standardization(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [F], scale [F]) of descriptors [n, F] ignoring NaN; scale 1 where a descriptor
    is constant or never known."""
    with np.errstate(all="ignore"), __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")
        mean = np.nanmean(raw, axis=0)
        scale = np.nanstd(raw, axis=0)
    mean = np.where(np.isfinite(mean), mean, 0.0)
    scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)
    return mean, scale


def import_descriptors(registry, data=None, n_structures: int = 200, seed: int = 0, name: str = "descriptors",
                       aliases: tuple[str, ...] = ()):
    """Register the descriptor advisor as ``advisor/<name>``, its standardisation fitted on
    ``n_structures`` Materials Project crystals drawn with ``seed`` (all their sites).
    Returns the registry entry."""
    from adex.checkpoint import model_files
    from adex.datasets import DATASETS, dataset_root
    from adex.supercell.descriptors import DescriptorFeaturizer, DescriptorSettings
    from adex.io import structure_from_text
    from adex.progress import progress_bar

    root = dataset_root("mp_formation_energy", data)
    spec = DATASETS["mp_formation_energy"]
    records = spec.records(root)
    pick = np.random.default_rng(seed).permutation(len(records))[:n_structures]
    ids = sorted(records[int(k)][0] for k in pick)
    settings = DescriptorSettings()
    advisor = DescriptorAdvisor(settings.to_dict(), DescriptorFeaturizer(settings).feature_names)
    rows, used = [], []
    with progress_bar() as progress:
        task = progress.add_task("descriptors of MP crystals", total=len(ids))
        for item, text in spec.texts(root, ids):
            try:
                rows.append(advisor.raw_descriptors(structure_from_text(text, "cif", source=item)))
                used.append(item)
            except Exception:  # noqa: BLE001 - an odd structure is left out of the statistics
                pass
            progress.advance(task)
    if not rows:
        raise RegistryError("descriptor advisor: no MP structure could be featurized")
    mean, scale = fit_standardization(np.concatenate(rows))
    advisor.mean.copy_(torch.from_numpy(mean))
    advisor.scale.copy_(torch.from_numpy(scale))
    card = {
        "description": "hand-made vacancy descriptors (matminer/Magpie, CrystalNN, bond valence, Ewald; the "
                       "descriptor baseline's features) of every site, standardised, as an advisor",
        "embedding_width": advisor.embedding_width,
        "target": {"name": "descriptors", "unit": ""},
        "standardization": {"dataset": "mp_formation_energy", "n_structures": len(used), "n_sites": int(sum(len(r) for r in rows)),
                            "seed": seed, "structures": used},
        "featurizer": {"name": "descriptors", **settings.to_dict()},
    }
    return registry.register("advisor", name, model_files(advisor), card, aliases=list(aliases))
