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
    def fail(*_args, **_kwargs):
        raise ValueError("no valid assignment")

    monkeypatch.setattr(oxidation, "bond_valence_states", fail)
    monkeypatch.setattr(oxidation, "composition_oxidation_guess", lambda *a, **k: None)
    oxidation._MEMO.clear()
    states = guess_oxidation_states(rocksalt("Ca", "O", 4.8))
    assert np.isnan(states).all()
    oxidation._MEMO.clear()


def test_fallback_to_composition_guess(monkeypatch) -> None:
    def fail(*_args, **_kwargs):
        raise ValueError("no valid assignment")

    monkeypatch.setattr(oxidation, "bond_valence_states", fail)
    oxidation._MEMO.clear()
    states = guess_oxidation_states(rocksalt("Ca", "O", 4.8))
    assert sorted(set(states.tolist())) == [-2.0, 2.0]
    oxidation._MEMO.clear()


def magnetite() -> Structure:
    """Fe3O4 inverse spinel (Fe on 8a and 16d): mixed valence, Fe2+ and Fe3+ orbits."""
    return Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.396), ["Fe", "Fe", "O"],
                                     [[0.125, 0.125, 0.125], [0.5, 0.5, 0.5], [0.2549, 0.2549, 0.2549]])


def pymatgen_valences(structure: Structure):
    """``BVAnalyzer().get_valences`` as a list of ints, or the exception type it raises."""
    from pymatgen.analysis.bond_valence import BVAnalyzer

    try:
        return [int(v) for v in BVAnalyzer().get_valences(structure)]
    except Exception as exc:  # noqa: BLE001 -- compared by type
        return type(exc).__name__


def adex_valences(structure: Structure):
    try:
        return [int(v) for v in oxidation.bond_valence_states(structure)]
    except Exception as exc:  # noqa: BLE001
        return type(exc).__name__


SMALL_HOSTS = {
    "MgO": lambda: rocksalt("Mg", "O"),
    "SrTiO3": lambda: Structure.from_spacegroup("Pm-3m", Lattice.cubic(3.905), ["Sr", "Ti", "O"],
                                                [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]]),
    "TiO2": lambda: Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.594, 2.959), ["Ti", "O"],
                                              [[0, 0, 0], [0.3048, 0.3048, 0]]),
    "Fe3O4": magnetite,
    "Na metal (no anion)": lambda: Structure(Lattice.cubic(4.29), ["Na", "Na"], [[0, 0, 0], [0.5, 0.5, 0.5]]),
}


@pytest.mark.parametrize("name", list(SMALL_HOSTS))
def test_bond_valence_states_equal_pymatgen_bvanalyzer(name: str) -> None:
    structure = SMALL_HOSTS[name]()
    assert adex_valences(structure) == pymatgen_valences(structure)


def test_bond_valence_tables_equal_pymatgens() -> None:
    """The tables adex reads with PyYAML are the ones pymatgen's BVAnalyzer uses."""
    from pymatgen.core.bond_valence import BV_PARAMS, ELECTRONEG, ICSD_BV_DATA, PRIOR_PROB

    params, electronegative, states = oxidation._bond_valence_tables()
    assert params == {el.symbol: (v["r"], v["c"]) for el, v in BV_PARAMS.items()}
    assert electronegative == {el.symbol for el in ELECTRONEG}
    expected: dict = {}
    for species, data in ICSD_BV_DATA.items():
        if species.oxi_state != 0 and data["std"] > 0:
            expected.setdefault(species.symbol, []).append(
                (species.oxi_state, data["mean"], data["std"], PRIOR_PROB.get(species)))
    assert states == expected and len(expected) > 50


def test_composition_priors_equal_pymatgens() -> None:
    """The ICSD occurrence priors adex reads are the table Composition.oxi_state_guesses uses."""
    from monty.serialization import loadfn
    from pymatgen.core import Species, composition

    expected = {Species.from_str(k): v for k, v in loadfn(f"{composition.MODULE_DIR}/icsd_bv.yaml")["occurrence"].items()}
    assert oxidation._occurrence_priors() == {(sp.symbol, sp.oxi_state): v for sp, v in expected.items()}


@pytest.mark.parametrize("formula", ["Fe3O4", "Fe2O3", "SrTiO3", "LiCoO2", "Cu2O", "NaCl", "Mn3O4", "V2O5", "CaF2",
                                     "Ti2O3", "Co3O4", "Pb3O4", "NbO2", "MoS2", "Li3N", "Al2MgO4", "Ba2YCu3O7",
                                     "Fe", "Ni3Al", "CuZn", "Mg2Si", "NaTl", "KO2", "Cs2O3"])
def test_composition_guess_equals_pymatgens_first_guess(formula: str) -> None:
    """Same average states as pymatgen's first ``oxi_state_guesses(max_sites=-1)`` answer (or none)."""
    from pymatgen.core import Composition

    composition = Composition(formula)
    guesses = composition.oxi_state_guesses(max_sites=-1)
    assert oxidation.composition_oxidation_guess(composition) == (dict(guesses[0]) if guesses else None)


def test_composition_guess_is_bounded() -> None:
    """The host that spent 598 s in pymatgen's search (Tl8Cd3N42) gives up past the bound, at once."""
    import time

    from pymatgen.core import Composition

    start = time.perf_counter()
    assert oxidation.composition_oxidation_guess(Composition("Tl8Cd3N42"), max_combinations=1000) is None
    assert time.perf_counter() - start < 1.0
    assert oxidation.composition_oxidation_guess(Composition("Fe3O4"), max_combinations=1) is None
    assert oxidation.composition_oxidation_guess(Composition("Fe3O4")) is not None


def test_magnetite_gets_mixed_valence_on_distinct_orbits() -> None:
    states = oxidation.bond_valence_states(magnetite())
    assert states.sum() == 0 and set(states[states > 0].tolist()) == {2, 3}


def test_bond_valence_states_equal_bvanalyzer_on_real_oxides(data_dir) -> None:
    """Same states (or the same failure) as pymatgen on 40 shipped oxides and their primitive cells."""
    from adex.io import read_structure
    from adex.supercell.symmetry import analyze_host

    files = sorted((data_dir / "oxide_bandgaps" / "structures").glob("*.cif"))[:40]
    checked = 0
    for path in files:
        structure = read_structure(path)
        if len(structure) > 60:
            continue
        for variant in (structure, analyze_host(structure).primitive):
            assert adex_valences(variant) == pymatgen_valences(variant), path.name
            checked += 1
    assert checked >= 40


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
