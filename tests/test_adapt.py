"""``adex expert adapt`` (issue 26 item 3): fine-tuning an expert's output head on a few
DFT labels and registering the result with its parent and the data's sha256. Seconds:
the shipped ``builtin::expert/vacancy:4`` (3 members, bandgap + eform advisors, no
optional package), tiny perovskite hosts."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import SHIPPED_STORE, assert_one_line_error
from test_trust import perovskite

EXPERT = "builtin::expert/vacancy:4"
pytestmark = pytest.mark.filterwarnings("ignore:.*carries no trust record")


@pytest.fixture(autouse=True)
def _shipped_store(monkeypatch) -> None:
    monkeypatch.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))


@pytest.fixture
def hosts(tmp_path) -> dict[str, Path]:
    paths = {}
    for name, structure in (("sto.cif", perovskite()), ("bto.cif", perovskite("Ba", "Ti", 4.0))):
        structure.to(filename=str(tmp_path / name))
        paths[name] = tmp_path / name
    return paths


def _predict(ref: str, path: Path, sites) -> np.ndarray:
    import adex

    return adex.load_expert(ref).predict(str(path), sites=list(sites))["dH_pred_eV"].to_numpy()


def _labels(tmp_path: Path, rows) -> Path:
    table = tmp_path / "labels" / "labelled.csv"
    table.parent.mkdir(exist_ok=True)
    table.write_text("structure,site,dH_eV\n" + "".join(f"../{name},{site},{float(value)!r}\n" for name, site, value in rows))
    return table


def test_zero_epochs_gives_the_parent_and_a_card_with_parent_and_data_sha256(hosts, tmp_path) -> None:
    from adex.expert.adapt import adapt_expert, register_adapted
    from adex.expert.loading import load_expert
    from adex.expert.trust import read_known
    from adex.registry import Registry

    parent = _predict(EXPERT, hosts["sto.cif"], [0, 1, 2])
    table = _labels(tmp_path, [("sto.cif", 0, parent[0] + 0.7), ("sto.cif", 2, parent[2] + 0.7)])
    registry = Registry()
    loaded = load_expert(EXPERT, registry)
    model, metrics = adapt_expert(loaded, read_known(table), epochs=0, lr=1e-3, seed=0)
    assert metrics["before"]["mae_eV"] == pytest.approx(0.7, abs=1e-5) == metrics["after"]["mae_eV"]
    entry = register_adapted(loaded, model, metrics, registry, table, {"epochs": 0, "lr": 1e-3, "seed": 0})
    assert entry.ref == "expert/vacancy-adapted:1"
    record = entry.card["adapted"]
    assert record["parent"] == EXPERT and entry.parents[0] == EXPERT
    assert record["data"]["sha256"] == hashlib.sha256(table.read_bytes()).hexdigest()
    assert record["settings"]["epochs"] == 0 and record["metrics"]["n_labels"] == 2
    assert "trust" not in entry.card
    # other vacancies (another host, and the unlabelled site) predict exactly like the parent
    np.testing.assert_array_equal(_predict(entry.ref, hosts["bto.cif"], [0, 1, 2]), _predict(EXPERT, hosts["bto.cif"], [0, 1, 2]))
    np.testing.assert_array_equal(_predict(entry.ref, hosts["sto.cif"], [1]), parent[1:2])


def test_a_shift_of_two_labels_is_learnt_and_the_card_records_before_and_after(hosts, tmp_path) -> None:
    from adex.expert.adapt import adapt_expert, register_adapted
    from adex.expert.loading import load_expert
    from adex.expert.trust import read_known
    from adex.registry import Registry

    parent = _predict(EXPERT, hosts["sto.cif"], [0, 2])
    labels = parent + 0.7
    table = _labels(tmp_path, [("sto.cif", 0, labels[0]), ("sto.cif", 2, labels[1])])
    registry = Registry()
    loaded = load_expert(EXPERT, registry)
    model, metrics = adapt_expert(loaded, read_known(table), epochs=50, lr=1e-3, seed=0)
    again, _ = adapt_expert(loaded, read_known(table), epochs=50, lr=1e-3, seed=0)
    for x, y in zip(model.state_dict().values(), again.state_dict().values()):
        assert np.array_equal(x.numpy(), y.numpy())  # deterministic
    entry = register_adapted(loaded, model, metrics, registry, table, {"epochs": 50, "lr": 1e-3, "seed": 0},
                             name="sto-adapted")
    after = _predict(entry.ref, hosts["sto.cif"], [0, 2])
    assert np.abs(after - labels).mean() <= 0.5 * np.abs(parent - labels).mean()
    fit = entry.card["adapted"]["metrics"]
    assert fit["before"]["mae_eV"] == pytest.approx(0.7, abs=1e-5)
    assert fit["after"]["mae_eV"] == pytest.approx(np.abs(after - labels).mean(), abs=1e-5)
    assert entry.card["metrics"]["adapt"]["after"]["mae_eV"] == fit["after"]["mae_eV"]
    assert entry.primary_metric is None  # a fit error never competes for "best"


def test_cli_adapt_registers_and_predict_runs_with_the_new_version(hosts, tmp_path, capsys) -> None:
    from adex.cli import main

    parent = _predict(EXPERT, hosts["sto.cif"], [2])
    table = _labels(tmp_path, [("sto.cif", 2, parent[0] + 0.7)])
    out = tmp_path / "run"
    assert main(["expert", "adapt", EXPERT, "--data", str(table), "--epochs", "20", "--out", str(out)]) == 0
    text = " ".join(capsys.readouterr().err.split())
    ref = json.loads((out / "registered.json").read_text())["ref"]
    assert ref == "expert/vacancy-adapted:1" and f"registered: {ref}" in text
    assert "MAE on the labels 0.700 eV before" in text
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["parent"] == EXPERT and saved["settings"]["epochs"] == 20 and saved["metrics"]["n_labels"] == 1
    assert main(["predict", "--expert", ref, "--structure", str(hosts["sto.cif"]), "--site", "2", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert abs(rows[0]["dH_pred_eV"] - (parent[0] + 0.7)) < 0.7


def test_bad_label_files_are_one_line_errors(hosts, tmp_path, capsys) -> None:
    from adex.cli import main

    empty = tmp_path / "empty.csv"
    empty.write_text("structure,site,dH_eV\n")
    rc = main(["expert", "adapt", EXPERT, "--data", str(empty)])
    assert_one_line_error(rc, capsys.readouterr().err, "nothing to adapt to")
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("structure,site\nsto.cif,0\n")
    rc = main(["expert", "adapt", EXPERT, "--data", str(no_column)])
    assert_one_line_error(rc, capsys.readouterr().err, "missing column 'dH_eV'")
    rc = main(["expert", "adapt", EXPERT, "--data", str(empty), "--epochs", "-1"])
    assert_one_line_error(rc, capsys.readouterr().err, "--epochs must be >= 0")


from test_trust import trusted  # noqa: E402,F401  (the shipped expert registered again with a small trust record)


def test_a_trust_record_is_carried_over_unchanged_and_said_so(trusted, hosts, tmp_path) -> None:
    import adex
    from adex.expert.adapt import adapt_expert, register_adapted
    from adex.expert.loading import load_expert
    from adex.expert.trust import ARRAYS_FILE, read_known

    _, parent_entry, _, registry, _ = trusted
    loaded = load_expert(parent_entry.ref, registry)
    table = _labels(tmp_path, [("sto.cif", 2, 5.0)])
    model, metrics = adapt_expert(loaded, read_known(table), epochs=5, lr=1e-3, seed=0)
    entry = register_adapted(loaded, model, metrics, registry, table, {"epochs": 5, "lr": 1e-3, "seed": 0})
    assert entry.parents[0] == parent_entry.ref and entry.card["adapted"]["parent"] == parent_entry.ref
    assert entry.card["trust"] == parent_entry.card["trust"]
    assert entry.read_file(ARRAYS_FILE) == parent_entry.read_file(ARRAYS_FILE)
    assert "calibrated for the parent" in entry.card["notes"]["trust"]
    rows = adex.load_expert(entry.ref, registry=registry.root).predict(perovskite(), sites=[2])
    assert {"dH_lo_eV", "dH_hi_eV", "in_domain"} <= set(rows.columns)
