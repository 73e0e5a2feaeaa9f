"""The CHGNet foundation-model advisor: import into the registry (weights hash-verified,
reload equal to the pip package's pretrained model), embeddings of the right shapes,
advisor features for the expert, and an expert trained with it."""
from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from adex.checkpoint import load_model
from adex.cli import main
from adex.expert.data import compute_advisor_features
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
    np.testing.assert_allclose(crystal, np.stack([d["crystal_fea"] for d in direct]), atol=1e-5)
    np.testing.assert_allclose(advisor.predict_structures(structures), [float(d["e"]) for d in direct], atol=1e-6)


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
