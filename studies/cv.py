"""Cross-validation of the expert: ``adex cv``.

One expert (or ensemble) is trained per fold of :mod:`adex.studies.splits` and tested on
the fold's held-out vacancies; every fold's run folder is kept. The CV folder gets:

* ``folds.csv``: fold, n_train, n_test, MAE, RMSE, MAE of O and of metal vacancies (eV);
* ``predictions.csv``: fold, id, host, element, dH_eV, dH_pred_eV (+ dH_std_eV);
* ``metrics.json``: mean and std over folds of MAE and RMSE, pooled MAE per vacancy
  species and, for leave-element-out schemes, per held-out element; the resolved config;
* ``cv.png``: MAE per fold (bars) and the parity plot of all held-out predictions.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adex.fileio import atomic_write_json, atomic_write_text
from adex.studies.splits import GROUPED_SCHEMES  # noqa: F401 - re-exported


@dataclass
class CVResult:
    metrics: dict
    folds: list[dict]
    out: Path




def cross_validate(
    config,
    folds,
    data: str | os.PathLike | None = None,
    registry=None,
    out: str | os.PathLike | None = None,
    grouped: bool = False,
    scheme: str = "",
    on_fold=None,
    resume: bool = False,
) -> CVResult:
    """Train ``config`` on every fold's training ids and test on its held-out ids.

    Args:
        config: an :class:`adex.expert.train.ExpertConfig` (``split`` is ignored).
        folds: :class:`adex.studies.splits.Fold` list.
        grouped: draw the validation set (early stopping) by host compound.
        on_fold: optional ``callback(k, fold_row)`` after each fold (e.g. pruning in a search).
        resume: continue an interrupted run in ``out`` (a folder that is not empty must
            hold the ``config.yaml`` of a cv run): a fold whose folder holds
            ``metrics.json`` and ``test_predictions.csv`` (written last, atomically) is read
            back instead of trained; the others are trained. ``out/config.yaml`` must be
            the resolved ``config`` (ConfigError otherwise).
    Returns the aggregated metrics (eV), one row per fold and the output folder.
    """
    from adex.config import dump_yaml
    from adex.errors import ConfigError
    from adex.expert.train import host_of, train_expert
    from adex.paths import new_run_dir

    config_text = dump_yaml(config)
    if resume:
        if out is None:
            raise ConfigError("resume needs the output folder of the interrupted run (--out)")
        previous = Path(out) / "config.yaml"
        if previous.is_file() and previous.read_text() != config_text:
            raise ConfigError(f"cannot resume {out}: it was started with another config (config.yaml differs)")
        if not previous.is_file() and Path(out).is_dir() and any(Path(out).iterdir()):
            raise ConfigError(f"cannot resume {out}: not an adex cv run folder (no config.yaml), and it is not empty")
    out_dir = new_run_dir(f"cv-{config.name}", out)
    atomic_write_text(out_dir / "config.yaml", config_text)
    rows, predictions = [], []
    t0 = time.perf_counter()
    for k, fold in enumerate(folds):
        finished = finished_fold(out_dir / fold.name) if resume else None
        if finished is not None:
            run_metrics, test = finished
            if sorted(map(str, test["id"])) != sorted(map(str, fold.test)):
                raise ConfigError(f"cannot resume {out_dir / fold.name}: it tested other vacancies than fold {fold.name}")
        else:
            run = train_expert(config, data=data, out=out_dir / fold.name, registry=registry, register=False,
                               fold=fold, grouped=grouped)
            run_metrics, test = run.metrics, run.test
        m = run_metrics["test"]
        row = {"fold": fold.name, "n_train": len(fold.train), "n_test": len(fold.test), "mae": m["mae"], "rmse": m["rmse"],
               "mae_O": m.get("mae_O", float("nan")), "mae_metal": m.get("mae_metal", float("nan")),
               "train_seconds": run_metrics.get("train_seconds", float("nan"))}
        rows.append(row)
        for j in range(len(test["id"])):
            predictions.append({"fold": fold.name, "id": str(test["id"][j]), "host": host_of(test["id"][j]),
                                "element": str(test["element"][j]), "dH_eV": float(test["dH_eV"][j]),
                                "dH_pred_eV": float(test["dH_pred_eV"][j]),
                                **({"dH_std_eV": float(test["dH_std_eV"][j])} if "dH_std_eV" in test else {})})
        if on_fold is not None:
            on_fold(k, row)
    metrics = summarize(rows, predictions, scheme)
    metrics.update({"seconds": round(time.perf_counter() - t0, 1), "ensemble_size": config.ensemble})
    pred = np.array([p["dH_pred_eV"] for p in predictions])
    target = np.array([p["dH_eV"] for p in predictions])
    elements = np.array([p["element"] for p in predictions])
    if any("dH_std_eV" in p for p in predictions):
        from adex.expert.ensemble import calibration

        metrics["calibration"] = calibration(pred, np.array([p["dH_std_eV"] for p in predictions]), target)
    write_table(out_dir / "folds.csv", rows)
    write_table(out_dir / "predictions.csv", predictions)
    atomic_write_json(out_dir / "metrics.json", metrics)
    plot_folds(out_dir / "cv.png", rows, pred, target, elements, f"{config.name}: {scheme or 'cv'}")
    return CVResult(metrics, rows, out_dir)


def finished_fold(fold_dir: Path) -> tuple[dict, dict] | None:
    """(metrics, test columns) of a fold run folder that finished, else None.

    ``test`` maps ``id``, ``element`` (str arrays) and ``dH_eV``, ``dH_pred_eV``
    (+ ``dH_std_eV``) (float arrays, eV) as :func:`adex.expert.train.train_expert` returns them.
    """
    import csv
    import json

    metrics_path, predictions_path = fold_dir / "metrics.json", fold_dir / "test_predictions.csv"
    if not (metrics_path.is_file() and predictions_path.is_file()):
        return None
    metrics = json.loads(metrics_path.read_text())
    with open(predictions_path, newline="") as handle:
        records = list(csv.DictReader(handle))
    if not metrics.get("test") or len(records) != metrics["test"].get("n", len(records)):
        return None
    columns = records[0].keys() if records else ("id", "element", "dH_eV", "dH_pred_eV")
    test = {c: np.array([r[c] for r in records], dtype=str if c in ("id", "element") else np.float64) for c in columns}
    return metrics, test


def fold_errors(pred: np.ndarray, target: np.ndarray, elements: np.ndarray) -> dict:
    """One fold's held-out errors (eV): ``mae``, ``rmse``, and ``mae_O`` / ``mae_metal``
    (NaN when the fold has no vacancy of that kind). ``pred``, ``target`` float [n] eV,
    ``elements`` str [n], the vacated element."""
    err = np.abs(pred - target)
    is_o = elements == "O"
    return {"mae": float(err.mean()), "rmse": float(np.sqrt(((pred - target) ** 2).mean())),
            "mae_O": float(err[is_o].mean()) if is_o.any() else float("nan"),
            "mae_metal": float(err[~is_o].mean()) if (~is_o).any() else float("nan")}


def host_offsets(signed_error: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean signed error per group (a host compound, or a host and vacancy class): the
    offset one constant per group would remove.

    ``signed_error`` float [n] eV (prediction - DFT), ``groups`` [n] any hashable labels.
    Returns (offsets [g] eV, in the order of ``np.unique(groups)``; group index of each row [n]).
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = inverse.reshape(-1)
    err = np.asarray(signed_error, dtype=float)
    return np.bincount(inverse, weights=err) / np.bincount(inverse), inverse


def host_offset_std(signed_error: np.ndarray, hosts: np.ndarray) -> float:
    """Population standard deviation (ddof=0) over hosts of the per-host mean signed error
    (eV): how much of the error is a per-compound level. NaN without predictions."""
    if len(signed_error) == 0:
        return float("nan")
    offsets, _ = host_offsets(signed_error, hosts)
    return float(offsets.std())


def write_table(path: Path, rows: list[dict]) -> None:
    if not rows:
        atomic_write_text(path, "")
        return
    columns = list(rows[0])
    lines = [",".join(columns)]
    for row in rows:
        lines.append(",".join(f"{row[c]:.6g}" if isinstance(row[c], float) else str(row[c]) for c in columns))
    atomic_write_text(path, "\n".join(lines) + "\n")


def _mean_std(values) -> dict:
    arr = np.array([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if arr.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": float(arr.mean()), "std": float(arr.std(ddof=1)) if arr.size > 1 else 0.0, "n": int(arr.size)}


def summarize(rows: list[dict], predictions: list[dict], scheme: str = "") -> dict:
    """Metrics of a cross-validation (eV), shared by ``adex cv`` and ``adex baseline`` so
    their files compare key by key: mean and std (ddof=1) over folds of MAE / RMSE (all,
    O and metal vacancies), MAE / RMSE pooled over all held-out predictions, MAE per
    vacated element and, for leave-element-out schemes, per held-out element(s).

    ``rows``: one dict per fold (fold, n_test, mae, rmse, mae_O, mae_metal);
    ``predictions``: one dict per held-out vacancy (element, dH_eV, dH_pred_eV).
    """
    pred = np.array([p["dH_pred_eV"] for p in predictions], dtype=float)
    target = np.array([p["dH_eV"] for p in predictions], dtype=float)
    elements = np.array([p["element"] for p in predictions], dtype=str)
    err = np.abs(pred - target)
    mae, rmse = _mean_std(r["mae"] for r in rows), _mean_std(r["rmse"] for r in rows)
    metrics = {
        "unit": "eV",
        "scheme": scheme,
        "n_folds": len(rows),
        "mae_mean": mae["mean"], "mae_std": mae["std"],
        "rmse_mean": rmse["mean"], "rmse_std": rmse["std"],
        "mae_O": _mean_std(r["mae_O"] for r in rows),
        "mae_metal": _mean_std(r["mae_metal"] for r in rows),
        "pooled": {
            "mae": float(err.mean()) if err.size else None,
            "rmse": float(np.sqrt(((pred - target) ** 2).mean())) if err.size else None,
            "n": int(err.size),
            "mae_O": float(err[elements == "O"].mean()) if (elements == "O").any() else None,
            "mae_metal": float(err[elements != "O"].mean()) if (elements != "O").any() else None,
        },
        "per_fold": {r["fold"]: {"mae": r["mae"], "rmse": r["rmse"], "n_test": r["n_test"]} for r in rows},
        "per_vacancy_element": {e: {"mae": float(err[elements == e].mean()), "n": int((elements == e).sum())}
                                for e in sorted(set(elements.tolist()))},
    }
    if scheme in ("loeo", "l2eo"):
        metrics["per_held_out_elements"] = {r["fold"].removeprefix("no-"): {"mae": r["mae"], "n_test": r["n_test"]}
                                            for r in rows}
    return metrics


def plot_folds(path: Path, rows: list[dict], pred: np.ndarray, target: np.ndarray, elements: np.ndarray, title: str) -> None:
    """MAE per fold (all / O / metal vacancies) and the parity plot of all held-out predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(rows))
    ax1.bar(x - 0.25, [r["mae"] for r in rows], 0.25, label="all")
    ax1.bar(x, [r["mae_O"] for r in rows], 0.25, label="O vacancies")
    ax1.bar(x + 0.25, [r["mae_metal"] for r in rows], 0.25, label="metal vacancies")
    ax1.set_xticks(x, [r["fold"] for r in rows], rotation=60, fontsize=7)
    ax1.set_ylabel("MAE (eV)")
    ax1.axhline(float(np.mean([r["mae"] for r in rows])), color="k", lw=1, ls="--", label="mean over folds")
    ax1.legend(fontsize=7)
    ax1.set_title(title, fontsize=9)
    is_o = elements == "O"
    ax2.scatter(target[is_o], pred[is_o], s=6, alpha=0.6, label="O")
    ax2.scatter(target[~is_o], pred[~is_o], s=6, alpha=0.6, label="metal")
    lo = float(min(target.min(initial=0), pred.min(initial=0)))
    hi = float(max(target.max(initial=1), pred.max(initial=1)))
    ax2.plot([lo, hi], [lo, hi], "k--", lw=1)
    ax2.set_xlabel("DFT dH (eV)")
    ax2.set_ylabel("predicted dH (eV)")
    ax2.set_title(f"pooled MAE {float(np.abs(pred - target).mean()):.3f} eV (n={len(pred)})", fontsize=9)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def merge_cv_runs(runs: list[Path], out: str | os.PathLike) -> CVResult:
    """One cross-validation from ``adex cv`` runs of disjoint folds of the same config and
    scheme (e.g. ``--fold`` subsets run in parallel, or on other machines).

    The runs' ``config.yaml`` must be identical and their folds disjoint; ``folds.csv`` and
    ``predictions.csv`` are concatenated as written, ``metrics.json`` is recomputed from
    them (with ``merged_from``) and ``cv.png`` redrawn. Fold run folders stay where they are.
    Raises ConfigError on a repeated fold, another config or another scheme.
    """
    import csv
    import json

    from adex.errors import ConfigError

    runs = [Path(r) for r in runs]
    rows: list[dict] = []
    predictions: list[dict] = []
    config_text, schemes, seconds, sizes, owner = None, set(), 0.0, set(), {}
    for run in runs:
        if not all((run / name).is_file() for name in ("folds.csv", "predictions.csv", "metrics.json", "config.yaml")):
            raise ConfigError(f"{run}: not an adex cv run folder (folds.csv, predictions.csv, metrics.json, config.yaml)")
        text = (run / "config.yaml").read_text()
        if config_text is not None and text != config_text:
            raise ConfigError(f"{run} was run with another config than {runs[0]} (config.yaml differs)")
        config_text = text
        metrics = json.loads((run / "metrics.json").read_text())
        schemes.add(metrics.get("scheme", ""))
        seconds += float(metrics.get("seconds") or 0.0)
        sizes.add(metrics.get("ensemble_size", 1))
        with open(run / "folds.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["fold"] in owner:
                    raise ConfigError(f"fold {row['fold']} is in both {owner[row['fold']]} and {run}")
                owner[row["fold"]] = run
                rows.append(row)
        with open(run / "predictions.csv", newline="") as handle:
            predictions += list(csv.DictReader(handle))
    if len(schemes) > 1:
        raise ConfigError(f"the runs use different CV schemes: {sorted(schemes)}")
    numeric = [{**r, **{k: float(r[k]) for k in ("mae", "rmse", "mae_O", "mae_metal") if k in r},
                "n_test": int(r["n_test"])} for r in rows]
    preds = [{**p, "dH_eV": float(p["dH_eV"]), "dH_pred_eV": float(p["dH_pred_eV"])} for p in predictions]
    scheme = schemes.pop() if schemes else ""
    metrics = summarize(numeric, preds, scheme)
    metrics.update({"seconds": round(seconds, 1), "ensemble_size": sizes.pop() if len(sizes) == 1 else None,
                    "merged_from": [str(r) for r in runs]})
    pred = np.array([p["dH_pred_eV"] for p in preds])
    target = np.array([p["dH_eV"] for p in preds])
    if predictions and "dH_std_eV" in predictions[0]:
        from adex.expert.ensemble import calibration

        metrics["calibration"] = calibration(pred, np.array([float(p["dH_std_eV"]) for p in predictions]), target)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.yaml", config_text or "")
    write_table(out_dir / "folds.csv", rows)
    write_table(out_dir / "predictions.csv", predictions)
    atomic_write_json(out_dir / "metrics.json", metrics)
    plot_folds(out_dir / "cv.png", numeric, pred, target, np.array([p["element"] for p in preds]),
               f"merged: {scheme or 'cv'}")
    return CVResult(metrics, rows, out_dir)
