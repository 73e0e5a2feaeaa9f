"""The fast vacancy graph (primitive-cell neighbour search mapped onto the supercell,
defected graph derived from the pristine one) equals the naive one (``Featurizer.featurize``
on both full supercells): same nodes, same edges, distances to float tolerance, same
errors, same expert predictions.

Edge order may differ only among neighbours of one atom whose distances differ by float
rounding (the naive order there is pymatgen's cell-list traversal), so edges are compared
after a canonical sort.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from adex.errors import StructureError
from adex.graphs import Featurizer, FeaturizerSettings
from adex.supercell import SupercellSettings, VacancyGraph, build_vacancy, build_vacancy_graph, distinct_sites
from adex.supercell import fast_graph
from adex.supercell.fast_graph import fast_supercell_graphs
from conftest import randomize_batchnorm, shared_data_path

#: The tiny Witman subset of tests/test_expert.py (hosts of 2-5 atoms: BaO, SrTiO3, SrFeO2,
#: FeO (P-1), Ce2O3 -> 13 vacancies).
TINY_HOSTS = ("0009594", "0010541", "0160074", "0009684", "0289862")
DISTANCE_ATOL = 1e-5  # Å


# --------------------------------------------------------------------------- structures


def rocksalt_mgo(a: float = 4.21) -> Structure:
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite_srtio3(a: float = 3.905) -> Structure:
    return Structure(
        Lattice.cubic(a), ["Sr", "Ti", "O", "O", "O"],
        [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]],
    )


def bcc_tied(a: float = 2.87) -> Structure:
    """bcc Fe: 8 neighbours at a√3/2, 6 at a: the 9th..14th are tied, so the 12th and 13th."""
    return Structure(Lattice.cubic(a), ["Fe", "Fe"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def bct_near_tied(a: float = 2.87, c_over_a: float = 1.0002) -> Structure:
    """Slightly tetragonal bcc: the 12th and 13th neighbours differ by ~6e-4 Å, less than
    the default tie_tolerance (1e-3 Å): kept as ties by distance, not by exact equality."""
    return Structure(Lattice.tetragonal(a, a * c_over_a), ["W", "W"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def simple_cubic(a: float = 3.0) -> Structure:
    """One atom per cell: with a supercell of a few cells (or none) every atom sees many
    periodic images of the same atom, itself included; with cutoff == a a whole shell
    lies exactly on the cutoff."""
    return Structure(Lattice.cubic(a), ["Cu"], [[0, 0, 0]])


def triclinic() -> Structure:
    return Structure(
        Lattice.from_parameters(4.1, 4.6, 5.3, 82, 97, 104), ["Zn", "O", "O", "Al"],
        [[0.02, 0.05, 0.01], [0.31, 0.44, 0.17], [0.63, 0.12, 0.58], [0.48, 0.77, 0.69]],
    )


STRUCTURES = {
    "rocksalt_MgO": rocksalt_mgo,
    "perovskite_SrTiO3": perovskite_srtio3,
    "bcc_ties_12_13": bcc_tied,
    "bct_near_ties_12_13": bct_near_tied,
    "simple_cubic_images": simple_cubic,
    "triclinic": triclinic,
}

#: (cutoff Å, max_neighbors, tie_tolerance Å)
SETTINGS = [(5.0, 12, 1e-3), (3.5, 4, 1e-3), (8.0, 12, 1e-3), (6.0, 30, 1e-3), (6.0, 2, 1e-3), (5.0, 12, 0.05),
            (5.0, 8, 0.0)]
#: min_image_distance Å: 0 = the primitive cell itself (many images of each atom), then
#: small supercells that still see images within the cutoff, then a larger one.
IMAGE_DISTANCES = [0.0, 5.0, 9.0]


# --------------------------------------------------------------------------- comparison


def canonical_edges(graph: VacancyGraph) -> tuple[np.ndarray, ...]:
    """Edges sorted by (type, receiver, sender, distance)."""
    t, (i, j), d = graph.edge_type, graph.edge_index, graph.edge_distance
    order = np.lexsort((d, j, i, t))
    return t[order], i[order], j[order], d[order]


def assert_graphs_equal(fast: VacancyGraph, naive: VacancyGraph) -> None:
    """Integer arrays equal (edges after a canonical sort), distances within 1e-5 Å."""
    for name in ("atomic_numbers", "node_role", "node_primitive", "vacancy_neighbors", "former_neighbors_defected"):
        assert np.array_equal(getattr(fast, name), getattr(naive, name)), name
        assert getattr(fast, name).dtype == getattr(naive, name).dtype, name
    assert (fast.n_pristine, fast.vacancy_node, fast.vacancy_element) == (
        naive.n_pristine, naive.vacancy_node, naive.vacancy_element)
    for name in ("edge_index", "edge_distance", "edge_type"):
        assert getattr(fast, name).dtype == getattr(naive, name).dtype, name
    assert fast.n_edges == naive.n_edges
    # the blocks (pristine, defected, correspondences) are in the same order
    assert np.array_equal(fast.edge_type, naive.edge_type)
    # per block, receivers come in the same order (ascending), as the Featurizer's
    assert np.array_equal(fast.edge_index[0], naive.edge_index[0])
    t_f, i_f, j_f, d_f = canonical_edges(fast)
    t_n, i_n, j_n, d_n = canonical_edges(naive)
    assert np.array_equal(t_f, t_n) and np.array_equal(i_f, i_n) and np.array_equal(j_f, j_n)
    np.testing.assert_allclose(d_f, d_n, rtol=0, atol=DISTANCE_ATOL)
    # edge by edge in the given order: same receiver, distances equal (a different order
    # only among neighbours at rounding-level equal distances)
    np.testing.assert_allclose(fast.edge_distance, naive.edge_distance, rtol=0, atol=DISTANCE_ATOL)


def both(vac, featurizer) -> tuple[VacancyGraph, VacancyGraph]:
    return build_vacancy_graph(vac, featurizer), build_vacancy_graph(vac, featurizer, method="naive")


def site_representatives(host: Structure) -> list[int]:
    return [s.index for s in distinct_sites(host)]


# --------------------------------------------------------------------------- hand-built structures


@pytest.mark.parametrize("cutoff,max_neighbors,tie_tolerance", SETTINGS)
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_fast_graph_equals_naive_on_hand_built_structures(name, cutoff, max_neighbors, tie_tolerance) -> None:
    host = STRUCTURES[name]()
    featurizer = Featurizer(FeaturizerSettings(cutoff=cutoff, max_neighbors=max_neighbors, tie_tolerance=tie_tolerance))
    checked = fast_used = 0
    for distance in IMAGE_DISTANCES:
        for site in site_representatives(host):
            vac = build_vacancy(host, site, SupercellSettings(min_image_distance=distance))
            if len(vac.pristine) == 1:  # nothing left after the removal: the same error both ways
                assert _error(vac, featurizer, "fast") == _error(vac, featurizer, "naive")
                assert "one-atom supercell" in _error(vac, featurizer, "naive")
                continue
            used_fast = fast_supercell_graphs(vac, featurizer) is not None
            # tie_tolerance 0: an exactly tied shell at the k-th neighbour (symmetry, or
            # images at +-L) is kept or cut by float noise; the fast path may decline (then
            # the naive search runs)
            assert used_fast or tie_tolerance < fast_graph.DECISION_GUARD
            fast_used += used_fast
            fast, naive = both(vac, featurizer)
            assert_graphs_equal(fast, naive)
            checked += 1
    assert checked >= 2
    assert fast_used == checked or tie_tolerance < fast_graph.DECISION_GUARD


@pytest.mark.parametrize("cutoff,max_neighbors,shell_width", [(5.0, 12, 0.2), (3.5, 4, 0.3), (6.0, 8, 0.5)])
@pytest.mark.parametrize("name", list(STRUCTURES))
def test_fast_graph_equals_naive_on_soft_knn_graphs(name, cutoff, max_neighbors, shell_width) -> None:
    """Soft k-NN graphs keep every neighbour up to ``shell_width`` past the k-th: the fast
    path keeps the same band, also for the atoms re-selected next to the vacancy."""
    host = STRUCTURES[name]()
    featurizer = Featurizer(FeaturizerSettings(cutoff=cutoff, max_neighbors=max_neighbors, shell_width=shell_width))
    checked = 0
    for distance in IMAGE_DISTANCES[1:]:
        for site in site_representatives(host):
            vac = build_vacancy(host, site, SupercellSettings(min_image_distance=distance))
            assert fast_supercell_graphs(vac, featurizer) is not None
            assert_graphs_equal(*both(vac, featurizer))
            checked += 1
    assert checked >= 2


def test_structures_exercise_ties_images_and_reselection() -> None:
    """The hand-built cases do what their names say."""
    featurizer = Featurizer(FeaturizerSettings(cutoff=5.0, max_neighbors=12))
    # bcc: the 12th and 13th neighbours tie; all 14 (8 + 6) are kept
    host = fast_graph.host_neighbors(bcc_tied(), featurizer.settings)
    d = host.distance[host.ptr[0]:host.ptr[1]]
    assert abs(d[11] - d[12]) < 1e-12 and host.selected[host.ptr[0]:host.ptr[1]].sum() == 14
    # near-ties: 12th / 13th differ, by less than the tie tolerance; kept
    host = fast_graph.host_neighbors(bct_near_tied(), featurizer.settings)
    d = host.distance[host.ptr[0]:host.ptr[1]]
    assert 1e-5 < d[12] - d[11] < 1e-3 and host.selected[host.ptr[0]:host.ptr[1]].sum() == 14
    # simple cubic, cutoff == a: the first shell lies exactly on the cutoff and is kept
    # (the naive rule is d^2 < r^2 + 1e-8); the fast path does not call that ambiguous
    fz = Featurizer(FeaturizerSettings(cutoff=3.0, max_neighbors=12))
    vac = build_vacancy(simple_cubic(3.0), 0, SupercellSettings(min_image_distance=5.0))
    assert fast_supercell_graphs(vac, fz) is not None
    fast, naive = both(vac, fz)
    pristine = fast.edge_type == 0
    assert np.all(np.bincount(fast.edge_index[0, pristine]) == 6)
    assert_graphs_equal(fast, naive)
    # a small supercell under a long cutoff: an atom sees several images of the same
    # neighbour, and images of itself
    fz = Featurizer(FeaturizerSettings(cutoff=8.0, max_neighbors=40))
    fast, naive = both(vac, fz)
    pristine = fast.edge_type == 0
    pairs = fast.edge_index[:, pristine]
    _, multiplicity = np.unique(pairs, axis=1, return_counts=True)
    assert multiplicity.max() > 1 and np.any(pairs[0] == pairs[1])
    assert_graphs_equal(fast, naive)
    # max_neighbors 2 in SrTiO3: no atom keeps Sr among its neighbours, so an Sr vacancy
    # changes nobody's selection (only removal and renumbering)
    fz = Featurizer(FeaturizerSettings(cutoff=6.0, max_neighbors=2))
    vac = build_vacancy(perovskite_srtio3(), 0, SupercellSettings(min_image_distance=9.0))
    fast, naive = both(vac, fz)
    assert fast.vacancy_element == 38
    assert not np.any(fast.edge_index[1, fast.edge_type == 0] == fast.vacancy_node)
    assert_graphs_equal(fast, naive)
    # the vacated atom's former neighbours were re-selected: they gained new neighbours
    fz = Featurizer(FeaturizerSettings(cutoff=5.0, max_neighbors=4))
    vac = build_vacancy(triclinic(), 0, SupercellSettings(min_image_distance=9.0))
    fast, naive = both(vac, fz)
    defected = fast.edge_type == 1
    per_node = np.bincount(fast.edge_index[0, defected], minlength=fast.n_nodes)[fast.former_neighbors_defected]
    assert np.all(per_node >= 4)  # nobody lost a neighbour: the next candidate moved up
    assert_graphs_equal(fast, naive)


def test_exact_rank_cut_in_a_degenerate_shell_falls_back_to_naive() -> None:
    """tie_tolerance < 0 (CGCNN: exactly max_neighbors) cuts bcc's tied 9th..14th shell;
    which of the tied atoms are kept is float noise, so the fast path declines and the
    graph is the naive one."""
    featurizer = Featurizer(FeaturizerSettings(cutoff=5.0, max_neighbors=12, tie_tolerance=-1.0))
    vac = build_vacancy(bcc_tied(), 0, SupercellSettings(min_image_distance=8.0))
    assert fast_supercell_graphs(vac, featurizer) is None
    fast, naive = both(vac, featurizer)
    assert fast == naive  # identical: the naive path ran
    # without a degenerate shell at the cut the fast path runs with tie_tolerance < 0 too
    featurizer = Featurizer(FeaturizerSettings(cutoff=5.0, max_neighbors=8, tie_tolerance=-1.0))
    vac = build_vacancy(triclinic(), 1, SupercellSettings(min_image_distance=8.0))
    assert fast_supercell_graphs(vac, featurizer) is not None
    assert_graphs_equal(*both(vac, featurizer))


def test_naive_method_and_custom_featurizers() -> None:
    featurizer = Featurizer(FeaturizerSettings(cutoff=5.0, max_neighbors=12))
    vac = build_vacancy(rocksalt_mgo(), 4, SupercellSettings(min_image_distance=8.0))
    with pytest.raises(ValueError, match="unknown graph method"):
        build_vacancy_graph(vac, featurizer, method="quick")

    class Counting(Featurizer):
        calls = 0

        def featurize(self, structure, source="structure"):
            Counting.calls += 1
            return super().featurize(structure, source)

    build_vacancy_graph(vac, Counting(featurizer.settings))  # an overridden featurize is honoured
    assert Counting.calls == 2


# --------------------------------------------------------------------------- errors


def _error(vac, featurizer, method: str) -> str:
    with pytest.raises(StructureError) as info:
        build_vacancy_graph(vac, featurizer, method=method)
    if method == "fast" and len(vac.defected):  # raised by the fast path itself, not by a fallback
        with pytest.raises(StructureError) as direct:
            fast_supercell_graphs(vac, featurizer)
        assert str(direct.value) == str(info.value)
    return str(info.value)


def test_isolated_atoms_raise_the_featurizers_error() -> None:
    featurizer = Featurizer(FeaturizerSettings(cutoff=3.0, max_neighbors=12))
    settings = SupercellSettings(min_image_distance=8.0)
    # a Na-Cl dimer in a big box: removing Na leaves Cl without neighbours (defected graph)
    dimer = Structure(Lattice.cubic(12.0), ["Na", "Cl"], [[0, 0, 0], [0.2, 0, 0]])
    na = next(i for i, s in enumerate(dimer) if s.specie.symbol == "Na")
    vac = build_vacancy(dimer, na, settings)
    fast, naive = _error(vac, featurizer, "fast"), _error(vac, featurizer, "naive")
    assert fast == naive and fast.startswith("defected supercell: atom ") and "(Cl)" in fast
    assert "isolated atom" in fast
    # the Cl vacancy leaves Na alone likewise
    vac = build_vacancy(dimer, 1 - na, settings)
    assert _error(vac, featurizer, "fast") == _error(vac, featurizer, "naive")
    # a K atom far from everything: isolated already in the pristine supercell
    lonely = Structure(Lattice.cubic(12.0), ["Na", "Cl", "K"], [[0, 0, 0], [0.2, 0, 0], [0.5, 0.5, 0.5]])
    vac = build_vacancy(lonely, 0, settings)
    fast, naive = _error(vac, featurizer, "fast"), _error(vac, featurizer, "naive")
    assert fast == naive and fast.startswith("pristine supercell: atom ") and "(K)" in fast
    # a trimer: removing the middle atom isolates both ends; the lowest index is reported
    trimer = Structure(Lattice.cubic(14.0), ["Cl", "Na", "Cl"], [[0, 0, 0], [0.18, 0, 0], [0.36, 0, 0]])
    mid = next(i for i, s in enumerate(trimer) if s.specie.symbol == "Na")
    vac = build_vacancy(trimer, mid, settings)
    assert _error(vac, featurizer, "fast") == _error(vac, featurizer, "naive")


# --------------------------------------------------------------------------- Witman data


@pytest.fixture(scope="module")
def tiny_witman() -> list[tuple[str, Structure]]:
    """The 13 vacancies of the tiny Witman subset (atom 0 of each CIF is vacated)."""
    from adex.io import read_structure

    root = shared_data_path() / "witman2023_vacancies"
    if not (root / "vacancies.csv").is_file():
        pytest.skip(f"shared data not found at {root.parent}; set ADEX_DATA")
    with open(root / "vacancies.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["host"] in TINY_HOSTS]
    assert len(rows) == 13
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [(r["id"], read_structure(root / "structures" / f"{r['id']}.cif")) for r in rows]


@pytest.mark.parametrize(
    "cutoff,max_neighbors,image_distance",
    [(4.0, 12, 6.0), (5.0, 12, 8.0), (5.0, 12, 12.0), (6.0, 8, 10.0), (3.0, 6, 12.0), (8.0, 16, 5.0)],
)
def test_fast_graph_equals_naive_on_tiny_witman(tiny_witman, cutoff, max_neighbors, image_distance) -> None:
    featurizer = Featurizer(FeaturizerSettings(cutoff=cutoff, max_neighbors=max_neighbors))
    settings = SupercellSettings(min_image_distance=image_distance)
    fast_graph.clear_caches()
    for vacancy_id, host in tiny_witman:
        vac = build_vacancy(host, 0, settings)
        assert fast_supercell_graphs(vac, featurizer) is not None, vacancy_id
        fast, naive = both(vac, featurizer)
        assert_graphs_equal(fast, naive)
    # memoised: one primitive neighbour search per host (the CIFs of a host share it)
    assert len(fast_graph._HOSTS.data) <= len(TINY_HOSTS)


@pytest.mark.parametrize("pooling", ["mean", "attention", "vacancy"])
def test_expert_predictions_agree_on_fast_and_naive_graphs(tiny_witman, pooling) -> None:
    from adex.expert.data import PackedVacancies, VacancyDataset, pack_vacancy
    from adex.expert.model import Expert, ExpertModelConfig
    from adex.training import predict

    fs, sc = FeaturizerSettings(cutoff=4.0, max_neighbors=12), SupercellSettings(min_image_distance=8.0)
    featurizer = Featurizer(fs)
    parts = {"fast": [], "naive": []}
    for vacancy_id, host in tiny_witman:
        vac = build_vacancy(host, 0, sc)
        for method in parts:
            parts[method].append(pack_vacancy(build_vacancy_graph(vac, featurizer, method=method), vac, vacancy_id, None))
    torch.manual_seed(3)
    model = Expert(fs, ExpertModelConfig(atom_fea_len=8, n_conv=2, pooling=pooling, head_hidden=8, dropout=0.0),
                   [], 5.0, 2.0)
    randomize_batchnorm(model, 3)
    model.eval()
    pred = {}
    for method, packs in parts.items():
        packed = PackedVacancies.concatenate(packs)
        pred[method] = predict(model, VacancyDataset(model.prepare(packed)))
        assert np.array_equal(packed.node_hops, PackedVacancies.concatenate(parts["naive"]).node_hops)
    assert np.ptp(pred["naive"]) > 1e-4
    np.testing.assert_allclose(pred["fast"], pred["naive"], rtol=0, atol=1e-5)
