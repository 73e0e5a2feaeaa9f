"""Bond-valence oxidation states and their use as expert node features."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from adex import oxidation
from adex.expert.data import VacancyDataset, featurize_vacancy
from adex.expert.model import OxidationEncoding
from adex.graphs import Featurizer, FeaturizerSettings
from adex.oxidation import guess_oxidation_states
from adex.supercell import SupercellSettings


def rocksalt(a: str, b: str, lattice: float = 4.21) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(lattice), [a, b], [[0, 0, 0], [0.5, 0.5, 0.5]])


def test_rocksalt_oxides_get_their_formal_states() -> None:
    mgo = rocksalt("Mg", "O")
    states = guess_oxidation_states(mgo)
    assert states.dtype == np.float32 and states.shape == (len(mgo),)
    assert np.array_equal(states, np.where([s.specie.symbol == "Mg" for s in mgo], 2.0, -2.0))
    ni = guess_oxidation_states(rocksalt("Ni", "O", 4.18))
    assert sorted(set(ni.tolist())) == [-2.0, 2.0]


def test_perovskite_states_balance_the_charge() -> None:
    srtio3 = Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                       [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])
    states = guess_oxidation_states(srtio3)
    by_element = {s.specie.symbol: states[i] for i, s in enumerate(srtio3)}
    assert by_element == {"Sr": 2.0, "Ti": 4.0, "O": -2.0}
    assert states.sum() == 0


def test_unknown_states_are_nan_when_every_method_fails(monkeypatch) -> None:
    from pymatgen.analysis import bond_valence
    from pymatgen.core import Composition

    def fail(*_args, **_kwargs):
        raise ValueError("no valid assignment")

    monkeypatch.setattr(bond_valence.BVAnalyzer, "get_valences", fail)
    monkeypatch.setattr(Composition, "oxi_state_guesses", lambda *a, **k: ())
    oxidation._MEMO.clear()
    states = guess_oxidation_states(rocksalt("Ca", "O", 4.8))
    assert np.isnan(states).all()
    oxidation._MEMO.clear()


def test_fallback_to_composition_guess(monkeypatch) -> None:
    from pymatgen.analysis import bond_valence

    def fail(*_args, **_kwargs):
        raise ValueError("no valid assignment")

    monkeypatch.setattr(bond_valence.BVAnalyzer, "get_valences", fail)
    oxidation._MEMO.clear()
    states = guess_oxidation_states(rocksalt("Ca", "O", 4.8))
    assert sorted(set(states.tolist())) == [-2.0, 2.0]
    oxidation._MEMO.clear()


def test_encoding_peaks_at_the_state_and_flags_unknown() -> None:
    enc = OxidationEncoding(4)
    states = torch.tensor([2.0, -2.0, float("nan")])
    basis_width = len(enc.CENTERS)
    # read the basis through an identity projection
    probe = OxidationEncoding(basis_width + 1)
    with torch.no_grad():
        probe.project.weight.copy_(torch.eye(basis_width + 1))
        features = probe(states)
    centers = list(OxidationEncoding.CENTERS)
    assert features[0].argmax().item() == centers.index(2.0)
    assert features[1].argmax().item() == centers.index(-2.0)
    assert torch.equal(features[2], torch.eye(basis_width + 1)[basis_width])  # only the unknown flag
    assert not torch.isnan(enc(states)).any()


def test_vacancy_batches_carry_each_nodes_host_state() -> None:
    mgo = rocksalt("Mg", "O")
    featurizer = Featurizer(FeaturizerSettings(cutoff=3.5, max_neighbors=8))
    packed = featurize_vacancy(mgo, 0, "mgo#0", None, featurizer, SupercellSettings(min_image_distance=7.0))
    batch = VacancyDataset(packed).batch([0])
    ox = batch.node_oxidation.numpy()
    z = batch.atomic_numbers.numpy()
    assert len(ox) == len(z)
    assert (ox[z == 12] == 2).all() and (ox[z == 8] == -2).all()
