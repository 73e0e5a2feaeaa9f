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
