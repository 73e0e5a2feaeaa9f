"""Tests of adex.supercell: canonical hosts, supercell search, vacancy graphs, site choice."""
from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from adex.errors import ConfigError, StructureError
from adex.io import read_structure
from adex.supercell import (
    EDGE_DEFECTED,
    EDGE_DEFECTED_TO_PRISTINE,
    EDGE_PRISTINE,
    EDGE_PRISTINE_TO_DEFECTED,
    SupercellSettings,
    VacancyGraph,
    analyze_host,
    build_vacancy,
    build_vacancy_graph,
    canonical_host,
    cif_site_labels,
    distinct_sites,
    find_supercell_matrix,
    lattice_points_in_supercell,
    lll_reduce,
    min_image_distance,
    shortest_vector_length,
    site_from_frac,
    site_from_label,
    sites_with_label,
    successive_minima,
)
from adex.supercell import lattice as lattice_module

# --------------------------------------------------------------------------- fixtures


def rocksalt_conventional(a: float = 4.21) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def rocksalt_primitive(a: float = 4.21) -> Structure:
    h = a / 2
    return Structure(Lattice([[0, h, h], [h, 0, h], [h, h, 0]]), ["O", "Mg"], [[0.5, 0.5, 0.5], [0, 0, 0]])


def perovskite(a: float = 3.905) -> Structure:
    return Structure(
        Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def low_symmetry() -> Structure:
    """A triclinic P1 cell with 4 atoms (no symmetry beyond translations)."""
    return Structure(
        Lattice.from_parameters(4.1, 4.6, 5.3, 82, 97, 104),
        ["Zn", "O", "O", "Al"],
        [[0.02, 0.05, 0.01], [0.31, 0.44, 0.17], [0.63, 0.12, 0.58], [0.48, 0.77, 0.69]],
    )


def shuffled(structure: Structure, seed: int, shift=(0.13, 0.27, 0.41)) -> Structure:
    """Same crystal, atoms permuted and the origin shifted."""
    order = np.random.default_rng(seed).permutation(len(structure))
    return Structure(
        structure.lattice, [structure[i].specie for i in order], (structure.frac_coords[order] + shift) % 1.0
    )


@pytest.fixture(scope="module")
def featurizer():
    from adex.graphs import Featurizer

    return Featurizer()


def data_root() -> Path | None:
    env = os.environ.get("ADEX_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[1].parent / "shared" / "data")
    for root in candidates:
        if (root / "witman2023_vacancies" / "structures").is_dir():
            return root / "witman2023_vacancies"
    return None


def graph_signature(graph: VacancyGraph) -> list[tuple]:
    """Permutation-invariant description: per node (Z, role, sorted bond distances,
    number of correspondence edges), sorted; distances rounded to 1e-3 Å."""
    center = graph.edge_index[0]
    bond = graph.edge_type <= EDGE_DEFECTED
    order = np.lexsort((graph.edge_distance[bond], center[bond]))
    centers, dists = center[bond][order], np.round(graph.edge_distance[bond][order].astype(float), 3)
    split = np.searchsorted(centers, np.arange(graph.n_nodes + 1))
    corr = np.bincount(center[~bond], minlength=graph.n_nodes)
    return sorted(
        (int(graph.atomic_numbers[i]), int(graph.node_role[i]), tuple(dists[split[i]:split[i + 1]]), int(corr[i]))
        for i in range(graph.n_nodes)
    )


def vacancy_signature(graph: VacancyGraph) -> tuple:
    dist = {}
    for (i, j), d, t in zip(graph.edge_index.T, graph.edge_distance, graph.edge_type):
        if t == EDGE_PRISTINE and graph.vacancy_node in (i, j):
            dist.setdefault(int(j if i == graph.vacancy_node else i), round(float(d), 3))
    return graph.vacancy_element, sorted(dist.values())


def assert_same_graph(g1: VacancyGraph, g2: VacancyGraph) -> None:
    assert g1.n_nodes == g2.n_nodes and g1.n_edges == g2.n_edges and g1.n_pristine == g2.n_pristine
    assert np.array_equal(np.bincount(g1.edge_type, minlength=4), np.bincount(g2.edge_type, minlength=4))
    assert graph_signature(g1) == graph_signature(g2)
    assert vacancy_signature(g1) == vacancy_signature(g2)
    assert len(g1.vacancy_neighbors) == len(g2.vacancy_neighbors)


# --------------------------------------------------------------------------- lattices

LATTICES = {
    "fcc": rocksalt_primitive().lattice,
    "hexagonal": Lattice.hexagonal(3.91, 6.16),
    "triclinic": Lattice.from_parameters(5.1, 6.3, 7.7, 81, 97, 104),
    "skewed": Lattice([[3.0, 0, 0], [7.0, 3.2, 0], [4.0, 11.0, 3.5]]),  # same lattice as a nicer one
}


def all_hnfs(n: int):
    for a in range(1, n + 1):
        if n % a:
            continue
        for d in range(1, n // a + 1):
            if (n // a) % d:
                continue
            f = n // (a * d)
            for b in range(d):
                for c in range(f):
                    for e in range(f):
                        yield np.array([[a, b, c], [0, d, e], [0, 0, f]])


def test_lll_and_shortest_vector_match_brute_force():
    for name, lattice in LATTICES.items():
        reduced, u = lll_reduce(lattice)
        assert np.allclose(reduced, u @ lattice.matrix)
        assert abs(round(np.linalg.det(u))) == 1
        grid = np.stack(np.meshgrid(*[np.arange(-8, 9)] * 3, indexing="ij"), -1).reshape(-1, 3)
        norms = np.linalg.norm(grid @ lattice.matrix, axis=1)
        brute = norms[norms > 1e-9].min()
        assert shortest_vector_length(lattice) == pytest.approx(brute, abs=1e-9), name
        minima = successive_minima(lattice)
        assert minima[0] == pytest.approx(brute) and np.all(np.diff(minima) >= -1e-9)


@pytest.mark.parametrize("name", ["fcc", "hexagonal", "triclinic"])
@pytest.mark.parametrize("distance", [6.0, 9.0])
def test_supercell_is_smallest_with_min_image_distance(name, distance):
    lattice = LATTICES[name]
    matrix = find_supercell_matrix(lattice, distance)
    assert matrix.dtype == np.int64 and matrix.shape == (3, 3)
    det = int(round(np.linalg.det(matrix)))
    assert det > 0
    assert min_image_distance(lattice, matrix) >= distance - 1e-6
    if det <= 24:  # brute force: no sublattice of smaller index reaches the distance
        basis = lattice.matrix
        for n in range(1, det):
            for hnf in all_hnfs(n):
                assert shortest_vector_length(hnf @ basis) < distance - 1e-6, (n, hnf.tolist())


def test_supercell_depends_on_lattice_not_basis():
    """The skewed basis spans the same lattice as its LLL reduction: same supercell shape."""
    skewed = LATTICES["skewed"]
    reduced, _ = lll_reduce(skewed)
    m1 = find_supercell_matrix(skewed, 12.0)
    m2 = find_supercell_matrix(reduced, 12.0)
    assert round(abs(np.linalg.det(m1))) == round(abs(np.linalg.det(m2)))
    assert np.allclose(successive_minima(m1 @ skewed.matrix), successive_minima(m2 @ reduced), atol=1e-6)


def test_supercell_search_is_fast_and_trivial_cases():
    lattice = LATTICES["fcc"]
    start = time.perf_counter()
    matrix = find_supercell_matrix(lattice, 10.0)
    assert time.perf_counter() - start < 1.0
    assert min_image_distance(lattice, matrix) >= 10.0 - 1e-6
    assert round(np.linalg.det(find_supercell_matrix(lattice, 1.0))) == 1
    assert round(np.linalg.det(find_supercell_matrix(lattice, 0.0))) == 1


def test_supercell_fallback_when_capped():
    lattice = LATTICES["triclinic"]
    exact = find_supercell_matrix(lattice, 14.0)
    capped = find_supercell_matrix(lattice, 14.0, max_det=1)
    assert min_image_distance(lattice, capped) >= 14.0 - 1e-6
    assert abs(np.linalg.det(capped)) >= abs(np.linalg.det(exact)) - 1e-9


def test_lattice_points_in_supercell():
    matrix = np.array([[1, 1, -1], [2, -1, 0], [0, 1, 2]])
    points = lattice_points_in_supercell(matrix)
    n = round(abs(np.linalg.det(matrix)))
    assert points.shape == (n, 3) and np.array_equal(points[0], [0, 0, 0])
    frac = points @ np.linalg.inv(matrix)
    assert np.all((frac > -1e-9) & (frac < 1 - 1e-9))
    # distinct cosets: no two differ by a supercell vector
    diff = (points[:, None, :] - points[None, :, :]) @ np.linalg.inv(matrix)
    same = np.all(np.abs(diff - np.round(diff)) < 1e-9, axis=-1)
    assert np.array_equal(same, np.eye(n, dtype=bool))


# --------------------------------------------------------------------------- symmetry


def test_canonical_host_maps_equivalent_inputs_to_one_site():
    conventional, primitive = rocksalt_conventional(), rocksalt_primitive()
    oxygen_sites = [i for i, s in enumerate(conventional) if s.specie.symbol == "O"]
    reps = {canonical_host(conventional, i).site for i in oxygen_sites}
    assert len(reps) == 1
    c1 = canonical_host(conventional, oxygen_sites[0])
    c2 = canonical_host(primitive, 0)
    c3 = canonical_host(shuffled(conventional, 3), 1)
    assert c1.element == c2.element == "O" and c1.space_group == "Fm-3m"
    assert len(c1.primitive) == len(c2.primitive) == 2
    assert c1.site == c2.site
    assert c1.multiplicity == 4 and c1.wyckoff in ("4a", "4b")
    assert np.allclose(c1.primitive.lattice.matrix, c2.primitive.lattice.matrix)
    assert c3.primitive[c3.site].specie.symbol == shuffled(conventional, 3)[1].specie.symbol
    # input -> primitive map: each input atom maps to a primitive atom of its element
    prim_species = np.array([s.specie.symbol for s in c1.primitive])
    assert list(prim_species[c1.input_to_primitive]) == [s.specie.symbol for s in conventional]


def test_distinct_sites():
    sites = distinct_sites(rocksalt_conventional())
    assert [(s.element, s.multiplicity, s.count) for s in sites] == [("Mg", 4, 4), ("O", 4, 4)]
    assert sites[0].index == 0 and sites[1].index == 4
    assert {s.wyckoff for s in sites} == {"4a", "4b"}
    sto = distinct_sites(shuffled(perovskite(), 1))
    assert sorted((s.element, s.multiplicity) for s in sto) == [("O", 3), ("Sr", 1), ("Ti", 1)]
    assert all(s.index == s.members.min() for s in sto)
    assert sorted(np.concatenate([s.members for s in sto]).tolist()) == list(range(5))
    low = distinct_sites(low_symmetry())
    assert [s.index for s in low] == [0, 1, 2, 3] and all(s.wyckoff == "1a" for s in low)


def test_analyze_host_supercell_input():
    sup = perovskite().copy()
    sup.make_supercell([[2, 0, 0], [0, 1, 1], [0, -1, 1]])
    sym = analyze_host(shuffled(sup, 5))
    assert len(sym.primitive) == 5 and sym.space_group_number == 221
    assert np.bincount(sym.input_to_primitive).tolist() == [4] * 5


# --------------------------------------------------------------------------- vacancies


def test_site_removal_and_correspondence():
    host = perovskite()
    vac = build_vacancy(host, 2, SupercellSettings(min_image_distance=9.0))
    pristine, defected = vac.pristine, vac.defected
    assert len(defected) == len(pristine) - 1
    assert pristine[vac.vacancy_index].specie.symbol == "O" == vac.vacancy_element
    assert vac.image_distance >= 9.0 - 1e-6
    assert len(pristine) == 5 * vac.n_cells == 5 * round(abs(np.linalg.det(vac.supercell_matrix)))
    # defected atom k sits where its pristine twin sits
    twins = vac.defected_to_pristine
    assert vac.vacancy_index not in twins and len(np.unique(twins)) == len(defected)
    assert np.allclose(defected.cart_coords, pristine.cart_coords[twins], atol=1e-8)
    assert [s.specie.symbol for s in defected] == [pristine[i].specie.symbol for i in twins]
    # composition: one O fewer
    assert defected.composition["O"] == pristine.composition["O"] - 1
    # every supercell atom is a translated copy of its primitive atom
    prim = vac.canonical.primitive
    frac_in_prim = pristine.cart_coords @ np.linalg.inv(prim.lattice.matrix)
    delta = frac_in_prim - prim.frac_coords[vac.pristine_to_primitive]
    assert np.allclose(delta, np.round(delta), atol=1e-8)
    assert vac.pristine_to_primitive[vac.vacancy_index] == vac.canonical.site


def test_vacancy_graph_structure(featurizer):
    vac = build_vacancy(rocksalt_conventional(), 4)
    graph = build_vacancy_graph(vac, featurizer)
    p = graph.n_pristine
    assert p == len(vac.pristine) and graph.n_defected == p - 1
    assert graph.atomic_numbers.dtype == np.int64 and graph.node_role.dtype == np.int8
    assert graph.edge_index.dtype == np.int64 and graph.edge_index.shape == (2, graph.n_edges)
    assert graph.edge_distance.dtype == np.float32 and graph.edge_type.dtype == np.int8
    assert np.array_equal(graph.node_role, np.r_[np.zeros(p), np.ones(p - 1)])
    t = graph.edge_type
    i, j = graph.edge_index
    assert np.all((i[t == EDGE_PRISTINE] < p) & (j[t == EDGE_PRISTINE] < p))
    assert np.all((i[t == EDGE_DEFECTED] >= p) & (j[t == EDGE_DEFECTED] >= p))
    d2p, p2d = t == EDGE_DEFECTED_TO_PRISTINE, t == EDGE_PRISTINE_TO_DEFECTED
    assert d2p.sum() == p2d.sum() == p - 1
    assert np.all((j[d2p] >= p) & (i[d2p] < p)) and np.all((j[p2d] < p) & (i[p2d] >= p))
    assert np.array_equal(i[d2p], vac.defected_to_pristine) and np.all(graph.edge_distance[d2p | p2d] == 0)
    assert np.array_equal(graph.atomic_numbers[i[d2p]], graph.atomic_numbers[j[d2p]])
    assert graph.vacancy_element == 8 and graph.atomic_numbers[graph.vacancy_node] == 8
    # rocksalt O vacancy: 6 Mg at a/2 and 12 O at a/sqrt(2) (12 neighbours, ties kept)
    assert len(graph.vacancy_neighbors) == 18
    assert np.array_equal(
        graph.atomic_numbers[graph.former_neighbors_defected], graph.atomic_numbers[graph.vacancy_neighbors]
    )
    assert np.all(graph.former_neighbors_defected >= p)
    twin_of = vac.defected_to_pristine[graph.former_neighbors_defected - p]
    assert np.array_equal(twin_of, graph.vacancy_neighbors)
    # the vacated atom has no defected twin; its former neighbours lost it
    assert not np.any(j[t == EDGE_DEFECTED] == graph.vacancy_node)
    # node_primitive agrees with the primitive cell's species
    prim_z = np.array([s.specie.Z for s in vac.canonical.primitive])
    assert np.array_equal(prim_z[graph.node_primitive], graph.atomic_numbers)
    # round trip
    again = VacancyGraph.from_dict({k: np.asarray(v) for k, v in graph.to_dict().items()})
    assert again == graph


def test_invariance_primitive_vs_conventional_cell(featurizer):
    settings = SupercellSettings(min_image_distance=8.0)
    conventional = rocksalt_conventional()
    g_prim = build_vacancy_graph(build_vacancy(rocksalt_primitive(), 0, settings), featurizer)
    graphs = [build_vacancy_graph(build_vacancy(conventional, i, settings), featurizer) for i in (4, 5, 7)]
    for g in graphs:  # symmetry-equivalent sites of one cell: identical graphs
        assert g == graphs[0]
    assert_same_graph(g_prim, graphs[0])
    moved = shuffled(conventional, 11)  # permuted atoms, shifted origin
    o_site = next(i for i, s in enumerate(moved) if s.specie.symbol == "O")
    assert_same_graph(build_vacancy_graph(build_vacancy(moved, o_site, settings), featurizer), graphs[0])
    # an Mg vacancy is a different graph
    g_mg = build_vacancy_graph(build_vacancy(conventional, 0, settings), featurizer)
    assert graph_signature(g_mg) != graph_signature(graphs[0])


def test_invariance_perovskite_supercell_input(featurizer):
    settings = SupercellSettings(min_image_distance=8.0)
    unit = perovskite()
    sup = unit.copy()
    sup.make_supercell([[1, 1, 0], [-1, 1, 0], [0, 0, 1]])
    sup = shuffled(sup, 2)
    o_sites = [i for i, s in enumerate(sup) if s.specie.symbol == "O"]
    reference = build_vacancy_graph(build_vacancy(unit, 4, settings), featurizer)
    for site in o_sites[:3]:
        assert_same_graph(build_vacancy_graph(build_vacancy(sup, site, settings), featurizer), reference)


def test_low_symmetry_host(featurizer):
    host = low_symmetry()
    for site in range(len(host)):
        vac = build_vacancy(host, site, SupercellSettings(min_image_distance=8.0))
        assert vac.vacancy_element == host[site].specie.symbol
        graph = build_vacancy_graph(vac, featurizer)
        assert graph.atomic_numbers[graph.vacancy_node] == host[site].specie.Z


def test_supercell_settings_roundtrip():
    settings = SupercellSettings(min_image_distance=12.0, symprec=0.02)
    assert SupercellSettings.from_dict(settings.to_dict()) == settings
    assert SupercellSettings.from_dict({"min_image_distance": 9}) == SupercellSettings(min_image_distance=9.0)
    with pytest.raises(ConfigError, match="unknown key"):
        SupercellSettings.from_dict({"min_distance": 9.0})
    with pytest.raises(ConfigError):
        SupercellSettings(min_image_distance=-1.0)
    with pytest.raises(ConfigError):
        SupercellSettings(symprec=0.0)


# --------------------------------------------------------------------------- site choice

INTERLEAVED_CIF = """data_interleaved
_cell_length_a 4.21
_cell_length_b 4.21
_cell_length_c 4.21
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
_symmetry_Int_Tables_number 1
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
O1 O 0.5 0.5 0.5 1.0
Mg1 Mg 0.0 0.0 0.0 1.0
O2 O 0.5 0.0 0.0 1.0
Mg2 Mg 0.5 0.5 0.0 1.0
O3 O 0.0 0.5 0.0 1.0
Mg3 Mg 0.5 0.0 0.5 1.0
O4 O 0.0 0.0 0.5 1.0
Mg4 Mg 0.0 0.5 0.5 1.0
"""

SYMMETRIC_CIF = """data_mgo
_cell_length_a 4.21
_cell_length_b 4.21
_cell_length_c 4.21
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'F m -3 m'
_symmetry_Int_Tables_number 225
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
Mg1 Mg 0.0 0.0 0.0
O1 O 0.5 0.5 0.5
"""


def test_interleaved_cif_keeps_file_order(tmp_path, featurizer):
    path = tmp_path / "interleaved.cif"
    path.write_text(INTERLEAVED_CIF)
    host = read_structure(path)
    assert [s.specie.symbol for s in host] == ["O", "Mg"] * 4
    assert cif_site_labels(path) == ["O1", "Mg1", "O2", "Mg2", "O3", "Mg3", "O4", "Mg4"]
    assert site_from_label(path, "Mg2") == 3 and host[3].specie.symbol == "Mg"
    assert site_from_label(cif_site_labels(path), "O3") == 4
    assert sites_with_label(["O1", "Mg1", "O1"], "O1").tolist() == [0, 2]
    assert site_from_frac(host, [0.5, 0.5, 0.0]) == 3
    assert site_from_frac(host, [1.0, 1.0 - 2e-4, 1.5]) == 6  # periodic wrapping, tolerance
    assert canonical_host(host, 3).element == "Mg" and canonical_host(host, 4).element == "O"
    g_file = build_vacancy_graph(build_vacancy(host, 2, SupercellSettings(min_image_distance=8.0)), featurizer)
    g_ref = build_vacancy_graph(
        build_vacancy(rocksalt_primitive(), 0, SupercellSettings(min_image_distance=8.0)), featurizer
    )
    assert_same_graph(g_file, g_ref)


def test_symmetric_cif_labels_follow_expansion(tmp_path):
    path = tmp_path / "mgo.cif"
    path.write_text(SYMMETRIC_CIF)
    host = read_structure(path)
    labels = cif_site_labels(path)
    assert len(labels) == len(host) == 8
    assert all(label[:-1] == site.specie.symbol for label, site in zip(labels, host))
    index = site_from_label(path, "O1")
    assert host[index].specie.symbol == "O" and labels.index("O1") == index


def test_site_errors(tmp_path):
    host = perovskite()
    with pytest.raises(StructureError, match=r"^site 57 out of range: host has 5 atoms \(0\.\.4\)$"):
        build_vacancy(host, 57)
    with pytest.raises(StructureError, match="out of range"):
        canonical_host(host, -1)
    with pytest.raises(StructureError, match="not an integer"):
        canonical_host(host, 1.0)
    path = tmp_path / "interleaved.cif"
    path.write_text(INTERLEAVED_CIF)
    with pytest.raises(StructureError, match=r"no site labelled 'Zr1' \(labels: O1, Mg1"):
        site_from_label(path, "Zr1")
    with pytest.raises(StructureError, match="no site labelled"):
        site_from_label(["O1", "O2"], "o1")
    with pytest.raises(StructureError, match=r"no atom at fractional coordinates .* nearest is site"):
        site_from_frac(host, [0.25, 0.25, 0.25])
    with pytest.raises(StructureError, match="only available for CIF"):
        cif_site_labels(tmp_path / "POSCAR")
    with pytest.raises(StructureError) as info:
        site_from_frac(host, [0.1, 0.2, 0.3])
    assert "\n" not in str(info.value)


def test_structure_errors(monkeypatch):
    overlapping = Structure(Lattice.cubic(4), ["Mg", "O", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5001]])
    with pytest.raises(StructureError, match="overlapping atoms"):
        canonical_host(overlapping, 0)
    with pytest.raises(StructureError, match="symprec=2.0 Å is too large"):
        canonical_host(perovskite(), 0, symprec=2.0)
    disordered = Structure(Lattice.cubic(4), [{"Mg": 0.5, "Ca": 0.5}, "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    with pytest.raises(StructureError, match="disordered"):
        canonical_host(disordered, 0)
    import adex.supercell.symmetry as symmetry

    monkeypatch.setattr(symmetry, "_SORTED_CELL_MEMO", type(symmetry._SORTED_CELL_MEMO)())  # not analysed before
    monkeypatch.setattr(symmetry.spglib, "get_symmetry_dataset", lambda *a, **k: None)
    with pytest.raises(StructureError, match="spglib symmetry search failed"):
        distinct_sites(perovskite())


def test_host_analysis_is_memoised_across_atom_orders(monkeypatch):
    """One CIF per vacancy lists the same crystal in another atom order: spglib runs once,
    and every order still gets its own, correct input -> primitive map."""
    import adex.supercell.symmetry as symmetry

    monkeypatch.setattr(symmetry, "_SORTED_CELL_MEMO", type(symmetry._SORTED_CELL_MEMO)())
    calls = []
    real = symmetry.spglib.get_symmetry_dataset
    monkeypatch.setattr(symmetry.spglib, "get_symmetry_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    host = perovskite().make_supercell([1, 1, 2], in_place=False)
    first = analyze_host(host)
    n_calls = len(calls)
    permutation = np.random.default_rng(0).permutation(len(host))
    shuffled = Structure(host.lattice, [host[i].specie for i in permutation], host.frac_coords[permutation])
    second = analyze_host(shuffled)
    assert len(calls) == n_calls  # memo hit
    assert np.array_equal(second.input_to_primitive, first.input_to_primitive[permutation])
    assert second.primitive is first.primitive and not second.orbit.flags.writeable
    for i in range(len(host)):  # each input atom maps onto a primitive atom of its element
        assert shuffled[i].specie == second.primitive[int(second.input_to_primitive[i])].specie


# --------------------------------------------------------------------------- real data

WITMAN_IDS = ("0289862-O2", "0289862-Ce1", "0009594-O1", "0178128-O1", "0178128-O2")


@pytest.fixture(scope="module")
def witman():
    root = data_root()
    if root is None:
        pytest.skip("Witman data not found (set ADEX_DATA)")
    with open(root / "vacancies.csv") as handle:
        rows = {row["id"]: row for row in csv.DictReader(handle) if row["id"] in WITMAN_IDS}
    return root, rows


def test_witman_sites_and_supercells(witman, featurizer):
    root, rows = witman
    for vid in WITMAN_IDS[:3]:
        row = rows[vid]
        path = root / "structures" / f"{vid}.cif"
        host = read_structure(path)
        assert len(host) == int(row["n_atoms"])
        # the vacated atom is atom 0 of the file: by label and by coordinates
        assert site_from_label(path, row["site_label"]) == 0
        frac = [float(row[k]) for k in ("frac_x", "frac_y", "frac_z")]
        assert site_from_frac(host, frac) == 0
        vac = build_vacancy(host, 0)
        assert vac.vacancy_element == row["element"] == host[0].specie.symbol
        assert vac.image_distance >= 10.0 - 1e-6
        graph = build_vacancy_graph(vac, featurizer)
        assert graph.n_nodes == 2 * len(vac.pristine) - 1
        assert len(graph.vacancy_neighbors) > 0
        assert any(s.index == 0 or 0 in s.members for s in distinct_sites(host))


def test_witman_equivalent_sites_in_different_files(witman, featurizer):
    """0178128 O1 and O2 are written as different sites but are equivalent at symprec
    0.01: the two files (different atom orders) give the same vacancy graph."""
    root, _ = witman
    graphs = []
    for vid in ("0178128-O1", "0178128-O2"):
        host = read_structure(root / "structures" / f"{vid}.cif")
        graphs.append(build_vacancy_graph(build_vacancy(host, 0), featurizer))
    assert_same_graph(*graphs)


@pytest.mark.parametrize("group, species, coords, lattice", [
    ("Fm-3m", ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]], (4.21, 4.21, 4.21, 90, 90, 90)),
    ("Im-3m", ["Fe"], [[0, 0, 0]], (2.87, 2.87, 2.87, 90, 90, 90)),
    ("R-3m", ["Li", "Co", "O"], [[0, 0, 0.5], [0, 0, 0], [0, 0, 0.26]], (2.82, 2.82, 14.05, 90, 90, 120)),
    ("Cmcm", ["La", "Ga"], [[0, 0.36, 0.25], [0, 0.07, 0.25]], (4.57, 11.6, 4.25, 90, 90, 90)),
    ("Amm2", ["Ba", "Ti", "O"], [[0, 0, 0], [0.5, 0, 0.51], [0, 0, 0.49]], (3.99, 5.67, 5.69, 90, 90, 90)),
    ("P4/mmm", ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]], (3.9, 3.9, 4.1, 90, 90, 90)),
])
def test_primitive_from_the_dataset_is_spglibs_standardized_primitive(group, species, coords, lattice) -> None:
    """The primitive cell built from the symmetry dataset (one spglib search per cell instead
    of two) is the one spglib.standardize_cell returns, atom for atom."""
    import spglib
    from pymatgen.core import Lattice

    from adex.supercell import symmetry

    structure = Structure.from_spacegroup(group, Lattice.from_parameters(*lattice), species, coords)
    cell = (structure.lattice.matrix, structure.frac_coords, np.array([s.specie.Z for s in structure]))
    dataset = spglib.get_symmetry_dataset(cell, symprec=0.01)
    assert str(dataset.international)[0] == group[0]
    lattice_d, positions_d, types_d = symmetry._primitive_from_dataset(dataset)
    lattice_s, positions_s, types_s = spglib.standardize_cell(cell, to_primitive=True, no_idealize=False, symprec=0.01)
    np.testing.assert_allclose(lattice_d, lattice_s, atol=1e-12)
    delta = (positions_d - np.floor(positions_d)) - (positions_s - np.floor(positions_s))
    np.testing.assert_allclose(delta - np.round(delta), 0.0, atol=1e-12)
    assert types_d.tolist() == list(types_s)


def test_analysis_falls_back_to_spglibs_standardization(monkeypatch) -> None:
    """Without a derived primitive cell (an unknown centering) the analysis is unchanged."""
    from adex.supercell import symmetry

    structure = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    expected = symmetry._analyze_sorted_cell(symmetry._cell(structure, 0.01), 0.01)
    monkeypatch.setattr(symmetry, "_primitive_from_dataset", lambda dataset: None)
    fallback = symmetry._analyze_sorted_cell(symmetry._cell(structure, 0.01), 0.01)
    np.testing.assert_allclose(fallback.primitive.lattice.matrix, expected.primitive.lattice.matrix, atol=1e-12)
    assert fallback.wyckoff == expected.wyckoff and fallback.space_group == expected.space_group
