"""Prediction with a registered expert: load it with its exact advisors, featurize
hosts once, predict any number of vacancies in batches."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from pymatgen.core import Structure

from adex.errors import RegistryError
from adex.expert.data import PackedVacancies, VacancyDataset, compute_advisor_features, featurize_vacancy
from adex.graphs import Featurizer

DEFAULT_EXPERT = "builtin::expert/vacancy"


class InputWarning(UserWarning):
    """A prediction was made, but its input is outside what the expert knows."""


class ElementWarning(InputWarning):
    """A host contains an element absent from the expert's training data."""


class OxidationStateWarning(InputWarning):
    """No charge-balanced oxidation states were found for a host (the expert uses them)."""


@dataclass
class LoadedExpert:
    entry: object
    model: object
    advisors: list  # (entry, model)


def load_expert(ref: str, registry) -> LoadedExpert:
    """The expert ``ref`` and the exact advisor versions it was trained with.

    Each advisor is resolved by the exact reference recorded in the expert and its
    weights' sha256 must equal the recorded one (so a shadowing user model or an edited
    file cannot silently change the expert's inputs).
    """
    from adex.checkpoint import WEIGHTS, load_model

    entry = registry.resolve(ref, kind="expert")
    if entry.kind != "expert":
        raise RegistryError(f"{ref} is a {entry.kind}, not an expert")
    model = load_model(entry)
    advisors = []
    for slot in model.advisors:
        adv_entry = registry.resolve(slot.ref, kind="advisor")
        sha = adv_entry.files.get(WEIGHTS, {}).get("sha256")
        if slot.weights_sha256 and sha != slot.weights_sha256:
            raise RegistryError(f"{entry.ref} needs advisor {slot.ref} with weights sha256 {slot.weights_sha256[:12]}..., "
                                f"but {adv_entry.ref} has {str(sha)[:12]}...")
        adv_model = load_model(adv_entry)
        advisors.append((adv_entry, adv_model))
    return LoadedExpert(entry, model, advisors)


def featurize_host_sites(expert: LoadedExpert, host: Structure, sites: list[int], host_id: str) -> PackedVacancies:
    """Supercell graphs of several vacancies of one host (the host is read once)."""
    from adex.supercell import SupercellSettings

    model = expert.model
    featurizer = Featurizer(model.featurizer_settings)
    settings = SupercellSettings.from_dict(model.supercell)
    unseen = sorted({site.specie.symbol for site in host} - set(model.training_elements))
    if model.training_elements and unseen:
        warnings.warn(f"{host_id}: element(s) {', '.join(unseen)} never seen in the expert's training data; "
                      "the prediction is an extrapolation", ElementWarning, stacklevel=2)
    packed = PackedVacancies.concatenate(
        [featurize_vacancy(host, site, f"{host_id}#{site}", None, featurizer, settings) for site in sites]
    )
    if model.reads_oxidation_states and np.isnan(packed.prim_oxidation).any():
        warnings.warn(f"{host_id}: no charge-balanced oxidation states found (bond valence and composition guesses "
                      "failed); predicted with oxidation states marked unknown", OxidationStateWarning, stacklevel=2)
    return packed


@torch.no_grad()
def predict_packed_members(expert: LoadedExpert, packed: PackedVacancies, batch_size: int = 256) -> np.ndarray:
    """dH (eV) of every member for every vacancy of ``packed``: float64 [M, B] (M = 1
    for a single expert). Featurization and advisors run once for all members."""
    from adex.expert.ensemble import as_members

    features = [compute_advisor_features(model, entry.ref, packed) for entry, model in expert.advisors]
    dataset = VacancyDataset(expert.model.prepare(packed), features)
    members = as_members(expert.model)
    out = [[] for _ in members]
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(np.arange(start, min(start + batch_size, len(dataset))))
        for k, member in enumerate(members):
            out[k].append(member.predict(batch).double().numpy())
    return np.stack([np.concatenate(parts) if parts else np.zeros(0) for parts in out])


def predict_packed(expert: LoadedExpert, packed: PackedVacancies, batch_size: int = 256) -> np.ndarray:
    """dH (eV) for every vacancy of ``packed`` (the member mean for an ensemble): float64 [B]."""
    return predict_packed_members(expert, packed, batch_size).mean(0)
