"""Structure reading: the fast P1 CIF path equals ASE's reader, everything else goes to ASE."""
from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter

import adex.io
from adex.errors import StructureError
from adex.io import _from_ase, _simple_p1_cif, read_structure, structure_from_text
from conftest import shared_data_path

WITMAN = shared_data_path() / "witman2023_vacancies" / "structures"


def ase_structure(text: str) -> Structure:
    import ase.io

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _from_ase(ase.io.read(io.StringIO(text), format="cif"), "test")


def assert_same_crystal(fast: Structure, slow: Structure) -> None:
    """Same cell (exactly), same species in the same order, positions equal up to whole lattice vectors."""
    assert np.array_equal(fast.lattice.matrix, slow.lattice.matrix)
    assert [s.specie.symbol for s in fast] == [s.specie.symbol for s in slow]
    diff = fast.frac_coords - slow.frac_coords
    assert np.abs(diff - np.rint(diff)).max() < 1e-9


def witman_files(step: int = 37) -> list:
    if not WITMAN.is_dir():
        pytest.skip(f"no Witman structures at {WITMAN}")
    return sorted(WITMAN.glob("*.cif"))[::step]


def test_fast_path_equals_ase_on_witman_cifs() -> None:
    for path in witman_files():
        text = path.read_text()
        assert _simple_p1_cif(text) is not None, path.name  # these files are all plain P1
        assert_same_crystal(read_structure(path), ase_structure(text))


def test_fast_path_gives_the_same_vacancy_graph_as_ase() -> None:
    """Up to the order of equidistant neighbours, the graphs are identical."""
    from adex.expert.data import featurize_vacancy
    from adex.graphs import Featurizer, FeaturizerSettings
    from adex.supercell import SupercellSettings

    featurizer, settings = Featurizer(FeaturizerSettings(cutoff=4.0, max_neighbors=8)), SupercellSettings(min_image_distance=6.0)
    for path in witman_files(step=149):
        text = path.read_text()
        a = featurize_vacancy(read_structure(path), 0, "a", None, featurizer, settings)
        b = featurize_vacancy(ase_structure(text), 0, "b", None, featurizer, settings)
        for graph in (a.graphs, b.graphs):
            assert graph.edge_index.shape == a.graphs.edge_index.shape
        key = lambda g: sorted(zip(g.edge_index[0].tolist(), np.round(g.edge_distance, 5).tolist()))  # noqa: E731
        assert key(a.graphs) == key(b.graphs), path.name
        assert np.array_equal(a.graphs.atomic_numbers, b.graphs.atomic_numbers)
        assert np.allclose(a.prim_frac, b.prim_frac, atol=1e-12)


def rocksalt_cif(**kwargs) -> str:
    s = Structure(Lattice.cubic(4.2), ["Mg", "Mg", "Mg", "Mg", "O", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
    return str(CifWriter(s, **kwargs))


def test_symmetrized_cif_is_read_by_ase(monkeypatch) -> None:
    text = rocksalt_cif(symprec=0.01)  # Fm-3m with 192 operations, 2 atoms listed
    assert _simple_p1_cif(text) is None
    s = structure_from_text(text, "cif")
    assert len(s) == 8 and s.composition.reduced_formula == "MgO"
    plain = rocksalt_cif()
    assert _simple_p1_cif(plain) is not None
    assert_same_crystal(structure_from_text(plain, "cif"), ase_structure(plain))


@pytest.mark.parametrize("edit, reason", [
    (lambda t: t.replace("  O  O7  1  0.50000000  0.50000000  0.50000000  1", "  O  O7  1  0.50000000  0.50000000  0.50000000  0.5"), "occupancy"),
    (lambda t: t.replace("0.50000000  0.50000000  0.50000000", "0.5000(1)  0.50000000  0.50000000"), "uncertainty"),
    (lambda t: t + "\ndata_second\n_cell_length_a 1\n", "two blocks"),
    (lambda t: t.replace("_atom_site_type_symbol\n", ""), "no type symbols"),
])
def test_unusual_cifs_leave_the_fast_path(edit, reason) -> None:
    text = edit(rocksalt_cif())
    assert text != rocksalt_cif() or reason == "two blocks", reason
    assert _simple_p1_cif(text) is None, reason


def test_partial_occupancy_is_still_a_one_line_error() -> None:
    text = rocksalt_cif().replace("  O  O7  1  0.50000000  0.50000000  0.50000000  1", "  O  O7  1  0.50000000  0.50000000  0.50000000  0.5")
    with pytest.raises(StructureError, match="partial occupancy"):
        structure_from_text(text, "cif", source="x.cif")


def test_atoms_on_top_of_each_other_leave_the_fast_path() -> None:
    text = rocksalt_cif().replace("  O  O7  1  0.50000000  0.50000000  0.50000000  1",
                                  "  O  O7  1  0.50000000  0.50000000  0.50000000  1\n  O  O8  1  0.50010000  0.50000000  0.50000000  1")
    assert _simple_p1_cif(text) is None


def test_fast_path_wraps_coordinates_like_ase() -> None:
    text = rocksalt_cif().replace("  Mg  Mg0  1  0.00000000  0.00000000  0.00000000  1", "  Mg  Mg0  1  1.00000000  -0.00000000  2.00000000  1")
    assert "1.00000000  -0.00000000" in text
    fast = _simple_p1_cif(text)
    assert fast is not None and np.all((fast[2] >= 0) & (fast[2] < 1))
    assert_same_crystal(structure_from_text(text, "cif"), ase_structure(text))
    assert adex.io._CELL_TAGS[0] == "_cell_length_a"


def test_cellpar_to_cell_equals_ase_exactly() -> None:
    from ase.geometry import cellpar_to_cell as ase_cellpar_to_cell

    rng = np.random.default_rng(0)
    cells = [[5.78507, 5.78507, 5.78507, 60, 60, 59.9999], [3, 4, 5, 90, 90, 90], [3, 4, 5, 90, 90, 120],
             [3, 3, 3, 90, 90, -90], [4, 4, 4, 109.47, 109.47, 109.47]]
    cells += [list(rng.uniform(2, 10, 3)) + list(rng.choice([90.0, 60.0, 120.0, rng.uniform(60, 120)], 3)) for _ in range(300)]
    for cellpar in cells:
        assert np.array_equal(adex.io.cellpar_to_cell(cellpar), ase_cellpar_to_cell(cellpar)), cellpar
    with pytest.raises(ValueError, match="describe no cell"):
        adex.io.cellpar_to_cell([3, 3, 3, 10, 10, 170])


def test_read_hosts_shares_one_structure_between_reordered_files(tmp_path) -> None:
    """One CIF per vacancy with the vacated atom first (the Witman files) is one crystal:
    read_hosts builds it once and maps every file's atoms onto it; another crystal, or the
    same atoms moved by 1e-5, stays apart."""
    files = [WITMAN / f"0010541-{label}.cif" for label in ("Ti1", "Sr1", "O1")]
    if not all(f.is_file() for f in files):
        pytest.skip(f"no Witman structures at {WITMAN}")
    moved = tmp_path / "moved.cif"
    moved.write_text(files[0].read_text().replace("0.50000  0.50000  0.00000", "0.50001  0.50000  0.00000", 1))
    assert moved.read_text() != files[0].read_text()
    poscar = tmp_path / "POSCAR"
    read_structure(files[2]).to(filename=str(poscar), fmt="poscar")
    paths = [*files, WITMAN / "0009684-O1.cif", moved, poscar]
    hosts, host_of_file, atom_maps = adex.io.read_hosts(paths)
    assert host_of_file.tolist() == [0, 0, 0, 1, 2, 0] and len(hosts) == 3
    for path, host, atom_map in zip(paths, host_of_file, atom_maps):
        own = read_structure(path)
        shared = hosts[host]
        assert sorted(atom_map.tolist()) == list(range(len(own)))
        assert [shared[int(j)].specie.symbol for j in atom_map] == [s.specie.symbol for s in own]
        diff = shared.frac_coords[atom_map] - own.frac_coords
        assert np.abs(diff - np.rint(diff)).max() < 1e-9
    assert read_structure(files[1])[0].specie.symbol == "Sr" and hosts[0][int(atom_maps[1][0])].specie.symbol == "Sr"
    with pytest.raises(StructureError, match="no such file"):
        adex.io.read_hosts([tmp_path / "missing.cif"])
