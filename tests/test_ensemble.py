"""Expert ensembles: members, mean and std of the right shapes, a one-member ensemble
equal to the plain expert, storage in the registry, ``adex expert train --ensemble``,
``adex expert ensemble`` (composition), ``adex predict`` with a std column, and the
calibration numbers.

Runs on the 13-vacancy tiny Witman copy of ``test_expert`` with width-8 models.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from adex.checkpoint import load_model, model_files
from adex.cli import main
from adex.errors import ConfigError
from adex.expert.advisor_features import compute_advisor_features
from adex.expert.data import VacancyDataset
from adex.expert.ensemble import ExpertEnsemble, as_members, calibration, ensemble_statistics
from adex.expert.model import AdvisorSlot
from adex.expert.loading import load_expert
from adex.expert.predict import featurize_host_sites, predict_packed, predict_packed_members
from adex.graphs import FeaturizerSettings
from adex.io import read_structure
from test_expert import TINY, make_expert, packed, reg, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("shared_cache")


def dataset_for(packed, reg, model):  # noqa: F811
    features = compute_advisor_features(reg.models[8], reg.refs[8], packed)
    return VacancyDataset(model.prepare(packed), [features])


# --------------------------------------------------------------------------- the module
def test_members_mean_and_std_shapes(packed, reg) -> None:  # noqa: F811
    slot = [AdvisorSlot(reg.refs[8], 8)]
    members = [make_expert("attention", slot, seed=s) for s in (1, 2, 3)]
    ensemble = ExpertEnsemble(members).eval()
    batch = dataset_for(packed, reg, ensemble).batch(np.arange(len(packed)))
    stacked = ensemble.predict_members(batch)
    assert stacked.shape == (3, 13)
    for k, member in enumerate(members):
        torch.testing.assert_close(stacked[k], member.predict(batch))
    torch.testing.assert_close(ensemble.predict(batch), stacked.mean(0))
    mean, std = ensemble_statistics(stacked.numpy())
    assert mean.shape == std.shape == (13,) and (std > 0).all()
    np.testing.assert_allclose(std, stacked.numpy().std(0), rtol=1e-6)


def test_single_member_ensemble_equals_the_plain_model(packed, reg) -> None:  # noqa: F811
    model = make_expert("attention", [AdvisorSlot(reg.refs[8], 8)], seed=4)
    ensemble = ExpertEnsemble([model]).eval()
    batch = dataset_for(packed, reg, model).batch(np.arange(len(packed)))
    assert torch.equal(ensemble.predict(batch), model.predict(batch))
    _, std = ensemble_statistics(ensemble.predict_members(batch).numpy())
    assert (std == 0).all()


def test_members_with_different_inputs_are_refused(reg) -> None:  # noqa: F811
    a = make_expert("attention", [AdvisorSlot(reg.refs[8], 8)])
    b = make_expert("attention", [AdvisorSlot(reg.refs[12], 12)])
    with pytest.raises(ConfigError, match="advisors"):
        ExpertEnsemble([a, b])
    c = make_expert("attention", [AdvisorSlot(reg.refs[8], 8)])
    c.featurizer_settings = FeaturizerSettings(cutoff=5.0, max_neighbors=12)
    with pytest.raises(ConfigError, match="featurizer"):
        ExpertEnsemble([a, c])


def test_advisors_are_the_same_when_their_weights_are(reg) -> None:  # noqa: F811
    """A shipped expert names its advisor builtin::advisor/x:1, a user's advisor/x:1: the
    same weights (sha256) make the same input; other weights do not, whatever the name."""
    a = make_expert("attention", [AdvisorSlot(reg.refs[8], 8, "ab" * 32)])
    b = make_expert("attention", [AdvisorSlot(f"builtin::{reg.refs[8]}", 8, "ab" * 32)])
    assert len(ExpertEnsemble([a, b])) == 2
    c = make_expert("attention", [AdvisorSlot(reg.refs[8], 8, "cd" * 32)])
    with pytest.raises(ConfigError, match="advisors.*sha256 cdcd"):
        ExpertEnsemble([a, c])


def test_ensemble_prunes_to_the_largest_receptive_field(packed, reg) -> None:  # noqa: F811
    slot = [AdvisorSlot(reg.refs[8], 8)]
    one, two = make_expert("attention", slot, n_conv=1, seed=5), make_expert("vacancy", slot, n_conv=2, seed=6)
    ensemble = ExpertEnsemble([one, two]).eval()
    assert ensemble.receptive_hops == 2
    assert ExpertEnsemble([one, make_expert("mean", slot, seed=7)]).receptive_hops is None
    assert ensemble.hops_origin == "hood"  # the attention member needs the whole neighbourhood
    assert ExpertEnsemble([two, make_expert("vacancy", slot, n_conv=1, seed=8)]).hops_origin == "vacancy"
    features = [compute_advisor_features(reg.models[8], reg.refs[8], packed)]
    batch = VacancyDataset(ensemble.prepare(packed), features).batch(np.arange(len(packed)))
    alone = VacancyDataset(one.prepare(packed), features).batch(np.arange(len(packed)))
    torch.testing.assert_close(ensemble.predict_members(batch)[0], one.predict(alone), atol=1e-5, rtol=0)


def test_ensemble_saves_and_loads_exactly(packed, reg, tmp_path) -> None:  # noqa: F811
    from adex.registry import Registry

    slot = [AdvisorSlot(reg.refs[8], 8)]
    ensemble = ExpertEnsemble([make_expert("attention", slot, seed=s) for s in (1, 2)]).eval()
    registry = Registry(tmp_path / "registry")
    entry = registry.register("expert", "ens", model_files(ensemble), {"description": "test"})
    assert json.loads(entry.read_file("model.json"))["class"] == "expert_ensemble"
    again = load_model(entry)
    assert isinstance(again, ExpertEnsemble) and len(again) == 2
    batch = dataset_for(packed, reg, ensemble).batch(np.arange(len(packed)))
    assert torch.equal(again.predict_members(batch), ensemble.predict_members(batch))


def test_calibration_numbers() -> None:
    target = np.zeros(4)
    mean = np.array([0.1, -0.5, 1.0, 0.0])
    std = np.array([0.2, 0.2, 0.4, 0.1])
    c = calibration(mean, std, target)
    assert c["n"] == 4 and c["mae"] == pytest.approx(0.4)
    assert c["frac_within_1std"] == pytest.approx(0.5)  # 0.1 <= 0.2 and 0 <= 0.1
    assert c["frac_within_2std"] == pytest.approx(0.5)  # 0.5 > 0.4, 1.0 > 0.8
    assert c["mean_std"] == pytest.approx(0.225)
    # |error| ranks 2,3,4,1 against std ranks 2.5,2.5,4,1
    assert c["spearman_abs_error_std"] == pytest.approx(0.9486832980505138)
    assert np.isnan(calibration(mean, np.full(4, 0.3), target)["spearman_abs_error_std"])


# --------------------------------------------------------------------------- CLI
def train(tiny, reg, *args: str) -> int:  # noqa: F811
    return main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
                 "--advisors", "adv8", "--split", "tiny", "--epochs", "2", *args])


@pytest.fixture(scope="module")
def trained(tiny, reg):  # noqa: F811
    """A 2-member ensemble (seeds 3, 4) and the plain experts trained with seeds 3 and 4."""
    assert train(tiny, reg, "--ensemble", "2", "--seed", "3", "--set", "name=ens") == 0
    assert train(tiny, reg, "--seed", "3", "--set", "name=plain3") == 0
    assert train(tiny, reg, "--seed", "4", "--set", "name=plain4") == 0
    registry = reg.registry
    return {name: registry.resolve(f"expert/{name}") for name in ("ens", "plain3", "plain4")}


def test_cli_ensemble_is_stored_with_members_metrics_and_calibration(trained, tiny) -> None:  # noqa: F811
    entry = trained["ens"]
    model = load_model(entry)
    assert isinstance(model, ExpertEnsemble) and len(model) == 2
    metrics = entry.card["metrics"]
    assert metrics["ensemble_size"] == 2 and metrics["seeds"] == [3, 4]
    assert [m["seed"] for m in metrics["members"]] == [3, 4]
    assert metrics["test"]["n"] == 4 and set(metrics["calibration"]) >= {"frac_within_2std", "spearman_abs_error_std"}
    assert entry.parents == ["advisor/adv8:1"]
    run_dir = Path(entry.card["run_dir"])
    for name in ("metrics.json", "calibration.png", "config.yaml", "member_0/history.csv", "member_1/learning_curve.png"):
        assert (run_dir / name).is_file(), name
    rows = list(csv.DictReader(open(run_dir / "test_predictions.csv")))
    assert sorted(r["id"] for r in rows) == sorted(tiny.hold)
    for r in rows:
        members = [float(r["dH_pred_m0"]), float(r["dH_pred_m1"])]
        assert float(r["dH_pred_eV"]) == pytest.approx(np.mean(members), abs=1e-5)
        assert float(r["dH_std_eV"]) == pytest.approx(np.std(members), abs=1e-5)


def test_cli_ensemble_members_equal_plain_trainings_with_their_seeds(trained) -> None:
    """Member k of ``--ensemble N --seed S`` is the expert ``--seed S+k`` trains."""
    members = as_members(load_model(trained["ens"]))
    for member, plain in zip(members, (load_model(trained["plain3"]), load_model(trained["plain4"]))):
        mine, theirs = member.state_dict(), plain.state_dict()
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), key


def host_cif(tiny) -> Path:  # noqa: F811
    return tiny.root / "witman2023_vacancies" / "structures" / f"{tiny.ids[1]}.cif"


def predict_rows(capsys, reg, ref: str, cif: Path) -> tuple[list[dict], str]:  # noqa: F811
    capsys.readouterr()
    rc = main(["predict", "--expert", ref, "--registry", str(reg.root), "--structure", str(cif), "--all-sites",
               "--format", "csv"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return list(csv.DictReader(io.StringIO(captured.out))), captured.err


def test_predict_with_an_ensemble_reports_mean_and_std(trained, tiny, reg, capsys) -> None:  # noqa: F811
    cif = host_cif(tiny)
    rows, err = predict_rows(capsys, reg, trained["ens"].ref, cif)
    assert f"expert: {trained['ens'].ref} (2-member ensemble)" in err
    assert rows and set(rows[0]) == {"site", "element", "wyckoff", "dH_pred_eV", "dH_std_eV"}
    loaded = load_expert(trained["ens"].ref, reg.registry)
    sites = [int(r["site"]) for r in rows]
    members = predict_packed_members(loaded, featurize_host_sites(loaded, read_structure(cif), sites, "h"))
    assert members.shape == (2, len(sites))
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in rows], members.mean(0), atol=1e-4)
    np.testing.assert_allclose([float(r["dH_std_eV"]) for r in rows], members.std(0), atol=1e-4)
    # a single expert has no std column
    plain_rows, _ = predict_rows(capsys, reg, trained["plain3"].ref, cif)
    assert "dH_std_eV" not in plain_rows[0]
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in plain_rows], members[0], atol=1e-4)


def test_composed_ensemble_equals_the_trained_one(trained, tiny, reg, capsys) -> None:  # noqa: F811
    rc = main(["expert", "ensemble", trained["plain3"].ref, trained["plain4"].ref, "--name", "composed",
               "--registry", str(reg.root)])
    assert rc == 0
    entry = reg.registry.resolve("expert/composed")
    assert entry.parents == [trained["plain3"].ref, trained["plain4"].ref, "advisor/adv8:1"]
    assert entry.card["metrics"]["ensemble_size"] == 2 and entry.primary_metric is None
    assert entry.card["notes"]["how_trained"] == (f"composed, no training: adex expert ensemble {trained['plain3'].ref} "
                                                  f"{trained['plain4'].ref} --name composed")
    cif = host_cif(tiny)
    composed, _ = predict_rows(capsys, reg, entry.ref, cif)
    trained_rows, _ = predict_rows(capsys, reg, trained["ens"].ref, cif)
    assert composed == trained_rows


def test_composing_experts_with_different_advisors_is_a_one_line_error(tiny, reg, capsys) -> None:  # noqa: F811
    from conftest import assert_one_line_error

    assert train(tiny, reg, "--epochs", "1", "--set", "name=other", "--advisors", "adv12") == 0
    assert train(tiny, reg, "--epochs", "1", "--set", "name=mine") == 0
    capsys.readouterr()
    rc = main(["expert", "ensemble", "expert/other", "expert/mine", "--registry", str(reg.root)])
    assert_one_line_error(rc, capsys.readouterr().err, "advisors", "advisor/adv8:1")


def test_ensemble_of_one_is_refused(capsys) -> None:
    rc = main(["expert", "train", "--ensemble", "0", "--advisors", "none"])
    assert rc == 2
    assert "ensemble" in capsys.readouterr().err


def test_ensemble_trained_on_everything_registers_with_its_training_error(tiny, reg, capsys) -> None:  # noqa: F811
    """No validation and no test set (a model to ship): the members' training MAE is the
    only score, and registration must not fail after the training is done."""
    rc = main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY, "--advisors", "adv8",
               "--epochs", "2", "--ensemble", "2", "--set", "training.test_fraction=0.0", "--set", "training.val_fraction=0",
               "--set", "name=everything"])
    assert rc == 0, capsys.readouterr().err
    entry = reg.registry.resolve("expert/everything")
    members = entry.card["metrics"]["members"]
    assert entry.card["metrics"]["test"] is None and entry.card["metrics"]["val"] is None
    assert entry.primary_metric == pytest.approx(("train_mae", np.mean([m["train"]["mae"] for m in members])))
