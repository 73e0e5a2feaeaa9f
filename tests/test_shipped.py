"""The models shipped in the built-in store: intact, loadable, and the default expert
predicts with no training and no --expert flag."""
from __future__ import annotations

import json

import numpy as np
import pytest

from adex.checkpoint import load_model
from adex.cli import main
from adex.registry import Registry
from conftest import SHIPPED_STORE, rocksalt

pytestmark = pytest.mark.skipif(not SHIPPED_STORE.is_dir(), reason="no built-in store in this checkout")


@pytest.fixture()
def shipped(monkeypatch, adex_home) -> Registry:
    monkeypatch.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))
    return Registry()


def test_every_shipped_model_verifies_and_loads(shipped: Registry) -> None:
    entries = [e for e in shipped.list() if e.store == "builtin"]
    assert entries, "the built-in store is empty"
    for entry, problem in shipped.verify():
        assert problem is None, f"{entry.ref}: {problem}"
    for entry in entries:
        card = entry.card
        assert card["notes"]["how_trained"], entry.ref  # how it was trained is recorded
        model = load_model(entry)
        assert not model.training


def test_shipped_advisors_predict_sensible_values(shipped: Registry) -> None:
    from adex.advisors.embed import embed_structures

    mgo = rocksalt(4.21)
    for name, low, high in (("bandgap", 2.0, 9.0), ("eform", -4.0, -1.5)):
        try:
            entry = shipped.resolve(f"builtin::{name}")
        except Exception:
            pytest.skip(f"advisor {name} not shipped in this checkout")
        value = float(embed_structures(load_model(entry), [mgo]).prediction[0])
        assert low < value < high, (name, value)  # MgO: gap 4.4 eV (PBE), eform -3.0 eV/atom


def test_shipped_descriptor_advisor_embeds_every_site(shipped: Registry) -> None:
    """builtin::advisor/descriptors: standardised on 200 MP crystals; equivalent sites get
    equal rows, Mg and O sites different ones."""
    try:
        entry = shipped.resolve("builtin::advisor/descriptors")
    except Exception:
        pytest.skip("descriptor advisor not shipped in this checkout")
    assert entry.card["standardization"]["n_structures"] == 200
    atom, crystal = load_model(entry).embed_structures([rocksalt(4.21)])  # Mg 0-3, O 4-7
    assert atom.shape == (8, entry.card["embedding_width"]) and crystal.shape == (1, atom.shape[1])
    assert np.isfinite(atom).all() and np.abs(atom).max() > 0
    np.testing.assert_allclose(atom[:4], np.repeat(atom[:1], 4, axis=0), atol=1e-6)
    np.testing.assert_allclose(atom[4:], np.repeat(atom[4:5], 4, axis=0), atol=1e-6)
    assert not np.allclose(atom[0], atom[4])


def test_default_expert_predicts_without_flags(shipped: Registry, data_dir, capsys) -> None:
    try:
        shipped.resolve("builtin::expert/vacancy")
    except Exception:
        pytest.skip("no shipped expert in this checkout")
    cif = data_dir / "witman2023_vacancies" / "structures" / "0009491-O1.cif"
    assert main(["predict", "--structure", str(cif), "--site", "0", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "expert: builtin::expert/vacancy:" in captured.err  # the default is named with its version
    value = json.loads(captured.out)["predictions"][0]["dH_pred_eV"]
    assert 0.0 < value < 15.0 and np.isfinite(value)


def test_shipped_mixed_expert_is_the_mean_of_its_two_parents(shipped: Registry, data_dir, capsys) -> None:
    """builtin::expert/vacancy-mixed: the 6 members of the default vacancy:9 (no potential
    energies) and vacancy-delta:2 (CHGNet's vacancy energy added), each fed its own inputs."""
    pytest.importorskip("chgnet.model", reason="vacancy-delta needs the optional CHGNet package")
    try:
        entry = shipped.resolve("builtin::expert/vacancy-mixed")
    except Exception:
        pytest.skip("no shipped mixed expert in this checkout")
    cif = data_dir / "witman2023_vacancies" / "structures" / "0009491-O1.cif"

    def predict(ref: str) -> float:
        assert main(["predict", "--expert", ref, "--structure", str(cif), "--site", "0", "--format", "json"]) == 0
        return json.loads(capsys.readouterr().out)["predictions"][0]["dH_pred_eV"]

    parents = entry.card["parents"][:2]
    assert parents == ["builtin::expert/vacancy:9", "builtin::expert/vacancy-delta:2"]
    assert predict(entry.ref) == pytest.approx((predict(parents[0]) + predict(parents[1])) / 2, abs=2e-4)


def test_default_falls_back_to_the_core_expert_without_chgnet(shipped: Registry, data_dir, capsys, monkeypatch) -> None:
    """If the default expert needs CHGNet and it is not installed, prediction still works
    with the best shipped expert that needs no optional package, and says so."""
    import adex.advisors.chgnet
    from adex.errors import MissingExtraError

    try:
        entry = shipped.resolve("builtin::expert/vacancy")
        shipped.resolve("builtin::expert/vacancy-core")
    except Exception:
        pytest.skip("no shipped default / core expert in this checkout")
    if not any("chgnet" in parent for parent in entry.card.get("parents", [])):
        pytest.skip("the shipped default does not need CHGNet")

    def missing():
        raise MissingExtraError(adex.advisors.chgnet.INSTALL_HINT)

    monkeypatch.setattr(adex.advisors.chgnet, "_chgnet_class", missing)
    cif = data_dir / "witman2023_vacancies" / "structures" / "0009491-O1.cif"
    assert main(["predict", "--structure", str(cif), "--site", "0", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "note:" in captured.err and "adex[chgnet]" in captured.err
    assert "expert: builtin::expert/vacancy-core:" in captured.err
    assert 0.0 < json.loads(captured.out)["predictions"][0]["dH_pred_eV"] < 15.0
    # asking for the default explicitly is an error naming the missing package, not a silent switch
    assert main(["predict", "--expert", "builtin::expert/vacancy", "--structure", str(cif), "--site", "0"]) == 2
    assert "adex[chgnet]" in capsys.readouterr().err


def test_lazy_advisor_reports_a_missing_chgnet_before_the_run(shipped: Registry, monkeypatch) -> None:
    """predict --cache loads advisors lazily; a missing CHGNet is still found at load time
    (so the default can fall back), without importing CHGNet."""
    import importlib.util

    from adex.checkpoint import LazyModel, lazy_model
    from adex.errors import MissingExtraError

    try:
        entry = shipped.resolve("builtin::advisor/chgnet")
    except Exception:
        pytest.skip("no shipped CHGNet advisor in this checkout")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "chgnet" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"adex\[chgnet\]"):
        lazy_model(entry)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    if real("chgnet") is not None:
        model = lazy_model(entry)
        assert isinstance(model, LazyModel) and not model.is_loaded


def test_load_default_expert_only_falls_back_for_a_missing_extra(monkeypatch) -> None:
    import adex.expert.loading as predict
    from adex.errors import MissingExtraError, RegistryError

    calls = []

    def fake(ref, registry, lazy_advisors=False):
        calls.append(ref)
        if ref == predict.DEFAULT_EXPERT:
            raise MissingExtraError("needs chgnet")
        return type("Loaded", (), {"entry": type("E", (), {"ref": "builtin::expert/vacancy-core:1"})()})()

    monkeypatch.setattr(predict, "load_expert", fake)
    expert, note = predict.load_default_expert(None)
    assert calls == [predict.DEFAULT_EXPERT, predict.CORE_EXPERT] and "needs chgnet" in note and "vacancy-core:1" in note

    def broken(ref, registry, lazy_advisors=False):
        raise RegistryError("tampered")

    monkeypatch.setattr(predict, "load_expert", broken)
    with pytest.raises(RegistryError, match="tampered"):
        predict.load_default_expert(None)
