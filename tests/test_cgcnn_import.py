"""Importing the original CGCNN pretrained checkpoints as advisors (adex.advisors.cgcnn).

The reference is a compact dense reimplementation of txie-93/cgcnn (``model.py`` and the
neighbour lists of ``data.py``): [N, M] neighbour tensors, ``fc_full`` on
``cat(atom_in expanded, atom_nbr, nbr_fea)``, ``bn1`` over the (N*M, 2F) view, chunk,
sigmoid * softplus, sum over M, ``bn2``, ``softplus(atom_in + sum)``; mean pooling;
``softplus -> conv_to_fc -> softplus -> fc_out`` (the first softplus is in the original
code). It loads the checkpoint's own state dict strictly and reads CGCNN's own
``atom_init.json``, so nothing of adex is shared with it.

Needs the shared data (``$ADEX_DATA``, else ``<repo_root>/../shared/data``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pymatgen.core import Lattice, Structure
from torch import nn

from adex.errors import RegistryError

REPO_ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ["ADEX_DATA"]).expanduser() if os.environ.get("ADEX_DATA") else (REPO_ROOT.parent / "shared" / "data")
PRETRAINED = DATA / "cgcnn_pretrained"
FORMATION = PRETRAINED / "formation-energy-per-atom.pth.tar"
CLASSIFIER = PRETRAINED / "semi-metal-classification.pth.tar"
MP = DATA / "mp_formation_energy"

pytestmark = pytest.mark.skipif(
    not FORMATION.is_file(),
    reason=f"CGCNN pretrained checkpoints not found in {PRETRAINED} (set ADEX_DATA to the shared data directory)",
)


# --------------------------------------------------------------------------- original CGCNN, dense
class DenseConvLayer(nn.Module):
    """txie-93/cgcnn ``ConvLayer`` (dense [N, M] neighbour lists)."""

    def __init__(self, atom_fea_len: int, nbr_fea_len: int):
        super().__init__()
        self.atom_fea_len = atom_fea_len
        self.fc_full = nn.Linear(2 * atom_fea_len + nbr_fea_len, 2 * atom_fea_len)
        self.bn1 = nn.BatchNorm1d(2 * atom_fea_len)
        self.bn2 = nn.BatchNorm1d(atom_fea_len)

    def forward(self, atom_in_fea, nbr_fea, nbr_fea_idx):
        n, m = nbr_fea_idx.shape
        atom_nbr_fea = atom_in_fea[nbr_fea_idx, :]
        total = torch.cat([atom_in_fea.unsqueeze(1).expand(n, m, self.atom_fea_len), atom_nbr_fea, nbr_fea], dim=2)
        total = self.fc_full(total)
        total = self.bn1(total.view(-1, self.atom_fea_len * 2)).view(n, m, self.atom_fea_len * 2)
        nbr_filter, nbr_core = total.chunk(2, dim=2)
        summed = torch.sum(torch.sigmoid(nbr_filter) * F.softplus(nbr_core), dim=1)
        return F.softplus(atom_in_fea + self.bn2(summed))


class DenseCGCNN(nn.Module):
    """txie-93/cgcnn ``CrystalGraphConvNet`` (regression, one crystal per call)."""

    def __init__(self, orig_atom_fea_len: int, nbr_fea_len: int, atom_fea_len: int, n_conv: int, h_fea_len: int, n_h: int):
        super().__init__()
        self.embedding = nn.Linear(orig_atom_fea_len, atom_fea_len)
        self.convs = nn.ModuleList(DenseConvLayer(atom_fea_len, nbr_fea_len) for _ in range(n_conv))
        self.conv_to_fc = nn.Linear(atom_fea_len, h_fea_len)
        if n_h > 1:
            self.fcs = nn.ModuleList(nn.Linear(h_fea_len, h_fea_len) for _ in range(n_h - 1))
        self.fc_out = nn.Linear(h_fea_len, 1)

    def pooled(self, atom_fea, nbr_fea, nbr_fea_idx):
        atom_fea = self.embedding(atom_fea)
        for conv in self.convs:
            atom_fea = conv(atom_fea, nbr_fea, nbr_fea_idx)
        return atom_fea.mean(dim=0, keepdim=True)

    def forward(self, atom_fea, nbr_fea, nbr_fea_idx):
        crys = self.pooled(atom_fea, nbr_fea, nbr_fea_idx)
        crys = F.softplus(self.conv_to_fc(F.softplus(crys)))  # softplus before AND after, as in CGCNN
        for fc in getattr(self, "fcs", []):
            crys = F.softplus(fc(crys))
        return self.fc_out(crys)


def cgcnn_inputs(structure: Structure, radius: float = 8.0, max_num_nbr: int = 12, step: float = 0.2):
    """CGCNN's ``CIFData.__getitem__``: atom_init features, 12 nearest (padded) neighbours, Gaussians."""
    atom_init = json.loads((PRETRAINED / "atom_init.json").read_text())
    atom_fea = np.vstack([atom_init[str(site.specie.Z)] for site in structure])
    all_nbrs = [sorted(nbrs, key=lambda x: x[1]) for nbrs in structure.get_all_neighbors(radius, include_index=True)]
    idx, dist = [], []
    for nbr in all_nbrs:
        pad = max(max_num_nbr - len(nbr), 0)
        idx.append([x[2] for x in nbr[:max_num_nbr]] + [0] * pad)
        dist.append([x[1] for x in nbr[:max_num_nbr]] + [radius + 1.0] * pad)
    centres = np.arange(0, radius + step, step)
    nbr_fea = np.exp(-((np.array(dist)[..., None] - centres) ** 2) / step**2)
    return torch.Tensor(atom_fea), torch.Tensor(nbr_fea), torch.LongTensor(np.array(idx))


@pytest.fixture(scope="module")
def checkpoint() -> dict:
    return torch.load(FORMATION, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def dense(checkpoint) -> DenseCGCNN:
    state = checkpoint["state_dict"]
    model = DenseCGCNN(state["embedding.weight"].shape[1], state["convs.0.fc_full.weight"].shape[1] - 128,
                       64, 4, state["conv_to_fc.weight"].shape[0], 1)
    model.load_state_dict(state, strict=True)  # the replica has exactly CGCNN's parameters
    return model.eval()


@pytest.fixture(scope="module")
def imported(checkpoint):
    from adex.advisors.cgcnn import build_advisor

    model, _ = build_advisor(checkpoint, "formation_energy_per_atom", "eV/atom", str(FORMATION))
    return model


def dense_predict(dense: DenseCGCNN, checkpoint: dict, structure: Structure) -> float:
    with torch.no_grad():
        z = float(dense(*cgcnn_inputs(structure)))
    return z * checkpoint["normalizer"]["std"] + checkpoint["normalizer"]["mean"]


def adex_predict(model, structures: list[Structure]) -> np.ndarray:
    from adex.advisors.embed import embed_structures

    return embed_structures(model, structures).prediction


# --------------------------------------------------------------------------- structures
def rattled_perovskite(seed: int = 0) -> Structure:
    """SrTiO3 2x1x1 (10 atoms), every atom displaced ~0.05 Å: no distance ties."""
    s = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    s.make_supercell([2, 1, 1])
    rng = np.random.default_rng(seed)
    return Structure(s.lattice, s.species, s.cart_coords + rng.normal(0, 0.05, (len(s), 3)), coords_are_cartesian=True)


def rock_salt() -> Structure:
    """Ideal MgO: 6 O at 2.1 Å and 12 Mg tied at 2.98 Å around each Mg (CGCNN keeps 6 of them)."""
    return Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])


def mp_sample(n: int) -> tuple[list[Structure], np.ndarray]:
    """The first ``n`` structures of the MP archive with their formation energies (eV/atom)."""
    from adex.io import structure_from_text

    with open(MP / "id_prop.csv", newline="") as handle:
        targets = {row[0]: float(row[1]) for row in csv.reader(handle) if row}
    structures, values = [], []
    with tarfile.open(MP / "structures.tar.gz") as tar:
        for member in tar:
            stem = Path(member.name).name.removesuffix(".cif")
            if member.isfile() and member.name.endswith(".cif") and stem in targets:
                structures.append(structure_from_text(tar.extractfile(member).read().decode(), "cif", member.name))
                values.append(targets[stem])
                if len(structures) == n:
                    break
    return structures, np.array(values)


# --------------------------------------------------------------------------- fixtures
@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ADEX_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ADEX_NO_PROGRESS", "1")
    monkeypatch.setenv("COLUMNS", "250")
    return tmp_path / "home"


@pytest.fixture()
def reg(home: Path, tmp_path: Path):
    from adex.registry import Registry

    return Registry(builtin_root=tmp_path / "no-builtin")


# --------------------------------------------------------------------------- safety
def test_refuses_without_trust_and_unpickles_nothing(reg, monkeypatch: pytest.MonkeyPatch) -> None:
    from adex.advisors.cgcnn import import_cgcnn, import_cgcnn_dir

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load called without trust")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(RegistryError, match=r"is a pickled checkpoint; loading it can run code; pass --trust-pickle"):
        import_cgcnn(FORMATION, registry=reg)
    with pytest.raises(RegistryError, match="--trust-pickle"):
        import_cgcnn_dir(PRETRAINED, registry=reg)
    assert reg.list() == []
    assert not reg.root.exists() or not any(reg.root.rglob("*.safetensors"))


def test_loads_with_weights_only_first_and_falls_back_when_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    from adex.advisors.cgcnn import load_checkpoint

    checkpoint, loader = load_checkpoint(FORMATION, trust_pickle=True)
    assert loader == "torch.load(weights_only=True)"
    assert set(checkpoint) >= {"state_dict", "normalizer", "args"}
    if CLASSIFIER.is_file():  # numpy scalar inside: loads through the allowlist, no full unpickling
        assert load_checkpoint(CLASSIFIER, trust_pickle=True)[1] == "torch.load(weights_only=True)"

    real_load, calls = torch.load, []

    def restricted_fails(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        if kwargs.get("weights_only"):
            raise pickle.UnpicklingError("Weights only load failed")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", restricted_fails)
    checkpoint, loader = load_checkpoint(FORMATION, trust_pickle=True)
    assert calls == [True, False] and "weights_only=False" in loader
    assert "state_dict" in checkpoint


def test_classifier_is_refused(reg) -> None:
    from adex.advisors.cgcnn import NotRegressionError, import_cgcnn

    if not CLASSIFIER.is_file():
        pytest.skip("semi-metal-classification.pth.tar not shipped")
    with pytest.raises(NotRegressionError, match="classification checkpoint.*regression"):
        import_cgcnn(CLASSIFIER, registry=reg, trust_pickle=True)
    assert reg.list() == []


# --------------------------------------------------------------------------- mapping
def test_import_registers_advisor_with_card(reg, checkpoint) -> None:
    from adex.advisors.cgcnn import import_cgcnn

    entry = import_cgcnn(FORMATION, registry=reg, trust_pickle=True)
    assert entry.ref == "advisor/cgcnn-formation-energy:1"
    assert set(entry.files) == {"model.json", "weights.safetensors"}
    card = entry.card
    assert card["note"] == "imported, not trained by adex"
    assert card["source"]["file"] == FORMATION.name
    assert card["source"]["sha256"] == hashlib.sha256(FORMATION.read_bytes()).hexdigest()
    assert card["source"]["origin"]["commit"] == "f42ab233c4ee0c416879d6bc2d22a264418413ad"
    assert card["source"]["origin"]["folder"] == "pre-trained/"
    assert card["published"]["test_mae"] == 0.039 and card["primary_metric"] == {"name": "published_test_mae", "value": 0.039}
    assert card["target"]["name"] == "formation_energy_per_atom" and card["target"]["unit"] == "eV/atom"
    assert card["target"]["normalizer"]["mean"] == pytest.approx(checkpoint["normalizer"]["mean"], rel=1e-6)
    assert card["target"]["normalizer"]["std"] == pytest.approx(checkpoint["normalizer"]["std"], rel=1e-6)
    fz = card["featurizer"]
    assert (fz["cutoff"], fz["max_neighbors"], fz["gaussian_step"], fz["gaussian_width"], fz["element_embedding"]) == \
        (8.0, 12, 0.2, 0.2, "cgcnn92")
    assert fz["tie_tolerance"] < 0  # exactly 12 neighbours, as CGCNN
    assert card["cgcnn"]["args"]["atom_fea_len"] == 64 and card["cgcnn"]["args"]["task"] == "regression"
    # every CGCNN tensor used exactly once, onto distinct adex tensors
    mapping = card["cgcnn"]["parameter_map"]
    assert set(mapping) == set(checkpoint["state_dict"])
    assert len(set(mapping.values())) == len(mapping)
    # direct head mapping: CGCNN's leading softplus is head_input_softplus, no extra layer
    assert mapping["conv_to_fc.weight"] == "head.conv_to_fc.weight" and mapping["fc_out.bias"] == "head.fc_out.bias"
    assert all(v == "backbone." + k for k, v in mapping.items() if k.startswith("convs."))
    model_cfg = card["config"]["model"]
    assert (model_cfg["head_hidden"], model_cfg["head_layers"], model_cfg["head_input_softplus"]) == (32, 1, True)
    json.dumps(card)  # plain JSON throughout

    other = import_cgcnn(PRETRAINED / "band-gap.pth.tar", registry=reg, trust_pickle=True)
    assert other.ref == "advisor/cgcnn-band-gap:1" and other.card["published"]["test_mae"] == 0.388
    assert other.card["target"]["unit"] == "eV"


def test_default_names_and_targets() -> None:
    from adex.advisors.cgcnn import TARGETS, default_name

    assert default_name(FORMATION) == "cgcnn-formation-energy"
    assert default_name("x/final-energy-per-atom.pth.tar") == "cgcnn-final-energy"
    assert default_name("band-gap.pth.tar") == "cgcnn-band-gap"
    assert TARGETS["bulk-moduli"].unit == "log10(GPa)" and TARGETS["poisson-ratio"].unit == "1"
    assert TARGETS["efermi"].published_test_mae is None


def test_mapping_is_strict(checkpoint) -> None:
    from adex.advisors.cgcnn import build_advisor

    extra = dict(checkpoint, state_dict={**checkpoint["state_dict"], "convs.0.extra.weight": torch.zeros(3)})
    with pytest.raises(RegistryError, match="unexpected tensor 'convs.0.extra.weight'"):
        build_advisor(extra, "y", "eV")
    missing = dict(checkpoint, state_dict={k: v for k, v in checkpoint["state_dict"].items() if k != "convs.2.bn1.running_var"})
    with pytest.raises(RegistryError, match="convs.2.bn1.running_var"):
        build_advisor(missing, "y", "eV")
    narrow = dict(checkpoint, state_dict={**checkpoint["state_dict"], "embedding.weight": torch.zeros(64, 91)})
    with pytest.raises(RegistryError, match="92"):
        build_advisor(narrow, "y", "eV")


def test_unknown_file_needs_target_and_unit(reg, tmp_path: Path) -> None:
    from adex.advisors.cgcnn import import_cgcnn

    renamed = tmp_path / "my-model.pth.tar"
    renamed.symlink_to(FORMATION)
    with pytest.raises(RegistryError, match="unknown CGCNN checkpoint 'my-model'"):
        import_cgcnn(renamed, registry=reg, trust_pickle=True)
    entry = import_cgcnn(renamed, "mine", reg, True, target="eform", unit="eV/atom")
    assert entry.ref == "advisor/mine:1" and entry.card["published"]["test_mae"] is None
    assert entry.primary_metric is None


# --------------------------------------------------------------------------- numbers
def test_matches_dense_cgcnn(dense, imported, checkpoint) -> None:
    from adex.graphs import Featurizer

    structure = rattled_perovskite()
    # precondition: every atom has > 12 neighbours within 8 Å and no tie at the 12th
    for nbrs in structure.get_all_neighbors(8.0):
        d = sorted(n.nn_distance for n in nbrs)
        assert len(d) > 12 and d[12] - d[11] > 1e-3
    graph = Featurizer(imported.featurizer_settings).featurize(structure)
    assert np.all(np.bincount(graph.edge_index[0]) == 12)

    reference = dense_predict(dense, checkpoint, structure)
    ours = float(adex_predict(imported, [structure])[0])
    assert ours == pytest.approx(reference, rel=1e-4)
    assert abs(ours - reference) < 1e-5  # measured ~3e-7 eV/atom

    # the advisor's product, the crystal embedding, is CGCNN's pooled vector
    from adex.advisors.embed import embed_structures

    with torch.no_grad():
        pooled = dense.pooled(*cgcnn_inputs(structure)).numpy()
    np.testing.assert_allclose(embed_structures(imported, [structure]).crystal, pooled, rtol=1e-4, atol=1e-5)

    # ties at the 12th neighbour (MgO: 12 equivalent Mg at 2.98 Å) are truncated as in CGCNN
    mgo = rock_salt()
    assert float(adex_predict(imported, [mgo])[0]) == pytest.approx(dense_predict(dense, checkpoint, mgo), rel=1e-4, abs=1e-5)


def test_head_without_input_softplus_would_be_wrong(dense, imported, checkpoint) -> None:
    """Why head_input_softplus=True: the same weights without CGCNN's softplus before conv_to_fc
    give a different prediction."""
    import dataclasses

    from adex.advisors.model import Advisor

    assert imported.config.head_input_softplus and imported.head.input_softplus
    plain = Advisor(imported.featurizer_settings, dataclasses.replace(imported.config, head_input_softplus=False),
                    imported.target, imported.unit, checkpoint["normalizer"]["mean"], checkpoint["normalizer"]["std"])
    plain.load_state_dict(imported.state_dict(), strict=True)  # same parameters, only the softplus differs
    structure = rattled_perovskite()
    reference = dense_predict(dense, checkpoint, structure)
    assert abs(float(adex_predict(imported, [structure])[0]) - reference) < 1e-5
    assert abs(float(adex_predict(plain.eval(), [structure])[0]) - reference) > 0.1


def test_sensible_on_materials_project(imported) -> None:
    """Sanity, not a benchmark: most MP crystals were in CGCNN's training set."""
    if not (MP / "structures.tar.gz").is_file():
        pytest.skip(f"{MP} not found")
    structures, targets = mp_sample(40)
    errors = np.abs(adex_predict(imported, structures) - targets)
    assert errors.mean() < 0.15  # ~0.07 eV/atom on 200 of them
    assert np.median(errors) < 0.1
    assert (errors < 0.3).mean() >= 0.85


# --------------------------------------------------------------------------- registry round trip, CLI
def test_registry_roundtrip_gives_identical_predictions(reg, imported) -> None:
    from adex.advisors.cgcnn import import_cgcnn
    from adex.checkpoint import load_model

    import_cgcnn(FORMATION, registry=reg, trust_pickle=True)
    loaded = load_model(reg.resolve("cgcnn-formation-energy", kind="advisor"))
    assert not loaded.training
    structures = [rattled_perovskite(0), rattled_perovskite(1), rock_salt()]
    np.testing.assert_array_equal(adex_predict(loaded, structures), adex_predict(imported, structures))
    for key, value in imported.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_cli_import_and_predict(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture, imported) -> None:
    from adex.cli import main
    from adex.registry import Registry

    root = tmp_path / "store"
    assert main(["advisor", "import", "cgcnn", str(FORMATION), "--registry", str(root)]) == 2
    assert "pass --trust-pickle" in capsys.readouterr().err
    assert Registry(root=root).list("advisor") == []

    assert main(["advisor", "import", "cgcnn", str(FORMATION), "--trust-pickle", "--registry", str(root)]) == 0
    assert "advisor/cgcnn-formation-energy:1" in capsys.readouterr().out
    # the old spelling stays as a hidden alias for one release
    assert main(["registry", "import-cgcnn", str(FORMATION), "--trust-pickle", "--name", "old", "--registry", str(root)]) == 0
    assert "advisor/old:1" in capsys.readouterr().out
    assert main(["advisor", "import", "chgnet", str(FORMATION), "--registry", str(root)]) == 2
    assert "for `adex advisor import cgcnn`" in capsys.readouterr().err

    cif = tmp_path / "srtio3.cif"
    structure = rattled_perovskite()
    structure.to(filename=str(cif))
    assert main(["advisor", "predict", "cgcnn-formation-energy", str(cif), "--format", "json", "--registry", str(root)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["model"] == "advisor/cgcnn-formation-energy:1"
    from adex.io import read_structure

    expected = float(adex_predict(imported, [read_structure(cif)])[0])
    assert result["predictions"][0]["formation_energy_per_atom"] == pytest.approx(expected, rel=1e-6)
    assert result["predictions"][0]["unit"] == "eV/atom"


def test_cli_import_all(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from adex.advisors.cgcnn import TARGETS
    from adex.cli import main
    from adex.registry import Registry

    folder = tmp_path / "pretrained"
    folder.mkdir()
    names = ["formation-energy-per-atom", "poisson-ratio"] + (["semi-metal-classification"] if CLASSIFIER.is_file() else [])
    for stem in names:
        (folder / f"{stem}.pth.tar").symlink_to(PRETRAINED / f"{stem}.pth.tar")
    root = tmp_path / "store"
    assert main(["advisor", "import", "cgcnn", "--all", str(folder), "--registry", str(root)]) == 2
    assert Registry(root=root).list() == []
    assert main(["advisor", "import", "cgcnn", "--all", str(folder), "--name", "x", "--trust-pickle", "--registry", str(root)]) == 2
    assert main(["advisor", "import", "cgcnn", str(folder), "--all", str(folder), "--registry", str(root)]) == 2
    capsys.readouterr()

    assert main(["advisor", "import", "cgcnn", "--all", str(folder), "--trust-pickle", "--registry", str(root)]) == 0
    out = capsys.readouterr().out
    entries = Registry(root=root).list("advisor")
    assert sorted(e.name for e in entries) == ["cgcnn-formation-energy", "cgcnn-poisson-ratio"]
    assert next(e for e in entries if e.name == "cgcnn-poisson-ratio").card["target"]["unit"] == TARGETS["poisson-ratio"].unit
    if CLASSIFIER.is_file():
        assert "skipped" in out and "classification" in out
