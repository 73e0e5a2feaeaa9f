"""Descriptor baseline: hand-made descriptors of a vacancy + gradient boosting.

The model every table compares the GNNs against (``adex baseline``). No graph network,
no DFT input: a vacancy (host structure, index of the vacated atom) becomes one row of
:data:`n_features` numbers in three blocks, and scikit-learn's
``HistGradientBoostingRegressor`` (NaN-aware) is trained and tested on exactly the folds
of :mod:`adex.studies.splits`. One module per job:

* the descriptors: :mod:`adex.supercell.descriptors` (shared with the descriptor advisor);
* the feature table of the Witman set and its cache, plus advisor embeddings and a
  potential's offset: :mod:`adex.studies.baseline_features`;
* the regressor, its settings and the per-fold loss choice: :mod:`adex.studies.baseline_model`;
* the cross-validation run and its run folder (``folds.csv``, ``predictions.csv``,
  ``metrics.json``, ``config.yaml``, ``baseline.png``): here, :func:`run_baseline`.

The names of those modules are also importable from here (``__all__``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adex.errors import DataError
from adex.studies.baseline_features import (
    FeatureTable,
    add_advisor_features,
    add_potential_delta,
    baseline_table,
    featurize_records,
    load_witman_features,
    read_rows,
)
from adex.studies.baseline_model import LOSSES, ModelSettings, carve_validation, fit_model, make_regressor
from adex.studies.splits import GROUPED_SCHEMES  # noqa: F401 - re-exported
from adex.supercell.descriptors import (
    FEATURE_VERSION,
    BaselineSettings,
    DescriptorFeaturizer,
    DescriptorSettings,
    feature_names,
)


__all__ = [
    # the run
    "GROUPED_SCHEMES", "BaselineResult", "check_folds", "run_baseline",
    # baseline_features
    "FeatureTable", "add_advisor_features", "add_potential_delta", "baseline_table", "featurize_records",
    "load_witman_features", "read_rows",
    # baseline_model
    "LOSSES", "ModelSettings", "carve_validation", "fit_model", "make_regressor",
    # adex.supercell.descriptors
    "FEATURE_VERSION", "BaselineSettings", "DescriptorFeaturizer", "DescriptorSettings", "feature_names",
]


def check_folds(folds, table: FeatureTable) -> None:
    """Every fold's ids are known, and train and test share none (DataError otherwise)."""
    for fold in folds:
        table.rows(fold.train)
        table.rows(fold.test)
        shared = set(fold.train) & set(fold.test)
        if shared:
            raise DataError(f"fold {fold.name}: {len(shared)} vacancies in both train and test (e.g. {sorted(shared)[0]})")
        if not fold.train or not fold.test:
            raise DataError(f"fold {fold.name}: empty {'training' if not fold.train else 'test'} set")


@dataclass
class BaselineResult:
    """What :func:`run_baseline` wrote: summary ``metrics``, one row per fold, one per
    held-out prediction, and the run folder ``out``."""

    metrics: dict
    folds: list[dict]
    predictions: list[dict]
    out: Path


def run_baseline(
    table: FeatureTable,
    folds,
    model: ModelSettings | None = None,
    seed: int = 0,
    grouped: bool = False,
    scheme: str = "",
    out: str | os.PathLike | None = None,
    config: dict | None = None,
    threads: int = 1,
    on_fold=None,
) -> BaselineResult:
    """Train and test the baseline on every fold; write the run folder (see ``adex baseline``)."""
    from threadpoolctl import threadpool_limits

    from adex.studies.cv import fold_errors, plot_folds, summarize, write_table
    from adex.fileio import atomic_write_json, atomic_write_text
    from adex.paths import new_run_dir

    model = model or ModelSettings()
    check_folds(folds, table)
    out_dir = new_run_dir("baseline", out)
    config = dict(config or {})
    config.update({"scheme": scheme, "seed": seed, "grouped_validation": grouped, "model": model.to_dict(),
                   "folds": [f.name for f in folds], "n_features": len(table.names), "feature_version": FEATURE_VERSION,
                   "threads": threads})
    import yaml

    atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    rows, predictions = [], []
    train_seconds = 0.0
    offset = np.zeros(len(table.ids)) if table.offset is None else table.offset  # eV, added to the regressor's output
    with threadpool_limits(limits=threads):
        for k, fold in enumerate(folds):
            tr, te = table.rows(fold.train), table.rows(fold.test)
            t0 = time.perf_counter()
            regressor, loss, val_mae = fit_model(table.X[tr], table.targets[tr] - offset[tr], table.hosts[tr], model, seed,
                                                 grouped)
            pred = regressor.predict(table.X[te]) + offset[te]
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            row = {"fold": fold.name, "n_train": len(tr), "n_test": len(te),
                   **fold_errors(pred, table.targets[te], table.elements[te]), "loss": loss, "train_seconds": seconds}
            rows.append(row)
            for j, r in enumerate(te):
                predictions.append({"fold": fold.name, "id": str(table.ids[r]), "element": str(table.elements[r]),
                                    "host": str(table.hosts[r]), "dH_eV": float(table.targets[r]),
                                    "dH_pred_eV": float(pred[j])})
            if on_fold is not None:
                on_fold(k, row, val_mae)
    metrics = summarize(rows, predictions, scheme)
    metrics.update({"featurize_seconds": round(table.featurize_seconds, 2),
                    "features_from_cache": table.from_cache, "train_seconds": round(train_seconds, 2),
                    "n_features": len(table.names), "losses": [r["loss"] for r in rows], "settings": config})
    write_table(out_dir / "folds.csv", rows)
    write_table(out_dir / "predictions.csv", predictions)
    atomic_write_json(out_dir / "metrics.json", metrics)
    pred = np.array([p["dH_pred_eV"] for p in predictions])
    target = np.array([p["dH_eV"] for p in predictions])
    elements = np.array([p["element"] for p in predictions])
    plot_folds(out_dir / "baseline.png", rows, pred, target, elements, f"descriptor baseline: {scheme or 'folds'}")
    return BaselineResult(metrics, rows, predictions, out_dir)
