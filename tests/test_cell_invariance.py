"""Every shipped expert gives the same vacancy energy however the host is written: as its
primitive cell, its conventional cell or a 2x2x2 supercell (atoms reordered by the
supercell construction), within 0.01 eV.

Slightly *distorted* cells are another matter: the shipped experts read advisors whose
graphs are cut by neighbour count (CGCNN advisors) or whose crystal embedding is a sum
over atoms (CHGNet), and `benchmarks/cell_invariance.py` measures how far they move
(issue 25). The smooth alternatives (radius graphs with a cutoff envelope, mean-pooled
CHGNet) are tested in test_smooth_graphs.py.
"""
from __future__ import annotations

import numpy as np
import pytest
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

import adex
from conftest import SHIPPED_STORE

SHIPPED_EXPERTS = ("builtin::expert/vacancy", "builtin::expert/vacancy-core", "builtin::expert/vacancy-delta",
                   "builtin::expert/vacancy-mixed")
SPINEL = "0009491-O1.cif"  # MgAl2O4-type spinel, 14-atom primitive cell: O (32e), Al (16d), Co (8a)

pytestmark = pytest.mark.skipif(not SHIPPED_STORE.is_dir(), reason="no built-in store in this checkout")


@pytest.fixture()
def _shipped(monkeypatch) -> None:
    monkeypatch.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))


def first_of_each_element(structure) -> list[int]:
    symbols = [site.specie.symbol for site in structure]
    return [symbols.index(element) for element in sorted(set(symbols))]


@pytest.mark.usefixtures("_shipped")
@pytest.mark.parametrize("ref", SHIPPED_EXPERTS)
def test_primitive_conventional_and_supercell_agree(ref, data_dir) -> None:
    if ref != "builtin::expert/vacancy-core":
        pytest.importorskip("chgnet", reason="the other shipped experts read the CHGNet advisor")
    from adex.io import read_structure

    primitive = read_structure(data_dir / "witman2023_vacancies" / "structures" / SPINEL)
    conventional = SpacegroupAnalyzer(primitive, symprec=0.01).get_conventional_standard_structure()
    supercell = primitive.copy()
    supercell.make_supercell([2, 2, 2])
    assert (len(primitive), len(conventional), len(supercell)) == (14, 56, 112)
    expert = adex.load_expert(ref)
    energies = []
    for cell in (primitive, conventional, supercell):
        table = expert.predict(cell, sites=first_of_each_element(cell))
        assert list(table["element"]) == ["Al", "Co", "O"]
        energies.append(table["dH_pred_eV"].to_numpy())
    np.testing.assert_allclose(energies[1], energies[0], atol=0.01)
    np.testing.assert_allclose(energies[2], energies[0], atol=0.01)
