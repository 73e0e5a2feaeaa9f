"""``adex report RUN_DIR... -o report.md``: one Markdown file from run folders.

Recognised folders (by their ``metrics.json``): cross-validation runs (``adex cv``, the
descriptor baseline ``adex baseline``, blends ``adex experiment blend``), experiments
(``adex experiment learning-curve`` / ``pooling``) and single trainings (``adex expert train``, ensembles included). Each gets
a section with its table and its figures (linked relative to the report, so the report
and the run folders can be moved together).
"""
from __future__ import annotations

import json
import os
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
    if metrics.get("blend"):
        parts = [f"{Path(r).name} ({w:.2f})" for r, w in zip(metrics["blend"]["runs"], metrics["blend"]["weights"])]
        return f"blend (weighted mean of held-out predictions) of {', '.join(parts)}"
    path = run / "config.yaml"
    if not path.is_file():
        return ""
    config = yaml.safe_load(path.read_text()) or {}
    if metrics.get("n_features"):  # the descriptor baseline
        extra = config.get("advisors") or []
        features = (f"{metrics['n_features']} features: matminer descriptors + embeddings of {', '.join(extra)}" if extra
                    else f"{metrics['n_features']} matminer descriptors")
        return f"descriptor baseline ({features}, scikit-learn HistGradientBoostingRegressor)"
    advisors = config.get("advisors")
    model = config.get("model") or {}
    bits = []
    if advisors is not None:
        bits.append(f"advisors: {', '.join(advisors) or 'none'}")
    if model:
        bits.append(f"pooling {model.get('pooling')}, width {model.get('atom_fea_len')}, {model.get('n_conv')} convolutions")
    if config.get("ensemble", 1) > 1:
        bits.append(f"{config['ensemble']}-member ensemble")
    training = config.get("training") or {}
    if training.get("epochs"):
        bits.append(f"{training['epochs']} epochs")
    return "; ".join(bits)


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
    import numpy as np

    groups: dict[tuple[str, ...], list[tuple[str, dict[str, float], bool]]] = {}
    for run in runs:
        for label, maes, is_baseline in fold_results(run):
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
