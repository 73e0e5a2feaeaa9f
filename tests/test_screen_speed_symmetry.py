"""Issue 28 (screen throughput): :func:`adex.supercell.analyze_host` takes the primitive
cell's dataset from the input's when no other can exist (m-3m or 6/mmm point group, no pure
translation); the result must equal the one with the primitive cell's own spglib search."""
from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from adex.supercell import symmetry
from conftest import first_mp_hosts, perovskite, rattled, rocksalt, rutile

N_REAL = 40


def _hand_built() -> list[Structure]:
    cscl = Structure(Lattice.cubic(4.12), ["Cs", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    bcc = Structure(Lattice.cubic(3.16), ["W", "W"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    fluorite = Structure.from_spacegroup("Fm-3m", Lattice.cubic(5.46), ["Ca", "F"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    spinel = Structure.from_spacegroup("Fd-3m", Lattice.cubic(8.08), ["Mg", "Al", "O"],
                                       [[0, 0, 0], [0.625, 0.625, 0.625], [0.387, 0.387, 0.387]])  # origin choice 1
    hcp = Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.21, 5.21), ["Mg"], [[1 / 3, 2 / 3, 0.25]])
    nias = Structure.from_spacegroup("P6_3/mmc", Lattice.hexagonal(3.62, 5.03), ["Ni", "As"],
                                     [[0, 0, 0], [1 / 3, 2 / 3, 0.25]])
    wurtzite = Structure.from_spacegroup("P6_3mc", Lattice.hexagonal(3.25, 5.21), ["Zn", "O"],
                                         [[1 / 3, 2 / 3, 0], [1 / 3, 2 / 3, 0.382]])
    return [rocksalt(), rocksalt(4.18, ("Ni", "O")).get_primitive_structure(), perovskite(), cscl, bcc, fluorite,
            hcp, nias, spinel, rutile(), wurtzite, rattled(rocksalt(), 0.02)]


@pytest.fixture(scope="module")
def real_hosts(data_dir) -> list[Structure]:
    """The first N_REAL crystals of the Materials Project archive."""
    return first_mp_hosts(data_dir, N_REAL)


def _analyze(host: Structure, certify: bool, monkeypatch) -> tuple:
    monkeypatch.setattr(symmetry, "CERTIFY_PRIMITIVE_SEARCH", certify)
    symmetry._SORTED_CELL_MEMO.clear()
    sym = symmetry.analyze_host(host, 0.01)
    symmetry._SORTED_CELL_MEMO.clear()
    return sym


def _compare(hosts, monkeypatch) -> int:
    """Asserts equal analyses with and without the certificate; returns how often it applied."""
    applied = []
    real = symmetry._certified_primitive_dataset

    def spy(*args):
        result = real(*args)
        applied.append(result is not None)
        return result

    monkeypatch.setattr(symmetry, "_certified_primitive_dataset", spy)
    for host in hosts:
        fast, searched = _analyze(host, True, monkeypatch), _analyze(host, False, monkeypatch)
        assert np.array_equal(fast.primitive.lattice.matrix, searched.primitive.lattice.matrix)
        assert np.array_equal(fast.primitive.frac_coords, searched.primitive.frac_coords)
        assert fast.primitive.atomic_numbers == searched.primitive.atomic_numbers
        for name in ("input_to_primitive", "orbit", "numbers", "multiplicity"):
            assert np.array_equal(getattr(fast, name), getattr(searched, name)), name
        assert (fast.wyckoff, fast.space_group, fast.space_group_number) == \
            (searched.wyckoff, searched.space_group, searched.space_group_number)
    return sum(applied)


def test_certified_analysis_equals_the_search_on_hand_built_hosts(monkeypatch) -> None:
    # rocksalt (conventional and primitive), perovskite, CsCl, bcc, fluorite (m-3m), hcp
    # and NiAs (6/mmm): certified; spinel (Fd-3m, two origins), rutile (4/mmm), wurtzite
    # (6mm) and rattled rock salt: searched
    assert _compare(_hand_built(), monkeypatch) == 8


def test_certified_analysis_equals_the_search_on_real_hosts(real_hosts, monkeypatch) -> None:
    assert _compare(real_hosts, monkeypatch) >= 5


def test_near_pure_translation() -> None:
    conventional = rocksalt()  # 4 lattice points: pure translations
    lattice, frac = conventional.lattice.matrix, conventional.frac_coords
    numbers = np.array(conventional.atomic_numbers)
    assert symmetry._near_pure_translation(lattice, frac, numbers, 0.1)
    primitive = conventional.get_primitive_structure()
    assert not symmetry._near_pure_translation(primitive.lattice.matrix, primitive.frac_coords,
                                               np.array(primitive.atomic_numbers), 0.1)
    nearly = frac.copy()
    nearly[0] += 0.005  # 0.02 Å off: still a translation within 0.1 Å, not within 0.01 Å
    assert symmetry._near_pure_translation(lattice, nearly, numbers, 0.1)
    assert not symmetry._near_pure_translation(lattice, nearly, numbers, 0.01)
