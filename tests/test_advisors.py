"""Advisors and the core they stand on: layers (adex.nn), datasets and their cache
(adex.datasets), the training loop (adex.training), checkpoints (adex.checkpoint) and the
advisor model, training and embedding code (adex.advisors)."""
from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from pymatgen.core import Lattice, Structure
from torch import nn

import adex.datasets
from adex.advisors.embed import embed_structures, featurize_structures, run_advisor
from adex.advisors.model import Advisor, AdvisorConfig, AdvisorModelConfig
from adex.advisors.train import train_advisor
from adex.checkpoint import ARCHITECTURE, WEIGHTS, load_model, model_files
from adex.config import load_config
from adex.datasets import load_dataset
from adex.errors import DataError, RegistryError
from adex.graphs import Featurizer, FeaturizerSettings, PackedGraphs
from adex.io import read_structure, structure_from_text
from adex.nn import Backbone, BackboneConfig, CGCNNConv, Normalizer
from adex.registry import Registry
from adex.training import TrainingConfig, fit, predict, regression_metrics, seed_everything, split_indices

from conftest import perovskite, randomize_batchnorm, rattled, rocksalt, rutile

SMALL = FeaturizerSettings(cutoff=5.0, max_neighbors=8)


def tiny_advisor(pooling: str = "mean", settings: FeaturizerSettings = SMALL, seed: int = 0, width: int = 16) -> Advisor:
    torch.manual_seed(seed)
    model = Advisor(settings, AdvisorModelConfig(atom_fea_len=width, n_conv=2, pooling=pooling, head_hidden=8),
                    "band_gap", "eV", mean=1.5, std=2.0)
    randomize_batchnorm(model, seed)
    return model.eval()


@pytest.fixture(scope="module")
def structures(witman_cif: Path) -> list:
    return [rocksalt(), perovskite(), read_structure(witman_cif), rutile(), rattled(rocksalt(), 0.1, seed=1)]


# --------------------------------------------------------------------------- layers
def naive_conv(conv: CGCNNConv, x: torch.Tensor, edge_index: torch.Tensor, edge_attr: torch.Tensor) -> torch.Tensor:
    """CGCNN's formula as written: fc_full(cat[x_i, x_j, e_ij]) per edge."""
    receiver, sender = edge_index
    gated = conv.bn1(conv.fc_full(torch.cat([x[receiver], x[sender], edge_attr], dim=1)))
    filt, core = gated.chunk(2, dim=1)
    messages = torch.sigmoid(filt) * nn.functional.softplus(core)
    summed = conv.bn2(torch.zeros_like(x).index_add(0, receiver, messages))
    return nn.functional.softplus(x + summed)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_cgcnn_conv_split_weights_equal_naive_formula(mode: str) -> None:
    torch.manual_seed(0)
    width, edge_width, n_atoms, n_edges = 6, 5, 9, 40
    conv = CGCNNConv(width, edge_width).double()
    randomize_batchnorm(conv, 1)
    conv.train(mode == "train")
    twin = copy.deepcopy(conv)
    x = torch.randn(n_atoms, width, dtype=torch.float64)
    edge_index = torch.stack([torch.randint(0, n_atoms, (n_edges,)), torch.randint(0, n_atoms, (n_edges,))])
    edge_attr = torch.rand(n_edges, edge_width, dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out = conv(xa, edge_index, edge_attr)
    ref = naive_conv(twin, xb, edge_index, edge_attr)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    weights = torch.randn(out.shape, dtype=torch.float64)
    (out * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(conv.fc_full.weight.grad, twin.fc_full.weight.grad, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(conv.fc_full.bias.grad, twin.fc_full.bias.grad, rtol=1e-10, atol=1e-10)
    if mode == "train":  # same batch statistics were tracked
        torch.testing.assert_close(conv.bn1.running_mean, twin.bn1.running_mean)


@pytest.mark.parametrize("pooling", ["mean", "sum", "max", "attention"])
def test_batched_equals_one_by_one(structures: list, pooling: str) -> None:
    model = tiny_advisor(pooling)
    packed = PackedGraphs.from_graphs([Featurizer(SMALL).featurize(s) for s in structures])
    batch = packed.batch()
    with torch.no_grad():
        atoms, crystals = model.embed(batch)
        preds = model.predict(batch)
        backbone_atoms, backbone_crystals = model.backbone(batch)
    assert crystals.shape == (len(structures), 16) and atoms.shape == (packed.node_ptr[-1], 16)
    torch.testing.assert_close(backbone_crystals, crystals)
    assert crystals.std(0).max() > 1e-3  # the crystals are told apart (no degenerate model)
    for g in range(len(structures)):
        with torch.no_grad():
            a, c = model.embed(packed.batch([g]))
            p = model.predict(packed.batch([g]))
        torch.testing.assert_close(a, atoms[packed.node_ptr[g] : packed.node_ptr[g + 1]], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(c[0], crystals[g], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(p[0], preds[g], rtol=1e-5, atol=1e-5)
    # run_advisor's batching gives the same numbers
    small, large = run_advisor(model, packed, batch_size=2), run_advisor(model, packed, batch_size=256)
    np.testing.assert_allclose(small.crystal, large.crystal, atol=1e-5)
    np.testing.assert_allclose(small.atom, large.atom, atol=1e-5)
    np.testing.assert_allclose(small.prediction, large.prediction, atol=1e-5)
    np.testing.assert_allclose(large.crystal, crystals.numpy(), atol=1e-6)
    np.testing.assert_allclose(large.prediction, preds.numpy(), atol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_atom_permutation_invariance(witman_cif: Path, pooling: str) -> None:
    model = tiny_advisor(pooling)
    structure = read_structure(witman_cif)
    perm = np.random.default_rng(0).permutation(len(structure))
    permuted = Structure.from_sites([structure[int(i)] for i in perm])
    emb = embed_structures(model, [structure, permuted], ["orig", "perm"])
    n = len(structure)
    np.testing.assert_allclose(emb.crystal[1], emb.crystal[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb.atom[n:], emb.atom[:n][perm], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(emb.prediction[1], emb.prediction[0], rtol=1e-5, atol=1e-5)
    assert emb.atom_ptr.tolist() == [0, n, 2 * n]
    assert not np.allclose(emb.atom[0], emb.atom[n])  # the permutation did move atoms


def test_backbone_config_validation() -> None:
    with pytest.raises(ValueError):
        BackboneConfig(atom_fea_len=0)
    backbone = Backbone(SMALL, BackboneConfig(atom_fea_len=4, n_conv=0))
    assert backbone.width == 4 and len(backbone.convs) == 0


def test_normalizer_roundtrip() -> None:
    norm = Normalizer(2.0, 4.0)
    y = torch.tensor([0.0, 2.0, 10.0])
    torch.testing.assert_close(norm.denorm(norm.norm(y)), y)
    torch.testing.assert_close(norm.norm(y), torch.tensor([-0.5, 0.0, 2.0]))
    assert Normalizer(1.0, 0.0).to_dict() == {"mean": 1.0, "std": 1.0}  # zero spread: no division by 0


# --------------------------------------------------------------------------- datasets
def _boom(*args, **kwargs):
    raise AssertionError("featurize_texts called: the cache was not used")


def _arrays(graphs: PackedGraphs) -> dict:
    return {k: getattr(graphs, k) for k in ("atomic_numbers", "edge_index", "edge_distance", "node_ptr", "edge_ptr", "ids", "targets")}


def assert_same_graphs(a: PackedGraphs, b: PackedGraphs) -> None:
    for key, value in _arrays(a).items():
        np.testing.assert_array_equal(value, getattr(b, key), err_msg=key)


def test_dataset_cache_is_written_and_reused(small_data: Path, adex_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = load_dataset("oxide_bandgaps", SMALL, data=small_data)
    assert first.cache_path is not None and first.cache_path.is_file()
    assert first.cache_path.is_relative_to(adex_home / "cache")
    rows = [line.split(",") for line in (small_data / "oxide_bandgaps" / "id_prop.csv").read_text().splitlines()]
    assert first.graphs.ids.tolist() == [r[0] for r in rows]  # file order, all usable
    np.testing.assert_allclose(first.graphs.targets, [float(r[1]) for r in rows])
    assert first.skipped == {}
    assert first.unit == "eV" and first.target == "band_gap"

    monkeypatch.setattr(adex.datasets, "featurize_texts", _boom)
    second = load_dataset("oxide_bandgaps", SMALL, data=small_data)
    assert second.cache_path == first.cache_path and second.fingerprint == first.fingerprint
    assert_same_graphs(first.graphs, second.graphs)
    with pytest.raises(AssertionError, match="cache was not used"):  # the patch is live
        load_dataset("oxide_bandgaps", SMALL, data=small_data, use_cache=False)

    # the cached graphs are those of the CIF files
    item = first.graphs.ids[3]
    text = (small_data / "oxide_bandgaps" / "structures" / f"{item}.cif").read_text()
    direct = Featurizer(SMALL).featurize(structure_from_text(text, "cif", item))
    got = first.graphs.subset([3])
    np.testing.assert_array_equal(got.atomic_numbers, direct.atomic_numbers)
    np.testing.assert_array_equal(got.edge_index, direct.edge_index)
    np.testing.assert_array_equal(got.edge_distance, direct.edge_distance)


def test_cache_key_follows_settings_limit_and_data(small_data: Path, tmp_path: Path) -> None:
    base = load_dataset("oxide_bandgaps", SMALL, data=small_data)
    other_cutoff = load_dataset("oxide_bandgaps", FeaturizerSettings(cutoff=3.0, max_neighbors=8), data=small_data)
    other_tol = load_dataset("oxide_bandgaps", FeaturizerSettings(cutoff=5.0, max_neighbors=8, tie_tolerance=1e-2), data=small_data)
    limited = load_dataset("oxide_bandgaps", SMALL, data=small_data, limit=10)
    limited_seed = load_dataset("oxide_bandgaps", SMALL, data=small_data, limit=10, seed=1)
    paths = [d.cache_path for d in (base, other_cutoff, other_tol, limited, limited_seed)]
    assert len(set(paths)) == 5 and all(p.is_file() for p in paths)
    assert len(limited.graphs) == 10 and len(limited_seed.graphs) == 10
    assert set(limited.graphs.ids) <= set(base.graphs.ids)
    assert set(limited.graphs.ids) != set(limited_seed.graphs.ids)
    assert other_cutoff.graphs.edge_distance.max() <= 3.0 < base.graphs.edge_distance.max()
    # changed input data -> new key
    copy_root = tmp_path / "data"
    shutil.copytree(small_data / "oxide_bandgaps", copy_root / "oxide_bandgaps")
    id_prop = copy_root / "oxide_bandgaps" / "id_prop.csv"
    lines = id_prop.read_text().splitlines()
    name = lines[0].split(",")[0]
    lines[0] = f"{name},9.999"
    id_prop.write_text("\n".join(lines) + "\n")
    changed = load_dataset("oxide_bandgaps", SMALL, data=copy_root)
    assert changed.cache_path != base.cache_path
    assert changed.graphs.targets[list(changed.graphs.ids).index(name)] == pytest.approx(9.999)


def test_mp_dataset_from_tarball(small_data: Path) -> None:
    ds = load_dataset("mp_formation_energy", SMALL, data=small_data, limit=20)
    rows = dict(line.split(",") for line in (small_data / "mp_formation_energy" / "id_prop.csv").read_text().splitlines())
    assert len(ds.graphs) + len(ds.skipped) == 20
    assert len(ds.graphs) >= 18
    for item, target in zip(ds.graphs.ids, ds.graphs.targets):
        assert target == pytest.approx(float(rows[item]))
    assert ds.unit == "eV/atom"


def test_unusable_structures_are_skipped_and_reported(small_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "data" / "oxide_bandgaps"
    shutil.copytree(small_data / "oxide_bandgaps", root)
    (root / "structures" / "Broken.cif").write_text("not a cif at all\n")
    (root / "structures" / "Lonely.cif").write_text(
        Structure(Lattice.cubic(30.0), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]]).to(fmt="cif"))
    with open(root / "id_prop.csv", "a") as handle:
        handle.write("Broken,1.0\nLonely,2.0\n")
    ds = load_dataset("oxide_bandgaps", SMALL, data=tmp_path / "data")
    assert set(ds.skipped) == {"Broken", "Lonely"}
    assert "Broken" in ds.skipped["Broken"] and "isolated" in ds.skipped["Lonely"]
    assert len(ds.graphs) == 30 and "Broken" not in ds.graphs.ids
    monkeypatch.setattr(adex.datasets, "featurize_texts", _boom)
    again = load_dataset("oxide_bandgaps", SMALL, data=tmp_path / "data")  # the skipped list is cached too
    assert again.skipped == ds.skipped


def test_listed_structure_without_file_is_skipped(small_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "data" / "oxide_bandgaps"
    shutil.copytree(small_data / "oxide_bandgaps", root)
    with open(root / "id_prop.csv", "a") as handle:
        handle.write("Absent,2.0\n")
    ds = load_dataset("oxide_bandgaps", SMALL, data=tmp_path / "data")
    assert ds.skipped == {"Absent": "structure file missing"}
    assert len(ds.graphs) == 30


def test_missing_and_unknown_datasets(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="adex data download oxide_bandgaps"):
        load_dataset("oxide_bandgaps", SMALL, data=tmp_path)
    with pytest.raises(DataError, match="unknown"):
        load_dataset("no_such_dataset", SMALL, data=tmp_path)


CONCURRENT_SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from adex.datasets import load_dataset
    from adex.graphs import FeaturizerSettings
    data, barrier, me = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    (barrier / me).touch()
    deadline = time.time() + 120
    while len(list(barrier.iterdir())) < 2 and time.time() < deadline:
        time.sleep(0.01)
    ds = load_dataset("oxide_bandgaps", FeaturizerSettings(cutoff=5.0, max_neighbors=8), data=data)
    print(ds.cache_path, len(ds.graphs))
    """
)


def test_concurrent_featurization_leaves_a_valid_cache(small_data: Path, tmp_path: Path, adex_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    env = {**os.environ, "ADEX_HOME": str(adex_home), "ADEX_NO_PROGRESS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", CONCURRENT_SCRIPT, str(small_data), str(barrier), str(k)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        for k in range(2)
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err
    reported = {out.split()[0] for out, _ in outputs}
    assert len(reported) == 1
    cache_path = Path(reported.pop())
    assert cache_path.is_file()
    leftovers = [p.name for p in cache_path.parent.iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []
    fresh = load_dataset("oxide_bandgaps", SMALL, data=small_data, use_cache=False)
    monkeypatch.setattr(adex.datasets, "featurize_texts", _boom)
    cached = load_dataset("oxide_bandgaps", SMALL, data=small_data)
    assert cached.cache_path == cache_path
    assert_same_graphs(cached.graphs, fresh.graphs)


# --------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def bandgap_graphs(small_data: Path, tmp_path_factory: pytest.TempPathFactory) -> PackedGraphs:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADEX_HOME", str(tmp_path_factory.mktemp("home_graphs")))
        return load_dataset("oxide_bandgaps", SMALL, data=small_data).graphs


def _train(graphs: PackedGraphs, config: TrainingConfig, dropout: float = 0.0):
    seed_everything(config.seed)
    train_idx, val_idx, _ = split_indices(len(graphs), config.val_fraction, config.test_fraction, config.seed)
    train, val = graphs.subset(train_idx), graphs.subset(val_idx)
    model = Advisor(SMALL, AdvisorModelConfig(atom_fea_len=8, n_conv=1, head_hidden=8, dropout=dropout), "band_gap", "eV",
                    float(train.targets.mean()), float(train.targets.std()))
    result = fit(model, train, val if len(val) else None, config)
    return model, result


def test_fit_decreases_training_loss(bandgap_graphs: PackedGraphs) -> None:
    config = TrainingConfig(epochs=20, batch_size=8, lr=0.01, scheduler="none", patience=100, val_fraction=0.0, test_fraction=0.0)
    model, result = _train(bandgap_graphs, config)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 20 and result.epochs_run == 20 and result.stopped_because == "epochs"
    assert min(losses[-3:]) < 0.7 * losses[0], losses
    # no validation set: the model kept is the best epoch by (train-derived) MAE
    assert result.best_val_mae == pytest.approx(min(h["val_mae"] for h in result.history))


def test_same_seed_same_run_different_seed_different_run(bandgap_graphs: PackedGraphs) -> None:
    config = TrainingConfig(epochs=3, batch_size=8, lr=0.005, seed=0)
    (m1, r1), (m2, r2) = _train(bandgap_graphs, config, dropout=0.2), _train(bandgap_graphs, config, dropout=0.2)
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    for key in s1:
        assert torch.equal(s1[key], s2[key]), key
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(r1.history) == strip(r2.history)
    m3, r3 = _train(bandgap_graphs, TrainingConfig(epochs=3, batch_size=8, lr=0.005, seed=1), dropout=0.2)
    assert not torch.equal(m3.state_dict()["head.fc_out.weight"], s1["head.fc_out.weight"])


@dataclass
class _ToyBatch:
    target: torch.Tensor
    num_graphs: int

    def to(self, device):
        return self


class _ToyData:
    def __init__(self, targets):
        self.targets = np.asarray(targets, dtype=float)

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, indices):
        idx = np.asarray(indices)
        return _ToyBatch(torch.as_tensor(self.targets[idx], dtype=torch.float32), len(idx))


class _ToyModel(nn.Module):
    """Predicts one learned constant."""

    def __init__(self):
        super().__init__()
        self.b = nn.Parameter(torch.zeros(1))
        self.normalizer = Normalizer(0.0, 1.0)

    def forward(self, batch):
        return self.b.expand(batch.num_graphs)


def test_early_stopping_keeps_best_weights() -> None:
    """Training pulls the constant towards +1 while validation wants -1: validation
    MAE gets worse every epoch, so the loop stops after ``patience`` flat epochs and
    restores the weights of epoch 0."""
    seen = []
    model = _ToyModel()
    config = TrainingConfig(epochs=50, batch_size=4, lr=0.01, scheduler="none", patience=3)
    result = fit(model, _ToyData([1.0] * 8), _ToyData([-1.0] * 4), config, on_epoch=lambda e, m: seen.append(m.b.item()))
    assert result.epochs_run == 4 and result.best_epoch == 0
    assert "early stopping" in result.stopped_because
    assert [h["val_mae"] for h in result.history] == sorted(h["val_mae"] for h in result.history)
    assert result.best_val_mae == pytest.approx(result.history[0]["val_mae"])
    # weights restored to the end of epoch 0 (= the start of epoch 1), not the last epoch
    assert model.b.item() == pytest.approx(seen[1])
    assert model.b.item() < seen[-1]


def test_weight_average_validates_and_returns_the_averaged_weights() -> None:
    """With ``ema_decay`` the validation MAE of every epoch is that of the moving average
    of the weights after each step (here one step per epoch), and the returned model holds
    the average, not the raw weights."""
    decay = 0.5
    seen = []
    model = _ToyModel()
    config = TrainingConfig(epochs=4, batch_size=8, lr=0.1, scheduler="none", patience=100, ema_decay=decay)
    result = fit(model, _ToyData([1.0] * 8), _ToyData([1.0] * 4), config, on_epoch=lambda e, m: seen.append(m.b.item()))
    average = seen[0]  # the initial weights
    for epoch in range(3):
        average = decay * average + (1 - decay) * seen[epoch + 1]  # raw weights after the step of this epoch
        assert result.history[epoch]["val_mae"] == pytest.approx(abs(1.0 - average), abs=1e-6)
    assert result.best_epoch == 3  # the average climbs towards the targets every epoch
    assert model.b.item() == pytest.approx(1.0 - result.history[-1]["val_mae"], abs=1e-6)
    raw = fit(_ToyModel(), _ToyData([1.0] * 8), _ToyData([1.0] * 4), replace(config, ema_decay=None))
    assert raw.history[-1]["val_mae"] < result.history[-1]["val_mae"]  # the average lags the raw weights


def test_weight_average_buffers_and_restore() -> None:
    from adex.training import WeightAverage

    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    average = WeightAverage(net, decay=0.9)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net(torch.randn(4, 2))  # training mode: BatchNorm updates its float statistics and integer counter
    average.update(net)
    torch.testing.assert_close(average.state["0.weight"], start["0.weight"] + 0.1)
    assert int(average.state["1.num_batches_tracked"]) == 1  # integers are copied, not averaged
    live = {k: v.clone() for k, v in net.state_dict().items()}
    with average.applied(net):
        torch.testing.assert_close(net[0].weight, average.state["0.weight"])
    for key, value in net.state_dict().items():
        torch.testing.assert_close(value, live[key])
    with pytest.raises(ValueError, match="ema_decay"):
        TrainingConfig(ema_decay=1.0)


def test_weight_average_warmup_grows_the_horizon_with_the_run() -> None:
    """With warmup the decay of update n is min(decay, (1 + n) / (10 + n)): the first
    update keeps 10 % of the initial weights (not 99.9 %), and the decay reaches the
    configured one only after ~9,000 updates at 0.999."""
    from adex.training import WeightAverage

    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(0.0)
    plain, warm = WeightAverage(net, 0.999), WeightAverage(net, 0.999, warmup=True)
    assert warm.current_decay() == pytest.approx(0.1) and plain.current_decay() == 0.999
    with torch.no_grad():
        net.weight.fill_(1.0)
    expected = 0.0
    for n in range(50):
        expected = min(0.999, (1 + n) / (10 + n)) * expected + (1 - min(0.999, (1 + n) / (10 + n))) * 1.0
        plain.update(net)
        warm.update(net)
    assert float(warm.state["weight"]) == pytest.approx(expected, rel=1e-5)
    assert float(warm.state["weight"]) > 0.99 > 0.05 > float(plain.state["weight"])  # plain: 1 - 0.999 ** 50
    warm.updates = 20_000
    assert warm.current_decay() == 0.999


def test_sample_weights_move_the_fit_to_the_weighted_optimum() -> None:
    """A learned constant under the squared loss goes to the (weighted) mean of the
    targets: 0.25 for [0, 0, 0, 1]; 0.5 when the three 0s share one host and the 1 has its
    own (``host_weights`` with power 1: every host weighs the same)."""
    from adex.expert.train import host_weights

    weights = host_weights(["h1", "h1", "h1", "h2"], 1.0)
    np.testing.assert_allclose(weights, [2 / 3, 2 / 3, 2 / 3, 2.0])  # n_host ** -1, scaled to mean 1
    np.testing.assert_allclose(host_weights(["h1", "h1", "h2"], 0.0), 1.0)
    config = TrainingConfig(epochs=400, batch_size=4, lr=0.02, loss="mse", scheduler="none", patience=1000)
    data = _ToyData([0.0, 0.0, 0.0, 1.0])
    plain, ones, weighted = _ToyModel(), _ToyModel(), _ToyModel()
    fit(plain, data, None, config)
    fit(ones, data, None, config, sample_weight=np.ones(4))
    fit(weighted, data, None, config, sample_weight=weights)
    assert plain.b.item() == pytest.approx(0.25, abs=0.01)
    assert ones.b.item() == plain.b.item()  # weights of 1 change nothing
    assert weighted.b.item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="sample_weight must be 4"):
        fit(_ToyModel(), data, None, config, sample_weight=np.ones(3))
    with pytest.raises(ValueError, match="host_weight_power"):
        TrainingConfig(host_weight_power=-0.5)
    with pytest.raises(ValueError, match="host_weight_power is for experts"):
        AdvisorConfig("eform", "mp_eform", training=TrainingConfig(host_weight_power=0.5))


def test_max_minutes_stops() -> None:
    config = TrainingConfig(epochs=50, batch_size=4, lr=0.01, scheduler="none", patience=100, max_minutes=0.0)
    result = fit(_ToyModel(), _ToyData([1.0] * 8), _ToyData([1.0] * 4), config)
    assert result.epochs_run == 1 and "time limit" in result.stopped_because


@pytest.mark.parametrize("n, val, test", [(3, 0.1, 0.1), (10, 0.1, 0.1), (101, 0.2, 0.15), (50, 0.0, 0.3), (7, 0.0, 0.0)])
def test_split_indices_disjoint_and_complete(n: int, val: float, test: float) -> None:
    train_idx, val_idx, test_idx = split_indices(n, val, test, seed=0)
    together = np.concatenate([train_idx, val_idx, test_idx])
    assert sorted(together.tolist()) == list(range(n))  # covers all, no duplicates
    assert len(val_idx) == max(int(round(n * val)), 1 if val > 0 else 0)
    assert len(test_idx) == max(int(round(n * test)), 1 if test > 0 else 0)
    assert len(train_idx) > 0
    again = split_indices(n, val, test, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train_idx, val_idx, test_idx)))
    if n >= 10 and test > 0:
        other = split_indices(n, val, test, seed=1)
        assert not np.array_equal(other[2], test_idx)


def test_regression_metrics_and_predict(bandgap_graphs: PackedGraphs) -> None:
    target = np.array([1.0, 2.0, 3.0, 4.0])
    perfect = regression_metrics(target, target)
    assert perfect["mae"] == 0 and perfect["r2"] == 1 and perfect["n"] == 4
    m = regression_metrics(target + np.array([1, -1, 1, -1]), target)
    assert m["mae"] == 1 and m["rmse"] == 1 and m["r2"] == pytest.approx(1 - 4 / 5)
    model = tiny_advisor()
    np.testing.assert_allclose(predict(model, bandgap_graphs, batch_size=4), predict(model, bandgap_graphs), atol=1e-5)


def test_training_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError):
        TrainingConfig(epochs=0)
    with pytest.raises(ValueError):
        TrainingConfig(val_fraction=0.5, test_fraction=0.5)


# --------------------------------------------------------------------------- checkpoints
class _FakeEntry:
    ref = "advisor/fake:1"

    def __init__(self, files: dict[str, bytes]):
        self.files = files

    def read_file(self, name: str) -> bytes:
        return self.files[name]


def test_checkpoint_roundtrip_and_checks(structures: list) -> None:
    model = tiny_advisor("attention")
    files = model_files(model)
    assert set(files) == {ARCHITECTURE, WEIGHTS}
    assert json.loads(files[ARCHITECTURE])["class"] == "advisor"
    loaded = load_model(_FakeEntry(files))
    assert not loaded.training
    a, b = embed_structures(model, structures), embed_structures(loaded, structures)
    np.testing.assert_array_equal(a.crystal, b.crystal)
    np.testing.assert_array_equal(a.prediction, b.prediction)
    assert loaded.normalizer.to_dict() == {"mean": 1.5, "std": 2.0}

    state = load_safetensors(files[WEIGHTS])
    table_key = next(k for k in state if k.endswith("embedding.table"))
    state[table_key] = state[table_key].clone()
    state[table_key][8, 0] += 1.0  # oxygen's row differs from this installation's table
    with pytest.raises(RegistryError, match="element table"):
        load_model(_FakeEntry({**files, WEIGHTS: save_safetensors(state)}))
    partial = {k: v for k, v in load_safetensors(files[WEIGHTS]).items() if k != "head.fc_out.bias"}
    with pytest.raises(RegistryError, match="do not match"):
        load_model(_FakeEntry({**files, WEIGHTS: save_safetensors(partial)}))
    with pytest.raises(RegistryError, match="unreadable weights"):
        load_model(_FakeEntry({**files, WEIGHTS: b"\x00" * 64}))
    arch = json.loads(files[ARCHITECTURE])
    assert (arch["@module"], arch["@class"]) == ("adex.advisors.model", "Advisor")  # matgl-style class path
    legacy = {k: v for k, v in arch.items() if not k.startswith("@")}
    assert torch.equal(load_model(_FakeEntry({**files, ARCHITECTURE: json.dumps(legacy).encode()})).head.fc_out.bias,
                       model.head.fc_out.bias)  # files written before @module/@class still load
    with pytest.raises(RegistryError, match="unknown"):
        load_model(_FakeEntry({**files, ARCHITECTURE: json.dumps({**legacy, "class": "nonsense"}).encode()}))
    for module, name in (("os", "system"), ("adex.advisors.model", "AdvisorConfig"), ("adex.expert.model", "Advisor")):
        with pytest.raises(RegistryError, match="not one adex may load"):  # nothing outside the allow-list is imported
            load_model(_FakeEntry({**files, ARCHITECTURE: json.dumps({**arch, "@module": module, "@class": name}).encode()}))


# --------------------------------------------------------------------------- advisor training
def tiny_config(*extra: str) -> AdvisorConfig:
    overrides = ["model.atom_fea_len=8", "model.n_conv=1", "model.head_hidden=8", "model.dropout=0.0",
                 "featurizer.cutoff=6.0", "featurizer.max_neighbors=8", "training.batch_size=8",
                 "training.epochs=2", "training.limit=20", *extra]
    return load_config(AdvisorConfig, "advisors", "bandgap", overrides)


def test_train_advisor_registry_model_equals_in_memory(small_data: Path, tmp_path: Path, structures: list) -> None:
    registry = Registry(root=tmp_path / "registry", builtin_root=tmp_path / "no-builtin")
    run = train_advisor(tiny_config(), data=small_data, out=tmp_path / "run", registry=registry)
    assert run.entry is not None and run.entry.ref == "advisor/bandgap:1"
    assert run.run_dir == tmp_path / "run"
    assert json.loads((run.run_dir / "registered.json").read_text()) == {"ref": "advisor/bandgap:1"}
    loaded = load_model(registry.resolve("advisor/bandgap:1"))
    assert loaded.architecture() == run.model.architecture()
    in_memory, from_registry = embed_structures(run.model, structures), embed_structures(loaded, structures)
    np.testing.assert_array_equal(from_registry.prediction, in_memory.prediction)
    np.testing.assert_array_equal(from_registry.crystal, in_memory.crystal)
    np.testing.assert_array_equal(from_registry.atom, in_memory.atom)
    # normaliser of the training targets travels with the weights
    card = registry.resolve("bandgap").card
    assert card["target"]["normalizer"] == loaded.normalizer.to_dict() == run.model.normalizer.to_dict()
    assert card["target"]["normalizer"]["mean"] > 0.3  # band gaps in eV, not the default 0
    assert card["dataset"]["n_structures"] == 20
    assert card["dataset"]["n_train"] + card["dataset"]["n_val"] + card["dataset"]["n_test"] == 20
    assert run.metrics["test"]["n"] == card["dataset"]["n_test"]
    # the metrics are those of the kept model on the recorded split
    test_rows = (run.run_dir / "test_predictions.csv").read_text().splitlines()[1:]
    assert len(test_rows) == card["dataset"]["n_test"]


def test_train_advisor_without_registry(small_data: Path, adex_home: Path, tmp_path: Path) -> None:
    run = train_advisor(tiny_config("training.epochs=1"), data=small_data, out=tmp_path / "run", register=False)
    assert run.entry is None
    assert not (adex_home / "registry").exists()
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_featurize_structures_uses_model_settings(structures: list) -> None:
    model = tiny_advisor(settings=FeaturizerSettings(cutoff=4.0, max_neighbors=4))
    graphs = featurize_structures(model, structures[:2], ["a", "b"])
    assert graphs.edge_distance.max() <= 4.0
    assert graphs.ids.tolist() == ["a", "b"]
