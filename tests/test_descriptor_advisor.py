"""The descriptor advisor: the descriptor baseline's features of every site, standardised
on MP crystals, registered like any advisor; an expert trains and predicts with it and
its training caches the (slow) per-host descriptors."""
from __future__ import annotations

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from adex.checkpoint import load_model
from adex.cli import main
from adex.errors import RegistryError
from conftest import shared_data_path
from test_expert import TINY, reg, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.fixture(scope="module")
def imported(reg):  # noqa: F811
    data = shared_data_path()
    if not (data / "mp_formation_energy" / "structures.tar.gz").is_file():
        pytest.skip(f"no MP structures at {data}")
    rc = main(["advisor", "import", "descriptors", "--data", str(data), "--n-structures", "4", "--registry", str(reg.root)])
    assert rc == 0
    return reg.registry.resolve("advisor/descriptors")


def rocksalt() -> Structure:
    return Structure(Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def perovskite() -> Structure:
    return Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def test_import_fits_the_standardisation_on_mp_crystals(imported) -> None:
    from adex.studies.baseline import feature_names

    std = imported.card["standardization"]
    assert std["dataset"] == "mp_formation_energy" and std["n_structures"] == 4 and std["n_sites"] >= 4
    assert imported.card["embedding_width"] == len(feature_names())
    advisor = load_model(imported)
    assert (advisor.scale.numpy() > 0).all() and np.isfinite(advisor.mean.numpy()).all()


def test_embeddings_are_the_standardised_descriptors_of_every_site(imported) -> None:
    from adex.studies.baseline import DescriptorFeaturizer

    advisor = load_model(imported)
    width = advisor.embedding_width
    atom, crystal = advisor.embed_structures([rocksalt(), perovskite()])
    assert atom.shape == (7, width) and crystal.shape == (2, width) and atom.dtype == np.float32
    assert np.isfinite(atom).all() and np.abs(atom).max() <= 8.0
    raw = DescriptorFeaturizer().featurize_sites(perovskite(), range(5))  # [5, F], NaN unknown
    expected = np.clip(np.nan_to_num((raw - advisor.mean.numpy()) / advisor.scale.numpy(), nan=0.0), -8, 8)
    np.testing.assert_allclose(atom[2:], expected, atol=1e-5)
    np.testing.assert_allclose(crystal[1], expected.mean(0), atol=1e-5)
    np.testing.assert_allclose(atom[4], atom[6], atol=1e-6)  # equivalent O sites, equal descriptors


def test_a_descriptor_set_that_changed_is_refused(imported) -> None:
    from adex.advisors.descriptors import DescriptorAdvisor

    advisor = load_model(imported)
    changed = DescriptorAdvisor(advisor.settings, advisor.feature_names[:-1] + ["something_else"])
    with pytest.raises(RegistryError, match="re-import"):
        changed.embed_structures([rocksalt()])


def test_an_expert_trains_and_predicts_with_it_and_caches_the_descriptors(imported, tiny, reg, capsys,  # noqa: F811
                                                                          monkeypatch) -> None:
    import adex.advisors.descriptors as descriptors

    calls = []
    raw = descriptors.DescriptorAdvisor.raw_descriptors
    monkeypatch.setattr(descriptors.DescriptorAdvisor, "raw_descriptors",
                        lambda self, structure: calls.append(len(structure)) or raw(self, structure))
    args = ["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
            "--advisors", "adv8,descriptors", "--split", "tiny", "--epochs", "1"]
    assert main([*args, "--set", "name=withdescriptors"]) == 0, capsys.readouterr().err
    first = len(calls)
    from adex.paths import cache_dir

    assert first > 0 and list((cache_dir() / "advisors").rglob("*.arrays"))
    entry = reg.registry.resolve("expert/withdescriptors")
    assert entry.parents == ["advisor/adv8:1", imported.ref]
    assert main([*args, "--set", "name=withdescriptors2"]) == 0
    assert len(calls) == first  # the second training read every host's descriptors from the cache
    host = tiny.root / "witman2023_vacancies" / "structures" / f"{tiny.ids[0]}.cif"
    capsys.readouterr()
    assert main(["predict", "--expert", "expert/withdescriptors", "--registry", str(reg.root),
                 "--structure", str(host), "--site", "0", "--format", "csv"]) == 0
    value = float(capsys.readouterr().out.splitlines()[1].split(",")[-1])
    assert np.isfinite(value)
