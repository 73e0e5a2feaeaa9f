"""``adex predict``: choosing vacancies (index, CIF label, fractional coordinates, every
distinct site, a table), output formats, featurizing each host once, and clean one-line
errors for bad inputs.

The expert used by most tests is an untrained in-memory :class:`Expert` (with one
advisor, random batch-norm statistics and a wide normaliser, so different vacancies get
clearly different predictions) registered in a module-scoped registry; one test runs the
whole path from ``adex expert train`` to ``adex predict``.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure
from pymatgen.io.cif import CifWriter
from torch import nn

import adex.expert.predict
import adex.io
from adex.advisors.model import Advisor, AdvisorModelConfig
from adex.checkpoint import WEIGHTS, model_files
from adex.cli import main
from adex.expert.model import AdvisorSlot, Expert, ExpertModelConfig
from adex.expert.loading import load_expert
from adex.expert.predict import featurize_host_sites, predict_packed
from adex.graphs import FeaturizerSettings
from adex.io import read_structure
from adex.registry import Registry
from adex.supercell import SupercellSettings, distinct_sites
from conftest import assert_one_line_error, randomize_batchnorm, shared_data_path

pytestmark = pytest.mark.usefixtures("shared_cache")

REPO_ROOT = Path(__file__).resolve().parents[1]
WITMAN = "witman2023_vacancies"
TINY_HOSTS = ("0009594", "0010541", "0160074", "0009684", "0289862")  # BaO, SrTiO3, SrFeO2, FeO, Ce2O3
TRAINING_ELEMENTS = ["Ba", "Ce", "Fe", "O", "Sr", "Ti"]


# --------------------------------------------------------------------------- helpers




def read_csv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text)))




# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def witman() -> Path:
    root = shared_data_path() / WITMAN
    if not (root / "vacancies.csv").is_file():
        pytest.skip(f"shared data not found at {root.parent}; set ADEX_DATA")
    return root


@pytest.fixture(scope="module")
def hosts(module_home: Path, witman: Path) -> Path:
    """Host files: SrTiO3 (5 atoms, CIF labels Ti1 Sr1 O1 O1 O1), FeO (P-1, O at 0 and 3),
    MgO (an element the expert never saw), garbage and disordered CIFs."""
    folder = module_home / "hosts"
    folder.mkdir()
    shutil.copy(witman / "structures" / "0010541-Ti1.cif", folder / "srtio3.cif")
    shutil.copy(witman / "structures" / "0009684-O1.cif", folder / "feo.cif")
    mgo = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    (folder / "mgo.cif").write_text(str(CifWriter(mgo)))
    (folder / "garbage.cif").write_text("hello\nthis is not a CIF file at all\n")
    text = (folder / "srtio3.cif").read_text()
    line = "Sr  Sr1       1.0  0.00000  0.00000  0.00000  1.0000"
    assert line in text
    (folder / "disordered.cif").write_text(text.replace(line, line[:-6] + "0.5000"))
    return folder


@pytest.fixture(scope="module")
def ctx(module_home: Path, hosts: Path) -> SimpleNamespace:
    """Registry with advisor/adv8:1 and expert/tiny:1 (an untrained, in-memory expert)."""
    root = module_home / "registry"
    registry = Registry(root)
    torch.manual_seed(0)
    advisor = Advisor(FeaturizerSettings(cutoff=5.0, max_neighbors=8), AdvisorModelConfig(atom_fea_len=8, n_conv=1, head_hidden=8),
                      "band_gap", "eV", mean=2.0, std=1.0)
    randomize_batchnorm(advisor, 1)
    adv = registry.register("advisor", "adv8", model_files(advisor.eval()), {"description": "test advisor"})
    slot = AdvisorSlot(adv.ref, 8, adv.files[WEIGHTS]["sha256"])
    torch.manual_seed(2)
    expert = Expert(FeaturizerSettings(cutoff=4.0), ExpertModelConfig(atom_fea_len=8, n_conv=2, adapter_width=4, head_hidden=8),
                    [slot], mean=5.0, std=20.0, supercell=SupercellSettings(min_image_distance=6.0).to_dict(),
                    training_elements=TRAINING_ELEMENTS)
    randomize_batchnorm(expert, 3)
    entry = registry.register("expert", "tiny", model_files(expert.eval()), {"description": "test expert"}, parents=[adv.ref])
    loaded = load_expert(entry.ref, registry)
    host = read_structure(hosts / "srtio3.cif")
    srtio3 = predict_packed(loaded, featurize_host_sites(loaded, host, list(range(5)), "srtio3.cif"))
    # the tests below can only tell sites apart if the model does: Ti, Sr and O differ clearly
    assert min(abs(srtio3[0] - srtio3[1]), abs(srtio3[0] - srtio3[2]), abs(srtio3[1] - srtio3[2])) > 0.01
    np.testing.assert_allclose(srtio3[2:], srtio3[2], atol=1e-5)  # the three O are equivalent
    feo = predict_packed(loaded, featurize_host_sites(loaded, read_structure(hosts / "feo.cif"), [0, 1, 2, 3], "feo.cif"))
    return SimpleNamespace(root=root, registry=registry, ref=entry.ref, advisor_ref=adv.ref, loaded=loaded,
                           srtio3=srtio3, feo=feo)


def predict(capsys, ctx, *args: str) -> tuple[int, str, str]:
    rc = main(["predict", "--expert", ctx.ref, "--registry", str(ctx.root), *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


@pytest.fixture()
def spies(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """Record the files read (adex.io._read_cell, under read_hosts), and calls to
    featurize_host_sites and featurize_vacancy."""
    calls = SimpleNamespace(read=[], hosts=[], vacancies=[])
    read, hosts_fn, vacancy_fn = adex.io._read_cell, adex.expert.predict.featurize_host_sites, adex.expert.predict.featurize_vacancy

    def spy_read(path):
        calls.read.append(Path(path).name)
        return read(path)

    def spy_hosts(expert, host, sites, host_id):
        calls.hosts.append((host_id, list(sites)))
        return hosts_fn(expert, host, sites, host_id)

    def spy_vacancy(host, site, *args, **kwargs):
        calls.vacancies.append(site)
        return vacancy_fn(host, site, *args, **kwargs)

    monkeypatch.setattr(adex.io, "_read_cell", spy_read)
    monkeypatch.setattr(adex.expert.predict, "featurize_host_sites", spy_hosts)
    monkeypatch.setattr(adex.expert.predict, "featurize_vacancy", spy_vacancy)
    return calls


# --------------------------------------------------------------------------- choosing vacancies
def test_one_site(capsys, ctx, hosts) -> None:
    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--site", "0")
    assert rc == 0, err
    assert out.splitlines()[0] == "site,element,wyckoff,dH_pred_eV"
    rows = read_csv(out)
    assert len(rows) == 1
    assert (rows[0]["site"], rows[0]["element"], rows[0]["wyckoff"]) == ("0", "Ti", "1b")
    assert float(rows[0]["dH_pred_eV"]) == pytest.approx(ctx.srtio3[0], abs=1e-4)
    assert f"expert: {ctx.ref}" in err and ctx.advisor_ref in err
    assert "warning" not in err  # Sr, Ti, O were all seen in training


def test_repeated_site_reads_and_featurizes_the_host_once(capsys, ctx, hosts, spies) -> None:
    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--site", "1", "--site", "4", "--site", "0")
    assert rc == 0, err
    rows = read_csv(out)
    assert [(r["site"], r["element"]) for r in rows] == [("1", "Sr"), ("4", "O"), ("0", "Ti")]
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in rows], ctx.srtio3[[1, 4, 0]], atol=1e-4)
    assert spies.read == ["srtio3.cif"]
    assert spies.hosts == [("srtio3.cif", [1, 4, 0])]
    assert sorted(spies.vacancies) == [0, 1, 4]


def test_site_label(capsys, ctx, hosts) -> None:
    for label, site, element in (("O1", 2, "O"), ("Sr1", 1, "Sr"), ("Ti1", 0, "Ti")):
        rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--site-label", label)
        assert rc == 0, err
        [row] = read_csv(out)
        assert (row["site"], row["element"]) == (str(site), element), label
        assert float(row["dH_pred_eV"]) == pytest.approx(ctx.srtio3[site], abs=1e-4)


def test_frac_coordinates(capsys, ctx, hosts) -> None:
    # atom 3 of srtio3.cif is O at (0.5, 1.0, 0.5): given wrapped, and slightly off
    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--frac", "0.5", "0.0", "0.5002")
    assert rc == 0, err
    [row] = read_csv(out)
    assert (row["site"], row["element"]) == ("3", "O")
    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--frac", "0", "0", "0")
    [row] = read_csv(out)
    assert (row["site"], row["element"]) == ("1", "Sr")
    assert float(row["dH_pred_eV"]) == pytest.approx(ctx.srtio3[1], abs=1e-4)


def test_all_sites_one_row_per_distinct_site(capsys, ctx, hosts) -> None:
    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--all-sites")
    assert rc == 0, err
    rows = read_csv(out)
    assert [(r["site"], r["element"], r["wyckoff"]) for r in rows] == [("0", "Ti", "1b"), ("1", "Sr", "1a"), ("2", "O", "3c")]
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in rows], ctx.srtio3[:3], atol=1e-4)

    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "feo.cif"), "--all-sites")
    assert rc == 0, err
    rows = read_csv(out)
    infos = distinct_sites(read_structure(hosts / "feo.cif"), 0.01)
    assert len(rows) == len(infos) == 3  # O (atoms 0 and 3), two inequivalent Fe
    assert [(int(r["site"]), r["element"], r["wyckoff"]) for r in rows] == [(i.index, i.element, i.wyckoff) for i in infos]
    assert [r["element"] for r in rows] == ["O", "Fe", "Fe"]
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in rows], ctx.feo[:3], atol=1e-4)


def test_json_format(capsys, ctx, hosts) -> None:
    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--site", "0", "--site", "2", "--format", "json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["expert"] == ctx.ref
    assert [(p["site"], p["element"], p["wyckoff"]) for p in data["predictions"]] == [(0, "Ti", "1b"), (2, "O", "3c")]
    np.testing.assert_allclose([p["dH_pred_eV"] for p in data["predictions"]], ctx.srtio3[[0, 2]], atol=1e-4)


# --------------------------------------------------------------------------- tables
def write_table(tmp_path: Path, hosts: Path, rows: list[list[str]], header: str = "structure,site,note") -> Path:
    folder = tmp_path / "tables"
    folder.mkdir(exist_ok=True)
    (tmp_path / "hosts").mkdir(exist_ok=True)
    for name in ("srtio3.cif", "feo.cif", "mgo.cif"):
        shutil.copy(hosts / name, tmp_path / "hosts" / name)
    table = folder / "vacancies.csv"
    table.write_text(header + "\n" + "".join(",".join(r) + "\n" for r in rows))
    return table


def test_table_relative_paths_extra_columns_and_one_featurization_per_host(capsys, ctx, hosts, tmp_path, monkeypatch, spies) -> None:
    feo_abs = str(tmp_path / "hosts" / "feo.cif")
    rows = [["../hosts/srtio3.cif", "0", "first"], ["../hosts/srtio3.cif", "2", "an O"], [feo_abs, "3", "feo O"],
            ["../hosts/srtio3.cif", "0", "again"], [feo_abs, "1", "feo Fe"], ["../hosts/srtio3.cif", "1", "Sr"]]
    table = write_table(tmp_path, hosts, rows)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths are relative to the table's folder, not the working directory
    rc, out, err = predict(capsys, ctx, "--input", str(table))
    assert rc == 0, err
    assert out.splitlines()[0] == "structure,site,note,dH_pred_eV,warnings"
    got = read_csv(out)
    assert [[r["structure"], r["site"], r["note"]] for r in got] == rows  # carried through, in order
    assert [r["warnings"] for r in got] == [""] * len(rows)  # elements the expert saw: no caveat
    expected = [ctx.srtio3[0], ctx.srtio3[2], ctx.feo[3], ctx.srtio3[0], ctx.feo[1], ctx.srtio3[1]]
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in got], expected, atol=1e-4)
    # each host read and featurized once, each distinct vacancy once
    assert sorted(spies.read) == ["feo.cif", "srtio3.cif"]
    assert sorted(spies.hosts) == [("feo.cif", [1, 3]), ("srtio3.cif", [0, 1, 2])]
    assert len(spies.vacancies) == 5
    assert "6 vacancies in 2 hosts" in err


def test_table_values_equal_single_site_values(capsys, ctx, hosts, tmp_path) -> None:
    table = write_table(tmp_path, hosts, [["../hosts/feo.cif", "0", "x"], ["../hosts/srtio3.cif", "4", "y"], ["../hosts/feo.cif", "2", "z"]])
    rc, out, err = predict(capsys, ctx, "--input", str(table))
    assert rc == 0, err
    from_table = [float(r["dH_pred_eV"]) for r in read_csv(out)]
    single = []
    for host, site in (("feo.cif", "0"), ("srtio3.cif", "4"), ("feo.cif", "2")):
        rc, out, err = predict(capsys, ctx, "--structure", str(tmp_path / "hosts" / host), "--site", site)
        assert rc == 0, err
        single.append(float(read_csv(out)[0]["dH_pred_eV"]))
    np.testing.assert_allclose(from_table, single, atol=1e-4)
    assert abs(single[0] - single[2]) > 1e-3  # O and Fe of FeO differ: the comparison means something


@pytest.fixture()
def dask_calls(monkeypatch: pytest.MonkeyPatch) -> list:
    """One host per chunk (so a few rows make several chunks and --workers 2 starts a
    Dask LocalCluster), and the calls of the Dask engine recorded."""
    pytest.importorskip("distributed")
    import adex.expert.screening

    calls = []
    engine = adex.expert.screening.predict_sites_dask

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return engine(*args, **kwargs)

    monkeypatch.setattr(adex.expert.predict, "CHUNK_VACANCIES", 1)
    monkeypatch.setattr(adex.expert.screening, "predict_sites_dask", spy)
    return calls


def test_table_with_dask_workers_equals_one_process(capsys, ctx, hosts, tmp_path, dask_calls) -> None:
    """--workers 2 (a Dask LocalCluster, the engine of adex screen) writes the same output
    as --workers 1 (in this process): rows, order, numbers and the warnings column."""
    rows = [["../hosts/srtio3.cif", "0", "a"], ["../hosts/feo.cif", "3", "b"], ["../hosts/mgo.cif", "1", "c"],
            ["../hosts/srtio3.cif", "2", "d"], ["../hosts/feo.cif", "1", "e"], ["../hosts/srtio3.cif", "1", "f"]]
    table = write_table(tmp_path, hosts, rows)
    rc, one, err = predict(capsys, ctx, "--input", str(table), "--batch-size", "1")
    assert rc == 0, err
    assert dask_calls == []  # --workers 1: in this process
    chunks = adex.expert.predict.host_chunks([("a", [0, 1]), ("b", [3]), ("c", [0])], 2)
    assert chunks == [[("a", [0, 1])], [("b", [3]), ("c", [0])]]  # hosts are never split
    rc, two, err = predict(capsys, ctx, "--input", str(table), "--workers", "2", "--batch-size", "1")
    assert rc == 0, err
    assert len(dask_calls) == 1 and dask_calls[0]["workers"] == 2  # 3 hosts, 3 chunks, 2 worker processes
    assert two == one  # the same CSV, byte for byte
    got = read_csv(two)
    assert [r["note"] for r in got] == ["a", "b", "c", "d", "e", "f"]
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in got if r["note"] != "c"],
                               [ctx.srtio3[0], ctx.feo[3], ctx.srtio3[2], ctx.feo[1], ctx.srtio3[1]], atol=1e-4)
    assert [bool(r["warnings"]) for r in got] == [False, False, True, False, False, False]
    assert "never seen" in got[2]["warnings"]
    assert "warning: mgo.cif: element(s) Mg never seen" in err  # the workers' caveats, shown by the driver


def test_dask_engine_gives_the_numbers_of_one_process(ctx, hosts, dask_calls) -> None:
    """predict_sites_dask (several chunks, 2 workers) returns what predict_sites returns in
    this process: same keys in the same order, same numbers (1e-6), every vacancy reported
    to on_progress (once per chunk), the same caveats, shown as warnings by the driver."""
    from adex.expert.predict import InputWarning, predict_sites
    from adex.expert.screening import predict_sites_dask

    jobs = [(str(hosts / "srtio3.cif"), [0, 1, 2]), (str(hosts / "mgo.cif"), [0, 1]), (str(hosts / "feo.cif"), [0, 1, 3])]
    progress_one, progress_two, caveats_one, caveats_two = [], [], {}, {}
    with pytest.warns(InputWarning, match="mgo.cif"):
        one = predict_sites(ctx.loaded, jobs, on_progress=progress_one.append, caveats=caveats_one)
    with pytest.warns(InputWarning, match="mgo.cif"):
        two = predict_sites_dask(ctx.loaded, jobs, workers=2, on_progress=progress_two.append, caveats=caveats_two,
                                 registry=str(ctx.root))
    assert list(two) == list(one) == [(path, site) for path, sites in jobs for site in sites]
    for key in one:
        np.testing.assert_allclose(two[key], one[key], rtol=0, atol=1e-6)
    assert sum(progress_two) == sum(progress_one) == 8 and len(progress_two) == 3  # one call per chunk
    assert caveats_two == caveats_one and "never seen" in caveats_one[str(hosts / "mgo.cif")]


def test_workers_without_dask_is_a_one_line_error(capsys, ctx, hosts, tmp_path, monkeypatch) -> None:
    """--workers 2 needs the screen extra (named, one line); --workers 1 imports no Dask."""
    import sys

    table = write_table(tmp_path, hosts, [["../hosts/srtio3.cif", "0", "a"], ["../hosts/feo.cif", "3", "b"]])
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if not installed
    rc, out, err = predict(capsys, ctx, "--input", str(table), "--workers", "2")
    assert_one_line_error(rc, err, "--workers 2", "dask[distributed]", "pip install 'adex[screen]'")
    rc, out, err = predict(capsys, ctx, "--input", str(table), "--scheduler", "tcp://127.0.0.1:1")
    assert_one_line_error(rc, err, "--scheduler", "pip install 'adex[screen]'")
    rc, out, err = predict(capsys, ctx, "--input", str(table), "--workers", "1")
    assert rc == 0, err
    assert [r["note"] for r in read_csv(out)] == ["a", "b"]
    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--site", "0", "--scheduler", "tcp://x:1")
    assert_one_line_error(rc, err, "--scheduler", "--input")


def test_cached_featurization_is_reused_and_content_addressed(capsys, ctx, hosts, tmp_path, monkeypatch, spies) -> None:
    """--cache: a rerun over the same files featurizes nothing and gives the same numbers;
    an edited file is a different entry."""
    monkeypatch.setenv("ADEX_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "own"
    shutil.copytree(hosts, folder)
    table = folder / "t.csv"
    table.write_text("structure,site\nsrtio3.cif,0\nfeo.cif,3\nsrtio3.cif,2\n")
    rc, first, err = predict(capsys, ctx, "--input", str(table), "--cache")
    assert rc == 0, err
    assert len(spies.vacancies) == 3 and len(list((tmp_path / "cache" / "predict").rglob("*.arrays"))) == 2
    assert len(list((tmp_path / "cache" / "advisors").rglob("*.arrays"))) == 2  # one embedding per host and advisor
    import adex.expert.advisor_features as expert_data

    def no_advisor_runs(*_args, **_kwargs):
        raise AssertionError("the advisor ran although its embeddings are cached")

    embed_hosts = expert_data.embed_hosts
    monkeypatch.setattr(expert_data, "embed_hosts", no_advisor_runs)
    import adex.checkpoint as checkpoint

    loaded_kinds = []
    load_model = checkpoint.load_model
    monkeypatch.setattr(checkpoint, "load_model", lambda entry: loaded_kinds.append(entry.kind) or load_model(entry))
    rc, again, err = predict(capsys, ctx, "--input", str(table), "--cache")
    assert rc == 0, err
    assert again == first and len(spies.vacancies) == 3  # nothing featurized or embedded the second time
    assert loaded_kinds == ["expert"]  # the advisor was not even loaded (lazy)
    monkeypatch.setattr(expert_data, "embed_hosts", embed_hosts)
    monkeypatch.setattr(checkpoint, "load_model", load_model)
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in read_csv(again)], [ctx.srtio3[0], ctx.feo[3], ctx.srtio3[2]],
                               atol=1e-4)
    # a different structure under the same name misses the cache
    (folder / "srtio3.cif").write_text((folder / "feo.cif").read_text())
    rc, edited, err = predict(capsys, ctx, "--input", str(table), "--cache")
    assert rc == 0, err
    assert len(spies.vacancies) == 5
    np.testing.assert_allclose(float(read_csv(edited)[0]["dH_pred_eV"]), ctx.feo[0], atol=1e-4)


def test_bad_host_in_a_worker_is_a_one_line_error(capsys, ctx, hosts, tmp_path, dask_calls) -> None:
    table = write_table(tmp_path, hosts, [["../hosts/srtio3.cif", "0", "a"], ["../hosts/feo.cif", "99", "b"]])
    rc, out, err = predict(capsys, ctx, "--input", str(table), "--workers", "2")
    assert_one_line_error(rc, err, "feo.cif", "99")  # raised in a Dask worker, reported by the driver
    assert len(dask_calls) == 1
    rc, out, err = predict(capsys, ctx, "--input", str(table), "--workers", "0")
    assert_one_line_error(rc, err, "--workers")


def test_table_to_output_file_and_json(capsys, ctx, hosts, tmp_path) -> None:
    table = write_table(tmp_path, hosts, [["../hosts/srtio3.cif", "1", "a"], ["../hosts/srtio3.cif", "3", "b"]])
    out_csv = tmp_path / "out" / "pred.csv"
    out_csv.parent.mkdir()
    rc, out, err = predict(capsys, ctx, "--input", str(table), "--output", str(out_csv))
    assert rc == 0, err
    assert out == ""  # results go to the file only
    rows = read_csv(out_csv.read_text())
    assert [r["note"] for r in rows] == ["a", "b"]
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in rows], ctx.srtio3[[1, 3]], atol=1e-4)
    rc, out, err = predict(capsys, ctx, "--input", str(table), "--format", "json")
    assert rc == 0, err
    data = json.loads(out)
    assert data["expert"] == ctx.ref
    assert [(p["structure"], p["site"], p["note"]) for p in data["predictions"]] == [("../hosts/srtio3.cif", "1", "a"), ("../hosts/srtio3.cif", "3", "b")]
    np.testing.assert_allclose([p["dH_pred_eV"] for p in data["predictions"]], ctx.srtio3[[1, 3]], atol=1e-4)


# --------------------------------------------------------------------------- unseen elements
def test_unseen_element_warns_but_predicts(capsys, ctx, hosts) -> None:
    rc, out, err = predict(capsys, ctx, "--structure", str(hosts / "mgo.cif"), "--all-sites")
    assert rc == 0, err
    rows = read_csv(out)
    assert [(r["element"], r["wyckoff"]) for r in rows] == [("Mg", "4a"), ("O", "4b")]
    assert all(np.isfinite(float(r["dH_pred_eV"])) for r in rows)
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "Mg" in warnings[0] and "mgo.cif" in warnings[0]
    assert "error" not in err


def test_unseen_element_warning_is_one_line(capsys, ctx, hosts, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    host = tmp_path / "magnesium_oxide_rocksalt_host.cif"
    shutil.copy(hosts / "mgo.cif", host)
    rc, out, err = predict(capsys, ctx, "--structure", str(host), "--site", "0")
    assert rc == 0, err
    [warning] = [line for line in err.splitlines() if line.startswith("warning:")]
    assert warning.rstrip().endswith("the prediction is an extrapolation"), err


# --------------------------------------------------------------------------- bad inputs
BAD_INPUTS = {
    "missing file": (["--structure", "{hosts}/nope.cif", "--site", "0"], ["nope.cif", "no such file"]),
    "garbage CIF": (["--structure", "{hosts}/garbage.cif", "--site", "0"], ["garbage.cif", "cannot parse"]),
    "site out of range": (["--structure", "{hosts}/srtio3.cif", "--site", "5"], ["site 5", "out of range", "0..4"]),
    "negative site": (["--structure", "{hosts}/srtio3.cif", "--site", "-1"], ["site -1", "out of range", "0..4"]),
    "disordered CIF": (["--structure", "{hosts}/disordered.cif", "--site", "0"], ["disordered.cif", "partial occupancy"]),
    "unknown expert": (["--expert", "expert/nosuch", "--structure", "{hosts}/srtio3.cif", "--site", "0"], ["nosuch"]),
    "unknown label": (["--structure", "{hosts}/srtio3.cif", "--site-label", "O7"], ["O7", "Ti1, Sr1, O1"]),
    "no atom at frac": (["--structure", "{hosts}/srtio3.cif", "--frac", "0.1", "0.1", "0.1"], ["no atom", "nearest is site 1"]),
    "no site given": (["--structure", "{hosts}/srtio3.cif"], ["--site"]),
    "structure and table": (["--structure", "{hosts}/srtio3.cif", "--input", "{hosts}/t.csv"], ["either"]),
    "no such table": (["--input", "{hosts}/nope.csv"], ["nope.csv", "no such file"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_a_one_line_error(capsys, ctx, hosts, case: str) -> None:
    args, needles = BAD_INPUTS[case]
    rc, out, err = predict(capsys, ctx, *(a.format(hosts=hosts) for a in args))
    assert_one_line_error(rc, err, *needles)
    assert out == ""


@pytest.mark.parametrize("header, rows, needles", [
    ("structure,where,note", [["../hosts/srtio3.cif", "0", "x"]], ["missing column 'site'"]),
    ("site,note", [["0", "x"]], ["missing column 'structure'"]),
    ("structure,site,note", [["../hosts/srtio3.cif", "0", "x"], ["../hosts/srtio3.cif", "two", "y"]], ["vacancies.csv:3", "'two'", "not an integer"]),
    ("structure,site,note", [["../hosts/srtio3.cif", "1.5", "x"]], ["'1.5'", "not an integer"]),
    ("structure,site,note", [["../hosts/srtio3.cif", "9", "x"]], ["site 9", "out of range"]),
    ("structure,site,note", [["../hosts/missing.cif", "0", "x"]], ["missing.cif", "no such file"]),
], ids=["no site column", "no structure column", "word", "float", "out of range", "missing host"])
def test_bad_table_is_a_one_line_error(capsys, ctx, hosts, tmp_path, header, rows, needles) -> None:
    table = write_table(tmp_path, hosts, rows, header)
    rc, out, err = predict(capsys, ctx, "--input", str(table))
    assert_one_line_error(rc, err, *needles)
    assert out == ""


def test_table_row_without_site_field_is_a_one_line_error(capsys, ctx, hosts, tmp_path) -> None:
    table = write_table(tmp_path, hosts, [["../hosts/srtio3.cif", "0", "x"], ["../hosts/srtio3.cif"]])
    try:
        rc, out, err = predict(capsys, ctx, "--input", str(table))
    except Exception as exc:  # the bug: an uncaught exception instead of "error: ..."
        pytest.fail(f"uncaught {type(exc).__name__}: {exc}")
    assert_one_line_error(rc, err, "vacancies.csv:3")


def test_empty_table_is_handled(capsys, ctx, hosts, tmp_path) -> None:
    table = write_table(tmp_path, hosts, [])
    try:
        rc, out, err = predict(capsys, ctx, "--input", str(table))
    except Exception as exc:
        pytest.fail(f"uncaught {type(exc).__name__}: {exc}")
    assert rc in (0, 2)
    if rc == 2:
        assert_one_line_error(rc, err, "vacancies.csv")
    else:
        assert out.splitlines() == ["structure,site,note,dH_pred_eV"]


def test_non_integer_site_flag_is_a_usage_error(capsys, ctx, hosts) -> None:
    with pytest.raises(SystemExit) as exc:
        predict(capsys, ctx, "--structure", str(hosts / "srtio3.cif"), "--site", "two")
    assert exc.value.code == 2
    assert "invalid int value: 'two'" in capsys.readouterr().err


# --------------------------------------------------------------------------- end to end
def test_trained_expert_end_to_end(capsys, ctx, hosts, witman, tmp_path) -> None:
    """``adex expert train`` (one advisor, one epoch) then ``adex predict`` with its ref."""
    data = tmp_path / "data" / WITMAN
    (data / "structures").mkdir(parents=True)
    with open(witman / "vacancies.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, [r for r in reader if r["host"] in TINY_HOSTS]
    with open(data / "vacancies.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        shutil.copy(witman / "structures" / f"{r['id']}.cif", data / "structures")
    registry_root = tmp_path / "registry"
    shutil.copytree(ctx.root, registry_root)
    rc = main(["expert", "train", "--data", str(data.parent), "--registry", str(registry_root), "--advisors", "adv8",
               "--epochs", "1", "--set", "name=e2e", "--set", "model.atom_fea_len=8", "--set", "model.n_conv=1",
               "--set", "model.head_hidden=8", "--set", "supercell.min_image_distance=6", "--set", "featurizer.cutoff=4",
               "--set", "training.batch_size=4"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    registry = Registry(registry_root)
    loaded = load_expert("expert/e2e", registry)
    assert loaded.entry.parents == [ctx.advisor_ref]
    assert set(loaded.model.training_elements) <= set(TRAINING_ELEMENTS) and "Mg" not in loaded.model.training_elements
    rc = main(["predict", "--expert", "expert/e2e:1", "--registry", str(registry_root),
               "--structure", str(hosts / "srtio3.cif"), "--all-sites"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    rows = read_csv(captured.out)
    expected = predict_packed(loaded, featurize_host_sites(loaded, read_structure(hosts / "srtio3.cif"), [0, 1, 2], "h"))
    np.testing.assert_allclose([float(r["dH_pred_eV"]) for r in rows], expected, atol=1e-4)
    assert "expert: expert/e2e:1 (advisors: advisor/adv8:1)" in captured.err


def test_unknown_oxidation_states_warn_but_predict(capsys, ctx, hosts, monkeypatch) -> None:
    """An expert that reads oxidation states still predicts a host without any; it says so."""
    torch.manual_seed(4)
    slot = ctx.loaded.model.advisors[0]
    expert = Expert(FeaturizerSettings(cutoff=4.0),
                    ExpertModelConfig(atom_fea_len=8, n_conv=2, adapter_width=4, head_hidden=8,
                                      oxidation_states=True, element_reference=True),
                    [slot], mean=0.0, std=2.0, supercell=SupercellSettings(min_image_distance=6.0).to_dict(),
                    training_elements=TRAINING_ELEMENTS)
    randomize_batchnorm(expert, 5)
    entry = ctx.registry.register("expert", "oxref", model_files(expert.eval()), {"description": "test"},
                                  parents=[ctx.advisor_ref])
    args = ["predict", "--expert", entry.ref, "--registry", str(ctx.root), "--structure", str(hosts / "srtio3.cif")]
    assert main([*args, "--site", "1"]) == 0
    known = capsys.readouterr()
    assert "warning:" not in known.err, known.err

    import adex.expert.data as data_module

    monkeypatch.setattr(data_module, "guess_oxidation_states", lambda s, *_: np.full(len(s), np.nan, dtype=np.float32))
    assert main([*args, "--site", "1"]) == 0
    unknown = capsys.readouterr()
    [warning] = [line for line in unknown.err.splitlines() if line.startswith("warning:")]
    assert "srtio3.cif" in warning and "oxidation states" in warning
    before, after = (float(out.strip().splitlines()[-1].split(",")[-1]) for out in (known.out, unknown.out))
    assert np.isfinite(after) and after != before


def test_table_files_of_one_crystal_are_one_host(capsys, ctx, hosts, witman, tmp_path, spies) -> None:
    """The Witman files 0010541-Ti1/-Sr1/-O1.cif are SrTiO3 with the atoms reordered (the
    vacated atom first): one host, featurized once; the Sr vacancy asked for in two files
    is one vacancy; values equal the single-file ones."""
    folder = tmp_path / "srtio3"
    folder.mkdir()
    for label in ("Ti1", "Sr1", "O1"):
        shutil.copy(witman / "structures" / f"0010541-{label}.cif", folder / f"{label}.cif")
    rows = [["Ti1.cif", "0", "Ti"], ["Sr1.cif", "0", "Sr"], ["O1.cif", "0", "O"], ["Ti1.cif", "1", "Sr again"]]
    table = folder / "table.csv"
    table.write_text("structure,site,note\n" + "".join(",".join(r) + "\n" for r in rows))
    rc, out, err = predict(capsys, ctx, "--input", str(table))
    assert rc == 0, err
    got = [float(r["dH_pred_eV"]) for r in read_csv(out)]
    np.testing.assert_allclose(got, ctx.srtio3[[0, 1, 2, 1]], atol=1e-4)  # srtio3.cif is Ti1.cif
    assert got[1] == got[3]
    assert sorted(spies.read) == ["O1.cif", "Sr1.cif", "Ti1.cif"]
    assert len(spies.hosts) == 1 and spies.hosts[0][0] == "Ti1.cif (and 2 other files of the same crystal)"
    assert sorted(spies.hosts[0][1]) == [0, 1, 2] and len(spies.vacancies) == 3
    # through the cache: the first run featurizes the crystal once as well, the rerun not at all
    for run in range(2):
        spies.hosts.clear()
        rc, out, err = predict(capsys, ctx, "--input", str(table), "--cache")
        assert rc == 0, err
        assert [float(r["dH_pred_eV"]) for r in read_csv(out)] == got
        assert len(spies.hosts) == (1 if run == 0 else 0)


def test_advisor_embeddings_are_memoised_in_the_process(ctx, hosts, monkeypatch) -> None:
    """Within one process an advisor embeds a host once (chunks of a table share hosts at
    their edges); a memo hit gives the same predictions, and the memo is bounded."""
    import adex.expert.advisor_features
    import adex.expert.advisor_features as memo_module
    import adex.expert.predict as predict_module

    calls = []
    embed = adex.expert.advisor_features.embed_hosts
    monkeypatch.setattr(adex.expert.advisor_features, "embed_hosts",
                        lambda advisor, structures, ids: calls.append(len(structures)) or embed(advisor, structures, ids))
    monkeypatch.setattr(memo_module, "_EMBEDDING_MEMO", memo_module.OrderedDict())
    packed = featurize_host_sites(ctx.loaded, read_structure(hosts / "srtio3.cif"), [0, 1, 2], "srtio3.cif")
    first = predict_module.predict_packed_members(ctx.loaded, packed)
    second = predict_module.predict_packed_members(ctx.loaded, packed)
    assert calls == [1]  # one host, embedded once
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first[0], ctx.srtio3[:3], atol=1e-5)
    monkeypatch.setattr(memo_module, "EMBEDDING_MEMO_HOSTS", 1)
    feo = featurize_host_sites(ctx.loaded, read_structure(hosts / "feo.cif"), [0], "feo.cif")
    predict_module.predict_packed_members(ctx.loaded, feo)  # evicts SrTiO3
    predict_module.predict_packed_members(ctx.loaded, packed)
    assert calls == [1, 1, 1] and len(memo_module._EMBEDDING_MEMO) == 1
