"""Shared fixtures: the shipped data, a tiny data directory, an isolated ADEX_HOME, and
small structure builders.

* ``data_dir``: the shared data (``$ADEX_DATA``, else ``<repo_root>/../shared/data``);
  tests that need it are skipped with a reason when it is absent.
* ``small_data``: a data directory of a few dozen structures (40 Materials Project
  crystals in a ``structures.tar.gz`` + 30 oxide band gap CIFs), built once per session,
  so training tests run on seconds of data. Treat it as read-only (copy before editing).
* autouse ``_isolated_home``: every test gets its own ``ADEX_HOME`` (so nothing is written
  to ``~/.adex``), ``ADEX_NO_PROGRESS=1`` and one torch thread (subprocesses too).
"""
from __future__ import annotations

import csv
import functools
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from pymatgen.core import Lattice, Structure

REPO_ROOT = Path(__file__).resolve().parents[1]

# The tests' tensors are tiny: extra threads only add overhead, and on a loaded 2-core
# machine OpenMP spin-waits make them 10-20x slower. Subprocesses get OMP_NUM_THREADS=1.
torch.set_num_threads(1)

#: Featurizer / model settings that keep CLI trainings to seconds.
TINY_OVERRIDES = [
    "--set", "model.atom_fea_len=8",
    "--set", "model.n_conv=1",
    "--set", "model.head_hidden=8",
    "--set", "model.dropout=0.0",
    "--set", "featurizer.cutoff=6.0",
    "--set", "featurizer.max_neighbors=8",
    "--set", "training.batch_size=8",
]

N_MP = 40
N_OXIDE = 30


SHIPPED_STORE = REPO_ROOT / "registry" / "builtin"


def shared_data_path() -> Path:
    """``$ADEX_DATA``, else ``<repo>/../shared/data`` (may not exist)."""
    env = os.environ.get("ADEX_DATA")
    return Path(env).expanduser() if env else (REPO_ROOT.parent / "shared" / "data").resolve()


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters for every BatchNorm."""
    import torch
    from torch import nn

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm1d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(1 + 0.2 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.2 * torch.randn(module.bias.shape, generator=generator))


def assert_one_line_error(rc: int, err: str, *needles: str) -> str:
    """Exit code 2, no traceback, exactly one ``error:`` line (the last) naming each needle."""
    assert rc == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared, read-only data directory (skip when it is not there)."""
    path = shared_data_path()
    needed = ("mp_formation_energy/structures.tar.gz", "oxide_bandgaps/id_prop.csv", "witman2023_vacancies/structures")
    missing = [n for n in needed if not (path / n).exists()]
    if missing:
        pytest.skip(f"shared data not found at {path} (missing {missing[0]}); set ADEX_DATA to the data directory")
    return path


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ADEX_HOME per test; no progress bars; no inherited cache location."""
    home = tmp_path_factory.mktemp("adex_home")
    monkeypatch.setenv("ADEX_HOME", str(home))
    monkeypatch.setenv("ADEX_NO_PROGRESS", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv("ADEX_CACHE", raising=False)
    # hermetic: an empty built-in store (tests of the shipped models use SHIPPED_STORE)
    monkeypatch.setenv("ADEX_BUILTIN_REGISTRY", str(tmp_path_factory.mktemp("empty_builtin")))
    return home


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    """ADEX_HOME / ADEX_CACHE for a module's module-scoped work (trainings and
    featurizations that several of its tests reuse)."""
    home = tmp_path_factory.mktemp(f"{request.module.__name__.rsplit('.', 1)[-1]}_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADEX_HOME", str(home))
        mp.setenv("ADEX_CACHE", str(home / "cache"))
        mp.setenv("ADEX_NO_PROGRESS", "1")
        yield home


@pytest.fixture
def shared_cache(_isolated_home: Path, module_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per test: its own ADEX_HOME, but the module's featurization cache (use with
    ``pytestmark = pytest.mark.usefixtures("shared_cache")``)."""
    monkeypatch.setenv("ADEX_CACHE", str(module_home / "cache"))


@pytest.fixture()
def adex_home(_isolated_home: Path) -> Path:
    """The ADEX_HOME of the current test."""
    return _isolated_home


def _read_id_prop(path: Path) -> list[tuple[str, str]]:
    with open(path, newline="") as handle:
        return [(row[0], row[1]) for row in csv.reader(handle) if row]


def _write_id_prop(path: Path, rows: list[tuple[str, str]]) -> None:
    path.write_text("".join(f"{i},{y}\n" for i, y in rows))


@pytest.fixture(scope="session")
def small_data(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny data directory: ``mp_formation_energy`` (40 small MP crystals in a tar.gz)
    and ``oxide_bandgaps`` (the 30 smallest CIFs), each with a matching ``id_prop.csv``."""
    root = tmp_path_factory.mktemp("small_data")

    # Materials Project: the first N_MP small members of the archive that have a target.
    mp_src = data_dir / "mp_formation_energy"
    targets = dict(_read_id_prop(mp_src / "id_prop.csv"))
    mp_dst = root / "mp_formation_energy"
    mp_dst.mkdir()
    rows: list[tuple[str, str]] = []
    with tarfile.open(mp_src / "structures.tar.gz") as src, tarfile.open(mp_dst / "structures.tar.gz", "w:gz") as dst:
        for member in src:
            stem = Path(member.name).stem
            if not member.isfile() or stem not in targets or member.size > 2500:
                continue
            data = src.extractfile(member).read()
            info = tarfile.TarInfo(member.name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
            rows.append((stem, targets[stem]))
            if len(rows) == N_MP:
                break
    _write_id_prop(mp_dst / "id_prop.csv", rows)

    # Oxide band gaps: the N_OXIDE smallest CIFs (few atoms: fast featurization).
    ox_src = data_dir / "oxide_bandgaps"
    gaps = _read_id_prop(ox_src / "id_prop.csv")
    sized = sorted(gaps, key=lambda r: ((ox_src / "structures" / f"{r[0]}.cif").stat().st_size, r[0]))[:N_OXIDE]
    chosen = {r[0] for r in sized}
    ox_dst = root / "oxide_bandgaps"
    (ox_dst / "structures").mkdir(parents=True)
    for item in chosen:
        (ox_dst / "structures" / f"{item}.cif").write_bytes((ox_src / "structures" / f"{item}.cif").read_bytes())
    _write_id_prop(ox_dst / "id_prop.csv", [r for r in gaps if r[0] in chosen])  # original order
    return root


# --------------------------------------------------------------------------- structures
def rocksalt(a: float = 4.21, species: tuple[str, str] = ("Mg", "O")) -> Structure:
    """Conventional rock-salt cell (8 atoms), e.g. MgO."""
    return _rocksalt(a, tuple(species)).copy()


@functools.cache
def _rocksalt(a: float, species: tuple[str, str]) -> Structure:  # from_spacegroup is slow-ish
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(a), list(species), [[0, 0, 0], [0.5, 0.5, 0.5]])


def jittered(structure: Structure, amplitude: float, seed: int = 0) -> Structure:
    """Every atom moved by exactly ``amplitude`` Å in a random direction."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(structure), 3))
    directions *= amplitude / np.linalg.norm(directions, axis=1, keepdims=True)
    return Structure(structure.lattice, structure.species, structure.cart_coords + directions, coords_are_cartesian=True)


def perovskite(a: float = 3.9) -> Structure:
    """Cubic SrTiO3 (5 atoms)."""
    return _perovskite(a).copy()


@functools.cache
def _perovskite(a: float) -> Structure:
    return Structure.from_spacegroup("Pm-3m", Lattice.cubic(a), ["Sr", "Ti", "O"], [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0]])


def rutile() -> Structure:
    """Rutile TiO2 (6 atoms, tetragonal)."""
    return _rutile().copy()


@functools.cache
def _rutile() -> Structure:
    return Structure.from_spacegroup("P4_2/mnm", Lattice.tetragonal(4.59, 2.96), ["Ti", "O"], [[0, 0, 0], [0.305, 0.305, 0]])


def rattled(structure: Structure, amplitude: float = 0.05, seed: int = 0) -> Structure:
    """A copy with every atom displaced randomly (breaks all distance ties)."""
    rng = np.random.default_rng(seed)
    out = structure.copy()
    for i in range(len(out)):
        out.translate_sites([i], rng.normal(scale=amplitude, size=3), frac_coords=False, to_unit_cell=False)
    return out


@pytest.fixture()
def mgo() -> Structure:
    return rocksalt()


@pytest.fixture(scope="session")
def witman_cif(data_dir: Path) -> Path:
    """A low-symmetry (P1) 10-atom host CIF whose atom 0 (the vacated O) pymatgen reorders."""
    return data_dir / "witman2023_vacancies" / "structures" / "0141559-O1.cif"


def first_mp_hosts(data_dir: Path, n: int) -> list[Structure]:
    """The first ``n`` crystals of the Materials Project archive of the shared data."""
    from adex.io import structure_from_text

    hosts = []
    with tarfile.open(data_dir / "mp_formation_energy" / "structures.tar.gz", "r|*") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".cif"):
                hosts.append(structure_from_text(archive.extractfile(member).read().decode(), "cif", source=member.name))
                if len(hosts) == n:
                    break
    return hosts
