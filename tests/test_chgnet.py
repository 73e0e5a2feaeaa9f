"""The CHGNet foundation-model advisor: import into the registry (weights hash-verified,
reload equal to the pip package's pretrained model), embeddings of the right shapes,
advisor features for the expert, and an expert trained with it."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from pymatgen.core import Lattice, Structure

from adex.checkpoint import load_model
from adex.cli import main
from adex.expert.advisor_features import compute_advisor_features
from adex.registry import Registry
from test_expert import TINY, packed, reg, tiny  # noqa: F401  (fixtures)

chgnet_model = pytest.importorskip("chgnet.model", reason="CHGNet is an optional extra: pip install 'adex[chgnet]'")
pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.fixture(scope="module")
def imported(reg):  # noqa: F811
    """CHGNet imported into the test registry of ``test_expert`` (module scope)."""
    rc = main(["advisor", "import", "chgnet", "--registry", str(reg.root)])
    assert rc == 0
    return reg.registry.resolve("advisor/chgnet")


def rocksalt() -> Structure:
    return Structure(Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.9), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def test_import_registers_a_reloadable_exact_copy(imported, capsys) -> None:
    assert imported.ref == "advisor/chgnet:1" and imported.card["embedding_width"] == 64
    assert imported.card["source"]["package"] == "chgnet"
    capsys.readouterr()
    advisor = load_model(imported)
    assert capsys.readouterr().out == ""  # CHGNet's banner must not pollute stdout (predictions go there)
    reference = chgnet_model.CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    structures = [rocksalt(), perovskite()]
    atom, crystal = advisor.embed_structures(structures)
    assert atom.shape == (7, 64) and crystal.shape == (2, 64) and atom.dtype == np.float32
    direct = reference.predict_structure(structures, task="e", return_atom_feas=True, return_crystal_feas=True)
    np.testing.assert_allclose(atom, np.concatenate([d["atom_fea"] for d in direct]), atol=1e-5)
    # new imports pool the crystal intensively: CHGNet's sum readout divided by the atoms
    assert imported.card["crystal_pooling"] == "mean" and advisor.crystal_pooling == "mean"
    np.testing.assert_allclose(crystal, np.stack([d["crystal_fea"] / len(s) for d, s in zip(direct, structures)]), atol=1e-5)
    np.testing.assert_allclose(advisor.predict_structures(structures), [float(d["e"]) for d in direct], atol=1e-6)


def test_mean_crystal_pooling_is_intensive_and_sum_is_not(imported) -> None:
    """The same crystal as a 2x2x2 supercell: the mean embedding is unchanged, CHGNet's sum
    readout (``crystal_pooling: sum``, files without the key, e.g. the shipped chgnet:1) x8."""
    import json

    from adex.advisors.chgnet import CHGNetAdvisor

    mean_model = load_model(imported)
    arch = json.loads(imported.read_file("model.json"))
    legacy = {k: v for k, v in arch.items() if k not in ("crystal_pooling", "@module", "@class")}
    sum_model = CHGNetAdvisor.from_architecture(legacy)
    sum_model.chgnet.load_state_dict(mean_model.chgnet.state_dict())
    assert sum_model.crystal_pooling == "sum"
    primitive = perovskite()
    supercell = primitive.copy()
    supercell.make_supercell([2, 2, 2])
    (_, mean_small), (_, mean_big) = mean_model.embed_structures([primitive]), mean_model.embed_structures([supercell])
    (_, sum_small), (_, sum_big) = sum_model.embed_structures([primitive]), sum_model.embed_structures([supercell])
    np.testing.assert_allclose(mean_big, mean_small, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(sum_big, 8 * sum_small, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(sum_small, 5 * mean_small, rtol=1e-5, atol=1e-5)


def test_chgnet_advisor_features_and_an_expert_trained_with_it(imported, packed, tiny, reg, capsys) -> None:  # noqa: F811
    features = compute_advisor_features(load_model(imported), imported.ref, packed)
    assert features.atom.shape == (packed.prim_ptr[-1], 64) and features.crystal.shape == (len(packed), 64)
    assert np.isfinite(features.atom).all()
    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "adv8,chgnet", "--split", "tiny", "--epochs", "1", "--set", "name=withchgnet"])
    assert rc == 0, capsys.readouterr().err
    entry = reg.registry.resolve("expert/withchgnet")
    assert entry.parents == ["advisor/adv8:1", imported.ref]
    assert [a["width"] for a in entry.card["advisors"]] == [8, 64]


def test_init_from_chgnet_is_a_one_line_error(imported, tiny, reg, capsys) -> None:  # noqa: F811
    from conftest import assert_one_line_error

    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "none", "--init-from", "chgnet", "--epochs", "1", "--set", "name=bad"])
    assert_one_line_error(rc, capsys.readouterr().err, "backbone")


# --------------------------------------------------------------------------- delta-learning on the potential
def test_vacancy_energies_are_chgnet_energy_differences_and_cached(imported, packed, monkeypatch) -> None:  # noqa: F811
    from adex.expert.potential import vacancy_energies
    from adex.supercell import SupercellSettings, build_vacancy

    advisor = load_model(imported)
    settings = SupercellSettings(min_image_distance=6.0)
    first = packed.subset([0, 1, 2])
    delta = vacancy_energies(imported, advisor, first, settings)
    assert delta.shape == (3,) and delta.dtype == np.float64
    # by hand for vacancy 0: CHGNet energies of the defected and pristine supercells
    reference = chgnet_model.CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    vac = build_vacancy(first.primitive_structure(0), int(first.vacated_primitive_sites[0]), settings)
    by_hand = [float(reference.predict_structure(s, task="e")["e"]) * len(s) for s in (vac.defected, vac.pristine)]
    roles = first.node_role[first.graphs.node_ptr[0]:first.graphs.node_ptr[1]]
    assert len(vac.pristine) == (roles == 0).sum() > len(first.primitive_structure(0))  # the graph's supercell
    assert delta[0] == pytest.approx(by_hand[0] - by_hand[1], abs=2e-3)
    assert 0 < delta[0] < 30  # breaking bonds costs energy
    # a second call reads the cache: the potential is not run again
    monkeypatch.setattr(type(advisor), "total_energies", lambda self, s, batch_size=16: pytest.fail("not cached"))
    np.testing.assert_array_equal(vacancy_energies(imported, advisor, first, settings), delta)
    # other supercell settings miss the cache
    with pytest.raises(pytest.fail.Exception):
        vacancy_energies(imported, advisor, first, SupercellSettings(min_image_distance=7.0))


def test_vacancy_energy_cache_entries_are_checked(imported, packed, adex_home) -> None:  # noqa: F811
    from adex.expert.potential import vacancy_energies
    from adex.paths import cache_dir
    from adex.supercell import SupercellSettings

    advisor = load_model(imported)
    settings = SupercellSettings(min_image_distance=6.0)
    one = packed.subset([3])
    delta = vacancy_energies(imported, advisor, one, settings)
    entries = sorted((cache_dir() / "potential").rglob("v*.arrays"))
    assert entries
    for path in entries:
        path.write_bytes(b"garbage")  # damaged: recomputed, never trusted
    np.testing.assert_allclose(vacancy_energies(imported, advisor, one, settings), delta, atol=1e-6)
    np.testing.assert_allclose(vacancy_energies(imported, advisor, one, settings, use_cache=False), delta, atol=1e-6)


def test_relaxed_energies_are_a_line_search_on_chgnet_forces(imported) -> None:
    from adex.advisors.chgnet import RELAXATION_STEP_SIZES

    advisor = load_model(imported)
    rattled = perovskite().make_supercell([2, 1, 1], in_place=False)
    rattled.translate_sites([1], [0.15, -0.1, 0.05], frac_coords=False)  # off equilibrium: large forces on Ti
    equilibrium = rocksalt()
    unrelaxed = advisor.total_energies([rattled, equilibrium])
    relaxed = advisor.relaxed_energies([rattled, equilibrium])
    assert relaxed.shape == (2,) and relaxed.dtype == np.float64
    assert np.all(relaxed <= unrelaxed + 1e-9)
    assert unrelaxed[0] - relaxed[0] > 0.01  # moving along the forces lowers the energy
    # by hand: the best of E(x + a F) over the step sizes, each move capped at 0.4 Å
    reference = chgnet_model.CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False)
    forces = np.asarray(reference.predict_structure(rattled, task="ef")["f"], dtype=np.float64)
    largest = np.linalg.norm(forces, axis=1).max()
    trials = []
    for a in RELAXATION_STEP_SIZES:
        moved = Structure(rattled.lattice, rattled.species, rattled.cart_coords + min(a, 0.4 / largest) * forces,
                          coords_are_cartesian=True)
        trials.append(float(reference.predict_structure(moved, task="e")["e"]) * len(moved))
    assert relaxed[0] == pytest.approx(min(min(trials), unrelaxed[0]), abs=2e-3)
    assert advisor.relaxed_energies([]).shape == (0,)


def test_fire_relaxed_energies_follow_ase_fire_on_chgnet(imported) -> None:
    from ase.optimize import FIRE
    from chgnet.model.dynamics import CHGNetCalculator
    from pymatgen.io.ase import AseAtomsAdaptor

    advisor = load_model(imported)
    rattled = perovskite().make_supercell([2, 1, 1], in_place=False)
    rattled.translate_sites([1], [0.15, -0.1, 0.05], frac_coords=False)  # off equilibrium: large forces on Ti
    unrelaxed = advisor.total_energies([rattled, rocksalt()])
    relaxed = {steps: advisor.fire_relaxed_energies([rattled, rocksalt()], steps) for steps in (1, 4, 8)}
    for energies in relaxed.values():
        assert energies.shape == (2,) and energies.dtype == np.float64
        assert np.all(energies <= unrelaxed + 1e-9)
    assert relaxed[1][0] <= unrelaxed[0] - 1e-3 and relaxed[8][0] <= relaxed[4][0] <= relaxed[1][0]  # one trajectory
    assert relaxed[8][0] < advisor.relaxed_energies([rattled])[0]  # eight steps go further than one line search
    # the same trajectory as ASE's FIRE (dt 0.3, maxstep 0.5 Å) on CHGNet's ASE calculator
    atoms = AseAtomsAdaptor.get_atoms(rattled)
    atoms.calc = CHGNetCalculator(model=chgnet_model.CHGNet.load(model_name="0.3.0", use_device="cpu", verbose=False),
                                  use_device="cpu")
    seen = [atoms.get_potential_energy()]
    optimizer = FIRE(atoms, dt=0.3, maxstep=0.5, logfile=None)
    optimizer.attach(lambda: seen.append(atoms.get_potential_energy()))
    optimizer.run(fmax=1e-9, steps=8)
    assert len(seen) == 10 and relaxed[8][0] == pytest.approx(min(seen), abs=2e-3)
    with pytest.raises(ValueError, match="steps >= 1"):
        advisor.fire_relaxed_energies([rattled], 0)
    assert advisor.fire_relaxed_energies([], 3).shape == (0,)


def test_fire_relaxed_vacancy_energies_are_lower_than_unrelaxed_and_cached_apart(imported, packed,  # noqa: F811
                                                                               monkeypatch) -> None:
    from adex.expert.potential import vacancy_energies
    from adex.supercell import SupercellSettings

    advisor = load_model(imported)
    settings = SupercellSettings(min_image_distance=6.0)
    first = packed.subset([0, 1])
    unrelaxed = vacancy_energies(imported, advisor, first, settings)
    fire = vacancy_energies(imported, advisor, first, settings, relaxation=True, relaxation_steps=3)
    assert np.all(fire < unrelaxed)
    monkeypatch.setattr(type(advisor), "fire_relaxed_energies", lambda self, s, steps: pytest.fail("not cached"))
    np.testing.assert_array_equal(vacancy_energies(imported, advisor, first, settings, relaxation=True,
                                                   relaxation_steps=3), fire)
    calls = []
    monkeypatch.setattr(type(advisor), "fire_relaxed_energies",
                        lambda self, s, steps: calls.append(steps) or np.zeros(len(list(s))))
    vacancy_energies(imported, advisor, first, settings, relaxation=True, relaxation_steps=4)  # another kind
    assert calls == [4]
    # all cached: a lazily loaded advisor is checked on its class and never loaded, for every kind
    from adex.checkpoint import LazyModel

    lazy = LazyModel(imported)
    np.testing.assert_array_equal(vacancy_energies(imported, lazy, first, settings, relaxation=True,
                                                   relaxation_steps=3), fire)
    np.testing.assert_array_equal(vacancy_energies(imported, lazy, first, settings), unrelaxed)
    assert not lazy.is_loaded


def test_relaxed_vacancy_energies_are_lower_and_cached_apart(imported, packed, monkeypatch) -> None:  # noqa: F811
    from adex.expert.potential import vacancy_energies
    from adex.supercell import SupercellSettings

    advisor = load_model(imported)
    settings = SupercellSettings(min_image_distance=6.0)
    first = packed.subset([0, 1])
    unrelaxed = vacancy_energies(imported, advisor, first, settings)
    relaxed = vacancy_energies(imported, advisor, first, settings, relaxation=True)
    assert np.all(relaxed < unrelaxed)  # atoms around a vacancy always relax into it a little
    monkeypatch.setattr(type(advisor), "relaxed_energies", lambda self, s, **kw: pytest.fail("not cached"))
    monkeypatch.setattr(type(advisor), "total_energies", lambda self, s, batch_size=16: pytest.fail("not cached"))
    np.testing.assert_array_equal(vacancy_energies(imported, advisor, first, settings, relaxation=True), relaxed)
    np.testing.assert_array_equal(vacancy_energies(imported, advisor, first, settings), unrelaxed)


def test_potential_relaxation_without_potential_delta_is_a_one_line_error(imported, tiny, reg, capsys) -> None:  # noqa: F811
    from conftest import assert_one_line_error

    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "chgnet", "--split", "tiny", "--epochs", "1", "--set", "name=norelax",
               "--set", "model.potential_relaxation=true"])
    assert_one_line_error(rc, capsys.readouterr().err, "potential_relaxation", "potential_delta")


@pytest.mark.parametrize("settings,words", [
    (["model.potential_delta=true", "model.potential_relaxation_steps=5"], ("potential_relaxation_steps", "potential_relaxation")),
    (["model.potential_delta=true", "model.potential_relaxation=true", "model.potential_relaxation_steps=-1"],
     ("potential_relaxation_steps", ">= 0")),
])
def test_bad_relaxation_steps_are_a_one_line_error(imported, tiny, reg, capsys, settings, words) -> None:  # noqa: F811
    from conftest import assert_one_line_error

    sets = [x for setting in settings for x in ("--set", setting)]
    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "chgnet", "--split", "tiny", "--epochs", "1", "--set", "name=badsteps", *sets])
    assert_one_line_error(rc, capsys.readouterr().err, *words)


@pytest.mark.parametrize("relaxation,steps", [(False, 0), (True, 0), (True, 2)])
def test_potential_delta_expert_predicts_potential_plus_reference_plus_network(imported, tiny, reg, capsys,  # noqa: F811
                                                                             relaxation, steps) -> None:
    import torch

    from adex.expert.data import VacancyDataset
    from adex.expert.witman import load_witman
    from adex.expert.potential import vacancy_energies
    from adex.expert.loading import load_expert
    from adex.expert.predict import predict_packed
    from adex.supercell import SupercellSettings

    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "chgnet", "--split", "tiny", "--epochs", "1", "--set", f"name=delta-{relaxation}-{steps}",
               "--set", "model.potential_delta=true", "--set", "model.element_reference=true",
               "--set", f"model.potential_relaxation={str(relaxation).lower()}",
               "--set", f"model.potential_relaxation_steps={steps}",
               "--set", "augment.min_image_distances=[7.0]"])
    assert rc == 0, capsys.readouterr().err
    entry = reg.registry.resolve(f"expert/delta-{relaxation}-{steps}")
    expert = load_expert(entry.ref, reg.registry)
    model = expert.model
    assert model.config.potential_delta and model.needs_potential_delta and model.potential_relaxation is relaxation
    assert model.potential_relaxation_steps == steps
    packed = load_witman(model.featurizer_settings, SupercellSettings.from_dict(model.supercell), tiny.root)
    pred = predict_packed(expert, packed)
    (chg_entry, chg), = expert.advisors
    delta = vacancy_energies(chg_entry, chg, packed, SupercellSettings.from_dict(model.supercell), relaxation=relaxation,
                             relaxation_steps=steps)
    features = [compute_advisor_features(chg, chg_entry.ref, packed)]
    batch = VacancyDataset(model.prepare(packed), features, delta).batch(np.arange(len(packed)))
    with torch.no_grad():
        raw = model.normalizer.denorm(model(batch)).numpy()
    reference = model.element_reference.numpy()[packed.vacated_numbers]
    np.testing.assert_allclose(pred, raw + reference + delta, atol=1e-3)
    # the element reference absorbed the mean of dH - dE over the training vacancies
    assert np.abs(reference).max() < np.abs(packed.targets).max() + np.abs(delta).max()


def count_potential_supercells(monkeypatch) -> list[float]:
    """The image distance (Å) of every supercell training asks the potential for, in call
    order (``vacancy_energies`` wrapped where :mod:`adex.expert.train` and
    :mod:`adex.expert.potential` see it)."""
    from adex.expert import potential, train

    calls, real = [], potential.vacancy_energies

    def counting(entry, advisor, packed, settings, **kwargs):
        calls.append(settings.min_image_distance)
        return real(entry, advisor, packed, settings, **kwargs)

    monkeypatch.setattr(potential, "vacancy_energies", counting)
    monkeypatch.setattr(train, "vacancy_energies", counting)
    return calls


@pytest.mark.parametrize("relaxation", [False, True])
def test_shared_potential_energies_give_views_the_configured_supercells_energies(imported, tiny, reg,  # noqa: F811
                                                                                   monkeypatch, relaxation) -> None:
    from adex.config import load_config
    from adex.expert import train

    overrides = [t for t in TINY if t != "--set"] + [
        "advisors=[chgnet]", "split=tiny", "model.potential_delta=true", f"model.potential_relaxation={str(relaxation).lower()}",
        "augment.min_image_distances=[7.0]", "augment.share_potential_energies=true"]
    config = load_config(train.ExpertConfig, "expert", "default", overrides)
    calls = count_potential_supercells(monkeypatch)
    prepared = train.prepare_data(config, tiny.root, reg.registry)
    assert calls == [6.0]  # the configured supercell only: the 7 Å view ran no potential
    (view,) = prepared.views
    assert list(view.packed.ids) == list(prepared.packed.ids[prepared.pool])
    assert view.packed.graphs.node_ptr[-1] > prepared.packed.subset(prepared.pool).graphs.node_ptr[-1]  # bigger cells
    np.testing.assert_array_equal(view.potential_delta, prepared.potential_delta[prepared.pool])
    # without sharing, the view has its own energies (another supercell: not equal)
    config.augment.share_potential_energies = False
    own = train.prepare_data(config, tiny.root, reg.registry)
    assert calls[1:] == [6.0, 7.0]
    assert not np.allclose(own.views[0].potential_delta, prepared.potential_delta[prepared.pool])


def test_potential_min_image_distance_takes_de_in_one_larger_supercell_for_graph_and_views(imported, tiny, reg,  # noqa: F811
                                                                                          monkeypatch, capsys) -> None:
    """``model.potential_min_image_distance``: dE of the configured graph and of every
    augmented view is taken in one >= 8 Å supercell (so the views' labels and dE agree), and
    the trained expert predicts with those energies."""
    from adex.config import load_config
    from adex.expert import potential, train
    from adex.expert.loading import load_expert
    from adex.expert.predict import potential_energies
    from adex.expert.witman import load_witman
    from adex.supercell import SupercellSettings

    overrides = [t for t in TINY if t != "--set"] + [
        "advisors=[chgnet]", "split=tiny", "model.potential_delta=true", "model.potential_min_image_distance=8.0",
        "augment.min_image_distances=[7.0]"]
    config = load_config(train.ExpertConfig, "expert", "default", overrides)
    real = potential.vacancy_energies
    calls = count_potential_supercells(monkeypatch)
    prepared = train.prepare_data(config, tiny.root, reg.registry)
    assert calls == [8.0, 8.0]  # the 6 Å graphs and the 7 Å view both take dE at 8 Å
    np.testing.assert_allclose(prepared.views[0].potential_delta, prepared.potential_delta[prepared.pool], atol=1e-9)
    (entry, chg), = prepared.advisors
    graph_de = real(entry, chg, prepared.packed, config.supercell)
    assert not np.allclose(graph_de, prepared.potential_delta)  # a larger supercell, another dE

    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY, "--advisors", "chgnet",
               "--split", "tiny", "--epochs", "1", "--set", "name=delta-far", "--set", "model.potential_delta=true",
               "--set", "model.potential_min_image_distance=8.0"])
    assert rc == 0, capsys.readouterr().err
    expert = load_expert("expert/delta-far", reg.registry)
    assert expert.model.potential_kind == (False, 0, 8.0)
    packed = load_witman(expert.model.featurizer_settings, SupercellSettings.from_dict(expert.model.supercell), tiny.root)
    np.testing.assert_allclose(potential_energies(expert, packed)[(False, 0, 8.0)],
                               real(entry, chg, packed, SupercellSettings(min_image_distance=8.0)), atol=1e-9)


@pytest.mark.parametrize("setting,words", [
    ("model.potential_min_image_distance=12.0", ("potential_min_image_distance", "potential_delta")),
    ("model.potential_min_image_distance=-1.0", ("potential_min_image_distance", ">= 0")),
])
def test_bad_potential_min_image_distance_is_a_one_line_error(imported, tiny, reg, capsys, setting, words) -> None:  # noqa: F811
    from conftest import assert_one_line_error

    delta = [] if "-1" not in setting else ["--set", "model.potential_delta=true"]
    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "chgnet", "--split", "tiny", "--epochs", "1", "--set", "name=baddist", *delta, "--set", setting])
    assert_one_line_error(rc, capsys.readouterr().err, *words)


def test_share_potential_energies_without_potential_delta_is_a_one_line_error(imported, tiny, reg, capsys) -> None:  # noqa: F811
    from conftest import assert_one_line_error

    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "chgnet", "--split", "tiny", "--epochs", "1", "--set", "name=noshare",
               "--set", "augment.min_image_distances=[7.0]", "--set", "augment.share_potential_energies=true"])
    assert_one_line_error(rc, capsys.readouterr().err, "share_potential_energies", "potential_delta")


def test_potential_delta_without_a_potential_advisor_is_a_one_line_error(imported, tiny, reg, capsys) -> None:  # noqa: F811
    from conftest import assert_one_line_error

    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "none", "--split", "tiny", "--epochs", "1", "--set", "name=nodelta",
               "--set", "model.potential_delta=true"])
    assert_one_line_error(rc, capsys.readouterr().err, "potential_delta", "chgnet")


def test_baseline_with_potential_delta_learns_dh_minus_the_vacancy_energy(imported, tiny, reg, tmp_path) -> None:  # noqa: F811
    import csv

    from adex.config import load_config
    from adex.studies.baseline import ModelSettings, add_advisor_features, fit_model, load_witman_features
    from adex.expert.witman import load_witman
    from adex.expert.potential import vacancy_energies
    from adex.expert.train import ExpertConfig, load_advisors

    out = tmp_path / "delta"
    assert main(["baseline", "--split", "tiny", "--data", str(tiny.root), "--registry", str(reg.root),
                 "--advisors", "chgnet", "--potential-delta", "--out", str(out)]) == 0
    preds = list(csv.DictReader(open(out / "predictions.csv")))
    # by hand: descriptors + CHGNet embeddings, regressor on dH - dE (the default expert's supercells), + dE
    advisors = load_advisors(["chgnet"], reg.registry)
    table = add_advisor_features(load_witman_features(tiny.root), tiny.root / "witman2023_vacancies", advisors)
    config = load_config(ExpertConfig, "expert", "default")
    packed = load_witman(config.featurizer, config.supercell, tiny.root, ids=list(table.ids))
    delta = vacancy_energies(*advisors[0], packed, config.supercell)
    tr, te = table.rows(tiny.train), table.rows(tiny.hold)
    regressor, _, _ = fit_model(table.X[tr], table.targets[tr] - delta[tr], table.hosts[tr], ModelSettings(), 0, True)
    expected = regressor.predict(table.X[te]) + delta[te]
    got = np.array([float(p["dH_pred_eV"]) for p in preds])
    np.testing.assert_allclose(got, expected, atol=2e-5)  # the CSV keeps 6 significant digits
    plain, _, _ = fit_model(table.X[tr], table.targets[tr], table.hosts[tr], ModelSettings(), 0, True)
    assert np.abs(plain.predict(table.X[te]) - got).max() > 0.01  # without dE it would differ
    assert yaml.safe_load((out / "config.yaml").read_text())["potential_delta"] is True


def test_baseline_potential_min_image_distance_takes_de_in_larger_supercells(imported, tiny, reg) -> None:  # noqa: F811
    from adex.config import load_config
    from adex.expert.potential import potential_supercell, vacancy_energies
    from adex.expert.train import ExpertConfig, load_advisors
    from adex.expert.witman import load_witman
    from adex.studies.baseline_features import baseline_table

    advisors = load_advisors(["chgnet"], reg.registry)
    far = baseline_table(tiny.root, advisors, potential_delta=True, potential_min_image_distance=10.0)
    config = load_config(ExpertConfig, "expert", "default")
    packed = load_witman(config.featurizer, config.supercell, tiny.root, ids=list(far.ids))
    expected = vacancy_energies(*advisors[0], packed, potential_supercell(config.supercell, 10.0))
    np.testing.assert_allclose(far.offset, expected, atol=1e-9)
    assert potential_supercell(config.supercell, 10.0).min_image_distance == 10.0 > config.supercell.min_image_distance
    assert not np.allclose(far.offset, vacancy_energies(*advisors[0], packed, config.supercell))


def test_predict_cli_with_a_potential_delta_expert_and_cache(imported, tiny, reg, capsys, monkeypatch,
                                                            tmp_path) -> None:  # noqa: F811
    import csv
    import io

    from adex.advisors.chgnet import CHGNetAdvisor
    from adex.expert.witman import load_witman
    from adex.expert.loading import load_expert
    from adex.expert.predict import predict_packed
    from adex.supercell import SupercellSettings

    assert main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
                 "--advisors", "chgnet", "--split", "tiny", "--epochs", "1", "--set", "name=delta-cli",
                 "--set", "model.potential_delta=true", "--set", "model.element_reference=true"]) == 0
    table = tmp_path / "table.csv"
    cifs = [tiny.root / "witman2023_vacancies" / "structures" / f"{i}.cif" for i in tiny.ids[:2]]
    table.write_text("structure,site\n" + "".join(f"{c},0\n" for c in cifs))
    args = ["predict", "--expert", "expert/delta-cli", "--registry", str(reg.root), "--input", str(table),
            "--format", "csv", "--cache"]
    capsys.readouterr()
    assert main(args) == 0
    first = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    # the same vacancies through the library: network + reference + CHGNet's dE
    expert = load_expert("expert/delta-cli", reg.registry)
    packed = load_witman(expert.model.featurizer_settings, SupercellSettings.from_dict(expert.model.supercell), tiny.root,
                         ids=tiny.ids[:2])
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in first], predict_packed(expert, packed), atol=1e-3)
    # a rerun with --cache neither evaluates the potential nor loads CHGNet
    monkeypatch.setattr(CHGNetAdvisor, "total_energies", lambda self, s, batch_size=16: pytest.fail("not cached"))
    monkeypatch.setattr(CHGNetAdvisor, "__init__", lambda self, *a, **k: pytest.fail("CHGNet loaded"))
    assert main(args) == 0
    again = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["dH_pred_eV"] for r in again] == [r["dH_pred_eV"] for r in first]


@pytest.mark.parametrize("flags,words", [
    (["--potential-relaxation"], ("--potential-relaxation", "--potential-delta")),
    (["--potential-delta", "--relaxation-steps", "3"], ("--relaxation-steps", "--potential-relaxation")),
    (["--potential-delta", "--potential-relaxation", "--relaxation-steps", "-2"], ("--relaxation-steps", ">= 0")),
    (["--potential-min-image-distance", "12"], ("--potential-min-image-distance", "--potential-delta")),
])
def test_baseline_relaxation_flags_are_checked(imported, tiny, reg, capsys, tmp_path, flags, words) -> None:  # noqa: F811
    from conftest import assert_one_line_error

    rc = main(["baseline", "--split", "tiny", "--data", str(tiny.root), "--registry", str(reg.root),
               "--advisors", "chgnet", *flags, "--out", str(tmp_path / "x")])
    assert_one_line_error(rc, capsys.readouterr().err, *words)


def test_chgnet_network_imports_without_its_md_and_vasp_modules() -> None:
    """The advisor imports CHGNet's network without ``chgnet.model.dynamics`` (ASE MD) and
    ``chgnet.utils.vasp_utils`` (pymatgen's VASP parsers): ~2 s less per process. The
    names those modules give the packages still import, on first use. A fresh process:
    this one already imported ``chgnet.model`` the usual way."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from adex.advisors.chgnet import _chgnet_class\n"
        "CHGNet = _chgnet_class()\n"
        "heavy = [m for m in ('chgnet.model.dynamics', 'chgnet.utils.vasp_utils', 'ase.md', 'scipy.signal') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "import chgnet.model\n"
        "assert chgnet.model.CHGNet is CHGNet and CHGNet.__module__ == 'chgnet.model.model'\n"
        "from chgnet.model import StructOptimizer\n"
        "from chgnet.utils import mkdir, parse_vasp_dir\n"
        "assert 'chgnet.model.dynamics' in sys.modules and callable(parse_vasp_dir) and callable(mkdir)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_ensemble_members_may_add_different_potential_energies(imported, tiny, reg, capsys) -> None:  # noqa: F811
    """A composed ensemble of experts without dE, with unrelaxed and with relaxed dE: each
    member gets its own kind of energies, so the ensemble predicts exactly its members."""
    from adex.expert.witman import load_witman
    from adex.expert.loading import load_expert
    from adex.expert.predict import predict_packed, predict_packed_members
    from adex.supercell import SupercellSettings

    kinds = {"mix-none": [], "mix-unrelaxed": ["model.potential_delta=true"],
             "mix-relaxed": ["model.potential_delta=true", "model.potential_relaxation=true"]}
    for name, sets in kinds.items():
        rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY, "--advisors", "chgnet",
                   "--split", "tiny", "--epochs", "1", "--set", f"name={name}", *[a for s in sets for a in ("--set", s)]])
        assert rc == 0, capsys.readouterr().err
    refs = [reg.registry.resolve(f"expert/{name}").ref for name in kinds]
    assert main(["expert", "ensemble", *refs, "--name", "mix", "--registry", str(reg.root)]) == 0, capsys.readouterr().err
    composed = load_expert("expert/mix", reg.registry)
    assert composed.model.potential_kinds == [(False, 0, 0.0), (True, 0, 0.0)]
    packed = load_witman(composed.model.featurizer_settings, SupercellSettings.from_dict(composed.model.supercell), tiny.root)
    members = predict_packed_members(composed, packed, batch_size=3)
    alone = np.stack([predict_packed(load_expert(ref, reg.registry), packed) for ref in refs])
    np.testing.assert_allclose(members, alone, atol=1e-5)
    assert np.abs(alone[1] - alone[2]).max() > 1e-3  # relaxed and unrelaxed energies differ: the test can tell them apart
