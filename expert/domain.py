"""The applicability domain of an expert: how far a vacancy is from what the expert was
trained on.

Each vacancy is described by its vacated site as the expert's advisors see it: the
concatenated per-atom embeddings of the vacated atom in the canonical primitive host (one
block per advisor, the features the expert itself reads), and by its host's *species*, the
(element, oxidation state) pairs of the host (:mod:`adex.oxidation`, ``Fe?`` where the
states are unknown). Against the training vacancies:

* ``domain`` = mean Euclidean distance to the ``k`` nearest training sites in the
  standardised embedding space (per dimension: training mean and std; divided by the
  square root of the dimension), in units of the median distance of held-out vacancies in
  host-grouped cross-validation (``domain`` 1 = as far as the typical new Witman host's
  vacancy; 0 = a training vacancy);
* *novel*: the host has an element, or an (element, oxidation state) pair, that no
  training host has;
* ``in_domain`` = not novel and ``domain <= threshold`` (the threshold is a quantile of
  the held-out ``domain`` values, recorded with the model).

On the per-compound folds of the shipped expert's recipe the site distance ranks errors
better than host (crystal) embeddings or element counts (benchmarks/trust_eval.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from adex.errors import ConfigError

#: Nearest training sites averaged in the distance.
K_NEIGHBOURS = 5
#: Query rows per block of the distance computation (bounded memory).
_BLOCK = 512


def species_name(symbol: str, oxidation: float) -> str:
    """``Mn+5``, ``O-2``, ``Fe?`` (unknown state)."""
    if oxidation is None or not math.isfinite(float(oxidation)):
        return f"{symbol}?"
    return f"{symbol}{int(round(float(oxidation))):+d}"


def element_of(species: str) -> str:
    """The element symbol of a :func:`species_name`."""
    return species.rstrip("?+-0123456789")


@dataclass
class DomainInputs:
    """What the domain needs to know of each vacancy (B of them).

    Attributes:
        embedding: float32 [B, D] advisors' embeddings of the vacated primitive atom,
            concatenated in the expert's advisor order.
        element: str [B] vacated element.
        host: str [B] a key of the canonical primitive host (vacancies of one host share it).
        species: {host key: sorted tuple of species names} of each host.
    """

    embedding: np.ndarray
    element: np.ndarray
    host: np.ndarray
    species: dict

    def __len__(self) -> int:
        return len(self.element)

    def subset(self, indices) -> "DomainInputs":
        idx = np.asarray(indices, dtype=np.int64)
        hosts = self.host[idx]
        return DomainInputs(self.embedding[idx], self.element[idx], hosts, {h: self.species[h] for h in set(hosts.tolist())})

    @classmethod
    def concatenate(cls, parts: list["DomainInputs"]) -> "DomainInputs":
        species: dict = {}
        for part in parts:
            species.update(part.species)
        return cls(np.concatenate([p.embedding for p in parts]), np.concatenate([p.element for p in parts]),
                   np.concatenate([p.host for p in parts]), species)


def domain_inputs(loaded, packed, cache: bool = False) -> DomainInputs:
    """:class:`DomainInputs` of the vacancies of ``packed`` (``PackedVacancies``) for the
    loaded expert ``loaded``: its advisors embed each distinct host once, through the
    in-memory embedding memo that prediction filled (``cache``: the disk cache too)."""
    from pymatgen.core.periodic_table import Element

    from adex.expert.advisor_features import cached_advisor_features, host_digest, unique_hosts

    rows = packed.prim_ptr[:-1] + packed.vacated_primitive_sites  # the vacated atom's row in prim_* arrays
    blocks = [cached_advisor_features(entry, model, packed, persistent=cache).atom[rows] for entry, model in loaded.advisors]
    if not blocks:
        raise ConfigError(f"{loaded.entry.ref} reads no advisor: the applicability domain needs advisor embeddings")
    first, inverse = unique_hosts(packed)
    keys = [host_digest(packed, int(b))[:20] for b in first]
    species = {}
    for u, b in enumerate(first):
        sl = slice(packed.prim_ptr[b], packed.prim_ptr[b + 1])
        names = {species_name(Element.from_Z(int(z)).symbol, ox) for z, ox in zip(packed.prim_numbers[sl], packed.prim_oxidation[sl])}
        species[keys[u]] = tuple(sorted(names))
    elements = np.array([Element.from_Z(int(z)).symbol for z in packed.vacated_numbers])
    return DomainInputs(np.concatenate(blocks, axis=1).astype(np.float32), elements, np.array(keys)[inverse], species)


@dataclass
class DomainResult:
    """Per vacancy: ``domain`` (distance, see the module docstring), ``in_domain``,
    ``novel`` (unseen element or species) and ``reasons`` (text, "" when in domain)."""

    domain: np.ndarray
    in_domain: np.ndarray
    novel: np.ndarray
    reasons: list[str]


@dataclass
class DomainModel:
    """The training vacancies' standardised site embeddings and species (see the module
    docstring). ``unit`` and ``threshold`` come from cross-validation (:func:`calibrate`);
    ``advisors`` names the advisors (ref, weights sha256) whose embeddings these are."""

    mean: np.ndarray  # [D]
    std: np.ndarray  # [D]
    reference: np.ndarray  # float32 [N, D], standardised
    species: tuple[str, ...]
    k: int = K_NEIGHBOURS
    unit: float = 1.0
    threshold: float = math.inf
    threshold_quantile: float | None = None
    advisors: list = field(default_factory=list)

    @property
    def elements(self) -> tuple[str, ...]:
        return tuple(sorted({element_of(s) for s in self.species}))

    @classmethod
    def fit(cls, inputs: DomainInputs, k: int = K_NEIGHBOURS, advisors: list | None = None) -> "DomainModel":
        """The domain of training vacancies ``inputs`` (unit 1, no threshold yet)."""
        if len(inputs) < k:
            raise ConfigError(f"a domain needs at least k={k} training vacancies, got {len(inputs)}")
        emb = np.asarray(inputs.embedding, dtype=np.float64)
        mean, std = emb.mean(0), emb.std(0) + 1e-6
        species = sorted(set().union(*(set(inputs.species[h]) for h in set(inputs.host.tolist()))))
        return cls(mean, std, ((emb - mean) / std).astype(np.float32), tuple(species), k, advisors=list(advisors or []))

    def distance(self, embedding: np.ndarray) -> np.ndarray:
        """Mean distance to the ``k`` nearest training sites (standardised, / sqrt(D)), in
        :attr:`unit` units: float64 [B]."""
        query = ((np.asarray(embedding, dtype=np.float64) - self.mean) / self.std).astype(np.float32)
        if query.ndim != 2 or query.shape[1] != self.reference.shape[1]:
            raise ConfigError(f"embeddings of width {query.shape[-1]} for a domain of width {self.reference.shape[1]} "
                              "(another expert's advisors?)")
        ref = self.reference
        ref_sq = (ref.astype(np.float64) ** 2).sum(1)
        out = np.empty(len(query))
        k = min(self.k, len(ref))
        for start in range(0, len(query), _BLOCK):
            q = query[start:start + _BLOCK].astype(np.float64)
            d2 = (q ** 2).sum(1)[:, None] + ref_sq[None, :] - 2.0 * q @ ref.T.astype(np.float64)
            nearest = np.partition(np.maximum(d2, 0.0), k - 1, axis=1)[:, :k]
            out[start:start + _BLOCK] = np.sqrt(nearest).mean(1)
        return out / math.sqrt(ref.shape[1]) / self.unit

    def novelty(self, inputs: DomainInputs) -> tuple[np.ndarray, list[str]]:
        """(novel [B], reason per vacancy) from the hosts' species."""
        known_species, known_elements = set(self.species), set(self.elements)
        reason_of = {}
        for host, names in inputs.species.items():
            elements = sorted({element_of(s) for s in names} - known_elements)
            unseen = sorted(s for s in names if s not in known_species and element_of(s) in known_elements)
            parts = []
            if elements:
                parts.append(f"element{'s' if len(elements) > 1 else ''} {', '.join(elements)} absent from training")
            if unseen:
                parts.append(f"oxidation state{'s' if len(unseen) > 1 else ''} {', '.join(unseen)} absent from training")
            reason_of[host] = "; ".join(parts)
        reasons = [reason_of[h] for h in inputs.host]
        return np.array([bool(r) for r in reasons], dtype=bool), reasons

    def assess(self, inputs: DomainInputs) -> DomainResult:
        """``domain``, ``in_domain``, ``novel`` and reasons for every vacancy of ``inputs``."""
        domain = self.distance(inputs.embedding)
        novel, reasons = self.novelty(inputs)
        far = domain > self.threshold
        reasons = [("; ".join(filter(None, [r, f"site far from the training sites (domain {d:.2f} > {self.threshold:.2f})"]))
                    if f else r) for r, d, f in zip(reasons, domain, far)]
        return DomainResult(domain, ~(novel | far), novel, reasons)

    # ------------------------------------------------------------------ storage
    def arrays(self) -> dict[str, np.ndarray]:
        return {"domain_mean": self.mean.astype(np.float64), "domain_std": self.std.astype(np.float64),
                "domain_reference": self.reference.astype(np.float32)}

    def record(self) -> dict:
        """The JSON part (the arrays go to a file)."""
        return {"k": self.k, "unit": self.unit, "threshold": self.threshold if math.isfinite(self.threshold) else None,
                "threshold_quantile": self.threshold_quantile, "species": list(self.species),
                "elements": list(self.elements), "n_reference": int(len(self.reference)),
                "width": int(self.reference.shape[1]), "advisors": list(self.advisors),
                "distance": "mean Euclidean distance to the k nearest training sites in the standardised space of the "
                            "advisors' embeddings of the vacated atom, / sqrt(width), / unit (the median distance of "
                            "held-out vacancies in host-grouped cross-validation)"}

    @classmethod
    def from_record(cls, record: dict, arrays: dict) -> "DomainModel":
        try:
            threshold = record.get("threshold")
            return cls(np.asarray(arrays["domain_mean"], dtype=np.float64), np.asarray(arrays["domain_std"], dtype=np.float64),
                       np.asarray(arrays["domain_reference"], dtype=np.float32), tuple(record["species"]), int(record["k"]),
                       float(record["unit"]), math.inf if threshold is None else float(threshold),
                       record.get("threshold_quantile"), list(record.get("advisors", [])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a domain record ({type(exc).__name__}: {exc})") from None


def held_out_domain(inputs: DomainInputs, folds: np.ndarray, k: int = K_NEIGHBOURS) -> tuple[np.ndarray, np.ndarray]:
    """Raw (unit 1) domain distance and novelty of every vacancy against the training side
    of its own fold (``folds``: fold name per vacancy; the other folds train)."""
    folds = np.asarray(folds)
    distance = np.full(len(folds), np.nan)
    novel = np.zeros(len(folds), dtype=bool)
    for fold in np.unique(folds):
        test = np.flatnonzero(folds == fold)
        model = DomainModel.fit(inputs.subset(np.flatnonzero(folds != fold)), k)
        part = inputs.subset(test)
        distance[test] = model.distance(part.embedding)
        novel[test] = model.novelty(part)[0]
    return distance, novel


def calibrate(model: DomainModel, held_out_distance: np.ndarray, threshold_quantile: float) -> DomainModel:
    """Set ``unit`` (median held-out distance) and ``threshold`` (the ``threshold_quantile``
    of the held-out distances, in units) of ``model`` from cross-validation."""
    held = np.asarray(held_out_distance, dtype=np.float64)
    held = held[np.isfinite(held)]
    if not len(held):
        raise ConfigError("no held-out distances to calibrate the domain on")
    model.unit = float(np.median(held))
    model.threshold = float(np.quantile(held / model.unit, threshold_quantile))
    model.threshold_quantile = float(threshold_quantile)
    return model
