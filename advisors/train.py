"""Training an advisor: featurize (cached), split, fit, evaluate, save the run, register.

A run folder (``$ADEX_HOME/runs/advisor-<name>-<time>/`` unless ``--out``) receives the
resolved ``config.yaml``, ``metrics.json``, ``history.csv``, ``test_predictions.csv``
and two plots (``learning_curve.png``, ``parity.png``). The model goes into the
registry as ``advisor/<name>`` with a card recording everything needed to reload it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adex.advisors.model import Advisor, AdvisorConfig
from adex.config import dump_yaml, to_dict
from adex.datasets import load_dataset
from adex.distributed import context, replicas_in_sync, shutdown
from adex.fileio import atomic_write_json, atomic_write_text
from adex.graphs import element_table_sha256
from adex.paths import new_run_dir, runs_dir  # noqa: F401  (new_run_dir re-exported)
from adex.training import fit, plot_run, predict, primary_scores, regression_metrics, seed_everything, split_indices, write_history  # noqa: F401 - re-exported


@dataclass
class AdvisorRun:
    model: Advisor
    metrics: dict
    run_dir: Path | None  # None on the non-zero ranks of a distributed run
    entry: object | None  # registry Entry when registered


def train_advisor(
    config: AdvisorConfig,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    registry=None,
    register: bool = True,
    aliases: tuple[str, ...] = (),
) -> AdvisorRun:
    """Train one advisor end to end (see module docstring)."""
    tc = config.training
    if tc.threads:
        torch.set_num_threads(tc.threads)
    seed_everything(tc.seed)
    t0 = time.perf_counter()
    dataset = load_dataset(config.dataset, config.featurizer, data=data, limit=tc.limit, seed=tc.seed)
    featurize_seconds = time.perf_counter() - t0
    graphs = dataset.graphs
    train_idx, val_idx, test_idx = split_indices(len(graphs), tc.val_fraction, tc.test_fraction, tc.seed)
    train, val, test = graphs.subset(train_idx), graphs.subset(val_idx), graphs.subset(test_idx)
    y = train.targets
    model = Advisor(config.featurizer, config.model, dataset.target, dataset.unit, float(y.mean()), float(y.std()))
    result = fit(model, train, val if len(val) else None, tc, description=f"advisor {config.name}")
    model.eval()
    dist = context(tc.device)
    in_sync = replicas_in_sync(model)
    metrics = {
        split: regression_metrics(predict(model, part), part.targets) if len(part) else None
        for split, part in (("train", train), ("val", val), ("test", test))
    }
    test_pred = predict(model, test) if len(test) else np.zeros(0)
    metrics.update(
        {
            "unit": dataset.unit,
            "best_epoch": result.best_epoch,
            "epochs_run": result.epochs_run,
            "stopped_because": result.stopped_because,
            "train_seconds": round(result.seconds, 2),
            "featurize_seconds": round(featurize_seconds, 2),
            "seconds_per_epoch": round(result.seconds / max(result.epochs_run, 1), 3),
            "torch_threads": torch.get_num_threads(),
            "world_size": dist.world_size,
            "replicas_in_sync": in_sync,
        }
    )
    if not dist.is_main:  # rank 0 writes the run folder and registers
        shutdown()
        return AdvisorRun(model, metrics, None, None)
    try:
        return _save_advisor_run(config, model, metrics, result, dataset, graphs, train, val, test, test_pred, out,
                                 registry, register, aliases)
    finally:
        shutdown()


def _save_advisor_run(config, model, metrics, result, dataset, graphs, train, val, test, test_pred, out, registry,
                      register, aliases) -> AdvisorRun:
    run_dir = new_run_dir(f"advisor-{config.name}", out)
    atomic_write_text(run_dir / "config.yaml", dump_yaml(config))
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_history(run_dir, result.history)
    atomic_write_text(
        run_dir / "test_predictions.csv",
        "id,target,prediction\n" + "".join(f"{i},{t:.6g},{p:.6g}\n" for i, t, p in zip(test.ids, test.targets, test_pred)),
    )
    plot_run(run_dir, result.history, test_pred, test.targets if len(test) else np.zeros(0), f"advisor {config.name}", dataset.unit)

    entry = None
    if register:
        from adex.checkpoint import model_files
        from adex.registry import open_registry

        registry = registry or open_registry()
        card = {
            "description": f"{config.name} advisor: {dataset.target} ({dataset.unit}) from {config.dataset}",
            "featurizer": config.featurizer.to_dict(),
            "featurizer_fingerprint": config.featurizer.fingerprint(),
            "element_embedding": {"name": config.featurizer.element_embedding, "sha256": element_table_sha256(config.featurizer.element_embedding)},
            "target": {"name": dataset.target, "unit": dataset.unit, "normalizer": model.normalizer.to_dict()},
            "embedding_width": model.embedding_width,
            "config": to_dict(config),
            "dataset": {
                "name": config.dataset,
                "fingerprint": dataset.fingerprint,
                "n_structures": len(graphs),
                "n_train": len(train),
                "n_val": len(val),
                "n_test": len(test),
                "n_skipped": len(dataset.skipped),
            },
            "metrics": metrics,
            "run_dir": str(run_dir),
        }
        split, scores = primary_scores(metrics)
        entry = registry.register(
            "advisor", config.name, model_files(model), card, primary_metric=(f"{split}_mae", scores["mae"]), aliases=list(aliases)
        )
        atomic_write_json(run_dir / "registered.json", {"ref": entry.ref})
    return AdvisorRun(model, metrics, run_dir, entry)
