"""The public Python API (``adex.load_expert(...).predict(...)``): every input form gives
the numbers of ``adex predict``, with its columns."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import adex
from conftest import REPO_ROOT, SHIPPED_STORE, perovskite

CORE = "builtin::expert/vacancy-core"


@pytest.fixture(autouse=True)
def _shipped_store(monkeypatch) -> None:
    monkeypatch.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))
        patch.setenv("ADEX_HOME", str(tmp_path_factory.mktemp("api_home")))
        return adex.load_expert(CORE)


def cli_rows(path: Path, *site_args: str, expert: str = CORE) -> list[dict]:
    from adex.cli import main

    buffer = io.StringIO()
    stdout, sys.stdout = sys.stdout, buffer
    try:
        assert main(["predict", "--expert", expert, "--structure", str(path), *site_args, "--format", "csv"]) == 0
    finally:
        sys.stdout = stdout
    return list(csv.DictReader(io.StringIO(buffer.getvalue())))


def test_importing_adex_loads_no_model_code() -> None:
    code = "import sys, adex; print(any(m.startswith(('adex.api', 'adex.expert', 'torch')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_structure_path_and_atoms_agree_with_the_cli(core, tmp_path: Path) -> None:
    structure = perovskite()
    path = tmp_path / "SrTiO3.cif"
    structure.to(filename=str(path))
    from_structure = core.predict(structure, sites=[0, 1, 2])
    from_path = core.predict(path, sites=[0, 1, 2])
    from pymatgen.io.ase import AseAtomsAdaptor

    from_atoms = core.predict(AseAtomsAdaptor.get_atoms(structure), sites=[0, 1, 2])
    assert list(from_structure.columns) == ["structure", "site", "element", "wyckoff", "defect", "dH_pred_eV", "dH_std_eV"]
    assert list(from_structure["defect"]) == ["v_Sr", "v_Ti", "v_O"]
    cli = cli_rows(path, "--site", "0", "--site", "1", "--site", "2")
    np.testing.assert_allclose(from_path["dH_pred_eV"], [float(r["dH_pred_eV"]) for r in cli], atol=1e-4)
    np.testing.assert_allclose(from_structure["dH_pred_eV"], from_path["dH_pred_eV"], atol=1e-6)
    np.testing.assert_allclose(from_atoms["dH_pred_eV"], from_path["dH_pred_eV"], atol=1e-6)
    assert (from_path["dH_std_eV"] >= 0).all() and core.n_members > 1
    assert from_path["structure"].iloc[0] == "SrTiO3.cif" and from_structure["structure"].iloc[0] == "SrTiO3"


def test_all_sites_single_index_and_labels(core, data_dir: Path) -> None:
    spinel = data_dir / "witman2023_vacancies" / "structures" / "0009491-O1.cif"
    every = core.predict(spinel)  # sites=None: every symmetry-distinct vacancy
    assert every.equals(core.predict(spinel, sites="all"))
    cli = cli_rows(spinel, "--all-sites")
    assert list(every["site"]) == [int(r["site"]) for r in cli]
    np.testing.assert_allclose(every["dH_pred_eV"], [float(r["dH_pred_eV"]) for r in cli], atol=1e-4)
    one = core.predict(spinel, sites=0)
    assert len(one) == 1 and one["element"].iloc[0] == "O" and one["dH_pred_eV"].iloc[0] == every["dH_pred_eV"].iloc[0]
    from adex.supercell import cif_site_labels

    label = cif_site_labels(spinel)[0]
    assert core.predict(spinel, sites=label)["site"].tolist() == [0]


def test_bad_inputs_are_one_clear_error(core, tmp_path: Path) -> None:
    from adex.errors import AdexError, StructureError

    with pytest.raises(StructureError, match="out of range"):
        core.predict(perovskite(), sites=9)
    with pytest.raises(StructureError, match="no site labelled 'Xx'"):
        core.predict(perovskite(), sites="Xx")
    with pytest.raises(AdexError, match="cannot read a structure from a dict"):
        core.predict({"not": "a structure"})
    with pytest.raises(AdexError, match="sites is empty"):
        core.predict(perovskite(), sites=[])
    bad = tmp_path / "bad.cif"
    bad.write_text("data_x\nnot a cif\n")
    with pytest.raises(StructureError):
        core.predict(bad, sites=0)


def test_an_ambiguous_label_is_refused_with_the_candidates(core) -> None:
    from adex.errors import StructureError

    structure = perovskite()
    for site in structure:
        site.label = "X1"  # Sr, Ti and O all labelled alike: three inequivalent orbits
    with pytest.raises(StructureError, match="names 3 inequivalent sites: site 0 \\(Sr, Wyckoff 1a\\), site 1 \\(Ti, Wyckoff 1b\\), "
                       "site 2 \\(O, Wyckoff 3c\\)"):
        core.predict(structure, sites="X1")


def test_defects_vacancy_objects_when_installed(core) -> None:
    defects = pytest.importorskip("pymatgen.analysis.defects.core")
    structure = perovskite()
    vacancy = defects.Vacancy(structure, structure[2])
    rows = core.predict([vacancy])
    np.testing.assert_allclose(rows["dH_pred_eV"], core.predict(structure, sites=2)["dH_pred_eV"], atol=1e-6)


def test_readme_python_example_runs(tmp_path: Path) -> None:
    """Every ```python block of the README runs as written (from the repository root)."""
    text = (REPO_ROOT / "README.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```python\n")[1:]]
    assert blocks, "the README has no Python example"
    for block in blocks:
        done = subprocess.run([sys.executable, "-c", block], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]


def test_known_labels_need_a_trust_record(core) -> None:
    """An expert without a trust record predicts as before (no interval columns, one note)
    and refuses DFT labels it cannot use; tests/test_trust.py covers experts with one."""
    from adex.errors import AdexError

    assert core.trust is None
    with pytest.raises(AdexError, match="carries no trust record"):
        core.predict(perovskite(), sites=[0], known={2: 4.0})
    assert "dH_lo_eV" not in core.predict(perovskite(), sites=[0]).columns
