"""Crystal graphs (adex.graphs) and structure reading (adex.io).

The featurizer is checked against a brute-force enumeration of periodic images in numpy,
independent of pymatgen's neighbour search.
"""
from __future__ import annotations

import collections
import csv
import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from adex.errors import AdexError, ConfigError, StructureError, UnknownElementError
from adex.graphs import (
    CrystalGraph,
    Featurizer,
    FeaturizerSettings,
    PackedGraphs,
    element_table,
    select_nearest,
)
from adex.io import read_structure, structure_from_text

from conftest import perovskite, rattled, rocksalt, rutile


# --------------------------------------------------------------------------- brute force
def brute_force_neighbors(structure: Structure, cutoff: float, n: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per atom i: (neighbour indices j, distances) of every periodic image within cutoff,
    by enumerating lattice translations -n..n in each direction."""
    lat = structure.lattice.matrix
    heights = structure.lattice.volume / np.linalg.norm(np.cross(lat[[1, 2, 0]], lat[[2, 0, 1]]), axis=1)
    # wrapped fractional differences lie in (-1, 1): translations up to n reach (n - 1) heights
    assert cutoff <= (n - 1) * heights.min(), "translation range too small for this cutoff"
    frac = np.mod(structure.frac_coords, 1.0)
    shifts = np.array(list(itertools.product(range(-n, n + 1), repeat=3)), dtype=float)
    vec = (frac[None, :, None, :] + shifts[None, None, :, :] - frac[:, None, None, :]) @ lat  # [N, N, S, 3]
    dist = np.linalg.norm(vec, axis=-1)
    n_atoms = len(structure)
    same = np.eye(n_atoms, dtype=bool)[:, :, None] & (shifts == 0).all(axis=1)[None, None, :]
    dist[same] = np.inf
    out = []
    for i in range(n_atoms):
        j, s = np.nonzero(dist[i] <= cutoff)
        out.append((j, dist[i, j, s]))
    return out


def expected_kept(j: np.ndarray, d: np.ndarray, max_neighbors: int, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """The max_neighbors nearest (all of them if fewer), plus anything tied with the last."""
    order = np.argsort(d, kind="stable")
    j, d = j[order], d[order]
    k = min(max_neighbors, len(d))
    keep = d <= d[k - 1] + tol
    return j[keep], d[keep]


def check_against_brute_force(structure: Structure, settings: FeaturizerSettings) -> CrystalGraph:
    graph = Featurizer(settings).featurize(structure)
    brute = brute_force_neighbors(structure, settings.cutoff)
    center, neighbor = graph.edge_index
    assert graph.edge_index.dtype == np.int64 and graph.edge_distance.dtype == np.float32
    assert np.all(graph.edge_distance <= settings.cutoff + 1e-5)
    assert np.all(graph.edge_distance > 0)
    np.testing.assert_array_equal(graph.atomic_numbers, [s.specie.Z for s in structure])
    for i in range(len(structure)):
        exp_j, exp_d = expected_kept(*brute[i], settings.max_neighbors, settings.tie_tolerance)
        mine = center == i
        assert mine.sum() == len(exp_d), f"atom {i}: {mine.sum()} edges, brute force keeps {len(exp_d)}"
        np.testing.assert_allclose(np.sort(graph.edge_distance[mine]), np.sort(exp_d), atol=1e-4)
        assert collections.Counter(neighbor[mine].tolist()) == collections.Counter(exp_j.tolist()), f"atom {i}"
    # each edge's image translation reproduces its distance (pairs j <-> distance are right)
    frac, lat = structure.frac_coords, structure.lattice.matrix
    vec = (frac[neighbor] + graph.edge_image - frac[center]) @ lat
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), graph.edge_distance, atol=1e-4)
    return graph


# --------------------------------------------------------------------------- featurizer
@pytest.mark.parametrize("max_neighbors", [1, 6, 8, 12, 30])
def test_featurizer_matches_brute_force_mgo(max_neighbors: int) -> None:
    check_against_brute_force(rocksalt(), FeaturizerSettings(cutoff=5.0, max_neighbors=max_neighbors))


@pytest.mark.parametrize("make", [perovskite, rutile], ids=["perovskite", "rutile"])
def test_featurizer_matches_brute_force_small_cells(make) -> None:
    # rutile's c = 2.96 Å: cutoff <= 2 * 2.96 for the -3..3 translation range
    check_against_brute_force(make(), FeaturizerSettings(cutoff=5.5, max_neighbors=12))


@pytest.mark.parametrize("max_neighbors", [4, 12, 25])
def test_featurizer_matches_brute_force_low_symmetry_cif(witman_cif: Path, max_neighbors: int) -> None:
    structure = read_structure(witman_cif)
    lat = structure.lattice.matrix
    heights = structure.lattice.volume / np.linalg.norm(np.cross(lat[[1, 2, 0]], lat[[2, 0, 1]]), axis=1)
    cutoff = float(min(6.0, 2 * heights.min() - 0.01))
    assert cutoff > 4.0  # a meaningful neighbour shell
    check_against_brute_force(structure, FeaturizerSettings(cutoff=cutoff, max_neighbors=max_neighbors))


def test_featurizer_no_ties_keeps_exactly_max_neighbors() -> None:
    structure = rattled(rocksalt(), amplitude=0.15, seed=3)
    graph = check_against_brute_force(structure, FeaturizerSettings(cutoff=5.0, max_neighbors=8))
    np.testing.assert_array_equal(np.bincount(graph.edge_index[0], minlength=len(structure)), 8)


def test_featurizer_fewer_than_max_within_cutoff_keeps_all() -> None:
    # MgO at cutoff 2.5 Å: only the 6 nearest O (2.105 Å) are within reach
    graph = check_against_brute_force(rocksalt(), FeaturizerSettings(cutoff=2.5, max_neighbors=12))
    np.testing.assert_array_equal(np.bincount(graph.edge_index[0]), 6)


def test_tie_rule_keeps_symmetric_neighbourhood(mgo: Structure) -> None:
    """max_neighbors=8: 6 nearest O, then the 12 next-nearest Mg are tied -> 18 kept."""
    graph = Featurizer(FeaturizerSettings(cutoff=5.0, max_neighbors=8)).featurize(mgo)
    center, neighbor = graph.edge_index
    z = graph.atomic_numbers
    a = mgo.lattice.a
    for i in range(len(mgo)):
        mine = center == i
        assert mine.sum() == 18
        d = graph.edge_distance[mine]
        other = z[neighbor[mine]] != z[i]
        np.testing.assert_allclose(d[other], a / 2, atol=1e-4)
        np.testing.assert_allclose(d[~other], a / np.sqrt(2), atol=1e-4)
        assert other.sum() == 6
    # identical neighbourhoods for all symmetry-equivalent atoms
    per_atom = [np.sort(graph.edge_distance[center == i]) for i in range(len(mgo))]
    for d in per_atom[1:]:
        np.testing.assert_allclose(d, per_atom[0], atol=1e-5)
    # exactly the first shell when it fills max_neighbors
    six = Featurizer(FeaturizerSettings(cutoff=5.0, max_neighbors=6)).featurize(mgo)
    np.testing.assert_array_equal(np.bincount(six.edge_index[0]), 6)
    assert (six.atomic_numbers[six.edge_index[1]] != six.atomic_numbers[six.edge_index[0]]).all()


def test_select_nearest_tie_tolerance() -> None:
    center = np.array([1, 0, 0, 0, 0, 1])
    distance = np.array([3.0, 2.0005, 1.0, 2.01, 2.0, 1.5])
    kept = select_nearest(center, distance, max_neighbors=2, tie_tolerance=1e-3)
    # centre 0: 1.0, 2.0 and the tie 2.0005 (not 2.01); centre 1: both; sorted by (centre, distance)
    assert kept.tolist() == [2, 4, 1, 5, 0]
    assert select_nearest(center, distance, max_neighbors=2, tie_tolerance=0.0).tolist() == [2, 4, 5, 0]
    assert select_nearest(np.zeros(0, int), np.zeros(0), 3, 1e-3).tolist() == []


def test_isolated_atom_names_the_atom() -> None:
    structure = Structure(Lattice.cubic(40.0), ["Na", "Cl", "K"], [[0, 0, 0], [2.5, 0, 0], [20, 20, 20]], coords_are_cartesian=True)
    with pytest.raises(StructureError) as info:
        Featurizer(FeaturizerSettings(cutoff=5.0)).featurize(structure, "lonely.cif")
    message = str(info.value)
    assert "lonely.cif" in message and "atom 2 (K)" in message and "isolated" in message
    assert "\n" not in message


def test_two_atoms_far_apart_are_isolated() -> None:
    structure = Structure(Lattice.cubic(40.0), ["Na", "Cl"], [[0, 0, 0], [20, 0, 0]], coords_are_cartesian=True)
    with pytest.raises(StructureError, match=r"atom 0 \(Na\)"):
        Featurizer(FeaturizerSettings(cutoff=5.0)).featurize(structure)


def test_unknown_element() -> None:
    table, known = element_table("cgcnn92")
    assert known[1:101].all() and len(known) == 101  # cgcnn92 covers Z = 1..100 only
    structure = Structure(Lattice.cubic(4.0), ["Mg", "Og"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(UnknownElementError, match="Og") as info:
        Featurizer().featurize(structure, "og.cif")
    assert "og.cif" in str(info.value) and "cgcnn92" in str(info.value)
    assert isinstance(info.value, AdexError)


def test_disordered_structure_rejected() -> None:
    structure = Structure(Lattice.cubic(4.21), [{"Mg": 0.5, "Ca": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(StructureError, match="disorder"):
        Featurizer().featurize(structure)


def test_featurizer_settings_validation() -> None:
    with pytest.raises(ConfigError, match="element_embedding"):
        FeaturizerSettings(element_embedding="nope")
    with pytest.raises(ConfigError, match="max_neighbors"):
        FeaturizerSettings(max_neighbors=0)
    with pytest.raises(ConfigError):
        FeaturizerSettings(cutoff=-1.0)
    assert FeaturizerSettings(cutoff=8.0, gaussian_step=0.2).n_gaussians == 41
    # the fingerprint follows every setting
    base = FeaturizerSettings()
    prints = {base.fingerprint()} | {
        FeaturizerSettings(**{**base.to_dict(), key: value}).fingerprint()
        for key, value in [("cutoff", 7.0), ("max_neighbors", 11), ("gaussian_step", 0.25),
                           ("gaussian_width", 0.3), ("tie_tolerance", 1e-4)]
    }
    assert len(prints) == 6
    assert FeaturizerSettings.from_dict(base.to_dict()) == base


def test_magpie_embedding(mgo: Structure) -> None:
    table, known = element_table("magpie")
    cgcnn, _ = element_table("cgcnn92")
    assert table.shape == (101, 22) and np.isfinite(table).all() and known[1:].all() and not known[0]
    assert not table.flags.writeable
    magpie = FeaturizerSettings(element_embedding="magpie")
    assert magpie.fingerprint() != FeaturizerSettings().fingerprint()
    graph = Featurizer(magpie).featurize(mgo)
    np.testing.assert_array_equal(graph.atomic_numbers, [12] * 4 + [8] * 4)
    assert not np.allclose(table[12], table[8])  # elements are told apart
    with pytest.raises(UnknownElementError, match="magpie"):
        Featurizer(magpie).featurize(Structure(Lattice.cubic(4.0), ["Mg", "Og"], [[0, 0, 0], [0.5, 0.5, 0.5]]))


# --------------------------------------------------------------------------- reading
INTERLEAVED_CIF = """data_interleaved
_cell_length_a 4.21
_cell_length_b 4.21
_cell_length_c 4.21
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_space_group_name_H-M_alt 'P 1'
_space_group_IT_number 1
loop_
  _space_group_symop_operation_xyz
  'x, y, z'
loop_
  _atom_site_type_symbol
  _atom_site_label
  _atom_site_fract_x
  _atom_site_fract_y
  _atom_site_fract_z
  _atom_site_occupancy
  O  O1  0.5 0.5 0.5 1.0
  Mg Mg1 0.0 0.0 0.0 1.0
  O  O2  0.5 0.0 0.0 1.0
  Mg Mg2 0.5 0.5 0.0 1.0
  O  O3  0.0 0.5 0.0 1.0
  Mg Mg3 0.5 0.0 0.5 1.0
  O  O4  0.0 0.0 0.5 1.0
  Mg Mg4 0.0 0.5 0.5 1.0
"""
INTERLEAVED_ORDER = ["O", "Mg"] * 4
INTERLEAVED_FRAC = [[0.5, 0.5, 0.5], [0, 0, 0], [0.5, 0, 0], [0.5, 0.5, 0], [0, 0.5, 0], [0.5, 0, 0.5], [0, 0, 0.5], [0, 0.5, 0.5]]


def test_read_structure_keeps_file_order(tmp_path: Path) -> None:
    path = tmp_path / "interleaved.cif"
    path.write_text(INTERLEAVED_CIF)
    structure = read_structure(path)
    assert [s.specie.symbol for s in structure] == INTERLEAVED_ORDER
    np.testing.assert_allclose(structure.frac_coords, INTERLEAVED_FRAC, atol=1e-8)
    np.testing.assert_allclose(structure.lattice.abc, [4.21] * 3)
    # the trap is real: pymatgen's own CIF reader regroups the atoms by species
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        regrouped = Structure.from_file(path)
    assert [s.specie.symbol for s in regrouped] != INTERLEAVED_ORDER
    assert sorted(s.specie.symbol for s in regrouped) == sorted(INTERLEAVED_ORDER)


def test_read_structure_atom0_is_the_vacated_site(data_dir: Path, witman_cif: Path) -> None:
    with open(data_dir / "witman2023_vacancies" / "vacancies.csv", newline="") as handle:
        row = next(r for r in csv.DictReader(handle) if r["id"] == witman_cif.stem)
    structure = read_structure(witman_cif)
    assert len(structure) == int(row["n_atoms"])
    assert structure[0].specie.symbol == row["element"]
    frac = np.array([float(row[k]) for k in ("frac_x", "frac_y", "frac_z")])
    np.testing.assert_allclose(structure[0].frac_coords, frac, atol=1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert Structure.from_file(witman_cif)[0].specie.symbol != row["element"]


def test_read_structure_poscar_keeps_order(tmp_path: Path) -> None:
    structure = Structure(Lattice.cubic(4.21), INTERLEAVED_ORDER, INTERLEAVED_FRAC)
    path = tmp_path / "POSCAR"
    path.write_text(structure.to(fmt="poscar"))
    back = read_structure(path)
    assert [s.specie.symbol for s in back] == INTERLEAVED_ORDER
    np.testing.assert_allclose(back.frac_coords, INTERLEAVED_FRAC, atol=1e-6)


def test_read_structure_extxyz_and_non_periodic(tmp_path: Path) -> None:
    import ase
    import ase.io

    atoms = ase.Atoms(INTERLEAVED_ORDER, scaled_positions=INTERLEAVED_FRAC, cell=[4.21] * 3, pbc=True)
    ase.io.write(tmp_path / "cell.extxyz", atoms, format="extxyz")
    back = read_structure(tmp_path / "cell.extxyz")
    assert [s.specie.symbol for s in back] == INTERLEAVED_ORDER
    np.testing.assert_allclose(back.frac_coords, INTERLEAVED_FRAC, atol=1e-6)
    molecule = ase.Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    ase.io.write(tmp_path / "water.xyz", molecule, format="xyz")
    with pytest.raises(StructureError, match="periodic"):
        read_structure(tmp_path / "water.xyz")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StructureError, match="no such file"):
        read_structure(tmp_path / "absent.cif")


def test_unreadable_cif_is_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.cif"
    path.write_text("this is not a CIF\n\x01\x02 garbage garbage\n_cell_length_a banana\n")
    with pytest.raises(StructureError) as info:
        read_structure(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_disordered_cif_rejected(tmp_path: Path) -> None:
    text = INTERLEAVED_CIF.replace("  Mg Mg1 0.0 0.0 0.0 1.0\n", "  Mg Mg1 0.0 0.0 0.0 0.5\n  Ca Ca1 0.0 0.0 0.0 0.5\n")
    path = tmp_path / "disordered.cif"
    path.write_text(text)
    with pytest.raises(StructureError, match="disorder"):
        read_structure(path)


def test_structure_from_text_error_names_source() -> None:
    with pytest.raises(StructureError, match="my-source"):
        structure_from_text("nonsense", "cif", source="my-source")


# --------------------------------------------------------------------------- packed graphs
@pytest.fixture()
def packed(witman_cif: Path) -> PackedGraphs:
    featurizer = Featurizer(FeaturizerSettings(cutoff=5.0, max_neighbors=8))
    structures = [rocksalt(), perovskite(), read_structure(witman_cif), rutile()]
    graphs = [featurizer.featurize(s) for s in structures]
    return PackedGraphs.from_graphs(graphs, ["mgo", "sto", "tfo", "tio2"], [1.0, 2.0, 3.0, 4.0])


def _graph(packed: PackedGraphs, g: int) -> CrystalGraph:
    n0, n1 = packed.node_ptr[g], packed.node_ptr[g + 1]
    e0, e1 = packed.edge_ptr[g], packed.edge_ptr[g + 1]
    return CrystalGraph(packed.atomic_numbers[n0:n1], packed.edge_index[:, e0:e1], packed.edge_distance[e0:e1], np.zeros((e1 - e0, 3)))


def test_batch_equals_manual_concatenation(packed: PackedGraphs) -> None:
    indices = [2, 0, 3]
    batch = packed.batch(indices)
    graphs = [_graph(packed, g) for g in indices]
    offsets = np.cumsum([0] + [g.n_atoms for g in graphs])[:-1]
    np.testing.assert_array_equal(batch.atomic_numbers.numpy(), np.concatenate([g.atomic_numbers for g in graphs]))
    np.testing.assert_array_equal(
        batch.edge_index.numpy(), np.concatenate([g.edge_index + o for g, o in zip(graphs, offsets)], axis=1)
    )
    np.testing.assert_array_equal(batch.edge_distance.numpy(), np.concatenate([g.edge_distance for g in graphs]))
    np.testing.assert_array_equal(batch.node_graph.numpy(), np.repeat(np.arange(3), [g.n_atoms for g in graphs]))
    assert batch.num_graphs == 3
    np.testing.assert_array_equal(batch.target.numpy(), [3.0, 1.0, 4.0])
    assert batch.edge_index.dtype == torch.int64 and batch.atomic_numbers.dtype == torch.int64
    # every edge stays inside its own crystal
    ng = batch.node_graph.numpy()
    assert (ng[batch.edge_index.numpy()[0]] == ng[batch.edge_index.numpy()[1]]).all()
    # default: all graphs in order
    full = packed.batch()
    assert full.num_graphs == 4 and full.atomic_numbers.shape[0] == packed.node_ptr[-1]


def test_subset(packed: PackedGraphs) -> None:
    sub = packed.subset([3, 1])
    assert len(sub) == 2
    assert sub.ids.tolist() == ["tio2", "sto"]
    assert sub.targets.tolist() == [4.0, 2.0]
    for new, old in ((0, 3), (1, 1)):
        a, b = _graph(sub, new), _graph(packed, old)
        np.testing.assert_array_equal(a.atomic_numbers, b.atomic_numbers)
        np.testing.assert_array_equal(a.edge_index, b.edge_index)
        np.testing.assert_array_equal(a.edge_distance, b.edge_distance)
    b1, b2 = sub.batch(), packed.batch([3, 1])
    for name in ("atomic_numbers", "edge_index", "edge_distance", "node_graph", "target"):
        assert torch.equal(getattr(b1, name), getattr(b2, name)), name
    empty = packed.subset([])
    assert len(empty) == 0 and empty.atomic_numbers.shape == (0,)


def test_save_load_roundtrip(packed: PackedGraphs, tmp_path: Path) -> None:
    path = tmp_path / "graphs.npz"
    packed.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["graphs.npz"]  # no temp file left
    with np.load(path, allow_pickle=False) as data:  # plain arrays: no pickled objects
        assert set(data.files) >= {"atomic_numbers", "edge_index", "edge_distance", "node_ptr", "edge_ptr", "ids", "targets"}
        assert data["ids"].dtype.kind == "U"
    back = PackedGraphs.load(path)
    for name in ("atomic_numbers", "edge_index", "edge_distance", "node_ptr", "edge_ptr", "ids", "targets"):
        a, b = getattr(back, name), getattr(packed, name)
        np.testing.assert_array_equal(a, b, err_msg=name)
        assert a.dtype == b.dtype or name == "ids", name
    # without targets too
    no_targets = PackedGraphs.from_graphs([_graph(packed, 0)], ["x"])
    no_targets.save(tmp_path / "nt.npz")
    assert PackedGraphs.load(tmp_path / "nt.npz").targets is None
