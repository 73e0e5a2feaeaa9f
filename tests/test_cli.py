"""The command line end to end: ``adex advisor train|embed|predict`` on a tiny data set,
the registry card and run folder it leaves, integrity errors, help, and the rule that
nothing is written to the current directory."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from adex.advisors.embed import embed_structures
from adex.advisors.model import AdvisorConfig
from adex.checkpoint import load_model
from adex.cli import main
from adex.config import load_config
from adex.io import read_structure
from adex.registry import Registry

from conftest import REPO_ROOT, TINY_OVERRIDES, rocksalt


@dataclass
class Trained:
    registry: Path
    run: Path
    home: Path


def train_args(small_data: Path, *extra: str, epochs: int = 2, limit: int = 20) -> list[str]:
    return ["advisor", "train", "bandgap", "--epochs", str(epochs), "--limit", str(limit), "--data", str(small_data),
            *TINY_OVERRIDES, *extra]


@pytest.fixture(scope="module")
def trained(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """One tiny CLI training shared by the read-only tests of this module."""
    base = tmp_path_factory.mktemp("cli_trained")
    out = Trained(base / "registry", base / "run", base / "home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADEX_HOME", str(out.home))
        mp.setenv("ADEX_NO_PROGRESS", "1")
        rc = main(train_args(small_data, "--registry", str(out.registry), "--out", str(out.run)))
    assert rc == 0
    return out


@pytest.fixture()
def registry_copy(trained: Trained, tmp_path: Path) -> Path:
    """A private copy of the trained registry (for tests that change it)."""
    dst = tmp_path / "registry"
    shutil.copytree(trained.registry, dst)
    return dst


@pytest.fixture(scope="module")
def cif_pair(tmp_path_factory: pytest.TempPathFactory, witman_cif: Path) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("cifs")
    a, b = folder / "a.cif", folder / "b.cif"
    a.write_text(rocksalt().to(fmt="cif"))
    shutil.copy(witman_cif, b)
    return a, b


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("error: "), text
    assert "Traceback" not in text
    return lines[0]


# --------------------------------------------------------------------------- train
def test_train_registers_with_full_card(trained: Trained) -> None:
    registry = Registry(root=trained.registry)
    entry = registry.resolve("advisor/bandgap:1")
    assert registry.resolve("bandgap", kind="advisor").version == 1  # latest
    card = entry.card
    assert card["kind"] == "advisor" and card["name"] == "bandgap" and card["version"] == 1
    assert card["featurizer"]["cutoff"] == 6.0 and card["featurizer"]["max_neighbors"] == 8
    assert re.fullmatch(r"[0-9a-f]{64}", card["featurizer_fingerprint"])
    assert card["target"]["name"] == "band_gap" and card["target"]["unit"] == "eV"
    assert set(card["target"]["normalizer"]) == {"mean", "std"} and card["target"]["normalizer"]["std"] > 0
    assert card["dataset"]["name"] == "oxide_bandgaps"
    assert re.fullmatch(r"[0-9a-f]{64}", card["dataset"]["fingerprint"])
    assert card["dataset"]["n_structures"] == 20
    assert {"train", "val", "test", "unit", "best_epoch", "epochs_run"} <= set(card["metrics"])
    assert card["metrics"]["epochs_run"] == 2 and card["metrics"]["test"]["n"] >= 1
    assert card["primary_metric"]["name"] == "test_mae"
    assert card["primary_metric"]["value"] == pytest.approx(card["metrics"]["test"]["mae"])
    assert card["package_versions"]["torch"] and card["package_versions"]["numpy"]
    assert card["element_embedding"]["name"] == "cgcnn92"
    assert card["config"]["model"]["n_conv"] == 1 and card["config"]["training"]["limit"] == 20
    assert set(card["files"]) == {"model.json", "weights.safetensors"}
    for name, meta in card["files"].items():
        path = entry.path / name
        assert meta["sha256"] == sha256(path) and meta["bytes"] == path.stat().st_size
    assert Path(card["run_dir"]) == trained.run


def test_train_run_folder(trained: Trained) -> None:
    run = trained.run
    for name in ("config.yaml", "metrics.json", "history.csv", "parity.png", "learning_curve.png",
                 "test_predictions.csv", "registered.json"):
        assert (run / name).is_file(), name
    for png in ("parity.png", "learning_curve.png"):
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    config = load_config(AdvisorConfig, "advisors", str(run / "config.yaml"))
    assert config.model.atom_fea_len == 8 and config.training.epochs == 2 and config.training.limit == 20
    assert config.featurizer.cutoff == 6.0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["unit"] == "eV" and metrics["epochs_run"] == 2
    assert metrics["train"]["n"] + metrics["val"]["n"] + metrics["test"]["n"] == 20
    rows = list(csv.DictReader(io.StringIO((run / "history.csv").read_text())))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert {"train_loss", "val_mae", "lr"} <= set(rows[0])
    assert json.loads((run / "registered.json").read_text())["ref"] == "advisor/bandgap:1"
    # explicit --registry / --out: nothing went to ADEX_HOME's runs or registry
    assert not (trained.home / "runs").exists() and not (trained.home / "registry").exists()


def test_second_train_is_version_2(registry_copy: Path, small_data: Path, tmp_path: Path) -> None:
    rc = main(train_args(small_data, "--registry", str(registry_copy), "--out", str(tmp_path / "run2"),
                         "--tag", "mine", epochs=1))
    assert rc == 0
    registry = Registry(root=registry_copy)
    assert [e.version for e in registry.list("advisor") if e.store == "user"] == [1, 2]
    assert registry.resolve("advisor/bandgap").version == 2  # latest moved
    assert registry.resolve("advisor/bandgap@mine").version == 2
    assert registry.resolve("advisor/bandgap:1").card["metrics"]["epochs_run"] == 2  # version 1 untouched


def test_no_writes_to_current_directory(small_data: Path, tmp_path: Path, adex_home: Path,
                                        monkeypatch: pytest.MonkeyPatch, cif_pair: tuple[Path, Path]) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    assert main(train_args(small_data, epochs=1, limit=12)) == 0
    assert main(["advisor", "predict", "bandgap", str(cif_pair[0]), "--format", "csv"]) == 0
    assert list(cwd.iterdir()) == []
    runs = list((adex_home / "runs").iterdir())
    assert len(runs) == 1 and runs[0].name.startswith("advisor-bandgap-")
    assert (runs[0] / "metrics.json").is_file()
    assert (adex_home / "registry" / "advisor" / "bandgap" / "versions" / "1" / "weights.safetensors").is_file()
    assert any((adex_home / "cache").rglob("*.npz"))


# --------------------------------------------------------------------------- embed / predict
def test_embed_writes_npz(trained: Trained, cif_pair: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = cif_pair
    out = tmp_path / "out.npz"
    assert main(["advisor", "embed", "bandgap:1", str(a), str(b), "-o", str(out), "--registry", str(trained.registry)]) == 0
    n_a, n_b = len(read_structure(a)), len(read_structure(b))
    with np.load(out, allow_pickle=False) as data:
        assert data["crystal"].shape == (2, 8)
        assert data["atom"].shape == (n_a + n_b, 8)
        assert data["atom_ptr"].tolist() == [0, n_a, n_a + n_b]
        assert data["prediction"].shape == (2,)
        assert data["ids"].tolist() == [str(a), str(b)]
        assert str(data["unit"]) == "eV"
        model = load_model(Registry(root=trained.registry).resolve("advisor/bandgap:1"))
        direct = embed_structures(model, [read_structure(a), read_structure(b)])
        np.testing.assert_allclose(data["crystal"], direct.crystal, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(data["atom"], direct.atom, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(data["prediction"], direct.prediction, rtol=1e-6, atol=1e-6)


def _predict(trained_registry: Path, files, fmt: str, capsys) -> str:
    capsys.readouterr()
    rc = main(["advisor", "predict", "advisor/bandgap:1", *map(str, files), "--format", fmt, "--registry", str(trained_registry)])
    assert rc == 0
    return capsys.readouterr().out


def test_predict_formats(trained: Trained, cif_pair: tuple[Path, Path], capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # rich: no wrapping of long paths
    model = load_model(Registry(root=trained.registry).resolve("advisor/bandgap:1"))
    expected = embed_structures(model, [read_structure(p) for p in cif_pair]).prediction

    payload = json.loads(_predict(trained.registry, cif_pair, "json", capsys))  # stdout is pure JSON
    assert payload["model"] == "advisor/bandgap:1"
    rows = payload["predictions"]
    assert [r["structure"] for r in rows] == [str(p) for p in cif_pair]
    assert all(r["unit"] == "eV" for r in rows)
    np.testing.assert_allclose([r["band_gap"] for r in rows], expected, rtol=1e-9)

    lines = _predict(trained.registry, cif_pair, "csv", capsys).splitlines()
    assert lines[0] == "structure,band_gap_eV"
    parsed = list(csv.reader(lines[1:]))
    assert [r[0] for r in parsed] == [str(p) for p in cif_pair]
    np.testing.assert_allclose([float(r[1]) for r in parsed], expected, rtol=1e-5)

    table = _predict(trained.registry, cif_pair, "table", capsys)
    assert "band_gap" in table and "advisor/bandgap:1" in table
    for path, value in zip(cif_pair, expected):
        assert str(path) in table and f"{value:.4f}" in table


def test_registry_loads_are_reproducible(trained: Trained, cif_pair: tuple[Path, Path]) -> None:
    """Two loads of the stored model (by version and by alias) give identical outputs.
    (Registry vs in-memory model: test_advisors.py::test_train_advisor_registry_model_equals_in_memory.)"""
    registry = Registry(root=trained.registry)
    first = load_model(registry.resolve("advisor/bandgap:1"))
    second = load_model(registry.resolve("advisor/bandgap@latest"))
    structures = [read_structure(p) for p in cif_pair]
    a, b = embed_structures(first, structures), embed_structures(second, structures)
    np.testing.assert_array_equal(a.crystal, b.crystal)
    np.testing.assert_array_equal(a.prediction, b.prediction)
    assert np.isfinite(a.prediction).all()


# --------------------------------------------------------------------------- errors
def test_tampered_weights_exit_2(registry_copy: Path, cif_pair: tuple[Path, Path], capsys) -> None:
    weights = registry_copy / "advisor" / "bandgap" / "versions" / "1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # same size, one bit flipped inside the tensor data
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    rc = main(["advisor", "predict", "bandgap:1", str(cif_pair[0]), "--registry", str(registry_copy)])
    assert rc == 2
    captured = capsys.readouterr()
    message = one_line_error(captured.err)
    assert "sha256" in message and "tampered" in message and "weights.safetensors" in message
    assert captured.out == ""
    rc = main(["advisor", "embed", "bandgap:1", str(cif_pair[0]), "-o", str(registry_copy.parent / "x.npz"),
               "--registry", str(registry_copy)])
    assert rc == 2 and not (registry_copy.parent / "x.npz").exists()


def test_tampered_weights_message_is_the_integrity_error(registry_copy: Path, cif_pair: tuple[Path, Path], capsys) -> None:
    weights = registry_copy / "advisor" / "bandgap" / "versions" / "1" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    from adex.errors import IntegrityError

    with pytest.raises(IntegrityError):
        load_model(Registry(root=registry_copy).resolve("advisor/bandgap:1"))
    assert main(["advisor", "predict", "bandgap:1", str(cif_pair[0]), "--registry", str(registry_copy)]) == 2
    message = one_line_error(capsys.readouterr().err)
    assert message.startswith("error: advisor/bandgap:1: weights.safetensors: sha256 mismatch"), message


def test_truncated_weights_exit_2(registry_copy: Path, cif_pair: tuple[Path, Path], capsys) -> None:
    weights = registry_copy / "advisor" / "bandgap" / "versions" / "1" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-10])
    assert main(["advisor", "predict", "bandgap:1", str(cif_pair[0]), "--registry", str(registry_copy)]) == 2
    assert "tampered or truncated" in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("ref, needle", [("nosuch", "nosuch"), ("bandgap:7", "no version 7"), ("bandgap@nope", "nope"),
                                         ("expert/bandgap", "bandgap")])
def test_unknown_reference_exit_2(trained: Trained, cif_pair: tuple[Path, Path], capsys, ref: str, needle: str) -> None:
    capsys.readouterr()
    assert main(["advisor", "predict", ref, str(cif_pair[0]), "--registry", str(trained.registry)]) == 2
    assert needle in one_line_error(capsys.readouterr().err)


def test_bad_structure_inputs_exit_2(trained: Trained, tmp_path: Path, capsys) -> None:
    garbage = tmp_path / "garbage.cif"
    garbage.write_text("definitely not\na crystal\n")
    og = tmp_path / "og.cif"
    og.write_text(Structure(Lattice.cubic(4.0), ["Mg", "Og"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif"))
    for path, needle in ((garbage, "garbage.cif"), (tmp_path / "missing.cif", "no such file"), (og, "Og")):
        capsys.readouterr()
        rc = main(["advisor", "predict", "bandgap", str(path), "--registry", str(trained.registry)])
        assert rc == 2, path
        assert needle in one_line_error(capsys.readouterr().err)


def test_config_errors_exit_2(small_data: Path, capsys) -> None:
    assert main(train_args(small_data, "--set", "training.bogus=1")) == 2
    assert "bogus" in one_line_error(capsys.readouterr().err)
    assert main(["advisor", "train", "bandgap", "--data", str(small_data), "--set", "training.epochs=ten"]) == 2
    assert "training.epochs" in one_line_error(capsys.readouterr().err)
    assert main(["advisor", "train", "no_such_config"]) == 2
    assert "bandgap" in one_line_error(capsys.readouterr().err)


def test_missing_data_exit_2(tmp_path: Path, capsys) -> None:
    assert main(train_args(tmp_path)) == 2
    message = one_line_error(capsys.readouterr().err)
    assert "oxide_bandgaps" in message and "adex data download" in message


def test_bad_model_value_exit_2(small_data: Path, capsys) -> None:
    assert main(train_args(small_data, "--set", "model.pooling=bogus", limit=12)) == 2
    assert "model.pooling" in one_line_error(capsys.readouterr().err)


def test_train_on_everything_without_holdout(small_data: Path, tmp_path: Path, capsys) -> None:
    rc = main(train_args(small_data, "--set", "training.val_fraction=0", "--set", "training.test_fraction=0",
                         "--registry", str(tmp_path / "registry"), epochs=1, limit=12))
    if rc == 2:  # a clear refusal would be acceptable too
        one_line_error(capsys.readouterr().err)
    else:
        assert rc == 0
        assert Registry(root=tmp_path / "registry").resolve("advisor/bandgap:1").card["dataset"]["n_train"] == 12


# --------------------------------------------------------------------------- help
def test_help_in_process(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "advisor" in out and "usage: adex" in out
    assert main([]) == 1  # no command: help, exit 1
    assert main(["advisor"]) == 1
    with pytest.raises(SystemExit) as info:
        main(["advisor", "train", "--help"])
    assert info.value.code == 0 and "--set" in capsys.readouterr().out


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("where", ["repo_root", "elsewhere"])
def test_python_m_adex_help(where: str, tmp_path: Path) -> None:
    cwd = REPO_ROOT if where == "repo_root" else tmp_path
    result = _run([sys.executable, "-m", "adex", "--help"], cwd)
    assert result.returncode == 0, result.stderr
    assert "advisor" in result.stdout and "registry" in result.stdout
    result = _run([sys.executable, "-m", "adex", "advisor", "predict", "--help"], cwd)
    assert result.returncode == 0, result.stderr
    assert "--format" in result.stdout
    if where == "elsewhere":
        assert list(tmp_path.iterdir()) == []


def test_console_script_help(tmp_path: Path) -> None:
    exe = shutil.which("adex") or str(Path(sys.executable).parent / "adex")
    if not Path(exe).is_file():
        pytest.skip("the `adex` console script is not installed (pip install -e .)")
    result = _run([exe, "--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "advisor" in result.stdout
    version = _run([exe, "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("adex ")


def test_shortcut_flags_win_over_set() -> None:
    from adex.cli.app import build_parser
    from adex.cli.common import training_overrides

    args = build_parser().parse_args(["advisor", "train", "bandgap", "--set", "training.epochs=5", "--epochs", "1",
                                      "--seed", "3", "--limit", "9"])
    config = load_config(AdvisorConfig, "advisors", "bandgap", training_overrides(args))
    assert config.training.epochs == 1 and config.training.seed == 3 and config.training.limit == 9
