"""Training the expert: data, advisors (frozen, features computed once), transfer
learning (init from an advisor backbone, freeze, gradual unfreezing), fit, evaluate,
save the run, register with the advisors' exact versions as parents."""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adex.config import dump_yaml, to_dict
from adex.errors import ConfigError
from adex.expert.advisor_features import compute_advisor_features
from adex.expert.data import AdvisorFeatures
from adex.expert.data import VacancyDataset
from adex.expert.witman import load_witman, read_split
from adex.expert.model import AdvisorSlot, Expert, ExpertModelConfig
from adex.expert.potential import potential_advisor, potential_supercell, vacancy_energies
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
class AugmentConfig:
    """Training-set augmentation: extra views of every training vacancy, label shared.

    Attributes:
        min_image_distances: for each value (Å), the training vacancies are featurized
            once more in the smallest supercell with that minimum image distance and added
            to the training set (validation and test keep the configured supercell).
            Symmetry-equivalent sites need no augmentation: they give the same graph by
            construction (canonical host and site, see docs/architecture.md).
        share_potential_energies: with ``model.potential_delta``, a view takes the
            potential's vacancy energy (eV) of the configured supercell instead of
            computing its own, as it takes the label: no potential run on the views,
            which makes ``model.potential_relaxation`` with views affordable (a view
            relaxation would cost ~5x the view's unrelaxed energy).
    """

    min_image_distances: list[float] = field(default_factory=list)
    share_potential_energies: bool = False


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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    ensemble: int = 1  # members, trained with seeds seed, seed + 1, ...; predictions report their mean and std

    def __post_init__(self) -> None:
        if self.ensemble < 1:
            raise ValueError("ensemble must be >= 1 (number of members)")
        if self.augment.share_potential_energies and not self.model.potential_delta:
            raise ValueError("augment.share_potential_energies needs model.potential_delta: true (no potential energies to share)")


@dataclass
class ExpertRun:
    model: Expert
    metrics: dict
    run_dir: Path
    entry: object | None
    test: dict | None = None  # ids, element, dH_eV, dH_pred_eV (and dH_std_eV for an ensemble): arrays [n_test]


def load_advisors(refs: list[str], registry) -> list[tuple[object, object]]:
    """(registry entry, model) for each advisor reference, frozen and in eval mode."""
    from adex.checkpoint import load_model

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
    from adex.checkpoint import ARCHITECTURE, WEIGHTS

    return AdvisorSlot(entry.ref, model.embedding_width, entry.files[WEIGHTS]["sha256"],
                       entry.files.get(ARCHITECTURE, {}).get("sha256", ""))


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


@dataclass
class PreparedData:
    """Everything the members of one training run share: the vacancy graphs, the
    advisors and their features (computed once), the held-out test indices and the
    pool the members' train/validation splits are drawn from."""

    packed: object
    features: list[AdvisorFeatures]
    advisors: list  # (registry entry, model)
    test_idx: np.ndarray
    pool: np.ndarray  # indices available for training + validation
    grouped: bool  # validation by host compound (per-compound splits)
    base_split: tuple[np.ndarray, np.ndarray] | None  # (train, val) of a random split at the base seed
    featurize_seconds: float
    advisor_seconds: float
    views: list = field(default_factory=list)  # VacancyDataset per augmentation, rows aligned with ``pool``
    init_advisor: object | None = None  # the ``transfer.init_from`` advisor (loaded once for all members)
    potential_delta: np.ndarray | None = None  # float64 [B] eV: unrelaxed vacancy energies (model.potential_delta)


def prepare_data(config: ExpertConfig, data, registry, fold=None, grouped: bool | None = None) -> PreparedData:
    """Load (or featurize) the Witman vacancies, pick the test set and run the advisors.

    The test set is ``fold.test`` (an :class:`adex.studies.splits.Fold`) if given, else the
    holdout of the published split ``config.split``, else a random ``test_fraction``.
    ``grouped`` (default: per-compound published splits) draws validation hosts, not
    vacancies.
    """
    from adex.datasets import dataset_root

    tc = config.training
    t0 = time.perf_counter()
    root = dataset_root("witman2023_vacancies", data)
    base_split = None
    if fold is not None or config.split:
        train_ids, hold_ids = (list(fold.train), list(fold.test)) if fold is not None else read_split(root, config.split)
        packed = load_witman(config.featurizer, config.supercell, data, ids=train_ids + hold_ids)
        n_train_all = len(train_ids)
        pool = np.arange(n_train_all)
        if tc.limit is not None:
            pool = np.sort(np.random.default_rng(tc.seed).permutation(n_train_all)[: tc.limit])
        if grouped is None:
            grouped = fold is None and ("struct" in config.split or config.split.startswith("CS_"))
        test_idx = np.arange(n_train_all, n_train_all + len(hold_ids))
    else:
        packed = load_witman(config.featurizer, config.supercell, data, limit=tc.limit)
        train_idx, val_idx, test_idx = split_indices(len(packed), tc.val_fraction, tc.test_fraction, tc.seed)
        pool, grouped, base_split = np.union1d(train_idx, val_idx), False, (train_idx, val_idx)
    featurize_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    advisors = load_advisors(config.advisors, registry)
    potential = potential_advisor(advisors) if config.model.potential_delta else None
    features = [advisor_features(entry, model, packed) for entry, model in advisors]
    relax = {"relaxation": config.model.potential_relaxation, "relaxation_steps": config.model.potential_relaxation_steps}
    potential_distance = config.model.potential_min_image_distance
    delta = None if potential is None else vacancy_energies(*potential, packed, potential_supercell(config.supercell, potential_distance), **relax)
    advisor_seconds = time.perf_counter() - t1
    views = []
    for distance in config.augment.min_image_distances:
        settings = dataclasses.replace(config.supercell, min_image_distance=float(distance))
        view = load_witman(config.featurizer, settings, data, ids=[str(i) for i in packed.ids[pool]])
        if potential is None:
            view_delta = None
        elif config.augment.share_potential_energies:
            if list(view.ids) != list(packed.ids[pool]):
                raise ValueError("augmented view does not follow the training pool; cannot share potential energies")
            view_delta = delta[pool]
        else:
            view_delta = vacancy_energies(*potential, view, potential_supercell(settings, potential_distance), **relax)
        views.append(VacancyDataset(view, [advisor_features(entry, model, view) for entry, model in advisors],
                                    view_delta))
    init_advisor = None
    if config.transfer.init_from:
        [(init_entry, init_advisor)] = load_advisors([config.transfer.init_from], registry)
        if not hasattr(init_advisor, "backbone"):
            raise ConfigError(f"--init-from {init_entry.ref}: only adex (CGCNN-style) advisors have a backbone to copy")
    elif config.transfer.freeze:
        raise ConfigError("transfer.freeze needs transfer.init_from (an advisor to start from)")
    return PreparedData(packed, features, advisors, test_idx, pool, grouped, base_split, featurize_seconds,
                        advisor_seconds, views, init_advisor, delta)


def advisor_features(entry, advisor, packed):
    """:func:`compute_advisor_features`; for advisors that ask for it (``cache_embeddings``:
    deterministic per host and slow, e.g. the descriptor advisor) through the per-host
    embedding cache of ``adex predict --cache`` (:func:`adex.expert.advisor_features.cached_advisor_features`)."""
    if getattr(advisor, "cache_embeddings", False):
        from adex.expert.advisor_features import cached_advisor_features

        return cached_advisor_features(entry, advisor, packed)
    return compute_advisor_features(advisor, entry.ref, packed)


def host_weights(hosts, power: float) -> np.ndarray:
    """Loss weight of each vacancy: float [len(hosts)], ``n_host ** -power`` normalised to
    mean 1, where ``n_host`` counts the entries of ``hosts`` (host compound labels, one per
    vacancy, e.g. ``host_of(id)``) equal to the vacancy's own."""
    _, inverse, counts = np.unique(np.asarray(hosts, dtype=str), return_inverse=True, return_counts=True)
    weight = counts[inverse].astype(np.float64) ** -power
    return weight / weight.mean()


def member_split(prepared: PreparedData, val_fraction: float, base_seed: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices of the member trained with ``seed``.

    Published splits: validation carved from the training set with ``seed`` (by host
    compound for per-compound splits). Random splits: the test set is fixed by the base
    seed; the member with the base seed keeps the base split, the others draw a
    validation set of the same size from the same pool with their own seed.
    """
    if prepared.base_split is None:
        return tuple(reversed(validation_split(prepared.packed.ids[prepared.pool], prepared.pool, val_fraction, seed,
                                               prepared.grouped)))
    train_idx, val_idx = prepared.base_split
    if seed == base_seed or len(val_idx) == 0:
        return train_idx, val_idx
    order = np.random.default_rng(seed).permutation(prepared.pool)
    return np.sort(order[len(val_idx):]), np.sort(order[: len(val_idx)])


@dataclass
class FittedMember:
    model: Expert
    seed: int
    train_idx: np.ndarray
    val_idx: np.ndarray
    result: object  # adex.training.FitResult
    dataset: VacancyDataset  # all vacancies, pruned to this member's receptive field


def fit_member(config: ExpertConfig, prepared: PreparedData, seed: int, description: str) -> FittedMember:
    """Train one expert with ``seed`` (initial weights, dropout, batch order, validation split)."""
    from pymatgen.core.periodic_table import Element

    tc = config.training
    packed = prepared.packed
    train_idx, val_idx = member_split(prepared, tc.val_fraction, tc.seed, seed)
    if len(train_idx) < 2:  # batch normalisation needs two samples; none would give NaN metrics
        raise ConfigError(f"only {len(train_idx)} training vacanc{'y' if len(train_idx) == 1 else 'ies'} "
                          f"(training.limit={tc.limit}, val_fraction {tc.val_fraction}, test_fraction "
                          f"{tc.test_fraction}); training needs at least 2: raise --limit")
    seed_everything(seed)
    y = packed.targets[train_idx]
    seen = np.unique(packed.subset(train_idx).graphs.atomic_numbers)
    slots = [advisor_slot(entry, model) for entry, model in prepared.advisors]
    reference = None
    if prepared.potential_delta is not None:
        y = y - prepared.potential_delta[train_idx]  # the potential's share; reference and network learn the rest
    if config.model.element_reference:
        vacated_z = packed.vacated_numbers[train_idx]
        reference = Expert.fit_element_reference(vacated_z, y)
        y = y - reference.numpy()[vacated_z]  # the network learns the residual
    model = Expert(config.featurizer, config.model, slots, float(y.mean()), float(y.std()), config.supercell.to_dict(),
                   training_elements=[Element.from_Z(int(z)).symbol for z in seen])
    if reference is not None:
        model.element_reference.copy_(reference)
    dataset = VacancyDataset(model.prepare(packed), prepared.features, prepared.potential_delta)
    on_epoch = None
    if prepared.init_advisor is not None:
        model.init_from_backbone(prepared.init_advisor.backbone)
        on_epoch = freeze_schedule(model, config.transfer)
    val = dataset.subset(val_idx)
    train = dataset.subset(train_idx)
    if prepared.views:  # augmented views of the same training vacancies (rows of a view follow ``pool``)
        rows = np.searchsorted(prepared.pool, train_idx)
        train = VacancyDataset.concatenate([train, *(VacancyDataset(model.prepare(v.packed), v.advisors, v.potential_delta).subset(rows)
                                                     for v in prepared.views)])
    weight = None
    if tc.host_weight_power:  # one weight per training vacancy, repeated for each augmented view
        weight = np.tile(host_weights([host_of(i) for i in packed.ids[train_idx]], tc.host_weight_power),
                         1 + len(prepared.views))
    member_tc = dataclasses.replace(tc, seed=seed)  # batch order too
    result = fit(model, train, val if len(val) else None, member_tc, description=description, on_epoch=on_epoch,
                 sample_weight=weight)
    model.eval()
    return FittedMember(model, seed, train_idx, val_idx, result, dataset)


def evaluate_member(member: FittedMember, prepared: PreparedData) -> tuple[dict, dict]:
    """(metrics per split, predictions per split) of one fitted member (eV)."""
    dataset = member.dataset
    elements = prepared.packed.info[:, 0]
    metrics, predictions = {}, {}
    for split_name, idx in (("train", member.train_idx), ("val", member.val_idx), ("test", prepared.test_idx)):
        if len(idx) == 0:
            metrics[split_name] = None
            continue
        part = dataset.subset(idx)
        pred = predict(member.model, part)
        predictions[split_name] = pred
        metrics[split_name] = {**regression_metrics(pred, part.targets), **per_group_mae(part.ids, pred, part.targets, elements[idx])}
    return metrics, predictions


def fit_summary(member: FittedMember) -> dict:
    r = member.result
    return {
        "seed": member.seed,
        "best_epoch": r.best_epoch,
        "epochs_run": r.epochs_run,
        "stopped_because": r.stopped_because,
        "train_seconds": round(r.seconds, 2),
        "seconds_per_epoch": round(r.seconds / max(r.epochs_run, 1), 3),
    }


def train_expert(
    config: ExpertConfig,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    registry=None,
    register: bool = True,
    aliases: tuple[str, ...] = (),
    fold=None,
    grouped: bool | None = None,
) -> ExpertRun:
    """Train ``config.ensemble`` experts (seeds ``seed``, ``seed + 1``, ...) on one
    featurization and one pass of the advisors; evaluate, write the run folder and
    register the expert (or the ensemble of them). ``fold`` / ``grouped``: see
    :func:`prepare_data` (cross-validation passes its folds here)."""
    from adex.paths import new_run_dir
    from adex.training import plot_run, write_history
    from adex.expert.ensemble import ExpertEnsemble, calibration, ensemble_statistics, plot_calibration
    from adex.registry import open_registry

    tc = config.training
    if tc.threads:
        torch.set_num_threads(tc.threads)
    registry = registry or open_registry()
    if register:  # a read-only registry is found now, not after the training
        registry.check_writable("expert", config.name)
    prepared = prepare_data(config, data, registry, fold, grouped)
    packed = prepared.packed
    n_members = config.ensemble
    run_dir = new_run_dir(f"expert-{config.name}", out)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
    members, member_metrics, member_predictions = [], [], []
    for k in range(n_members):
        description = f"expert {config.name}" + (f" member {k + 1}/{n_members}" if n_members > 1 else "")
        member = fit_member(config, prepared, tc.seed + k, description)
        metrics_k, predictions_k = evaluate_member(member, prepared)
        metrics_k.update(fit_summary(member))
        members.append(member)
        member_metrics.append(metrics_k)
        member_predictions.append(predictions_k)
        member_dir = run_dir if n_members == 1 else run_dir / f"member_{k}"
        member_dir.mkdir(exist_ok=True)
        write_history(member_dir, member.result.history)
        if n_members > 1:
            atomic_write_json(member_dir / "metrics.json", metrics_k)
            plot_run(member_dir, member.result.history, predictions_k.get("test", np.zeros(0)),
                     packed.targets[prepared.test_idx], f"expert {config.name} member {k}", "eV")

    elements = packed.info[:, 0]
    test_ids, test_y, test_el = packed.ids[prepared.test_idx], packed.targets[prepared.test_idx], elements[prepared.test_idx]
    common = {
        "unit": "eV",
        "split": fold.name if fold is not None else
                 config.split or f"random (val {tc.val_fraction}, test {tc.test_fraction}, seed {tc.seed})",
        "featurize_seconds": round(prepared.featurize_seconds, 2),
        "advisor_seconds": round(prepared.advisor_seconds, 2),
        "torch_threads": torch.get_num_threads(),
        "mean_nodes_per_vacancy": float(np.diff(packed.graphs.node_ptr).mean()),
        "mean_nodes_per_vacancy_used": float(np.diff(members[0].dataset.packed.graphs.node_ptr).mean()),
        "augment_min_image_distances": list(config.augment.min_image_distances),
        "training_views": 1 + len(prepared.views),
    }
    if n_members == 1:
        model = members[0].model
        metrics = {**member_metrics[0], **common}
        test_pred = member_predictions[0].get("test")
        test_std = None
    else:
        model = ExpertEnsemble([m.model for m in members])
        metrics = {"train": None, "val": None, "test": None, **common, "ensemble_size": n_members,
                   "seeds": [m.seed for m in members], "members": member_metrics,
                   "train_seconds": round(sum(m.result.seconds for m in members), 2)}
        for split, where in (("val", "on their own validation sets"), ("train", "on the training set")):
            maes = [m[split]["mae"] for m in member_metrics if m.get(split)]
            if maes:
                metrics[split] = {"mae": float(np.mean(maes)), "mae_std": float(np.std(maes)), "n_members": len(maes),
                                  "note": f"mean of the members' MAEs {where}"}
        test_pred = test_std = None
        if len(prepared.test_idx):
            stacked = np.stack([p["test"] for p in member_predictions])
            test_pred, test_std = ensemble_statistics(stacked)
            member_maes = [m["test"]["mae"] for m in member_metrics]
            metrics["test"] = {**regression_metrics(test_pred, test_y), **per_group_mae(test_ids, test_pred, test_y, test_el),
                               "member_mae_mean": float(np.mean(member_maes)), "member_mae_std": float(np.std(member_maes))}
            metrics["calibration"] = calibration(test_pred, test_std, test_y)
            plot_calibration(run_dir / "calibration.png", test_pred, test_std, test_y,
                             f"{config.name}: {n_members} members, {metrics['split']}")
    atomic_write_json(run_dir / "metrics.json", metrics)
    if test_pred is not None:
        header = "id,element,dH_eV,dH_pred_eV" + (",dH_std_eV" + "".join(f",dH_pred_m{k}" for k in range(n_members)) if test_std is not None else "")
        rows = []
        for j, (i, e, t, p) in enumerate(zip(test_ids, test_el, test_y, test_pred)):
            extra = "" if test_std is None else f",{test_std[j]:.6g}" + "".join(f",{mp['test'][j]:.6g}" for mp in member_predictions)
            rows.append(f"{i},{e},{t:.6g},{p:.6g}{extra}\n")
        atomic_write_text(run_dir / "test_predictions.csv", header + "\n" + "".join(rows))
    plot_run(run_dir, members[0].result.history if n_members == 1 else [], test_pred if test_pred is not None else np.zeros(0),
             test_y, f"expert {config.name}" + (f" ({n_members}-member ensemble)" if n_members > 1 else ""), "eV")

    entry = None
    if register:
        entry = register_expert(config, model, metrics, prepared, registry, run_dir, aliases)
        atomic_write_json(run_dir / "registered.json", {"ref": entry.ref})
    test = None
    if test_pred is not None:
        test = {"id": test_ids, "element": test_el, "dH_eV": test_y, "dH_pred_eV": test_pred}
        if test_std is not None:
            test["dH_std_eV"] = test_std
    return ExpertRun(model, metrics, run_dir, entry, test)


def register_expert(config: ExpertConfig, model, metrics: dict, prepared: PreparedData, registry, run_dir: Path,
                    aliases: tuple[str, ...] = ()):
    """Store a trained expert or ensemble with its card; parents = its advisors' exact
    versions (and the ``init_from`` advisor)."""
    from adex.training import primary_scores
    from adex.checkpoint import model_files
    from adex.expert.ensemble import as_members

    parents = [entry.ref for entry, _ in prepared.advisors]
    if config.transfer.init_from:
        init_ref = registry.resolve(config.transfer.init_from, kind="advisor").ref
        if init_ref not in parents:
            parents.append(init_ref)
    primary_split, primary = primary_scores(metrics)
    members = as_members(model)
    first = members[0]
    first_metrics = metrics["members"][0] if len(members) > 1 else metrics
    card = {
        "description": f"{config.name} expert{f' ({len(members)}-member ensemble)' if len(members) > 1 else ''}: "
                       f"neutral vacancy formation enthalpy (eV), advisors: {', '.join(config.advisors) or 'none'}",
        "featurizer": config.featurizer.to_dict(),
        "featurizer_fingerprint": config.featurizer.fingerprint(),
        "element_embedding": {"name": config.featurizer.element_embedding, "sha256": element_table_sha256(config.featurizer.element_embedding)},
        "supercell": config.supercell.to_dict(),
        "target": {"name": "vacancy_formation_enthalpy", "unit": "eV",
                   "normalizer": [m.normalizer.to_dict() for m in members] if len(members) > 1 else first.normalizer.to_dict()},
        "advisors": [s.to_dict() for s in first.advisors],
        "config": to_dict(config),
        "dataset": {"name": "witman2023_vacancies", "n_train": int((first_metrics.get("train") or {}).get("n", 0)),
                    "n_val": int((first_metrics.get("val") or {}).get("n", 0)), "n_test": len(prepared.test_idx),
                    "split": metrics["split"],
                    **({"note": "n_train / n_val of member 0; each member draws its validation set with its own seed"}
                       if len(members) > 1 else {})},
        "metrics": metrics,
        "run_dir": str(run_dir),
    }
    return registry.register("expert", config.name, model_files(model), card, parents=parents,
                             primary_metric=(f"{primary_split}_mae", primary["mae"]), aliases=list(aliases))
