"""The descriptor baseline (``adex baseline``; :mod:`adex.studies.baseline` and its job
modules ``baseline_features``, ``baseline_model``): the feature matrix (shape, blocks, NaN
policy, the vacated site is the given index, independence of the atom order), its
on-disk cache, the loss choice on carved validation data, and the command on the
13-vacancy tiny Witman copy of ``test_expert`` (run folder files, folds that never share
ids, one-line errors).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from pymatgen.core import Structure

import adex.studies.baseline_features as features
from adex.cli import main
from adex.errors import ConfigError, DataError, StructureError
from adex.studies.baseline import check_folds
from adex.studies.baseline_features import FeatureTable, load_witman_features
from adex.studies.baseline_model import ModelSettings, carve_validation, fit_model, make_regressor
from adex.supercell.descriptors import BaselineSettings, DescriptorFeaturizer, feature_names
from adex.studies.splits import Fold
from adex.io import read_structure
from conftest import assert_one_line_error
from test_expert import reg, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("shared_cache")

N_VAC, N_SITE, N_HOST = 31, 120, 97


def witman(tiny) -> Path:  # noqa: F811
    return tiny.root / "witman2023_vacancies"


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def table(tiny) -> FeatureTable:  # noqa: F811
    return load_witman_features(tiny.root)


# --------------------------------------------------------------------------- features
def test_feature_matrix_shape_and_blocks(table, tiny) -> None:  # noqa: F811
    names = feature_names()
    assert table.X.shape == (13, N_VAC + N_SITE + N_HOST) == (13, len(names))
    assert table.names == names and len(set(names)) == len(names)
    assert list(table.ids) == tiny.ids
    np.testing.assert_allclose(table.targets, [float(r["dH_eV"]) for r in tiny.rows])
    blocks = {p: [k for k, n in enumerate(names) if n.startswith(p)] for p in ("vac_", "site_", "host_")}
    assert [len(blocks[p]) for p in ("vac_", "site_", "host_")] == [N_VAC, N_SITE, N_HOST]
    # always defined: the vacated element's Magpie properties, the host composition
    # statistics, the local distances, the coordination number
    always = [k for k, n in enumerate(names) if n.startswith(("vac_Number", "vac_Electronegativity", "host_mean_",
                                                              "host_minimum_", "host_stoich_", "site_dist_1",
                                                              "site_cn", "site_n_within_", "host_O_fraction"))]
    assert len(always) > 30 and np.isfinite(table.X[:, always]).all()
    assert np.isnan(table.X).mean() < 0.1
    # the vacated element column is the element of vacancies.csv
    z = table.X[:, names.index("vac_Number")]
    symbols = [r["element"] for r in tiny.rows]
    from pymatgen.core import Element

    assert z.tolist() == [Element(s).Z for s in symbols]
    # O vacancies: negative oxidation state, no ionization energy of the vacated anion
    is_o = np.array(symbols) == "O"
    assert (table.X[is_o, names.index("vac_oxidation")] < 0).all()
    assert np.isnan(table.X[is_o, names.index("vac_ie_n")]).all()


def test_vacated_site_is_the_given_index(tiny) -> None:  # noqa: F811
    """Site 0 vs a site of the other species of SrTiO3: the vacated-element block follows
    the index; the host block does not change; the same vacancy in a permuted cell gives
    the same row."""
    featurizer = DescriptorFeaturizer()
    names = featurizer.feature_names
    vid = next(r["id"] for r in tiny.rows if r["host"] == "0010541" and r["element"] == "O")
    host = read_structure(witman(tiny) / "structures" / f"{vid}.cif")
    assert host[0].specie.symbol == "O"
    other = next(i for i, s in enumerate(host) if s.specie.symbol == "Ti")
    X = featurizer.featurize_sites(host, [0, other])
    vac, host_block = featurizer.block("vac_"), featurizer.block("host_")
    assert X[0, names.index("vac_Number")] == 8 and X[1, names.index("vac_Number")] == 22
    assert not np.allclose(np.nan_to_num(X[0, vac]), np.nan_to_num(X[1, vac]))
    np.testing.assert_array_equal(X[0, host_block], X[1, host_block])
    assert X[0, names.index("vac_oxidation")] == -2 and X[1, names.index("vac_oxidation")] == 4
    np.testing.assert_array_equal(featurizer.featurize(host, other), X[1])
    # the same vacancy with the atoms written in another order
    order = np.r_[np.arange(1, len(host)), 0][::-1]
    permuted = Structure(host.lattice, [host[i].species for i in order], host.frac_coords[order])
    new_index = int(np.flatnonzero(order == 0)[0])
    np.testing.assert_allclose(featurizer.featurize(permuted, new_index), X[0], rtol=1e-9, atol=1e-9, equal_nan=True)
    with pytest.raises(StructureError, match="out of range"):
        featurizer.featurize(host, len(host))


def test_features_are_cached(tiny, tmp_path, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setenv("ADEX_CACHE", str(tmp_path / "cache"))
    calls = []
    real = features.featurize_records
    monkeypatch.setattr(features, "featurize_records", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    first = load_witman_features(tiny.root)
    assert not first.from_cache and len(calls) == 1
    assert first.cache_path.is_file() and first.cache_path.parent == tmp_path / "cache" / "baseline"
    second = load_witman_features(tiny.root)
    assert second.from_cache and len(calls) == 1  # not featurized again
    np.testing.assert_array_equal(second.X, first.X)
    assert second.names == first.names and second.featurize_seconds == pytest.approx(first.featurize_seconds)
    # other settings: another key
    other = load_witman_features(tiny.root, BaselineSettings(n_distances=4))
    assert not other.from_cache and len(calls) == 2 and other.X.shape[1] == first.X.shape[1] - 4


def test_loss_is_chosen_on_carved_validation_data() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 5))
    y = X[:, 0] + 0.1 * rng.normal(size=80)
    y[:4] += 30  # outliers
    hosts = np.repeat(np.arange(20), 4).astype(str)
    settings = ModelSettings(max_iter=30)
    model, loss, val = fit_model(X, y, hosts, settings, seed=0, grouped=True)
    assert set(val) == {"absolute_error", "squared_error"} and loss == min(val, key=val.get)
    assert model.get_params()["loss"] == loss and model.n_features_in_ == 5
    _, fixed, none = fit_model(X, y, hosts, ModelSettings(loss="squared_error", max_iter=5))
    assert fixed == "squared_error" and none == {}
    fit_idx, val_idx = carve_validation(hosts, 0.2, 0, grouped=True)
    assert not set(hosts[fit_idx]) & set(hosts[val_idx]) and len(val_idx) == 16
    with pytest.raises(ConfigError, match="loss"):
        ModelSettings(loss="huber")


def test_host_weight_power_weighs_hosts() -> None:
    """With nothing to split on, the squared-error model predicts the weighted mean of
    the targets: 0.25 for three vacancies of one host at 0 eV and one of another at 1 eV,
    0.5 with ``host_weight_power=1`` (every host weighs the same)."""
    X, y = np.zeros((4, 1)), np.array([0.0, 0.0, 0.0, 1.0])
    hosts = np.array(["a", "a", "a", "b"])
    for power, expected in ((0.0, 0.25), (1.0, 0.5)):
        settings = ModelSettings(loss="squared_error", max_iter=5, host_weight_power=power)
        model, _, _ = fit_model(X, y, hosts, settings)
        assert model.predict(X[:1])[0] == pytest.approx(expected)
    with pytest.raises(ConfigError, match="host weight power"):
        ModelSettings(host_weight_power=-1.0)


def test_no_host_weighting_fits_without_sample_weights() -> None:
    """Power 0 must fit exactly as before weights existed: scikit-learn's absolute-error
    trees differ even with weights of exactly 1 (measured: 0.445 -> 0.455 eV per compound)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 10))
    y = X[:, 0] + rng.normal(size=200)
    settings = ModelSettings(loss="absolute_error", max_iter=20)
    model, _, _ = fit_model(X, y, np.arange(200).astype(str), settings)
    plain = make_regressor(settings, "absolute_error", 0).fit(X, y)
    ones = make_regressor(settings, "absolute_error", 0).fit(X, y, sample_weight=np.ones(200))
    np.testing.assert_array_equal(model.predict(X), plain.predict(X))
    assert np.abs(ones.predict(X) - plain.predict(X)).max() > 1e-3  # why: weights of 1 are not a no-op


# --------------------------------------------------------------------------- command
def test_cli_single_split_writes_the_run_folder(tiny, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "run"
    assert main(["baseline", "--split", "tiny", "--data", str(tiny.root), "--out", str(out)]) == 0
    for name in ("folds.csv", "predictions.csv", "metrics.json", "config.yaml", "baseline.png"):
        assert (out / name).is_file(), name
    assert (out / "baseline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    folds = read_csv(out / "folds.csv")
    assert list(folds[0])[:7] == ["fold", "n_train", "n_test", "mae", "rmse", "mae_O", "mae_metal"]
    assert folds[0]["fold"] == "tiny" and int(folds[0]["n_train"]) == 9 and int(folds[0]["n_test"]) == 4
    preds = read_csv(out / "predictions.csv")
    assert list(preds[0]) == ["fold", "id", "element", "host", "dH_eV", "dH_pred_eV"]
    assert [p["id"] for p in preds] == tiny.hold
    metrics = json.loads((out / "metrics.json").read_text())
    err = np.abs(np.array([float(p["dH_pred_eV"]) - float(p["dH_eV"]) for p in preds]))
    assert metrics["n_folds"] == 1 and metrics["mae_mean"] == pytest.approx(err.mean(), rel=1e-5)
    assert metrics["n_features"] == N_VAC + N_SITE + N_HOST and metrics["featurize_seconds"] > 0
    assert metrics["pooled"]["n"] == 4 and "train_seconds" in metrics and metrics["settings"]["split"] == "tiny"
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["split"] == "tiny" and config["model"]["loss"] == "auto" and config["folds"] == ["tiny"]
    err_text = capsys.readouterr().err
    assert "MAE" in err_text and str(out) in err_text


def test_cli_host_weight_power_is_recorded_and_checked(tiny, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "run"
    assert main(["baseline", "--split", "tiny", "--data", str(tiny.root), "--out", str(out), "--host-weight-power", "0.5"]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["host_weight_power"] == 0.5
    capsys.readouterr()
    assert main(["baseline", "--split", "tiny", "--data", str(tiny.root), "--host-weight-power", "-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --host-weight-power must be >= 0, got -1.0"


def test_advisor_embeddings_are_added_per_vacated_site(tiny, reg, table, tmp_path, capsys) -> None:  # noqa: F811
    """--advisors: the descriptors + the advisor's embedding of the vacated site (its orbit
    representative in the canonical primitive cell) and of the host crystal."""
    from adex.studies.baseline_features import add_advisor_features
    from adex.expert.advisor_features import embed_hosts
    from adex.expert.train import load_advisors
    from adex.supercell import canonical_host

    advisors = load_advisors([reg.refs[8]], reg.registry)
    extended = add_advisor_features(table, witman(tiny), advisors)
    assert extended.X.shape == (len(table.ids), len(table.names) + 16)
    assert np.array_equal(extended.X[:, : len(table.names)], table.X, equal_nan=True)
    assert extended.names[len(table.names)] == "adv8_site_0" and extended.names[-1] == "adv8_crystal_7"
    k = 3  # one vacancy, embedded on its own: the same numbers
    can = canonical_host(read_structure(witman(tiny) / "structures" / f"{table.ids[k]}.cif"), 0)
    atom, crystal = embed_hosts(advisors[0][1], [can.primitive], ["one"])
    np.testing.assert_allclose(extended.X[k, len(table.names):], np.r_[atom[can.site], crystal[0]], rtol=1e-5, atol=1e-6)

    out = tmp_path / "run"
    assert main(["baseline", "--split", "tiny", "--data", str(tiny.root), "--registry", str(reg.root),
                 "--advisors", "adv8", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_features"] == N_VAC + N_SITE + N_HOST + 16
    assert yaml.safe_load((out / "config.yaml").read_text())["advisors"] == [reg.refs[8]]
    assert main(["report", str(out), "-o", str(tmp_path / "report.md")]) == 0
    assert f"matminer descriptors + embeddings of {reg.refs[8]}" in (tmp_path / "report.md").read_text()
    rc = main(["baseline", "--split", "tiny", "--data", str(tiny.root), "--registry", str(reg.root),
               "--advisors", "nosuchadvisor", "--out", str(tmp_path / "bad")])
    assert_one_line_error(rc, capsys.readouterr().err, "nosuchadvisor")


def test_cli_folds_never_share_ids(tiny, tmp_path) -> None:  # noqa: F811
    out = tmp_path / "group"
    assert main(["baseline", "--cv", "group", "--folds", "3", "--data", str(tiny.root), "--out", str(out)]) == 0
    preds = read_csv(out / "predictions.csv")
    assert sorted(p["id"] for p in preds) == sorted(tiny.ids)  # every vacancy tested exactly once
    fold_of_host: dict = {}
    for p in preds:
        assert fold_of_host.setdefault(p["host"], p["fold"]) == p["fold"]  # a host on one side only
    for f in read_csv(out / "folds.csv"):
        assert int(f["n_train"]) + int(f["n_test"]) == 13
    out = tmp_path / "loeo"
    assert main(["baseline", "--cv", "loeo", "--data", str(tiny.root), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_held_out_elements"]) == {"Ba", "Sr", "Ti", "Fe", "Ce"}
    # a fold sharing an id is refused
    table = FeatureTable(np.array(["a", "b"]), np.array(["h", "h"]), np.array(["O", "O"]), np.zeros(2),
                         np.zeros((2, 1)), ["x"], 0.0)
    with pytest.raises(DataError, match="both train and test"):
        check_folds([Fold("bad", ("a", "b"), ("b",))], table)
    with pytest.raises(DataError, match="'c'"):
        check_folds([Fold("bad", ("a",), ("c",))], table)


@pytest.mark.parametrize("args, needle", [
    (["--cv", "leave-none-out"], "leave-none-out"),
    (["--cv", "kfold@0.10"], "fraction"),
    (["--split", "nosuch"], "nosuch"),
    (["--cv", "kfold", "--split", "tiny"], "not both"),
    (["--loss", "huber"], "huber"),
    (["--workers", "0"], "--workers"),
    (["--potential-delta"], "--potential-delta"),
])
def test_bad_input_is_a_one_line_error(tiny, capsys, args, needle) -> None:  # noqa: F811
    rc = main(["baseline", "--data", str(tiny.root), *args])
    assert_one_line_error(rc, capsys.readouterr().err, needle)


def test_worker_processes_give_the_same_matrix(tiny, table) -> None:  # noqa: F811
    rows = features.read_rows(witman(tiny))
    X, names = features.featurize_records(witman(tiny), rows, BaselineSettings(), workers=2)
    assert names == table.names
    np.testing.assert_array_equal(X, table.X)


def test_baseline_table_is_the_descriptor_table_without_advisors(tiny, table) -> None:  # noqa: F811
    lines = []
    assembled = features.baseline_table(tiny.root, log=lines.append)
    np.testing.assert_array_equal(assembled.X, table.X)
    assert assembled.names == table.names and assembled.offset is None
    assert len(lines) == 1 and lines[0].startswith(f"descriptors: {len(table.ids)} vacancies")
    with pytest.raises(ConfigError, match="potential_delta needs a universal-potential advisor"):
        features.baseline_table(tiny.root, potential_delta=True)
    with pytest.raises(ConfigError, match=r"potential_delta needs a universal-potential advisor.*got: no-potential"):
        features.baseline_table(tiny.root, [(SimpleNamespace(ref="no-potential"), object())], potential_delta=True)
    with pytest.raises(ConfigError, match="relaxation needs potential_delta"):
        features.baseline_table(tiny.root, relaxation=True)
    with pytest.raises(ConfigError, match="relaxation steps need potential relaxation"):
        features.baseline_table(tiny.root, [(SimpleNamespace(ref="x"), object())], relaxation_steps=3)


def test_baseline_refuses_a_used_out_folder_before_featurizing(tmp_path, capsys) -> None:
    from adex.cli import main
    from conftest import assert_one_line_error

    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.json").write_text("{}")  # an earlier run's file
    rc = main(["baseline", "--cv", "published", "--data", str(tmp_path / "no-data"), "--out", str(out)])
    assert_one_line_error(rc, capsys.readouterr().err, "exists and is not empty", "--overwrite")
    assert (out / "metrics.json").read_text() == "{}"
