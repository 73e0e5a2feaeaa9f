"""``adex report``: Markdown reports and compact summaries of run folders.

* ``adex report RUN_DIR... -o report.md``: one Markdown file from run folders. Recognised
  folders (by their ``metrics.json``): cross-validation runs (``adex cv``, the descriptor
  baseline ``adex baseline``, blends ``adex experiment blend``), experiments (``adex
  experiment learning-curve`` / ``pooling``) and single trainings (``adex expert train``,
  ensembles included). Each gets a section with its table and its figures (linked relative
  to the report, so the report and the run folders can be moved together).
* ``adex report RUN_DIR... --write-summaries DIR``: the results of the run folders as four
  small files (:func:`write_summaries`; what ``benchmarks/results/experiments/`` holds).
* ``adex report --from-summaries DIR -o FILE [--template FILE]``: Markdown from those files
  (:func:`write_results`): a template's ``<!-- adex:table -->`` blocks refreshed, its text
  kept (``docs/results.md``, the README's results table), or without a template every
  experiment by fold family.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import yaml

from adex.errors import AdexError
from adex.fileio import atomic_write_text


def _fmt(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, str):  # CSV cells: numbers are shown rounded, text as is
        try:
            value = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            return value
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return lines


def _figures(run: Path, out_dir: Path, names: tuple[str, ...]) -> list[str]:
    return [f"![{name}]({os.path.relpath(run / name, out_dir)})" for name in names if (run / name).is_file()]


def _describe_config(run: Path) -> str:
    metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
    path = run / "config.yaml"
    config = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else None
    return describe(metrics, config)


def describe(metrics: dict, config: dict | None) -> str:
    """One line on what a run is, from its ``metrics.json`` and resolved ``config.yaml``."""
    if metrics.get("blend"):
        parts = [f"{Path(r).name} ({w:.2f})" for r, w in zip(metrics["blend"]["runs"], metrics["blend"]["weights"])]
        return f"blend (weighted mean of held-out predictions) of {', '.join(parts)}"
    if config is None:
        return ""
    if metrics.get("n_features"):  # the descriptor baseline
        extra = config.get("advisors") or []
        features = (f"{metrics['n_features']} features: matminer descriptors + embeddings of {', '.join(extra)}" if extra
                    else f"{metrics['n_features']} matminer descriptors")
        bits = [f"descriptor baseline ({features}, scikit-learn HistGradientBoostingRegressor)"]
        if config.get("potential_delta"):
            bits.append(_dE(config.get("potential_relaxation"), config.get("relaxation_steps"),
                            config.get("potential_min_image_distance")))
        if (config.get("model") or {}).get("host_weight_power"):
            bits.append(f"host weights n_host^-{config['model']['host_weight_power']:g}")
        if config.get("seed"):
            bits.append(f"seed {config['seed']}")
        return "; ".join(bits)
    advisors = config.get("advisors")
    model = config.get("model") or {}
    training = config.get("training") or {}
    augment = config.get("augment") or {}
    bits = []
    if advisors is not None:
        bits.append(f"advisors: {', '.join(advisors) or 'none'}")
    if model:
        bits.append(f"pooling {model.get('pooling')}, width {model.get('atom_fea_len')}, {model.get('n_conv')} convolutions")
    featurizer = config.get("featurizer") or {}
    if featurizer.get("shell_width"):
        bits.append(f"soft {featurizer.get('max_neighbors')}-neighbour graphs (shell {featurizer['shell_width']:g} Å)")
    elif "max_neighbors" in featurizer and featurizer["max_neighbors"] is None:
        bits.append("radius graphs")
    if model.get("potential_delta"):
        bits.append(_dE(model.get("potential_relaxation"), model.get("potential_relaxation_steps"),
                        model.get("potential_min_image_distance")))
    if augment.get("min_image_distances"):
        bits.append("augmentation " + ", ".join(f"{d:g}" for d in augment["min_image_distances"]) + " Å"
                    + (" (shared dE)" if augment.get("share_potential_energies") else ""))
    if config.get("ensemble", 1) > 1:
        bits.append(f"{config['ensemble']}-member ensemble")
    if training.get("epochs"):
        bits.append(f"{training['epochs']} epochs")
    if training.get("ema_decay"):
        bits.append(f"weight averaging {training['ema_decay']:g}" + (" with warmup" if training.get("ema_warmup") else ""))
    if training.get("val_fraction") == 0:
        bits.append("no validation set")
    if training.get("host_weight_power"):
        bits.append(f"host weights n_host^-{training['host_weight_power']:g}")
    if training.get("seed"):
        bits.append(f"seed {training['seed']}")
    return "; ".join(bits)


def _dE(relaxation, steps, min_image_distance=None) -> str:
    where = f" in >= {min_image_distance:g} Å supercells" if min_image_distance else ""
    if not relaxation:
        return f"learns dH - CHGNet dE (unrelaxed){where}"
    return f"learns dH - CHGNet dE ({f'{steps} FIRE steps' if steps else 'one line search'}){where}"


def section(run: Path, out_dir: Path) -> list[str]:
    """Markdown lines for one run folder."""
    metrics_path = run / "metrics.json"
    if not metrics_path.is_file():
        raise AdexError(f"{run}: no metrics.json (not an adex run folder)")
    m = json.loads(metrics_path.read_text())
    title = run.name
    lines = [f"## {title}", ""]
    described = _describe_config(run)
    if described:
        lines += [f"Config: {described}.", ""]
    kind = m.get("experiment")
    if kind == "learning-curve":
        lines += [f"Learning curve, {'per compound' if m.get('per_compound') else 'per vacancy'} published folds "
                  f"(MAE in eV, mean ± std over seeds of the fold-mean MAE):", ""]
        lines += _table(m["summary"], ["fraction", "n_train", "variant", "mae_mean", "mae_std", "rmse_mean", "n_seeds", "n_folds"])
        lines += [""] + _figures(run, out_dir, ("learning_curve.png",))
    elif kind in ("pooling", "pooling-advisor"):
        what = f"advisor {m.get('advisor')}" if kind == "pooling-advisor" else f"expert ({m.get('scheme')})"
        lines += [f"Pooling comparison, {what} (MAE in {m.get('unit', 'eV')}, mean ± std over seeds):", ""]
        lines += _table(m["summary"], ["pooling", "mae_mean", "mae_std", "rmse_mean", "n_seeds", "n_folds"])
        lines += [""] + _figures(run, out_dir, ("pooling.png",))
    elif "mae_mean" in m:  # a cross-validation (adex cv or adex baseline)
        pooled = m.get("pooled") or {}
        lines += [f"Cross-validation `{m.get('scheme', '')}`, {m.get('n_folds')} folds: MAE **{_fmt(m['mae_mean'])} ± "
                  f"{_fmt(m.get('mae_std'))} eV** (mean ± std over folds), RMSE {_fmt(m.get('rmse_mean'))} ± "
                  f"{_fmt(m.get('rmse_std'))} eV; pooled over folds: O {_fmt(pooled.get('mae_O'))}, metal "
                  f"{_fmt(pooled.get('mae_metal'))} eV.", ""]
        folds_csv = run / "folds.csv"
        if folds_csv.is_file():
            import csv

            rows = list(csv.DictReader(open(folds_csv)))
            cols = [c for c in ("fold", "n_train", "n_test", "mae", "rmse", "mae_O", "mae_metal") if rows and c in rows[0]]
            lines += _table([{c: r[c] for c in cols} for r in rows], cols) + [""]
        if m.get("per_held_out_elements"):
            lines += ["Per held-out element(s):", ""]
            lines += _table([{"held out": k, **v} for k, v in m["per_held_out_elements"].items()], ["held out", "mae", "n_test"])
            lines += [""]
        if m.get("calibration"):
            lines += _calibration(m["calibration"])
        lines += _figures(run, out_dir, ("cv.png", "folds.png", "parity.png"))
    elif "test" in m or "val" in m:  # a single training
        test = m.get("test") or {}
        lines += [f"Trained on `{m.get('split', '')}`: test MAE {_fmt(test.get('mae'))} eV, RMSE {_fmt(test.get('rmse'))} eV "
                  f"(n={test.get('n', 0)}; O {_fmt(test.get('mae_O'))}, metal {_fmt(test.get('mae_metal'))})."
                  if test else f"Validation MAE {_fmt((m.get('val') or {}).get('mae'))}.", ""]
        if m.get("members"):
            lines += _table([{"member": k, "seed": mm["seed"], "test MAE": (mm.get("test") or {}).get("mae"),
                              "val MAE": (mm.get("val") or {}).get("mae"), "epochs": mm.get("epochs_run")}
                             for k, mm in enumerate(m["members"])], ["member", "seed", "test MAE", "val MAE", "epochs"])
            lines += [""]
        if m.get("calibration"):
            lines += _calibration(m["calibration"])
        lines += _figures(run, out_dir, ("parity.png", "calibration.png", "learning_curve.png"))
    else:
        raise AdexError(f"{run}: metrics.json of an unknown kind of run")
    return lines + [""]


def _calibration(c: dict) -> list[str]:
    return [f"Ensemble spread vs error (n={c['n']}): mean std {_fmt(c['mean_std'])} eV; |error| ≤ 1 std for "
            f"{c['frac_within_1std']:.0%}, ≤ 2 std for {c['frac_within_2std']:.0%} (Gaussian: 68 % / 95 %); "
            f"Spearman(|error|, std) {_fmt(c.get('spearman_abs_error_std'), 2)}; MAE of the lower / upper half by std "
            f"{_fmt(c.get('mae_low_std_half'))} / {_fmt(c.get('mae_high_std_half'))} eV.", ""]


def _is_baseline(folder: Path) -> bool:
    """A descriptor-baseline run (its metrics record the descriptor count)."""
    path = folder / "metrics.json"
    return path.is_file() and bool(json.loads(path.read_text()).get("n_features"))


def fold_results(run: Path) -> list[tuple[str, dict[str, float], bool]]:
    """``[(label, {fold: MAE}, is_baseline)]`` of every cross-validation in ``run``: the run
    itself (``adex cv`` / ``adex baseline``) or each CV run inside an experiment folder."""
    import csv

    found = []
    for folder in [run, *sorted(p for p in run.iterdir() if p.is_dir())]:
        path = folder / "folds.csv"
        if path.is_file() and (folder == run or not (run / "folds.csv").is_file()):
            with open(path, newline="") as handle:
                rows = list(csv.DictReader(handle))
            if rows and "mae" in rows[0]:
                label = run.name if folder == run else f"{run.name}/{folder.name}"
                found.append((label, {r["fold"]: float(r["mae"]) for r in rows}, _is_baseline(folder)))
    return found


def comparison(runs: list[Path]) -> list[str]:
    """Models evaluated on the same folds, side by side: MAE mean ± std over folds and,
    against the reference of the group (a descriptor baseline if present, else the first
    entry), the mean ± std of the per-fold MAE difference and on how many folds each model
    is better. Empty when no two runs share their folds."""
    return comparison_of([entry for run in runs for entry in fold_results(run)])


def comparison_of(entries: list[tuple[str, dict[str, float], bool]]) -> list[str]:
    """:func:`comparison` of ``[(label, {fold: MAE}, is_baseline)]``."""
    import numpy as np

    groups: dict[tuple[str, ...], list[tuple[str, dict[str, float], bool]]] = {}
    for label, maes, is_baseline in entries:
        groups.setdefault(tuple(sorted(maes)), []).append((label, maes, is_baseline))
    lines = []
    for folds, entries in groups.items():
        if len(entries) < 2:
            continue
        ref_label, ref, _ = next((e for e in entries if e[2]), entries[0])
        rows = []
        for label, maes, _ in entries:
            values = np.array([maes[f] for f in folds])
            diff = values - np.array([ref[f] for f in folds])
            rows.append({"model": label, "MAE mean": float(values.mean()),
                         "MAE std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         f"Δ vs {ref_label}": "–" if label == ref_label else
                         f"{diff.mean():+.3f} ± {diff.std(ddof=1) if len(diff) > 1 else 0.0:.3f}",
                         "folds better": "–" if label == ref_label else f"{int((diff < 0).sum())} / {len(folds)}"})
        rows.sort(key=lambda r: r["MAE mean"])
        shown = ", ".join(folds[:3]) + (", ..." if len(folds) > 3 else "")
        lines += [f"### Same {len(folds)} folds ({shown})", ""]
        lines += _table(rows, list(rows[0]))
        lines += [""]
    if lines:
        lines = ["## Comparison on shared folds", "",
                 "MAE in eV, mean ± std over folds; Δ = per-fold MAE minus the reference's (negative: better), "
                 "mean ± std over folds.", ""] + lines
    return lines


def write_report(runs: list[Path], output: str | os.PathLike) -> Path:
    """Write the Markdown report of ``runs`` to ``output``; returns its path."""
    from adex import __version__

    output = Path(output)
    out_dir = output.resolve().parent
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# adex report", "", f"adex {__version__}; {len(runs)} run folder(s). MAE and RMSE in eV unless stated.", ""]
    for run in runs:
        if not run.is_dir():
            raise AdexError(f"{run}: no such run folder")
    lines += comparison([run.resolve() for run in runs])
    for run in runs:
        lines += section(run.resolve(), out_dir)
    atomic_write_text(output, "\n".join(lines))
    return output


# --------------------------------------------------------------------------------------------
# Summaries: the run folders of many experiments as a few small files, and reports from them.
#
# ``adex report RUN... --write-summaries DIR`` keeps what the results need of each run folder
# (tens of MB of per-fold models, histories and figures) in four files:
#   experiments.csv             one row per experiment (cross-validation, baseline, blend, merge,
#                               learning curve, pooling, single training): kind, fold family,
#                               MAE / RMSE mean and std over folds, O and metal MAE, pooled errors
#   folds.csv                   one row per experiment and fold: n_train, n_test, MAE, RMSE, ...
#   experiments.json            per experiment: its metrics.json (without the per-fold table) and
#                               its resolved config.yaml
#   heldout_predictions.csv.gz  the held-out predictions of every cross-validation: experiment,
#                               fold, id, dH_eV, dH_pred_eV, dH_std_eV (the spread of a blend or an
#                               ensemble, else empty). The halves of a merged run are not repeated:
#                               their ``predictions_in`` (experiments.csv) names the merged run.
# ``adex report --from-summaries DIR -o FILE [--template FILE]`` writes Markdown from them.
# --------------------------------------------------------------------------------------------

SUMMARY_FILES = {"experiments": "experiments.csv", "folds": "folds.csv", "details": "experiments.json",
                 "predictions": "heldout_predictions.csv.gz"}
EXPERIMENT_COLUMNS = ["experiment", "kind", "scheme", "n_folds", "mae_mean", "mae_std", "rmse_mean", "rmse_std",
                      "mae_O_mean", "mae_metal_mean", "pooled_n", "pooled_mae", "pooled_rmse", "pooled_mae_O",
                      "pooled_mae_metal", "unit", "seed", "ensemble_size", "n_features", "parts", "weights",
                      "predictions_in", "description"]
FOLD_COLUMNS = ["experiment", "fold", "n_train", "n_test", "mae", "rmse", "mae_O", "mae_metal"]
PREDICTION_COLUMNS = ["experiment", "fold", "id", "dH_eV", "dH_pred_eV", "dH_std_eV"]
STUDY_KINDS = ("learning-curve", "pooling", "pooling-advisor")  # experiments whose runs are subfolders


def run_kind(metrics: dict) -> str | None:
    """``cv``, ``baseline``, ``blend``, ``merge``, ``learning-curve``, ``pooling``,
    ``pooling-advisor`` or ``train`` (one training), from a run's ``metrics.json``."""
    if metrics.get("experiment"):
        return str(metrics["experiment"])
    if metrics.get("blend"):
        return "blend"
    if "mae_mean" in metrics:
        if metrics.get("merged_from"):
            return "merge"
        return "baseline" if metrics.get("n_features") else "cv"
    if "test" in metrics or "val" in metrics:
        return "train"
    return None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AdexError(f"{path}: {exc}") from None


def _collect(runs: list[Path]) -> list[tuple[str, Path, dict]]:
    """``[(name, folder, metrics)]`` of the run folders and, inside learning-curve and
    pooling experiments, of their runs (named ``experiment/run``)."""
    found: list[tuple[str, Path, dict]] = []
    for run in runs:
        run = Path(run)
        if not (run / "metrics.json").is_file():
            raise AdexError(f"{run}: no metrics.json (not an adex run folder)")
        metrics = _read_json(run / "metrics.json")
        if run_kind(metrics) is None:
            raise AdexError(f"{run}: metrics.json of an unknown kind of run")
        found.append((run.resolve().name, run, metrics))
        if run_kind(metrics) in STUDY_KINDS:
            for sub in sorted(p for p in run.iterdir() if p.is_dir() and (p / "metrics.json").is_file()):
                found.append((f"{run.resolve().name}/{sub.name}", sub, _read_json(sub / "metrics.json")))
    names = [name for name, _, _ in found]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AdexError(f"two run folders named {twice[0]}: experiments are named by their folder")
    return found


def _ref(ref: str, names: set[str]) -> str:
    """The experiment a blend or merge names by the path it was given (``lc/0.10_advised_seed0``,
    an absolute path, ...)."""
    parts = Path(ref).parts
    for candidate in ("/".join(parts[-2:]), parts[-1] if parts else ref):
        if candidate in names:
            return candidate
    return Path(ref).name


def _mean_of(value) -> float | None:
    return value.get("mean") if isinstance(value, dict) else value


def _experiment_row(name: str, metrics: dict, config: dict | None, names: set[str]) -> dict:
    kind = run_kind(metrics)
    pooled = metrics.get("pooled") or {}
    row = {"experiment": name, "kind": kind, "scheme": metrics.get("scheme", ""), "n_folds": metrics.get("n_folds"),
           "mae_mean": metrics.get("mae_mean"), "mae_std": metrics.get("mae_std"), "rmse_mean": metrics.get("rmse_mean"),
           "rmse_std": metrics.get("rmse_std"), "mae_O_mean": _mean_of(metrics.get("mae_O")),
           "mae_metal_mean": _mean_of(metrics.get("mae_metal")), "pooled_n": pooled.get("n"),
           "pooled_mae": pooled.get("mae"), "pooled_rmse": pooled.get("rmse"), "pooled_mae_O": pooled.get("mae_O"),
           "pooled_mae_metal": pooled.get("mae_metal"), "unit": metrics.get("unit", ""),
           "seed": ((config or {}).get("training") or {}).get("seed"), "ensemble_size": metrics.get("ensemble_size"),
           "n_features": metrics.get("n_features"), "description": describe(metrics, config)}
    if kind == "train":
        test = metrics.get("test") or {}
        row.update(scheme=metrics.get("split") or "", n_folds=1 if test else None, mae_mean=test.get("mae"),
                   rmse_mean=test.get("rmse"), mae_O_mean=test.get("mae_O"), mae_metal_mean=test.get("mae_metal"),
                   pooled_n=test.get("n"), pooled_mae=test.get("mae"), pooled_rmse=test.get("rmse"))
    elif kind == "learning-curve":
        row["description"] = f"learning curve, {'per compound' if metrics.get('per_compound') else 'per vacancy'}"
    elif kind in ("pooling", "pooling-advisor"):
        row["description"] = (f"pooling comparison, advisor {metrics.get('advisor')}" if kind == "pooling-advisor"
                              else f"pooling comparison, expert ({metrics.get('scheme')})")
    if metrics.get("blend"):
        row["parts"] = ";".join(_ref(r, names) for r in metrics["blend"]["runs"])
        row["weights"] = ";".join(f"{w:.6g}" for w in metrics["blend"]["weights"])
    elif metrics.get("merged_from"):
        row["parts"] = ";".join(_ref(r, names) for r in metrics["merged_from"])
    return row


def _csv_rows(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row[c]) for c in columns})
    atomic_write_text(path, buffer.getvalue())


def write_summaries(runs: list[Path], out_dir: str | os.PathLike) -> dict[str, Path]:
    """Summarise run folders (``adex cv``, ``adex baseline``, ``adex experiment ...``,
    ``adex expert train``) into the four files of :data:`SUMMARY_FILES` in ``out_dir``;
    returns their paths. Values are copied, not recomputed: the numbers are those of the runs."""
    import gzip
    import io

    from adex.fileio import atomic_write_bytes

    found = _collect(runs)
    names = {name for name, _, _ in found}
    rows, fold_rows, details, predictions = [], [], {}, {}
    extra_fold_columns: list[str] = []
    for name, folder, metrics in found:
        config_path = folder / "config.yaml"
        config = (yaml.safe_load(config_path.read_text()) or {}) if config_path.is_file() else None
        rows.append(_experiment_row(name, metrics, config, names))
        details[name] = {"metrics": {k: v for k, v in metrics.items() if k != "per_fold"}, "config": config}
        if (folder / "folds.csv").is_file():
            for r in _csv_rows(folder / "folds.csv"):
                fold_rows.append({"experiment": name, **r})
                extra_fold_columns += [c for c in r if c not in FOLD_COLUMNS and c not in extra_fold_columns]
        elif metrics.get("per_fold"):
            fold_rows += [{"experiment": name, "fold": f, **v} for f, v in metrics["per_fold"].items()]
        if (folder / "predictions.csv").is_file():
            predictions[name] = _csv_rows(folder / "predictions.csv")
    # the halves of a merged run: their predictions are the merged run's (checked), kept once
    by_name = {row["experiment"]: row for row in rows}
    for row in rows:
        row["predictions_in"] = row["experiment"] if row["experiment"] in predictions else ""
    for row in rows:
        if row["kind"] != "merge" or row["experiment"] not in predictions:
            continue
        merged = {(p["fold"], p["id"]): p.get("dH_pred_eV") for p in predictions[row["experiment"]]}
        for part in row["parts"].split(";"):
            own = predictions.get(part)
            if own is not None and all(merged.get((p["fold"], p["id"])) == p.get("dH_pred_eV") for p in own):
                by_name[part]["predictions_in"] = row["experiment"]
                del predictions[part]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {key: out_dir / file for key, file in SUMMARY_FILES.items()}
    _write_csv(paths["experiments"], rows, EXPERIMENT_COLUMNS)
    _write_csv(paths["folds"], fold_rows, FOLD_COLUMNS + extra_fold_columns)
    atomic_write_text(paths["details"], json.dumps(details, indent=1, sort_keys=True, default=str) + "\n")
    buffer = io.StringIO()
    buffer.write(",".join(PREDICTION_COLUMNS) + "\n")
    for name, table in predictions.items():
        for p in table:
            buffer.write(",".join([name, p["fold"], p["id"], p["dH_eV"], p["dH_pred_eV"], p.get("dH_std_eV") or ""]) + "\n")
    atomic_write_bytes(paths["predictions"], gzip.compress(buffer.getvalue().encode(), compresslevel=9, mtime=0))
    return paths


def _number(text: str):
    if text is None or text == "":
        return None
    try:
        return int(text) if text.lstrip("-").isdigit() else float(text)
    except ValueError:
        return text


class Summaries:
    """The summary files of a folder written by :func:`write_summaries`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        path = self.root / SUMMARY_FILES["experiments"]
        if not path.is_file():
            raise AdexError(f"{self.root}: no {SUMMARY_FILES['experiments']} (write it with "
                            "`adex report RUN... --write-summaries DIR`)")
        self.experiments = {r["experiment"]: {k: (v if k in ("experiment", "kind", "scheme", "unit", "parts",
                                                              "weights", "predictions_in", "description") else _number(v))
                                              for k, v in r.items()} for r in _csv_rows(path)}
        self.folds: dict[str, dict[str, dict]] = {}
        if (self.root / SUMMARY_FILES["folds"]).is_file():
            for r in _csv_rows(self.root / SUMMARY_FILES["folds"]):
                self.folds.setdefault(r["experiment"], {})[r["fold"]] = {k: _number(v) if k != "fold" else v
                                                                        for k, v in r.items() if k != "experiment"}
        details = self.root / SUMMARY_FILES["details"]
        self.details: dict[str, dict] = _read_json(details) if details.is_file() else {}

    def __getitem__(self, name: str) -> dict:
        if name not in self.experiments:
            raise AdexError(f"unknown experiment {name!r} in {self.root / SUMMARY_FILES['experiments']}")
        return self.experiments[name]

    def fold_maes(self, name: str) -> dict[str, float]:
        self[name]
        return {f: r["mae"] for f, r in self.folds.get(name, {}).items() if isinstance(r.get("mae"), (int, float))}

    def predictions(self, name: str | None = None):
        """The held-out predictions (a pandas DataFrame), of one experiment or of all."""
        import pandas as pd

        table = pd.read_csv(self.root / SUMMARY_FILES["predictions"], dtype={"experiment": str, "fold": str, "id": str})
        if name is None:
            return table
        source = self[name]["predictions_in"]
        if not source:
            raise AdexError(f"{name}: no held-out predictions in the summaries")
        table = table[table["experiment"] == source]
        if source != name:  # a half of a merged run: its folds of the merged run
            table = table[table["fold"].isin(self.folds.get(name, {}))]
        return table.assign(experiment=name).reset_index(drop=True)


def _number_text(value, digits: int = 3) -> str:
    if value is None or value == "":
        return "–"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and digits == 0):
        return f"{int(value):,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _range(values: list) -> str:
    values = [v for v in values if isinstance(v, (int, float))]
    if not values:
        return "–"
    low, high = min(values), max(values)
    return f"{int(low):,}" if low == high else f"{int(low):,}-{int(high):,}"


_FIELDS = {"mae_mean": "mae_mean", "mae_std": "mae_std", "rmse": "rmse_mean", "rmse_mean": "rmse_mean",
           "rmse_std": "rmse_std", "mae_O": "mae_O_mean", "mae_metal": "mae_metal_mean", "pooled": "pooled_mae",
           "pooled_mae": "pooled_mae", "pooled_rmse": "pooled_rmse", "pooled_mae_O": "pooled_mae_O",
           "pooled_mae_metal": "pooled_mae_metal", "n_folds": "n_folds"}
PLACEHOLDER_HELP = (
    "{{mae:E}} (MAE mean ± std over folds), {{mae_mean:E}}, {{mae_std:E}}, {{rmse:E}}, {{mae_O:E}}, {{mae_metal:E}}, "
    "{{o_metal:E}} (O / metal, means over folds), {{pooled:E}} (MAE pooled over the held-out vacancies), "
    "{{pooled_o_metal:E}}, {{fold:E:FOLD}}, {{won:E:REF}} (folds on which E's MAE is below REF's), "
    "{{won_of:E:REF}} (k / n), {{n_train:E}}, {{n_test:E}}, {{field:E:COLUMN}} (experiments.csv), "
    "{{csv:FILE:KEY:COLUMN}} (a CSV next to the summaries, row by its first column); a last :N sets the decimals")
_PLACEHOLDER = re.compile(r"\{\{\s*([a-zA-Z_]+)((?::[^:}\s]+)*)\s*\}\}")


def _placeholder(summaries: Summaries, func: str, args: list[str]) -> str:
    digits = 3
    if len(args) > 1 and args[-1].isdigit():
        digits = int(args.pop())
    if func == "csv":
        if len(args) != 3:
            raise AdexError(f"{{{{csv:...}}}} takes FILE:KEY:COLUMN, got {':'.join(args)}")
        rows = _csv_rows(summaries.root / args[0])
        row = next((r for r in rows if next(iter(r.values())) == args[1]), None)
        if row is None or args[2] not in row:
            raise AdexError(f"{args[0]}: no row {args[1]!r} with a column {args[2]!r}")
        return _number_text(_number(row[args[2]]), digits)
    if not args:
        raise AdexError(f"{{{{{func}}}}} needs an experiment name")
    name, rest = args[0], args[1:]
    row = summaries[name]
    if func in _FIELDS and not rest:
        return _number_text(row.get(_FIELDS[func]), 0 if func == "n_folds" else digits)
    if func == "mae" and not rest:
        if row.get("mae_mean") is None:
            return "–"
        return f"{_number_text(row['mae_mean'], digits)} ± {_number_text(row.get('mae_std'), 3)}"
    if func in ("o_metal", "pooled_o_metal") and not rest:
        prefix = "pooled_mae" if func == "pooled_o_metal" else "mae"
        suffix = "" if func == "pooled_o_metal" else "_mean"
        return f"{_number_text(row.get(f'{prefix}_O{suffix}'), digits)} / {_number_text(row.get(f'{prefix}_metal{suffix}'), digits)}"
    if func == "fold" and len(rest) == 1:
        maes = summaries.fold_maes(name)
        if rest[0] not in maes:
            raise AdexError(f"{name}: no fold {rest[0]!r}")
        return _number_text(float(maes[rest[0]]), digits)
    if func in ("won", "won_of") and len(rest) == 1:
        mine, ref = summaries.fold_maes(name), summaries.fold_maes(rest[0])
        shared = sorted(set(mine) & set(ref))
        if not shared:
            raise AdexError(f"{name} and {rest[0]} share no fold")
        won = sum(mine[f] < ref[f] for f in shared)
        return f"{won} / {len(shared)}" if func == "won_of" else str(won)
    if func in ("n_train", "n_test") and not rest:
        return _range([r.get(func) for r in summaries.folds.get(name, {}).values()])
    if func == "field" and len(rest) == 1:
        if rest[0] not in row:
            raise AdexError(f"experiments.csv has no column {rest[0]!r}")
        return _number_text(row[rest[0]], digits)
    raise AdexError(f"unknown placeholder {{{{{func}:{':'.join(args)}}}}}; known: {PLACEHOLDER_HELP}")


def fill(text: str, summaries: Summaries) -> str:
    """``text`` with every ``{{...}}`` placeholder replaced by its value (:data:`PLACEHOLDER_HELP`)."""
    return _PLACEHOLDER.sub(lambda m: _placeholder(summaries, m.group(1), [a for a in m.group(2).split(":") if a]), text)


def _table_block(spec: str, summaries: Summaries) -> list[str]:
    """A Markdown table from a spec: table lines whose cells may hold placeholders (a
    separator line is added after the header)."""
    lines = [line.strip() for line in spec.splitlines() if line.strip().startswith("|")]
    lines = [line for line in lines if not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", line)]
    if not lines:
        raise AdexError("an adex:table block needs a header line `| a | b |` and rows")
    width = lines[0].count("|") - 1
    return [fill(lines[0], summaries), "|" + "---|" * width] + [fill(line, summaries) for line in lines[1:]]


def _fold_families(summaries: Summaries) -> dict[tuple[str, ...], list[str]]:
    """``{folds: [experiment]}``: the cross-validations evaluated on exactly the same folds."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, row in summaries.experiments.items():
        if row["kind"] in ("cv", "baseline", "blend", "merge") and row.get("mae_mean") is not None:
            groups.setdefault(tuple(sorted(summaries.fold_maes(name))), []).append(name)
    return dict(sorted(groups.items(), key=lambda kv: (min(summaries[n]["scheme"] for n in kv[1]), -len(kv[0]), kv[0])))


def experiments_block(summaries: Summaries, scheme: str | None = None) -> list[str]:
    """Every cross-validation of the summaries, one table per fold family (the same folds),
    sorted by MAE."""
    lines = []
    for folds, names in _fold_families(summaries).items():
        schemes = sorted({summaries[n]["scheme"] for n in names})
        if scheme is not None and scheme not in schemes:
            continue
        shown = ", ".join(folds[:3]) + (", ..." if len(folds) > 3 else "")
        lines += [f"#### {' / '.join(f'`{s}`' for s in schemes)}: {len(folds)} folds ({shown})", ""]
        rows = []
        for name in sorted(names, key=lambda n: (summaries[n]["mae_mean"], n)):
            row = summaries[name]
            what = row["description"] or row["kind"]
            if row["kind"] == "merge":
                what = f"{what}; merged from {row['parts'].replace(';', ', ')}" if what else f"merged from {row['parts']}"
            rows.append({"experiment": f"`{name}`", "MAE": _placeholder(summaries, "mae", [name]),
                         "RMSE": _placeholder(summaries, "rmse", [name]),
                         "O / metal": _placeholder(summaries, "o_metal", [name]),
                         "pooled": _placeholder(summaries, "pooled", [name]), "what": what.replace("|", "/")})
        lines += _table(rows, list(rows[0])) + [""]
    return lines


def studies_block(summaries: Summaries) -> list[str]:
    """The tables of the learning-curve and pooling experiments."""
    lines = []
    for name, row in summaries.experiments.items():
        metrics = (summaries.details.get(name) or {}).get("metrics") or {}
        if row["kind"] == "learning-curve" and metrics.get("summary"):
            lines += [f"#### `{name}`: {row['description']} (MAE in eV, mean ± std over seeds of the fold-mean MAE)", ""]
            lines += _table(metrics["summary"], ["fraction", "n_train", "variant", "mae_mean", "mae_std", "rmse_mean",
                                                 "n_seeds", "n_folds"]) + [""]
        elif row["kind"] in ("pooling", "pooling-advisor") and metrics.get("summary"):
            lines += [f"#### `{name}`: {row['description']} (MAE in {row['unit'] or 'eV'}, mean ± std over seeds)", ""]
            lines += _table(metrics["summary"], ["pooling", "mae_mean", "mae_std", "rmse_mean", "n_seeds", "n_folds"])
            lines += [""]
    return lines


# a block: its opening comment at the start of a line (arguments on that line, a spec on the
# next ones), the generated body, and the end marker at the start of a line
_OPEN = r"^<!-- adex:"
_BLOCK = re.compile(_OPEN + r"(?P<kind>[a-z-]+)(?P<args>(?:(?!-->)[^\n])*)(?:\n(?P<spec>(?:(?!-->).)*?))?-->[ \t]*\n"
                    r"(?P<body>(?:(?!" + _OPEN + r").)*?)^<!-- /adex:(?P=kind) -->", re.S | re.M)


def render_template(text: str, summaries: Summaries) -> str:
    """``text`` (Markdown) with every generated block refreshed from ``summaries``. A block
    is an HTML comment (invisible when rendered) followed by its output and an end marker::

        <!-- adex:table
        | model | per vacancy | folds won |
        | the expert | {{mae:delta}} | {{won_of:delta:baseline_chgnet}} |
        -->
        (the table, rewritten on every run)
        <!-- /adex:table -->

    ``adex:experiments [scheme=S]`` lists every cross-validation by fold family,
    ``adex:studies`` the learning curves and pooling comparisons. Text outside the blocks is
    kept as written, so the same command on the same summaries gives the same file."""
    def block(m: re.Match) -> str:
        kind, args, spec = m.group("kind"), m.group("args").strip(), m.group("spec") or ""
        if kind == "table":
            body = _table_block(spec, summaries)
        elif kind == "experiments":
            options = dict(a.split("=", 1) for a in args.split() if "=" in a)
            body = experiments_block(summaries, options.get("scheme"))
        elif kind == "studies":
            body = studies_block(summaries)
        else:
            raise AdexError(f"unknown block <!-- adex:{kind} --> (known: table, experiments, studies)")
        head = m.group(0)[: m.start("body") - m.start(0)]
        return head + "\n".join(body).rstrip("\n") + f"\n<!-- /adex:{kind} -->"

    opened = len(re.findall(_OPEN, text, re.M))
    found = len(_BLOCK.findall(text))
    if opened != found:
        raise AdexError(f"{opened - found} adex block(s) without their end marker (<!-- /adex:KIND --> on its own line)")
    return _BLOCK.sub(block, text)


def summary_report(summaries: Summaries) -> str:
    """The Markdown report of the summaries without a template: the comparison on shared
    folds, every cross-validation by fold family, the learning curves and poolings."""
    from adex import __version__

    entries = [(name, summaries.fold_maes(name), summaries[name]["kind"] == "baseline")
               for names in _fold_families(summaries).values() for name in names]
    lines = ["# adex results", "", f"adex {__version__}; {len(summaries.experiments)} experiments from "
             f"`{summaries.root}`. MAE and RMSE in eV unless stated.", ""]
    lines += comparison_of(entries)
    lines += ["## Cross-validations", "", "MAE: mean ± std over folds; RMSE, O / metal: means over folds; "
              "pooled: MAE over all held-out vacancies.", ""]
    lines += experiments_block(summaries)
    studies = studies_block(summaries)
    if studies:
        lines += ["## Learning curves and poolings", ""] + studies
    return "\n".join(lines)


def write_results(summaries_dir: str | os.PathLike, output: str | os.PathLike,
                  template: str | os.PathLike | None = None) -> Path:
    """Markdown from the summary files: ``template`` with its blocks refreshed
    (:func:`render_template`; the template may be ``output`` itself), else
    :func:`summary_report`. Returns the path written."""
    summaries = Summaries(summaries_dir)
    if template is not None:
        path = Path(template)
        if not path.is_file():
            raise AdexError(f"{path}: no such template")
        text = render_template(path.read_text(), summaries)
    else:
        text = summary_report(summaries)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, text if text.endswith("\n") else text + "\n")
    return output
