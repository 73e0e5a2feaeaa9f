"""Issue 28 (screen throughput): the bond-valence states skip their spglib search when the
host's own symmetry analysis already puts every species in one orbit. The shortcut must
give exactly the orbits, and so the states, of the search it replaces."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import spglib
from pymatgen.core import Lattice, Structure

from adex import oxidation
from adex.oxidation import _equivalent_by_species, bond_valence_states, guess_oxidation_states
from adex.supercell import analyze_host
from conftest import first_mp_hosts, perovskite, rattled, rocksalt, rutile

N_REAL = 40


def _fluorite() -> Structure:
    """CaF2 (Fm-3m, conventional 12-atom cell): one orbit per species."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.46), ["Ca", "F"], [[0, 0, 0], [0.25, 0.25, 0.25]])


def _two_oxygen_orbits() -> Structure:
    """Tetragonal Sr2TiO4-like (K2NiF4) cell: two O orbits (apical and equatorial)."""
    return Structure.from_spacegroup("I4/mmm", Lattice.tetragonal(3.88, 12.6), ["Sr", "Ti", "O", "O"],
                                     [[0, 0, 0.355], [0, 0, 0], [0, 0.5, 0], [0, 0, 0.16]])


def _hand_built() -> list[Structure]:
    return [rocksalt(), rocksalt(4.18, ("Ni", "O")), perovskite(), rutile(), _fluorite(), _two_oxygen_orbits(),
            rattled(perovskite(), 0.02)]


@pytest.fixture(scope="module")
def real_hosts(data_dir) -> list[Structure]:
    """The first N_REAL crystals of the Materials Project archive."""
    return first_mp_hosts(data_dir, N_REAL)


def _bv_cell(structure: Structure):
    labels: dict = {}
    return (structure.lattice.matrix, structure.frac_coords,
            [labels.setdefault(species, len(labels) + 1) for species in structure.species])


def _check_host(host: Structure) -> bool:
    """The shortcut's orbits (when it applies) and states equal the searched ones;
    True when it applied."""
    sym = analyze_host(host, 0.01)
    prim = sym.primitive
    cell = _bv_cell(prim)
    shortcut = _equivalent_by_species(cell[2], sym.orbit)
    if shortcut is not None:
        dataset = spglib.get_symmetry_dataset(cell, symprec=0.1, angle_tolerance=5)
        assert np.array_equal(np.asarray(dataset.equivalent_atoms), shortcut)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            searched = bond_valence_states(prim)
        except ValueError as exc:
            with pytest.raises(ValueError, match=str(exc)[:20]):
                bond_valence_states(prim, orbits=sym.orbit)
        else:
            assert np.array_equal(bond_valence_states(prim, orbits=sym.orbit), searched)
    return shortcut is not None


def test_shortcut_equals_the_search_on_hand_built_hosts() -> None:
    applied = [_check_host(host) for host in _hand_built()]
    assert applied == [True, True, True, True, True, False, False]  # rattled: O in 3 orbits


def test_shortcut_equals_the_search_on_real_hosts(real_hosts) -> None:
    applied = [_check_host(host) for host in real_hosts]
    assert sum(applied) >= N_REAL // 2  # most small MP hosts have one orbit per species


def test_shortcut_declines_what_it_cannot_know() -> None:
    assert _equivalent_by_species([1, 1, 2], None) is None
    assert _equivalent_by_species([1, 1, 2], [0, 1, 2]) is None  # two orbits of species 1
    assert _equivalent_by_species([1, 2, 2], [0, 0, 2]) is None  # an orbit across species
    assert _equivalent_by_species([1, 2], [0, 1, 1]) is None  # wrong length
    assert np.array_equal(_equivalent_by_species([2, 1, 2, 1], [0, 1, 0, 1]), [0, 1, 0, 1])


def test_guess_with_orbits_runs_no_search_and_equals_the_search(monkeypatch) -> None:
    host = _fluorite()
    sym = analyze_host(host, 0.01)
    oxidation._MEMO.clear()
    expected = guess_oxidation_states(sym.primitive)
    oxidation._MEMO.clear()

    def no_search(*_args, **_kwargs):
        raise AssertionError("spglib searched although the orbits were known")

    monkeypatch.setattr(spglib, "get_symmetry_dataset", no_search)
    assert np.array_equal(guess_oxidation_states(sym.primitive, sym.numbers, sym.orbit), expected)
    oxidation._MEMO.clear()
