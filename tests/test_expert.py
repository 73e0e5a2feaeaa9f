"""The vacancy expert: training from the command line (with and without advisors, published
splits), lineage in the registry, transfer learning from an advisor backbone, batching, and
the key property: predictions invariant to the cell and to the choice among
symmetry-equivalent sites.

Everything runs on a 13-vacancy copy of the Witman set (five hosts of 2-5 atoms) with tiny
models (width 8, one or two convolutions, cutoff 4 Å, supercells >= 6 Å), so a training
run takes seconds. Advisors are built in memory (widths 8 and 12) and registered directly.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from pymatgen.core import Lattice, Structure
from torch import nn

from adex.advisors.model import Advisor, AdvisorModelConfig
from adex.checkpoint import WEIGHTS, load_model, model_files
from adex.cli import main
from adex.errors import ConfigError, IntegrityError, RegistryError
from adex.expert.advisor_features import compute_advisor_features
from adex.expert.data import PackedVacancies, VacancyDataset
from adex.expert.witman import load_witman, read_split
from adex.expert.model import POOLINGS, AdvisorSlot, Expert, ExpertModelConfig
from adex.expert.loading import LoadedExpert, load_expert
from adex.expert.predict import featurize_host_sites, predict_packed
from adex.expert.train import TransferConfig, freeze_schedule
from adex.graphs import FeaturizerSettings
from adex.io import read_structure
from adex.registry import Registry
from adex.supercell import SupercellSettings, distinct_sites
from conftest import assert_one_line_error, randomize_batchnorm, shared_data_path

pytestmark = pytest.mark.usefixtures("shared_cache")
from adex.training import TrainingConfig, fit, predict

REPO_ROOT = Path(__file__).resolve().parents[1]

#: Witman hosts of 2-5 atoms: BaO, SrTiO3, SrFeO2, FeO (P-1), Ce2O3 -> 13 vacancies.
TINY_HOSTS = ("0009594", "0010541", "0160074", "0009684", "0289862")
N_TINY_TRAIN = 9  # first 9 rows -> splits/train_tiny.csv, the other 4 -> hold_tiny.csv

EXPERT_FEATURIZER = FeaturizerSettings(cutoff=4.0, max_neighbors=12)
EXPERT_SUPERCELL = SupercellSettings(min_image_distance=6.0)
ADVISOR_FEATURIZER = FeaturizerSettings(cutoff=5.0, max_neighbors=8)  # same Gaussian step: init-from works

TINY = [
    "--set", "model.atom_fea_len=8",
    "--set", "model.n_conv=1",
    "--set", "model.head_hidden=8",
    "--set", "supercell.min_image_distance=6",
    "--set", "featurizer.cutoff=4",
    "--set", "training.batch_size=4",
]


# --------------------------------------------------------------------------- helpers


def write_tiny_witman(src_root: Path, dst_root: Path) -> list[dict]:
    """Copy the TINY_HOSTS vacancies (CIFs, vacancies.csv rows) and write the ``tiny`` split."""
    src, dst = src_root / "witman2023_vacancies", dst_root / "witman2023_vacancies"
    (dst / "structures").mkdir(parents=True)
    (dst / "splits").mkdir()
    with open(src / "vacancies.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        fields = list(reader.fieldnames or [])
        rows = [r for r in reader if r["host"] in TINY_HOSTS]
    assert len(rows) == 13 and all(int(r["n_atoms"]) <= 10 for r in rows)
    with open(dst / "vacancies.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    for r in rows:
        shutil.copy(src / "structures" / f"{r['id']}.cif", dst / "structures")
    (dst / "splits" / "train_tiny.csv").write_text("".join(f"{r['id']},{r['dH_eV']}\n" for r in rows[:N_TINY_TRAIN]))
    (dst / "splits" / "hold_tiny.csv").write_text("".join(f"{r['id']},{r['dH_eV']}\n" for r in rows[N_TINY_TRAIN:]))
    return rows




def make_advisor(width: int, n_conv: int = 2, seed: int = 0) -> Advisor:
    torch.manual_seed(seed)
    model = Advisor(ADVISOR_FEATURIZER, AdvisorModelConfig(atom_fea_len=width, n_conv=n_conv, head_hidden=8),
                    "band_gap", "eV", mean=2.0, std=1.5)
    randomize_batchnorm(model, seed)
    return model.eval()


def make_expert(pooling: str = "attention", advisors: list[AdvisorSlot] | None = None, n_conv: int = 2,
                width: int = 8, seed: int = 0, oxidation: bool = False) -> Expert:
    torch.manual_seed(seed)
    config = ExpertModelConfig(atom_fea_len=width, n_conv=n_conv, pooling=pooling, adapter_width=4,
                               head_hidden=8, dropout=0.0, oxidation_states=oxidation)
    model = Expert(EXPERT_FEATURIZER, config, advisors, mean=5.0, std=2.0, supercell=EXPERT_SUPERCELL.to_dict())
    randomize_batchnorm(model, seed + 1)
    return model.eval()




# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(module_home: Path) -> SimpleNamespace:
    """Tiny data dir (13 vacancies) and the split ids."""
    src = shared_data_path()
    if not (src / "witman2023_vacancies" / "vacancies.csv").is_file():
        pytest.skip(f"shared data not found at {src}; set ADEX_DATA")
    root = module_home / "data"
    rows = write_tiny_witman(src, root)
    ids = [r["id"] for r in rows]
    return SimpleNamespace(root=root, rows=rows, ids=ids, train=ids[:N_TINY_TRAIN], hold=ids[N_TINY_TRAIN:])


@pytest.fixture(scope="module")
def reg(module_home: Path) -> SimpleNamespace:
    """A registry with two in-memory advisors of different widths (8 and 12)."""
    root = module_home / "registry"
    registry = Registry(root)
    models = {8: make_advisor(8, seed=8), 12: make_advisor(12, seed=12)}
    refs = {}
    for width, model in models.items():
        entry = registry.register("advisor", f"adv{width}", model_files(model),
                                  {"description": f"test advisor, width {width}", "embedding_width": width})
        refs[width] = entry.ref
    assert refs == {8: "advisor/adv8:1", 12: "advisor/adv12:1"}
    return SimpleNamespace(root=root, registry=registry, models=models, refs=refs)


def train_cli(tiny: SimpleNamespace, reg: SimpleNamespace, *args: str) -> int:
    return main(["expert", "train", "--data", str(tiny.root), "--registry", str(reg.root), *TINY, *args])


@pytest.fixture(scope="module")
def expert_none(tiny, reg) -> SimpleNamespace:
    rc = train_cli(tiny, reg, "--advisors", "none", "--epochs", "1", "--set", "name=scratch")
    return SimpleNamespace(rc=rc, entry=reg.registry.resolve("expert/scratch") if rc == 0 else None)


@pytest.fixture(scope="module")
def expert_two(tiny, reg) -> SimpleNamespace:
    rc = train_cli(tiny, reg, "--advisors", "adv8,adv12", "--split", "tiny", "--epochs", "1",
                   "--set", "name=two", "--set", "model.adapter_width=5")
    return SimpleNamespace(rc=rc, entry=reg.registry.resolve("expert/two") if rc == 0 else None)


@pytest.fixture(scope="module")
def packed(tiny):
    """All 13 tiny vacancies as combined graphs (expert featurizer)."""
    return load_witman(EXPERT_FEATURIZER, EXPERT_SUPERCELL, tiny.root)


# --------------------------------------------------------------------------- training (CLI)
def check_run_folder(entry) -> dict:
    run_dir = Path(entry.card["run_dir"])
    for name in ("config.yaml", "metrics.json", "parity.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "parity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["test"]["n"] >= 1 and np.isfinite(metrics["test"]["mae"])
    return yaml.safe_load((run_dir / "config.yaml").read_text())


def test_train_scratch_expert(expert_none, reg) -> None:
    assert expert_none.rc == 0
    entry = expert_none.entry
    assert entry.ref == "expert/scratch:1"
    assert entry.parents == []
    card = entry.card
    assert card["metrics"]["test"]["n"] == 1 and card["metrics"]["val"]["n"] == 1 and card["metrics"]["train"]["n"] == 11
    assert card["supercell"] == {"min_image_distance": 6.0, "symprec": 0.01}
    assert card["featurizer"]["cutoff"] == 4.0 and card["featurizer"]["element_embedding"] == "cgcnn92"
    assert card["advisors"] == []
    config = check_run_folder(entry)
    assert config["advisors"] == [] and config["model"]["atom_fea_len"] == 8 and config["training"]["epochs"] == 1
    model = load_model(entry)
    assert len(model.adapters) == 0 and model.config.atom_fea_len == 8 and len(model.convs) == 1
    assert model.supercell == {"min_image_distance": 6.0, "symprec": 0.01}
    assert {"O", "Ba", "Sr", "Ti", "Fe", "Ce"} >= set(model.training_elements) >= {"O"}


def test_train_with_two_advisors_of_different_widths(expert_two, reg) -> None:
    assert expert_two.rc == 0
    entry = expert_two.entry
    assert entry.parents == [reg.refs[8], reg.refs[12]]  # exact versions, in the order given
    card = entry.card
    assert [a["ref"] for a in card["advisors"]] == [reg.refs[8], reg.refs[12]]
    assert [a["width"] for a in card["advisors"]] == [8, 12]
    for a in card["advisors"]:
        assert a["weights_sha256"] == reg.registry.resolve(a["ref"]).files[WEIGHTS]["sha256"]
        assert a["model_sha256"] == reg.registry.resolve(a["ref"]).files["model.json"]["sha256"]
    assert card["supercell"]["min_image_distance"] == 6.0 and card["featurizer"]["cutoff"] == 4.0
    assert card["metrics"]["test"]["mae"] > 0
    config = check_run_folder(entry)
    assert config["advisors"] == ["adv8", "adv12"] and config["split"] == "tiny"

    model = load_model(entry)
    assert [(a.in_features, a.out_features) for a in model.adapters] == [(16, 5), (24, 5)]
    assert model.mix.in_features == 8 + 2 * 5 and model.mix.out_features == 8
    loaded = load_expert(entry.ref, reg.registry)
    assert [e.ref for e, _ in loaded.advisors] == [reg.refs[8], reg.refs[12]]
    assert [m.embedding_width for _, m in loaded.advisors] == [8, 12]


def test_an_advisor_with_the_same_weights_but_another_architecture_is_refused(tmp_path) -> None:
    """Weights alone do not name an advisor (CHGNet's sum and mean readouts share them):
    the expert records its advisors' model.json sha256 too and loading checks it."""
    registry = Registry(tmp_path / "registry")
    advisor = make_advisor(8, seed=8)
    entry = registry.register("advisor", "adv", model_files(advisor), {"description": "test", "embedding_width": 8})
    slot = AdvisorSlot(entry.ref, 8, entry.files[WEIGHTS]["sha256"], entry.files["model.json"]["sha256"])
    expert = make_expert("vacancy", advisors=[slot])
    registry.register("expert", "ex", model_files(expert), {"description": "test"})
    assert [e.ref for e, _ in load_expert("expert/ex", registry).advisors] == [entry.ref]
    wrong = AdvisorSlot(entry.ref, 8, entry.files[WEIGHTS]["sha256"], "0" * 64)
    registry.register("expert", "ex", model_files(make_expert("vacancy", advisors=[wrong])), {"description": "test"})
    with pytest.raises(RegistryError, match="model.json sha256 000000000000"):
        load_expert("expert/ex:2", registry)


def test_a_builtin_expert_reads_builtin_advisors_despite_a_user_shadow(tmp_path) -> None:
    """The shipped default names its CHGNet advisor ``advisor/chgnet:1``; a user's own
    ``advisor/chgnet:1`` (same weights, mean readout) must not replace it."""
    pytest.importorskip("chgnet.model", reason="CHGNet is an optional extra")
    from conftest import SHIPPED_STORE

    root = tmp_path / "registry"
    assert main(["advisor", "import", "chgnet", "--crystal-pooling", "mean", "--registry", str(root)]) == 0
    registry = Registry(root, builtin_root=SHIPPED_STORE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        shadow = registry.resolve("advisor/chgnet:1")
    assert shadow.store == "user"  # what an unprefixed ref names for everyone else
    loaded = load_expert("builtin::expert/vacancy:7", registry, lazy_advisors=True)
    assert [e.ref for e, _ in loaded.advisors][-1] == "builtin::advisor/chgnet:1"
    assert json.loads(loaded.advisors[-1][0].read_file("model.json")).get("crystal_pooling", "sum") == "sum"


def test_published_split_is_used(expert_two, tiny) -> None:
    assert expert_two.rc == 0
    card = expert_two.entry.card
    assert card["metrics"]["split"] == "tiny"
    assert card["dataset"]["n_test"] == len(tiny.hold) == 4
    assert card["dataset"]["n_train"] + card["dataset"]["n_val"] == len(tiny.train)
    with open(Path(card["run_dir"]) / "test_predictions.csv", newline="") as handle:
        test_ids = [row["id"] for row in csv.DictReader(handle)]
    assert sorted(test_ids) == sorted(tiny.hold)
    assert read_split(tiny.root / "witman2023_vacancies", "tiny") == (tiny.train, tiny.hold)


def test_unknown_split_is_a_one_line_error(tiny, reg, capsys) -> None:
    rc = train_cli(tiny, reg, "--advisors", "none", "--split", "nosuchsplit", "--epochs", "1", "--set", "name=bad")
    line = assert_one_line_error(rc, capsys.readouterr().err, "nosuchsplit")
    assert "tiny" in line  # names the known splits
    assert not (reg.root / "expert" / "bad").exists()


def test_unknown_advisor_is_a_one_line_error(tiny, reg, capsys) -> None:
    rc = train_cli(tiny, reg, "--advisors", "nonexistent", "--epochs", "1", "--set", "name=bad")
    assert_one_line_error(rc, capsys.readouterr().err, "nonexistent")
    assert not (reg.root / "expert" / "bad").exists()


# --------------------------------------------------------------------------- lineage
def test_removing_an_advisor_an_expert_needs_is_refused(expert_two, reg, capsys) -> None:
    assert expert_two.rc == 0
    with pytest.raises(RegistryError, match="expert/two:1"):
        reg.registry.remove(reg.refs[12])
    rc = main(["registry", "remove", reg.refs[8], "--registry", str(reg.root)])
    assert_one_line_error(rc, capsys.readouterr().err, "expert/two:1")
    assert reg.registry.resolve(reg.refs[8]).path.is_dir() and reg.registry.resolve(reg.refs[12]).path.is_dir()


def copy_registry(reg, tmp_path: Path) -> Registry:
    root = tmp_path / "registry_copy"
    shutil.copytree(reg.root, root)
    return Registry(root)


def test_tampered_advisor_weights_stop_the_expert(expert_two, reg, tmp_path) -> None:
    assert expert_two.rc == 0
    registry = copy_registry(reg, tmp_path)
    load_expert(expert_two.entry.ref, registry)  # fine before tampering
    weights = registry.resolve(reg.refs[12]).path / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # flip the last byte of a tensor
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        load_expert(expert_two.entry.ref, registry)


def test_swapped_advisor_weights_with_a_consistent_card_stop_the_expert(expert_two, reg, tmp_path) -> None:
    """Someone replaces the advisor's weights *and* fixes its card (with its card_sha256):
    the advisor verifies, but the expert recorded the original weights' sha256."""
    from adex.registry.store import seal_card

    assert expert_two.rc == 0
    registry = copy_registry(reg, tmp_path)
    entry = registry.resolve(reg.refs[8])
    other = model_files(make_advisor(8, seed=99))[WEIGHTS]
    (entry.path / WEIGHTS).write_bytes(other)
    card = json.loads((entry.path / "card.json").read_text())
    card["files"][WEIGHTS] = {"sha256": hashlib.sha256(other).hexdigest(), "bytes": len(other)}
    (entry.path / "card.json").write_text(json.dumps(seal_card(card)))  # card_sha256 recomputed too
    registry.resolve(reg.refs[8]).verify()  # the advisor alone looks fine
    with pytest.raises(RegistryError, match="sha256"):
        load_expert(expert_two.entry.ref, registry)


# --------------------------------------------------------------------------- transfer learning
def conv_tensors(conv) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in conv.state_dict().items()}


def assert_backbone_copied(expert: Expert, backbone) -> None:
    n_edge = expert.featurizer_settings.n_gaussians
    width = expert.config.atom_fea_len
    assert torch.equal(expert.embedding.embedding.weight, backbone.embedding.embedding.weight)
    assert torch.equal(expert.embedding.embedding.bias, backbone.embedding.embedding.bias)
    assert len(expert.convs) <= len(backbone.convs)
    for mine, theirs in zip(expert.convs, backbone.convs):
        # node columns [x_i, x_j] entirely, edge columns: the expert's Gaussians are a prefix
        assert torch.equal(mine.fc_full.weight[:, : 2 * width], theirs.fc_full.weight[:, : 2 * width])
        assert torch.equal(mine.fc_full.weight[:, 2 * width :], theirs.fc_full.weight[:, 2 * width : 2 * width + n_edge])
        assert torch.equal(mine.fc_full.bias, theirs.fc_full.bias)
        for bn in ("bn1", "bn2"):
            for key, value in getattr(theirs, bn).state_dict().items():
                assert torch.equal(getattr(mine, bn).state_dict()[key], value), f"{bn}.{key}"


def test_init_from_backbone_copies_embedding_and_convolutions() -> None:
    advisor = make_advisor(8, n_conv=2, seed=3)
    expert = make_expert(n_conv=2, seed=4)
    assert EXPERT_FEATURIZER.n_gaussians < ADVISOR_FEATURIZER.n_gaussians  # a real prefix
    before = conv_tensors(expert.convs[0])
    copied = expert.init_from_backbone(advisor.backbone)
    assert copied == ["embedding", "convs.0", "convs.1"]
    assert not torch.equal(before["fc_full.weight"], expert.convs[0].fc_full.weight)
    assert_backbone_copied(expert, advisor.backbone)
    # the Gaussian centres agree on the copied columns
    assert torch.equal(expert.gaussian.centers, advisor.backbone.gaussian.centers[: EXPERT_FEATURIZER.n_gaussians])


def test_init_from_requires_equal_width_and_compatible_featurizer() -> None:
    with pytest.raises(ConfigError, match="width 12"):
        make_expert(width=8).init_from_backbone(make_advisor(12).backbone)
    wider_cutoff = Expert(FeaturizerSettings(cutoff=6.0), ExpertModelConfig(atom_fea_len=8, n_conv=1, head_hidden=8))
    with pytest.raises(ConfigError, match="cutoff"):
        wider_cutoff.init_from_backbone(make_advisor(8).backbone)


def test_cli_init_from_width_mismatch_is_a_one_line_error(tiny, reg, capsys) -> None:
    rc = train_cli(tiny, reg, "--advisors", "none", "--init-from", "adv12", "--epochs", "1", "--set", "name=bad")
    assert_one_line_error(rc, capsys.readouterr().err, "width 12", "8")
    assert not (reg.root / "expert" / "bad").exists()


def test_cli_init_from_with_freeze(tiny, reg, capsys) -> None:
    rc = train_cli(tiny, reg, "--advisors", "none", "--init-from", "adv8", "--freeze", "--epochs", "1",
                   "--set", "model.n_conv=2", "--set", "name=transfer")
    assert rc == 0, capsys.readouterr().err
    entry = reg.registry.resolve("expert/transfer")
    assert entry.parents == [reg.refs[8]]
    assert entry.card["config"]["transfer"] == {"init_from": "adv8", "freeze": True, "unfreeze_every": 0}
    expert = load_model(entry)
    # copied from the advisor and, frozen (batch-norm statistics too), still identical after training
    assert_backbone_copied(expert, load_model(reg.registry.resolve(reg.refs[8])).backbone)


def test_freeze_keeps_transferred_parameters_while_the_rest_trains(packed) -> None:
    advisor = make_advisor(8, n_conv=2, seed=5)
    expert = make_expert(n_conv=2, seed=6)
    expert.init_from_backbone(advisor.backbone)
    before = {k: v.detach().clone() for k, v in expert.state_dict().items()}
    on_epoch = freeze_schedule(expert, TransferConfig(init_from="adv8", freeze=True, unfreeze_every=0))
    dataset = VacancyDataset(packed)
    fit(expert, dataset, None, TrainingConfig(epochs=1, batch_size=4, lr=0.01, scheduler="none"), on_epoch=on_epoch)
    after = expert.state_dict()
    transferred = [k for k in before if k.startswith(("embedding.", "convs."))]
    assert any("running_mean" in k for k in transferred)
    for key in transferred:
        assert torch.equal(before[key], after[key]), key
    changed = [k for k in before if not k.startswith(("embedding.", "convs.")) and not torch.equal(before[k], after[k])]
    assert any(k.startswith("head.") for k in changed) and "role_embedding.weight" in changed


def test_without_freeze_transferred_parameters_train(packed) -> None:
    """Control for the test above: the same fit without freezing changes the convolutions."""
    expert = make_expert(n_conv=2, seed=6)
    expert.init_from_backbone(make_advisor(8, n_conv=2, seed=5).backbone)
    before = {k: v.detach().clone() for k, v in expert.state_dict().items()}
    assert freeze_schedule(expert, TransferConfig(init_from="adv8", freeze=False)) is None
    fit(expert, VacancyDataset(packed), None, TrainingConfig(epochs=1, batch_size=4, lr=0.01, scheduler="none"))
    assert not torch.equal(before["convs.0.fc_full.weight"], expert.state_dict()["convs.0.fc_full.weight"])


def test_unfreeze_every_unfreezes_top_down() -> None:
    expert = make_expert(n_conv=2)
    on_epoch = freeze_schedule(expert, TransferConfig(init_from="adv8", freeze=True, unfreeze_every=1))
    modules = [expert.embedding, expert.convs[0], expert.convs[1]]

    def trainable() -> list[bool]:
        flags = []
        for module in modules:
            grads = {p.requires_grad for p in module.parameters()}
            assert len(grads) == 1
            flags.append(grads.pop())
        return flags

    expected = {0: [False, False, False], 1: [False, False, True], 2: [False, True, True], 3: [True, True, True],
                5: [True, True, True]}
    for epoch, flags in expected.items():
        on_epoch(epoch, expert)
        assert trainable() == flags, epoch
        assert all(p.requires_grad for p in expert.head.parameters())
        expert.train()
        assert [m.training for m in modules] == flags  # frozen modules stay in eval mode (batch norm)
        assert expert.head.training


def test_unfreeze_every_two_epochs() -> None:
    expert = make_expert(n_conv=2)
    on_epoch = freeze_schedule(expert, TransferConfig(init_from="adv8", freeze=True, unfreeze_every=2))
    on_epoch(1, expert)
    assert not any(p.requires_grad for p in expert.convs[1].parameters())
    on_epoch(2, expert)
    assert all(p.requires_grad for p in expert.convs[1].parameters())
    assert not any(p.requires_grad for p in expert.convs[0].parameters())


# --------------------------------------------------------------------------- batching
@pytest.mark.parametrize("pooling,oxidation", [(p, False) for p in POOLINGS] + [("attention", True)])
def test_batch_predictions_equal_one_by_one(packed, reg, pooling: str, oxidation: bool) -> None:
    advisor = reg.models[8]
    features = compute_advisor_features(advisor, reg.refs[8], packed)
    dataset = VacancyDataset(packed, [features])
    model = make_expert(pooling, [AdvisorSlot(reg.refs[8], 8)], seed=11, oxidation=oxidation)
    n = len(dataset)
    assert n == 13
    together = model.predict(dataset.batch(np.arange(n))).numpy()
    again = model.predict(dataset.batch(np.arange(n))).numpy()
    single = np.array([model.predict(dataset.batch([i])).item() for i in range(n)])
    assert np.array_equal(together, again)  # deterministic in eval mode, random pooling included
    np.testing.assert_allclose(together, single, atol=1e-5, rtol=0)
    assert np.ptp(together) > 1e-3  # not a constant model
    # a shuffled batch gives the same per-vacancy values
    order = np.random.default_rng(0).permutation(n)
    np.testing.assert_allclose(model.predict(dataset.batch(order)).numpy(), together[order], atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- invariance
def loaded(model: Expert, advisors: list) -> LoadedExpert:
    return LoadedExpert(SimpleNamespace(ref="expert/in-memory:1"), model, advisors)


@pytest.fixture(scope="module")
def invariance_models(reg) -> list[LoadedExpert]:
    """One untrained expert per pooling, each with the width-8 advisor."""
    advisors = [(SimpleNamespace(ref=reg.refs[8]), reg.models[8])]
    models = [loaded(make_expert(p, [AdvisorSlot(reg.refs[8], 8)], seed=21), advisors) for p in POOLINGS]
    return models + [loaded(make_expert("attention", [AdvisorSlot(reg.refs[8], 8)], seed=22, oxidation=True), advisors)]


def predictions(models: list[LoadedExpert], host: Structure, sites: list[int]) -> np.ndarray:
    """[n_models, n_sites] dH from each model (featurized once)."""
    packed = featurize_host_sites(models[0], host, sites, "host")
    return np.stack([predict_packed(m, packed) for m in models])


def mgo_cells() -> tuple[Structure, Structure, Structure]:
    conventional = Structure.from_spacegroup("Fm-3m", Lattice.cubic(4.21), ["Mg", "O"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    primitive = conventional.get_primitive_structure()
    assert len(primitive) == 2 and len(conventional) == 8
    big = conventional.copy()
    big.make_supercell([2, 1, 1])
    rng = np.random.default_rng(1)
    order = rng.permutation(len(big))
    shift = rng.random(3)
    shuffled = Structure(big.lattice, [big[i].specie for i in order], big.frac_coords[order] + shift)
    return primitive, conventional, shuffled


def test_same_vacancy_in_different_cells_gives_the_same_prediction(invariance_models) -> None:
    primitive, conventional, shuffled = mgo_cells()
    results = {"Mg": [], "O": []}
    for cell in (primitive, conventional, shuffled):
        sites = list(range(len(cell)))
        pred = predictions(invariance_models, cell, sites)
        for k, site in enumerate(sites):
            results[cell[site].specie.symbol].append(pred[:, k])
    assert len(results["O"]) == 1 + 4 + 8
    for element, preds in results.items():
        for p in preds[1:]:
            np.testing.assert_allclose(p, preds[0], atol=1e-5, rtol=0, err_msg=element)
    # and the test can tell vacancies apart: the Mg and O vacancies differ
    assert np.all(np.abs(results["Mg"][0] - results["O"][0]) > 1e-4)


def test_equivalent_sites_of_a_low_symmetry_witman_host(invariance_models, tiny) -> None:
    host = read_structure(tiny.root / "witman2023_vacancies" / "structures" / "0009684-O1.cif")  # FeO, P-1
    orbits = distinct_sites(host, EXPERT_SUPERCELL.symprec)
    equivalent = [info for info in orbits if info.count > 1]
    assert equivalent, "expected an orbit with several atoms"
    for info in equivalent:
        members = [int(i) for i in info.members]
        pred = predictions(invariance_models, host, members)
        for k in range(1, len(members)):
            np.testing.assert_allclose(pred[:, k], pred[:, 0], atol=1e-5, rtol=0, err_msg=f"{info.element} {members}")
    # inequivalent sites differ
    firsts = [info.index for info in orbits]
    pred = predictions(invariance_models, host, firsts)
    assert np.all(np.abs(pred[:, 0] - pred[:, 1]) > 1e-4)


def test_low_symmetry_host_in_a_shuffled_supercell(invariance_models, tiny) -> None:
    host = read_structure(tiny.root / "witman2023_vacancies" / "structures" / "0009684-O1.cif")
    big = host.copy()
    big.make_supercell([1, 2, 1])
    order = np.random.default_rng(2).permutation(len(big))
    shuffled = Structure(big.lattice, [big[i].specie for i in order], big.frac_coords[order] + np.array([0.13, 0.29, 0.71]))
    o_sites = [i for i in range(len(shuffled)) if shuffled[i].specie.symbol == "O"]
    reference = predictions(invariance_models, host, [0])[:, 0]  # atom 0 of the file is an O
    pred = predictions(invariance_models, shuffled, o_sites)
    for k in range(len(o_sites)):
        np.testing.assert_allclose(pred[:, k], reference, atol=1e-5, rtol=0)


def test_atom_order_of_a_real_host_does_not_change_the_prediction(invariance_models, tiny) -> None:
    """FeO host 0009684 sits at a spglib tolerance edge (P-1 vs C2/c at symprec 0.01): the
    symmetry search must not depend on the order in which the atoms are given."""
    structures = tiny.root / "witman2023_vacancies" / "structures"
    as_o1 = read_structure(structures / "0009684-O1.cif")  # O, Fe(1/2,1/2,1/2), Fe(0,0,0), O
    as_fe1 = read_structure(structures / "0009684-Fe1.cif")  # Fe(0,0,0), Fe(1/2,1/2,1/2), O, O: same atoms
    assert np.allclose(as_o1.lattice.matrix, as_fe1.lattice.matrix)
    assert np.allclose(as_o1.frac_coords[[2, 1, 0, 3]], as_fe1.frac_coords)
    # the same O vacancy (atom 0 of one file, atom 2 of the other), the same Fe vacancy
    np.testing.assert_allclose(predictions(invariance_models, as_o1, [0, 2]),
                               predictions(invariance_models, as_fe1, [2, 0]), atol=1e-5, rtol=0)


def test_selections_are_cut_from_the_cached_full_set(tiny, tmp_path, monkeypatch) -> None:
    """Once the whole set is cached, any id selection (a split) is a subset of it: no
    re-featurization, identical arrays to featurizing that selection alone."""
    import adex.expert.witman as data_module

    monkeypatch.setenv("ADEX_CACHE", str(tmp_path / "cache"))
    fs, sc = FeaturizerSettings(cutoff=4.0), SupercellSettings(min_image_distance=6.0)
    selection = [tiny.ids[3], tiny.ids[0], tiny.ids[5]]
    alone = load_witman(fs, sc, data=tiny.root, ids=selection, use_cache=False, workers=1)
    load_witman(fs, sc, data=tiny.root, workers=1)  # caches the full set

    def refuse(*args, **kwargs):
        raise AssertionError("featurized again instead of reading the cache")

    monkeypatch.setattr(data_module, "_featurize_records_chunk", refuse)
    cut = load_witman(fs, sc, data=tiny.root, ids=selection, workers=1)
    assert list(cut.ids) == selection
    for name in ("atomic_numbers", "edge_index", "edge_distance", "node_ptr", "edge_ptr", "targets"):
        assert np.array_equal(getattr(cut.graphs, name), getattr(alone.graphs, name)), name
    for name in PackedVacancies._ARRAYS:
        assert np.array_equal(getattr(cut, name), getattr(alone, name)), name


@pytest.mark.parametrize("shell_width", [0.0, 0.3])
@pytest.mark.parametrize("pooling", ["vacancy", "neighborhood", "attention"])
def test_pruning_to_the_receptive_field_is_exact(tiny, pooling, shell_width) -> None:
    """Local readouts only see n_conv hops: pruning the rest changes nothing (eval mode),
    also with soft k-NN weights (each kept receiver keeps all its edges)."""
    fs = FeaturizerSettings(cutoff=3.0, max_neighbors=6, shell_width=shell_width)
    sc = SupercellSettings(min_image_distance=12.0)
    packed = load_witman(fs, sc, data=tiny.root, ids=tiny.ids[:6], workers=1)
    torch.manual_seed(0)
    model = Expert(fs, ExpertModelConfig(atom_fea_len=8, n_conv=2, pooling=pooling, head_hidden=8), [], 5.0, 2.0)
    randomize_batchnorm(model)
    model.eval()
    pruned = model.prepare(packed)
    assert pruned.graphs.node_ptr[-1] < packed.graphs.node_ptr[-1]  # something was cut
    full_pred = predict(model, VacancyDataset(packed))
    pruned_pred = predict(model, VacancyDataset(pruned))
    assert np.allclose(full_pred, pruned_pred, atol=1e-5)
    one_by_one = np.concatenate([predict(model, VacancyDataset(pruned.subset([b]))) for b in range(len(pruned))])
    np.testing.assert_allclose(one_by_one, pruned_pred, rtol=0, atol=1e-5)  # batched = unbatched
    assert Expert(fs, ExpertModelConfig(n_conv=2, pooling="mean")).prepare(packed) is packed


@pytest.mark.parametrize("n_conv", [1, 2, 3])
def test_vacancy_readout_prunes_around_the_vacated_node_only(tiny, n_conv) -> None:
    """The vacancy readout's receptive field is centred on the vacated node: fewer nodes
    and edges than around the whole neighbourhood, the same predictions as the full graph."""
    import dataclasses

    fs, sc = FeaturizerSettings(cutoff=3.0, max_neighbors=6), SupercellSettings(min_image_distance=12.0)
    packed = load_witman(fs, sc, data=tiny.root, ids=tiny.ids[:6], workers=1)
    torch.manual_seed(2)
    model = Expert(fs, ExpertModelConfig(atom_fea_len=8, n_conv=n_conv, pooling="vacancy", head_hidden=8), [], 5.0, 2.0)
    randomize_batchnorm(model)
    model.eval()
    around_vacancy, around_hood = model.prepare(packed), packed.prune(n_conv)
    assert around_vacancy.hops_from == "vacancy" and around_hood.hops_from == "hood"
    assert around_vacancy.graphs.edge_ptr[-1] < around_hood.graphs.edge_ptr[-1]
    assert around_vacancy.graphs.node_ptr[-1] < around_hood.graphs.node_ptr[-1]
    everything = np.arange(len(packed))
    naive = dataclasses.replace(VacancyDataset(packed).batch(everything), node_hops=None)
    for pruned in (around_vacancy, around_hood):  # hood-centred hops are valid (if slower) for this readout
        assert torch.allclose(model.predict(naive), model.predict(VacancyDataset(pruned).batch(everything)), atol=1e-5)
    # the vacated node's own flag survives; a neighbourhood readout refuses vacancy-centred hops
    batch = VacancyDataset(around_vacancy).batch(everything)
    assert torch.equal(batch.node_flags[batch.vacancy_node, 0], torch.ones(len(packed)))
    attention = Expert(fs, ExpertModelConfig(atom_fea_len=8, n_conv=n_conv, pooling="attention", head_hidden=8), [], 5.0, 2.0)
    with pytest.raises(ValueError, match="from the hood"):
        attention.predict(batch)
    with pytest.raises(ValueError, match="cannot prune"):
        around_vacancy.prune(n_conv, origin="hood")
    # subsets keep the origin; the vacated node of each subset graph is still in it
    part = around_vacancy.subset([4, 1])
    assert part.hops_from == "vacancy" and np.array_equal(part.ids, around_vacancy.ids[[4, 1]])


@pytest.mark.parametrize("n_conv", [1, 2, 3])
@pytest.mark.parametrize("pooling", ["vacancy", "attention"])
def test_layerwise_active_nodes_equal_the_naive_full_supercell_graph(tiny, pooling, n_conv) -> None:
    """Convolution k updates only nodes within n_conv-1-k hops of the neighbourhood; the
    readout equals that of every node updated on the full, unpruned supercell graph."""
    import dataclasses

    fs, sc = FeaturizerSettings(cutoff=3.0, max_neighbors=6), SupercellSettings(min_image_distance=12.0)
    packed = load_witman(fs, sc, data=tiny.root, ids=tiny.ids[:6], workers=1)
    torch.manual_seed(1)
    model = Expert(fs, ExpertModelConfig(atom_fea_len=8, n_conv=n_conv, pooling=pooling, head_hidden=8), [], 5.0, 2.0)
    randomize_batchnorm(model)
    model.eval()
    all_six = np.arange(len(packed))
    naive = dataclasses.replace(VacancyDataset(packed).batch(all_six), node_hops=None)  # every node, every edge
    fast = VacancyDataset(model.prepare(packed)).batch(all_six)
    assert fast.edge_index.shape[1] < naive.edge_index.shape[1]
    assert torch.allclose(model.predict(naive), model.predict(fast), atol=1e-5)


def test_validation_hosts_are_disjoint_for_per_compound_splits() -> None:
    from adex.expert.train import host_of, validation_split

    ids = np.array([f"{h:07d}-O{k}" for h in range(20) for k in range(3)])
    indices = np.arange(len(ids)) + 100
    val, train = validation_split(ids, indices, 0.2, seed=0, grouped=True)
    assert len(val) and len(train) and len(val) + len(train) == len(ids)
    assert not {host_of(i) for i in ids[val - 100]} & {host_of(i) for i in ids[train - 100]}
    val, train = validation_split(ids, indices, 0.2, seed=0, grouped=False)
    assert len(val) == 12 and len(np.intersect1d(val, train)) == 0


# --------------------------------------------------------------------------- element reference, oxidation
def test_fit_element_reference_means_and_fallback() -> None:
    reference = Expert.fit_element_reference(np.array([8, 8, 26]), np.array([2.0, 4.0, 9.0]))
    assert reference.shape == (119,)
    assert reference[8].item() == 3.0 and reference[26].item() == 9.0
    assert reference[56].item() == pytest.approx(5.0)  # unseen: overall mean


def test_expert_with_element_reference_and_oxidation_states_trains_saves_and_reloads(tiny, reg) -> None:
    rc = train_cli(tiny, reg, "--advisors", "adv8", "--epochs", "2", "--set", "name=refox",
                   "--set", "model.element_reference=true", "--set", "model.oxidation_states=true")
    assert rc == 0
    entry = reg.registry.resolve("expert/refox")
    model = load_model(entry)
    assert model.config.element_reference and model.config.oxidation_states
    # the reference is the per-element training mean, carried by the checkpoint
    run_dir = Path(entry.card["run_dir"])
    packed = load_witman(model.featurizer_settings, SupercellSettings.from_dict(model.supercell), tiny.root)
    n_train = entry.card["dataset"]["n_train"]
    vacated = packed.graphs.atomic_numbers[packed.graphs.node_ptr[:-1] + packed.vacancy_node]
    test_rows = list(csv.DictReader(open(run_dir / "test_predictions.csv")))
    assert len(test_rows) == 1
    seen = {int(z) for z in model.element_reference.nonzero().flatten()}
    assert seen >= set(vacated.tolist()) - {0}
    o_rows = [r for r in tiny.rows if r["element"] == "O"]
    assert 0 < model.element_reference[8].item() < max(float(r["dH_eV"]) for r in o_rows)
    # predictions of the reloaded model = network output + reference of the vacated element
    loaded_expert = load_expert(entry.ref, reg.registry)
    index = [str(i) for i in packed.ids].index(test_rows[0]["id"])
    one = packed.subset([index])
    pred = predict_packed(loaded_expert, one)
    assert pred[0] == pytest.approx(float(test_rows[0]["dH_pred_eV"]), abs=1e-4)
    features = [compute_advisor_features(m, e.ref, one) for e, m in loaded_expert.advisors]
    batch = VacancyDataset(model.prepare(one), features).batch([0])
    with torch.no_grad():
        raw = model.normalizer.denorm(model(batch)).item()
    assert pred[0] == pytest.approx(raw + model.element_reference[int(vacated[index])].item(), abs=1e-4)
    assert n_train >= 1


def test_advisor_features_run_once_per_host_and_equal_the_per_vacancy_run(packed, reg) -> None:
    from adex.advisors.embed import run_advisor
    from adex.expert.advisor_features import unique_hosts

    advisor = reg.models[8]
    first, inverse = unique_hosts(packed)
    assert len(first) == len(TINY_HOSTS) == 5 and inverse.shape == (13,)
    assert [str(packed.ids[b]).rsplit("-", 1)[0] for b in first] == list(dict.fromkeys(str(i).rsplit("-", 1)[0] for i in packed.ids))
    features = compute_advisor_features(advisor, reg.refs[8], packed)
    from adex.graphs import Featurizer, PackedGraphs

    featurizer = Featurizer(advisor.featurizer_settings)
    naive = run_advisor(advisor, PackedGraphs.from_graphs(
        [featurizer.featurize(packed.primitive_structure(b), str(b)) for b in range(len(packed))], [str(b) for b in range(13)]))
    np.testing.assert_allclose(features.atom, naive.atom, atol=1e-5, rtol=0)
    np.testing.assert_allclose(features.crystal, naive.crystal, atol=1e-5, rtol=0)
    assert features.atom.shape[0] == packed.prim_ptr[-1]


def test_supercell_augmentation_adds_training_views_only(tiny, reg, monkeypatch) -> None:
    import adex.expert.train as train_module

    seen = {}
    real_fit = train_module.fit

    def spy_fit(model, train, val, config, **kwargs):
        seen["train"], seen["val"] = train, val
        return real_fit(model, train, val, config, **kwargs)

    monkeypatch.setattr(train_module, "fit", spy_fit)
    rc = train_cli(tiny, reg, "--advisors", "adv8", "--split", "tiny", "--epochs", "1", "--set", "name=aug",
                   "--set", "augment.min_image_distances=[8.0]")
    assert rc == 0
    entry = reg.registry.resolve("expert/aug")
    metrics = entry.card["metrics"]
    assert metrics["training_views"] == 2 and metrics["augment_min_image_distances"] == [8.0]
    n_train, n_val = metrics["train"]["n"], metrics["val"]["n"]
    assert len(seen["train"]) == 2 * n_train and len(seen["val"]) == n_val  # two views of each training vacancy
    ids = [str(i) for i in seen["train"].ids]
    assert ids[:n_train] == ids[n_train:]  # the same vacancies, label shared ...
    np.testing.assert_array_equal(seen["train"].targets[:n_train], seen["train"].targets[n_train:])
    nodes = np.diff(seen["train"].packed.graphs.node_ptr)
    assert nodes[n_train:].sum() > nodes[:n_train].sum()  # ... in larger supercells (8 Å instead of 6 Å)
    assert metrics["test"]["n"] == len(tiny.hold)


def test_host_weight_power_weighs_every_training_host_equally_in_every_view(tiny, reg, monkeypatch) -> None:
    """``training.host_weight_power=1``: each training vacancy's loss weight is
    1 / (training vacancies of its host), the same in the augmented view, so every host's
    weights sum to the same; the resolved setting is recorded with the run."""
    import adex.expert.train as train_module
    from adex.expert.train import host_of

    seen = {}
    real_fit = train_module.fit

    def spy_fit(model, train, val, config, **kwargs):
        seen["train"], seen["weight"] = train, kwargs.get("sample_weight")
        return real_fit(model, train, val, config, **kwargs)

    monkeypatch.setattr(train_module, "fit", spy_fit)
    rc = train_cli(tiny, reg, "--advisors", "adv8", "--split", "tiny", "--epochs", "1", "--set", "name=hostw",
                   "--set", "augment.min_image_distances=[8.0]", "--set", "training.host_weight_power=1.0")
    assert rc == 0
    weight, ids = seen["weight"], [str(i) for i in seen["train"].ids]
    assert weight is not None and len(weight) == len(ids)
    n = len(ids) // 2
    np.testing.assert_array_equal(weight[:n], weight[n:])  # the view repeats its vacancy's weight
    hosts = np.array([host_of(i) for i in ids[:n]])
    assert len(set(hosts)) > 1 and len(set(np.bincount(np.unique(hosts, return_inverse=True)[1]))) > 1  # unequal hosts
    sums = [weight[:n][hosts == h].sum() for h in np.unique(hosts)]
    np.testing.assert_allclose(sums, sums[0])
    assert weight.mean() == pytest.approx(1.0)
    entry = reg.registry.resolve("expert/hostw")
    assert entry.card["config"]["training"]["host_weight_power"] == 1.0


def test_dataset_carries_potential_delta_through_subset_concatenate_and_batch(packed) -> None:
    delta = np.arange(len(packed), dtype=np.float64) + 0.5
    data = VacancyDataset(packed, [], delta)
    part = data.subset([4, 1])
    np.testing.assert_array_equal(part.potential_delta, [4.5, 1.5])
    both = VacancyDataset.concatenate([part, data.subset([0])])
    np.testing.assert_array_equal(both.potential_delta, [4.5, 1.5, 0.5])
    assert both.batch([2, 0]).potential_delta.tolist() == [0.5, 4.5]
    assert VacancyDataset(packed).batch([0]).potential_delta is None
    with pytest.raises(ValueError, match="with and without"):
        VacancyDataset.concatenate([part, VacancyDataset(packed).subset([0])])
    with pytest.raises(ValueError, match="values for"):
        VacancyDataset(packed, [], delta[:-1])
