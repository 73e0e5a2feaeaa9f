"""Embeddings and predictions that change continuously with the atomic positions.

A graph cut by neighbour count is discontinuous: in rock salt each Mg has 6 O at 2.1 Å
and 12 Mg at 2.98 Å, so the 12-nearest rule keeps the tied shell (18 neighbours); a
0.01 Å jitter breaks the tie and keeps 12 of them, and embeddings jump. A radius graph
(``max_neighbors: null``) whose messages carry a smooth cutoff envelope changes by an
amount proportional to the displacement. CHGNet's crystal readout is a sum over atoms
(extensive); the ``mean`` pooling of new imports makes it intensive.

A *soft k-NN* graph (``shell_width > 0``) keeps the count cut but smooths it: neighbours
past the k-th distance fade out over ``shell_width`` Å, so the tie-break is continuous too,
and where no neighbour lies in that band the graph equals the hard one exactly.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

from adex.advisors.model import Advisor, AdvisorModelConfig
from adex.expert.advisor_features import embed_hosts
from adex.expert.loading import LoadedExpert
from adex.expert.model import Expert, ExpertModelConfig
from adex.expert.predict import featurize_host_sites, predict_packed
from adex.graphs import FeaturizerSettings
from adex.nn import cutoff_envelope, neighbor_shell_weights
from conftest import jittered, randomize_batchnorm

SMOOTH = FeaturizerSettings(cutoff=5.0, max_neighbors=None)
COUNTED = FeaturizerSettings(cutoff=5.0, max_neighbors=12)
SOFT = FeaturizerSettings(cutoff=5.0, max_neighbors=12, shell_width=0.2)
DISPLACEMENTS = (1e-3, 3e-3, 1e-2, 2e-2)  # Å


def rocksalt_supercell() -> Structure:
    structure = Structure(Lattice.cubic(4.21), ["Mg"] * 4 + ["O"] * 4,
                          [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5],
                           [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]])
    structure.make_supercell([2, 1, 1])
    return structure


def advisor(settings: FeaturizerSettings, seed: int = 0) -> Advisor:
    torch.manual_seed(seed)
    model = Advisor(settings, AdvisorModelConfig(atom_fea_len=16, n_conv=3, head_hidden=8), "eform", "eV/atom")
    randomize_batchnorm(model, seed)
    return model.eval()


def relative_change(model, structure: Structure, amplitude: float) -> float:
    (_, base), (_, moved) = embed_hosts(model, [structure], ["a"]), embed_hosts(model, [jittered(structure, amplitude)], ["b"])
    return float(np.linalg.norm(moved - base) / np.linalg.norm(base))


def test_envelope_is_one_at_zero_and_vanishes_smoothly_at_the_cutoff() -> None:
    d = torch.tensor([0.0, 2.5, 4.999, 5.0, 6.0], dtype=torch.float64, requires_grad=True)
    u = cutoff_envelope(d, 5.0)
    assert u[0].item() == 1.0 and 0 < u[1].item() < 1 and u[2].item() < 1e-9 and u[3].item() == 0 and u[4].item() == 0
    (grad,) = torch.autograd.grad(u.sum(), d)
    assert abs(grad[2].item()) < 1e-5 and grad[3].item() == 0.0  # no kink at the cutoff
    assert torch.all(u[:-1] >= u[1:])  # monotone


def test_radius_graph_keeps_every_neighbour_within_the_cutoff() -> None:
    from adex.graphs import Featurizer

    structure = rocksalt_supercell()
    counted, smooth = Featurizer(COUNTED).featurize(structure), Featurizer(SMOOTH).featurize(structure)
    per_atom = np.bincount(smooth.edge_index[0], minlength=len(structure))
    assert smooth.edge_distance.max() <= 5.0 and (per_atom == per_atom[0]).all() and per_atom[0] > 18
    assert np.bincount(counted.edge_index[0])[0] == 18  # 6 O + the tied 12 Mg shell
    jittered_counted = Featurizer(COUNTED).featurize(jittered(structure, 0.01))
    assert np.bincount(jittered_counted.edge_index[0])[0] == 12  # the tie is broken: a discrete jump


def test_counted_graph_embeddings_jump_and_radius_graph_embeddings_do_not() -> None:
    structure = rocksalt_supercell()
    counted, smooth = advisor(COUNTED), advisor(SMOOTH)
    counted_changes = [relative_change(counted, structure, a) for a in DISPLACEMENTS]
    smooth_changes = [relative_change(smooth, structure, a) for a in DISPLACEMENTS]
    assert counted_changes[0] > 0.02  # 1e-3 Å already moves the count-cut embedding by > 2 %
    # radius graph: change proportional to the displacement (a Lipschitz bound), 1e-3 Å -> < 0.2 %
    assert smooth_changes[0] < 2e-3
    for amplitude, change in zip(DISPLACEMENTS, smooth_changes):
        assert change < 2.0 * amplitude, (amplitude, change)  # 2 per Å: 0.02 Å -> < 4 %
    assert max(smooth_changes) < min(c for c in counted_changes)


def test_radius_graph_crystal_embedding_is_the_same_for_a_supercell() -> None:
    structure = rocksalt_supercell()
    model = advisor(SMOOTH)
    bigger = structure.copy()
    bigger.make_supercell([2, 2, 2])
    (atom_a, crystal_a), (atom_b, crystal_b) = embed_hosts(model, [structure], ["a"]), embed_hosts(model, [bigger], ["b"])
    np.testing.assert_allclose(crystal_a, crystal_b, rtol=1e-4, atol=1e-5)  # mean pooling: intensive


def smooth_expert(seed: int = 0) -> LoadedExpert:
    torch.manual_seed(seed)
    config = ExpertModelConfig(atom_fea_len=8, n_conv=2, pooling="vacancy", adapter_width=4, head_hidden=8, dropout=0.0)
    model = Expert(FeaturizerSettings(cutoff=4.0, max_neighbors=None), config, [], mean=5.0, std=2.0,
                   supercell={"min_image_distance": 6.0, "symprec": 0.01})
    randomize_batchnorm(model, seed + 1)
    return LoadedExpert(SimpleNamespace(ref="expert/in-memory:1"), model.eval(), [])


def test_radius_graph_expert_predictions_move_smoothly_with_a_jitter() -> None:
    expert = smooth_expert()
    host = rocksalt_supercell()
    sites = [0, [site.specie.symbol for site in host].index("O")]
    base = predict_packed(expert, featurize_host_sites(expert, host, sites, "host"))
    assert np.ptp(base) > 1e-3  # Mg and O vacancies differ: not a constant model
    for amplitude in DISPLACEMENTS:
        moved = predict_packed(expert, featurize_host_sites(expert, jittered(host, amplitude), sites, "host"))
        assert np.abs(moved - base).max() < 5.0 * amplitude, (amplitude, moved - base)  # eV, 5 eV/Å bound


def test_transfer_needs_both_or_neither_radius_graph() -> None:
    from adex.errors import ConfigError

    config = ExpertModelConfig(atom_fea_len=16, n_conv=2, pooling="vacancy", head_hidden=8)
    expert = Expert(FeaturizerSettings(cutoff=4.0, max_neighbors=12), config, [], 5.0, 2.0)
    with pytest.raises(ConfigError, match="radius graph"):
        expert.init_from_backbone(advisor(SMOOTH).backbone)


def test_radius_graph_settings_round_trip_and_validate() -> None:
    from adex.errors import ConfigError

    assert FeaturizerSettings.from_dict({"cutoff": 5.0, "max_neighbors": None}) == SMOOTH and SMOOTH.smooth
    assert not COUNTED.smooth and COUNTED.fingerprint() != SMOOTH.fingerprint()
    for bad in (0, -3, True, "all"):
        with pytest.raises(ConfigError, match="max_neighbors"):
            FeaturizerSettings.from_dict({"max_neighbors": bad})


# --------------------------------------------------------------------------- soft k-NN graphs


def smooth_step(x: float) -> float:
    return 10 * x**3 - 15 * x**4 + 6 * x**5


def test_shell_weights_by_hand() -> None:
    # receiver 0: bonds 1, 1, 1, 2.0 (k = 4: d_k = 2.0), 2.0005 (a tie), 2.05 (in the band), 2.3 (beyond),
    # and a 0 Å correspondence edge; receiver 1 has two bonds only (fewer than k: all weigh 1)
    receiver = torch.tensor([0, 0, 0, 1, 0, 0, 0, 0, 1, 0])
    distance = torch.tensor([2.05, 1.0, 1.0, 3.0, 1.0, 2.0, 2.3, 0.0, 1.5, 2.0005], dtype=torch.float64)
    weight = neighbor_shell_weights(receiver, distance, 4, 1e-3, 0.2)
    expected = [1 - smooth_step((0.05 - 1e-3) / 0.2), 1, 1, 1, 1, 1, 0, 1, 1, 1]
    np.testing.assert_allclose(weight.numpy(), expected, rtol=0, atol=1e-12)
    # the order of the edges does not matter
    perm = torch.randperm(len(distance), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(neighbor_shell_weights(receiver[perm], distance[perm], 4, 1e-3, 0.2).numpy(),
                               np.asarray(expected)[perm.numpy()], rtol=0, atol=1e-12)


def test_soft_graph_equals_the_hard_one_when_no_neighbour_is_in_the_band() -> None:
    from adex.graphs import Featurizer

    # rock salt with k = 6: 6 O at 2.1 Å, the next shell (12 Mg) 0.87 Å further: nothing in a 0.2 Å band
    hard, soft = FeaturizerSettings(cutoff=5.0, max_neighbors=6), FeaturizerSettings(cutoff=5.0, max_neighbors=6, shell_width=0.2)
    structure = rocksalt_supercell()
    graph_hard, graph_soft = Featurizer(hard).featurize(structure), Featurizer(soft).featurize(structure)
    assert np.array_equal(graph_hard.edge_index, graph_soft.edge_index)
    (atom_h, crystal_h), (atom_s, crystal_s) = embed_hosts(advisor(hard), [structure], ["a"]), embed_hosts(advisor(soft), [structure], ["a"])
    np.testing.assert_array_equal(crystal_h, crystal_s)
    np.testing.assert_array_equal(atom_h, atom_s)


def test_soft_graph_embeddings_move_smoothly_where_the_hard_cut_jumps() -> None:
    structure = rocksalt_supercell()  # k = 12 cuts the tied 12-Mg shell: the hard graph jumps
    counted, soft = advisor(COUNTED), advisor(SOFT)
    counted_changes = [relative_change(counted, structure, a) for a in DISPLACEMENTS]
    soft_changes = [relative_change(soft, structure, a) for a in DISPLACEMENTS]
    assert counted_changes[0] > 0.02
    for amplitude, change in zip(DISPLACEMENTS, soft_changes):
        assert change < 2.0 * amplitude, (amplitude, change)  # 2 per Å, as the radius graph
    assert max(soft_changes) < min(counted_changes)


def test_soft_graph_expert_predictions_move_smoothly_with_a_jitter() -> None:
    torch.manual_seed(0)
    config = ExpertModelConfig(atom_fea_len=8, n_conv=2, pooling="vacancy", adapter_width=4, head_hidden=8, dropout=0.0)
    # 12 Å between vacancy images: beyond the 2-convolution reach (2 x 4 Å + 4 Å), so the
    # prediction cannot depend on which supercell the (jittered, unreduced) host gets
    model = Expert(FeaturizerSettings(cutoff=4.0, max_neighbors=12, shell_width=0.2), config, [], mean=5.0, std=2.0,
                   supercell={"min_image_distance": 12.0, "symprec": 0.01})
    randomize_batchnorm(model, 1)
    expert = LoadedExpert(SimpleNamespace(ref="expert/in-memory:1"), model.eval(), [])
    host = rocksalt_supercell()
    sites = [0, [site.specie.symbol for site in host].index("O")]
    base = predict_packed(expert, featurize_host_sites(expert, host, sites, "host"))
    assert np.ptp(base) > 1e-3
    for amplitude in DISPLACEMENTS:
        moved = predict_packed(expert, featurize_host_sites(expert, jittered(host, amplitude), sites, "host"))
        assert np.abs(moved - base).max() < 5.0 * amplitude, (amplitude, moved - base)


def test_soft_graph_settings_validate_and_keep_old_fingerprints() -> None:
    from adex.errors import ConfigError

    assert "shell_width" not in COUNTED.to_dict()  # older models' settings and cache keys are unchanged
    assert SOFT.to_dict()["shell_width"] == 0.2 and FeaturizerSettings.from_dict(SOFT.to_dict()) == SOFT
    assert SOFT.soft_neighbors and not SOFT.smooth and SOFT.fingerprint() != COUNTED.fingerprint()
    assert SOFT.selection_tolerance == pytest.approx(0.201)
    for bad in ({"shell_width": -0.1}, {"shell_width": True}, {"shell_width": 0.2, "max_neighbors": None},
                {"shell_width": 0.2, "tie_tolerance": -1.0}):
        with pytest.raises(ConfigError, match="shell_width"):
            FeaturizerSettings.from_dict(bad)
