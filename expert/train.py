"""Training the expert: data, advisors (frozen, features computed once), transfer
learning (init from an advisor backbone, freeze, gradual unfreezing), fit, evaluate,
save the run, register with the advisors' exact versions as parents."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from adex.config import dump_yaml, to_dict
from adex.errors import ConfigError
from adex.expert.data import (
    AdvisorFeatures,
    VacancyDataset,
    compute_advisor_features,
    load_witman,
    read_split,
)
from adex.expert.model import AdvisorSlot, Expert, ExpertModelConfig
from adex.fileio import atomic_write_json, atomic_write_text
from adex.graphs import FeaturizerSettings, element_table_sha256
from adex.supercell import SupercellSettings
from adex.training import TrainingConfig, fit, predict, regression_metrics, seed_everything, split_indices


@dataclass
class TransferConfig:
    """Transfer learning from an advisor backbone.

    Attributes:
        init_from: advisor reference whose element embedding and convolutions
            initialise the expert's (None: random initialisation).
        freeze: keep the initialised modules frozen at the start.
        unfreeze_every: with ``freeze``, unfreeze one more module (the top convolution
            first, down to the embedding) every this many epochs; 0 keeps them frozen.
    """

    init_from: str | None = None
    freeze: bool = False
    unfreeze_every: int = 0


@dataclass
class ExpertConfig:
    """A full expert training recipe (``configs/expert/<name>.yaml``)."""

    name: str = "vacancy"
    advisors: list[str] = field(default_factory=list)
    split: str | None = None
    featurizer: FeaturizerSettings = field(default_factory=lambda: FeaturizerSettings(cutoff=6.0))
    supercell: SupercellSettings = field(default_factory=SupercellSettings)
    model: ExpertModelConfig = field(default_factory=ExpertModelConfig)
    transfer: TransferConfig = field(default_factory=TransferConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


@dataclass
class ExpertRun:
    model: Expert
    metrics: dict
    run_dir: Path
    entry: object | None


def load_advisors(refs: list[str], registry) -> list[tuple[object, object]]:
    """(registry entry, model) for each advisor reference, frozen and in eval mode."""
    from adex.checkpoint import WEIGHTS, load_model

    out = []
    for ref in refs:
        entry = registry.resolve(ref, kind="advisor")
        if entry.kind != "advisor":
            raise ConfigError(f"{ref} is a {entry.kind}, not an advisor")
        model = load_model(entry)
        for p in model.parameters():
            p.requires_grad_(False)
        out.append((entry, model))
    return out


def advisor_slot(entry, model) -> AdvisorSlot:
    from adex.checkpoint import WEIGHTS

    return AdvisorSlot(entry.ref, model.embedding_width, entry.files[WEIGHTS]["sha256"])


def freeze_schedule(model: Expert, transfer: TransferConfig):
    """``on_epoch`` callback implementing freeze + gradual unfreezing (or None)."""
    modules = model.transferable_modules()
    if not transfer.freeze:
        return None

    def on_epoch(epoch: int, _model) -> None:
        steps = epoch // transfer.unfreeze_every if transfer.unfreeze_every > 0 else 0
        n_frozen = max(len(modules) - steps, 0)
        # frozen: the first n_frozen modules (embedding first); unfreezing goes top-down
        for k, module in enumerate(modules):
            for p in module.parameters():
                p.requires_grad_(k >= n_frozen)
        model.frozen_modules = modules[:n_frozen]

    return on_epoch


def host_of(vacancy_id: str) -> str:
    """Host compound of a Witman vacancy id (``0009491-O1`` -> ``0009491``)."""
    return str(vacancy_id).rsplit("-", 1)[0]


def validation_split(ids: np.ndarray, indices: np.ndarray, fraction: float, seed: int, grouped: bool) -> tuple[np.ndarray, np.ndarray]:
    """(val, train) indices carved from a published training set. For per-compound
    splits the validation hosts are disjoint from the training hosts too, so early
    stopping is judged the way the holdout is."""
    if fraction <= 0:
        return np.zeros(0, dtype=np.int64), np.sort(indices)
    rng = np.random.default_rng(seed)
    if not grouped:
        order = rng.permutation(indices)
        n_val = max(int(round(len(indices) * fraction)), 1)
        return np.sort(order[:n_val]), np.sort(order[n_val:])
    hosts = np.array([host_of(i) for i in ids])
    unique = rng.permutation(np.unique(hosts))
    val_hosts = set(unique[: max(int(round(len(unique) * fraction)), 1)])
    is_val = np.array([h in val_hosts for h in hosts])
    return np.sort(indices[is_val]), np.sort(indices[~is_val])


def per_group_mae(ids: np.ndarray, pred: np.ndarray, target: np.ndarray, elements: np.ndarray) -> dict:
    """MAE per vacancy species (O vs metal) and per host compound count (eV)."""
    err = np.abs(pred - target)
    out = {}
    is_o = elements == "O"
    if is_o.any():
        out["mae_O"] = float(err[is_o].mean())
    if (~is_o).any():
        out["mae_metal"] = float(err[~is_o].mean())
    hosts = np.array([host_of(i) for i in ids])
    out["n_hosts"] = int(len(set(hosts)))
    return out


def train_expert(
    config: ExpertConfig,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    registry=None,
    register: bool = True,
    aliases: tuple[str, ...] = (),
) -> ExpertRun:
    from adex.advisors.train import new_run_dir, plot_run, write_history
    from adex.datasets import dataset_root
    from adex.registry import open_registry

    tc = config.training
    if tc.threads:
        torch.set_num_threads(tc.threads)
    seed_everything(tc.seed)
    registry = registry or open_registry()
    t0 = time.perf_counter()
    root = dataset_root("witman2023_vacancies", data)
    if config.split:
        train_ids, hold_ids = read_split(root, config.split)
        packed = load_witman(config.featurizer, config.supercell, data, ids=train_ids + hold_ids)
        n_train_all = len(train_ids)
        all_train = np.arange(n_train_all)
        if tc.limit is not None:
            all_train = np.sort(np.random.default_rng(tc.seed).permutation(n_train_all)[: tc.limit])
        grouped = "struct" in config.split or config.split.startswith("CS_")
        val_idx, train_idx = validation_split(packed.ids[all_train], all_train, tc.val_fraction, tc.seed, grouped)
        test_idx = np.arange(n_train_all, n_train_all + len(hold_ids))
    else:
        packed = load_witman(config.featurizer, config.supercell, data, limit=tc.limit)
        train_idx, val_idx, test_idx = split_indices(len(packed), tc.val_fraction, tc.test_fraction, tc.seed)
    featurize_seconds = time.perf_counter() - t0

    t1 = time.perf_counter()
    advisors = load_advisors(config.advisors, registry)
    features = [compute_advisor_features(model, entry.ref, packed) for entry, model in advisors]
    advisor_seconds = time.perf_counter() - t1
    from pymatgen.core.periodic_table import Element

    y = packed.targets[train_idx]
    seen = np.unique(packed.subset(train_idx).graphs.atomic_numbers)
    slots = [advisor_slot(entry, model) for entry, model in advisors]
    reference = None
    if config.model.element_reference:
        vacated_z = packed.vacated_numbers[train_idx]
        reference = Expert.fit_element_reference(vacated_z, y)
        y = y - reference.numpy()[vacated_z]  # the network learns the residual
    model = Expert(config.featurizer, config.model, slots, float(y.mean()), float(y.std()), config.supercell.to_dict(),
                   training_elements=[Element.from_Z(int(z)).symbol for z in seen])
    if reference is not None:
        model.element_reference.copy_(reference)
    dataset = VacancyDataset(model.prepare(packed), features)
    train, val, test = dataset.subset(train_idx), dataset.subset(val_idx), dataset.subset(test_idx)
    parents = [entry.ref for entry, _ in advisors]
    on_epoch = None
    if config.transfer.init_from:
        [(init_entry, init_model)] = load_advisors([config.transfer.init_from], registry)
        model.init_from_backbone(init_model.backbone)
        if init_entry.ref not in parents:
            parents.append(init_entry.ref)
        on_epoch = freeze_schedule(model, config.transfer)
    elif config.transfer.freeze:
        raise ConfigError("transfer.freeze needs transfer.init_from (an advisor to start from)")

    result = fit(model, train, val if len(val) else None, tc, description=f"expert {config.name}", on_epoch=on_epoch)
    model.eval()
    elements = packed.info[:, 0]
    metrics: dict = {}
    predictions = {}
    for split_name, part, idx in (("train", train, train_idx), ("val", val, val_idx), ("test", test, test_idx)):
        if len(part) == 0:
            metrics[split_name] = None
            continue
        pred = predict(model, part)
        predictions[split_name] = pred
        metrics[split_name] = {**regression_metrics(pred, part.targets), **per_group_mae(part.ids, pred, part.targets, elements[idx])}
    metrics.update({
        "unit": "eV",
        "split": config.split or f"random (val {tc.val_fraction}, test {tc.test_fraction}, seed {tc.seed})",
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_because": result.stopped_because,
        "train_seconds": round(result.seconds, 2),
        "featurize_seconds": round(featurize_seconds, 2),
        "advisor_seconds": round(advisor_seconds, 2),
        "seconds_per_epoch": round(result.seconds / max(result.epochs_run, 1), 3),
        "torch_threads": torch.get_num_threads(),
        "mean_nodes_per_vacancy": float(np.diff(packed.graphs.node_ptr).mean()),
        "mean_nodes_per_vacancy_used": float(np.diff(dataset.packed.graphs.node_ptr).mean()),
    })
    run_dir = new_run_dir(f"expert-{config.name}", out)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_history(run_dir, result.history)
    if "test" in predictions:
        atomic_write_text(run_dir / "test_predictions.csv", "id,element,dH_eV,dH_pred_eV\n" + "".join(
            f"{i},{e},{t:.6g},{p:.6g}\n" for i, e, t, p in zip(test.ids, elements[test_idx], test.targets, predictions["test"])))
    plot_run(run_dir, result.history, predictions.get("test", np.zeros(0)), test.targets if len(test) else np.zeros(0),
             f"expert {config.name}", "eV")

    entry = None
    if register:
        from adex.checkpoint import model_files

        from adex.advisors.train import primary_scores

        primary_split, primary = primary_scores(metrics)
        card = {
            "description": f"{config.name} expert: neutral vacancy formation enthalpy (eV), advisors: "
                           f"{', '.join(config.advisors) or 'none'}",
            "featurizer": config.featurizer.to_dict(),
            "featurizer_fingerprint": config.featurizer.fingerprint(),
            "element_embedding": {"name": config.featurizer.element_embedding, "sha256": element_table_sha256(config.featurizer.element_embedding)},
            "supercell": config.supercell.to_dict(),
            "target": {"name": "vacancy_formation_enthalpy", "unit": "eV", "normalizer": model.normalizer.to_dict()},
            "advisors": [{"ref": s.ref, "width": s.width, "weights_sha256": s.weights_sha256} for s in slots],
            "config": to_dict(config),
            "dataset": {"name": "witman2023_vacancies", "n_train": len(train), "n_val": len(val), "n_test": len(test),
                        "split": metrics["split"]},
            "metrics": metrics,
            "run_dir": str(run_dir),
        }
        entry = registry.register("expert", config.name, model_files(model), card, parents=parents,
                                  primary_metric=(f"{primary_split}_mae", primary["mae"]),
                                  aliases=list(aliases))
        atomic_write_json(run_dir / "registered.json", {"ref": entry.ref})
    return ExpertRun(model, metrics, run_dir, entry)
