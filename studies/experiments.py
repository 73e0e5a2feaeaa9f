"""Experiments that answer the research questions with one command each:

* :func:`learning_curve` (``adex experiment learning-curve``): cross-validated MAE vs
  training-set size (the published ``0.10`` / ``0.40`` / ``1.00`` fold families) for
  several variants (scratch, advised, transfer-initialised, frozen, gradual unfreezing),
  several seeds per point;
* :func:`pooling_comparison` (``adex experiment pooling``): every expert pooling on the
  same folds and seeds;
* :func:`blend_runs` (``adex experiment blend``): the weighted mean of several CV runs'
  held-out predictions on the same folds (a seed ensemble, or expert + descriptor baseline).

Each writes its table (one row per variant x size x seed, and a mean +- std summary) as
CSV and JSON, and a PNG; every underlying CV run folder is kept below it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from adex.errors import ConfigError
from adex.fileio import atomic_write_json

#: Overrides that turn the base expert config into each learning-curve variant.
#: Transfer variants copy the ``eform`` advisor's backbone, hence its width (64).
VARIANTS: dict[str, list[str]] = {
    "scratch": ["advisors=[]"],
    "advised": [],
    "transfer": ["advisors=[]", "transfer.init_from=eform", "model.atom_fea_len=64"],
    "transfer-frozen": ["advisors=[]", "transfer.init_from=eform", "transfer.freeze=true", "transfer.unfreeze_every=0",
                        "model.atom_fea_len=64"],
    "transfer-gradual": ["advisors=[]", "transfer.init_from=eform", "transfer.freeze=true", "transfer.unfreeze_every=10",
                         "model.atom_fea_len=64"],
    "advised-transfer": ["transfer.init_from=eform", "model.atom_fea_len=64"],
}


def variant_overrides(name: str) -> list[str]:
    if name not in VARIANTS:
        raise ConfigError(f"unknown variant {name!r} (choose from {', '.join(VARIANTS)})")
    return list(VARIANTS[name])


def _summarise(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Mean and std over seeds of the per-run fold-mean MAE / RMSE, grouped by ``keys``."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), []).append(row)
    out = []
    for key, members in groups.items():
        maes, rmses = np.array([m["mae"] for m in members]), np.array([m["rmse"] for m in members])
        out.append({**dict(zip(keys, key)), "mae_mean": float(maes.mean()),
                    "mae_std": float(maes.std(ddof=1)) if len(maes) > 1 else 0.0,
                    "rmse_mean": float(rmses.mean()), "n_seeds": len(members), "n_folds": members[0]["n_folds"]})
    return out


def _write_rows(path: Path, rows: list[dict]) -> None:
    from adex.studies.cv import write_table

    write_table(path, rows)


def _record(rows: list[dict], row: dict, on_run, path: Path) -> None:
    """Append a finished run, report it and rewrite the runs table (partial results survive a stop)."""
    rows.append(row)
    if on_run is not None:
        on_run(row)
    _write_rows(path, rows)


def learning_curve(
    base: str,
    base_overrides: list[str],
    fractions: list[str],
    variants: list[str],
    seeds: list[int],
    n_folds: int,
    per_compound: bool = False,
    data: str | os.PathLike | None = None,
    registry=None,
    out: str | os.PathLike | None = None,
    on_run=None,
) -> dict:
    """Cross-validated MAE for every (fraction, variant, seed) on the published folds
    ``<fraction>k0 .. k<n_folds-1>`` (``_struct`` with ``per_compound``).

    Returns ``{"rows": [...], "summary": [...], "out": Path}``; MAEs in eV.
    """
    from adex.paths import new_run_dir
    from adex.config import load_config
    from adex.datasets import dataset_root
    from adex.studies.cv import cross_validate
    from adex.studies.splits import make_folds
    from adex.expert.train import ExpertConfig

    configs = {v: [*base_overrides, *variant_overrides(v)] for v in variants}
    for overrides in configs.values():  # validate every variant before the long part
        load_config(ExpertConfig, "expert", base, overrides)
    root = dataset_root("witman2023_vacancies", data)
    out_dir = new_run_dir("learning-curve", out)
    rows = []
    t0 = time.perf_counter()
    for fraction in fractions:
        folds = make_folds(root, "published", n_folds=n_folds, fraction=fraction, per_compound=per_compound)
        n_train = int(np.mean([len(f.train) for f in folds]))
        for variant in variants:
            for seed in seeds:
                config = load_config(ExpertConfig, "expert", base, [*configs[variant], f"training.seed={seed}"])
                result = cross_validate(config, folds, data=data, registry=registry,
                                        out=out_dir / f"{fraction}_{variant}_seed{seed}", grouped=per_compound,
                                        scheme=f"published{'_struct' if per_compound else ''}@{fraction}")
                m = result.metrics
                row = {"fraction": fraction, "n_train": n_train, "variant": variant, "seed": seed,
                       "mae": m["mae_mean"], "mae_fold_std": m["mae_std"], "rmse": m["rmse_mean"],
                       "mae_O": m["pooled"]["mae_O"], "mae_metal": m["pooled"]["mae_metal"], "n_folds": m["n_folds"],
                       "seconds": m["seconds"]}
                _record(rows, row, on_run, out_dir / "learning_curve_runs.csv")
    summary = _summarise(rows, ("fraction", "n_train", "variant"))
    _write_rows(out_dir / "learning_curve_runs.csv", rows)
    _write_rows(out_dir / "learning_curve.csv", summary)
    atomic_write_json(out_dir / "metrics.json", {"experiment": "learning-curve", "unit": "eV", "base": base,
                                                 "base_overrides": base_overrides, "per_compound": per_compound,
                                                 "summary": summary, "runs": rows,
                                                 "seconds": round(time.perf_counter() - t0, 1)})
    plot_learning_curve(out_dir / "learning_curve.png", summary, per_compound)
    return {"rows": rows, "summary": summary, "out": out_dir}


def _baseline_rows(run: Path) -> list[dict]:
    """Learning-curve rows of a descriptor-baseline CV folder (``adex baseline --cv
    published[@fraction]``), as variant ``descriptor baseline``."""
    import csv
    import json

    metrics = json.loads((run / "metrics.json").read_text())
    scheme = str(metrics.get("scheme", ""))
    if "n_features" not in metrics or not scheme.startswith("published"):
        raise ConfigError(f"{run}: not a descriptor-baseline run on published folds (adex baseline --cv published...)")
    with open(run / "folds.csv", newline="") as handle:
        folds = list(csv.DictReader(handle))
    fraction = scheme.split("@", 1)[1] if "@" in scheme else "1.00"
    maes = np.array([float(f["mae"]) for f in folds])
    return [{"fraction": f"{float(fraction):.2f}", "n_train": int(np.mean([int(f["n_train"]) for f in folds])),
             "variant": "descriptor baseline", "seed": 0, "mae": float(maes.mean()),
             "mae_fold_std": float(maes.std(ddof=1)) if len(maes) > 1 else 0.0,
             "rmse": float(np.mean([float(f["rmse"]) for f in folds])),
             **{k: float(np.mean([float(f[k]) for f in folds])) for k in ("mae_O", "mae_metal")},
             "n_folds": len(folds), "seconds": 0.0,
             "source": run.name, "_per_compound": "struct" in scheme}]


def merge_learning_curves(runs: list[Path], out: str | os.PathLike, baselines: list[Path] = ()) -> dict:
    """One learning curve from several ``learning-curve`` run folders (e.g. variants or
    seeds run in parallel, on other machines): their runs tables are concatenated (a
    repeated (fraction, variant, seed) is an error), summarised over seeds and plotted.
    ``baselines``: ``adex baseline --cv published[@fraction]`` folders, drawn as one more
    line (``descriptor baseline``; its spread is over folds, not seeds).
    Writes ``learning_curve_runs.csv``, ``learning_curve.csv``, ``metrics.json`` (with
    the source folders) and ``learning_curve.png`` into ``out``."""
    import csv
    import json

    rows, sources, per_compound = [], [], set()
    seen: dict[tuple, Path] = {}
    for run in runs:
        metrics_path = Path(run) / "metrics.json"
        metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
        if metrics.get("experiment") != "learning-curve":
            raise ConfigError(f"{run}: not a finished learning-curve run (no metrics.json of a learning curve)")
        per_compound.add(bool(metrics.get("per_compound")))
        with open(Path(run) / "learning_curve_runs.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                key = (row["fraction"], row["variant"], row["seed"])
                if key in seen:
                    raise ConfigError(f"fraction {key[0]}, variant {key[1]}, seed {key[2]} is in both {seen[key]} and {run}")
                seen[key] = Path(run)
                rows.append({**row, "n_train": int(row["n_train"]), "seed": int(row["seed"]), "n_folds": int(row["n_folds"]),
                             **{k: float(row[k]) for k in ("mae", "mae_fold_std", "rmse", "seconds", "mae_O", "mae_metal")},
                             "source": Path(run).name})
        sources.append(str(Path(run).resolve()))
    for run in baselines:
        for row in _baseline_rows(Path(run)):
            per_compound.add(row.pop("_per_compound"))
            rows.append(row)
        sources.append(str(Path(run).resolve()))
    if len(per_compound) > 1:
        raise ConfigError("cannot merge per-vacancy and per-compound learning curves")
    is_per_compound = per_compound.pop() if per_compound else False
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = _summarise(rows, ("fraction", "n_train", "variant"))
    for entry in summary:  # one run per point (one seed, or the baseline): its spread over folds
        entry["spread_over"] = "seeds"
        if entry["n_seeds"] == 1:
            entry["mae_std"] = next(r["mae_fold_std"] for r in rows if r["variant"] == entry["variant"]
                                    and r["fraction"] == entry["fraction"])
            entry["spread_over"] = "folds"
    summary.sort(key=lambda r: (r["variant"], r["n_train"]))
    _write_rows(out_dir / "learning_curve_runs.csv", rows)
    _write_rows(out_dir / "learning_curve.csv", summary)
    atomic_write_json(out_dir / "metrics.json", {"experiment": "learning-curve", "unit": "eV", "merged_from": sources,
                                                 "per_compound": is_per_compound, "summary": summary, "runs": rows})
    plot_learning_curve(out_dir / "learning_curve.png", summary, is_per_compound)
    return {"rows": rows, "summary": summary, "out": out_dir}


def plot_learning_curve(path: Path, summary: list[dict], per_compound: bool) -> None:
    """MAE (mean +- std over seeds) vs training vacancies, one line per variant, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for variant in dict.fromkeys(r["variant"] for r in summary):
        pts = sorted((r["n_train"], r["mae_mean"], r["mae_std"]) for r in summary if r["variant"] == variant)
        x, y, e = (np.array(v) for v in zip(*pts))
        ax.errorbar(x, y, yerr=e, marker="o", capsize=3, label=variant)
    ax.set_xscale("log")
    ax.set_xlabel("training vacancies")
    ax.set_ylabel("CV MAE (eV)")
    over = {r.get("spread_over", "seeds") for r in summary}
    bars = "std over seeds" if over == {"seeds"} else "std over folds" if over == {"folds"} else "std over seeds (several) or folds (one seed)"
    ax.set_title(f"learning curve ({'per compound' if per_compound else 'per vacancy'}; error bars: {bars})", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def pooling_comparison(
    base: str,
    base_overrides: list[str],
    poolings: list[str],
    seeds: list[int],
    folds,
    grouped: bool,
    scheme: str,
    data: str | os.PathLike | None = None,
    registry=None,
    out: str | os.PathLike | None = None,
    on_run=None,
) -> dict:
    """Cross-validated MAE of the expert for every pooling on the same folds and seeds."""
    from adex.paths import new_run_dir
    from adex.config import load_config
    from adex.studies.cv import cross_validate
    from adex.expert.model import POOLINGS
    from adex.expert.train import ExpertConfig

    unknown = [p for p in poolings if p not in POOLINGS]
    if unknown:
        raise ConfigError(f"unknown pooling {unknown[0]!r} (choose from {', '.join(POOLINGS)})")
    out_dir = new_run_dir("pooling", out)
    rows = []
    for pooling in poolings:
        for seed in seeds:
            config = load_config(ExpertConfig, "expert", base, [*base_overrides, f"model.pooling={pooling}",
                                                                f"training.seed={seed}"])
            m = cross_validate(config, folds, data=data, registry=registry, out=out_dir / f"{pooling}_seed{seed}",
                               grouped=grouped, scheme=scheme).metrics
            row = {"pooling": pooling, "seed": seed, "mae": m["mae_mean"], "mae_fold_std": m["mae_std"],
                   "rmse": m["rmse_mean"], "n_folds": m["n_folds"], "seconds": m["seconds"]}
            _record(rows, row, on_run, out_dir / "pooling_runs.csv")
    summary = _summarise(rows, ("pooling",))
    _write_rows(out_dir / "pooling.csv", summary)
    atomic_write_json(out_dir / "metrics.json", {"experiment": "pooling", "unit": "eV", "scheme": scheme,
                                                 "folds": [f.name for f in folds], "summary": summary, "runs": rows})
    plot_bars(out_dir / "pooling.png", summary, "pooling", f"expert pooling ({scheme}, {len(folds)} folds)")
    return {"rows": rows, "summary": summary, "out": out_dir}


def plot_bars(path: Path, summary: list[dict], key: str, title: str) -> None:
    """Bar chart of mean MAE with std-over-seeds error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    x = np.arange(len(summary))
    ax.bar(x, [r["mae_mean"] for r in summary], yerr=[r["mae_std"] for r in summary], capsize=4)
    ax.set_xticks(x, [str(r[key]) for r in summary], rotation=30)
    ax.set_ylabel("CV MAE (eV)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def advisor_pooling_comparison(
    name: str,
    base_overrides: list[str],
    poolings: list[str],
    seeds: list[int],
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    on_run=None,
) -> dict:
    """Test MAE of the advisor ``name`` (e.g. ``eform``: pristine formation energy) for every
    advisor pooling, each seed a different random train/val/test split and initialisation
    (nothing is registered)."""
    from adex.advisors.model import AdvisorConfig
    from adex.advisors.train import train_advisor
    from adex.paths import new_run_dir
    from adex.config import load_config

    out_dir = new_run_dir(f"pooling-advisor-{name}", out)
    rows = []
    for pooling in poolings:
        for seed in seeds:
            config = load_config(AdvisorConfig, "advisors", name, [*base_overrides, f"model.pooling={pooling}",
                                                                   f"training.seed={seed}"])
            run = train_advisor(config, data=data, out=out_dir / f"{pooling}_seed{seed}", register=False)
            test = run.metrics["test"]
            row = {"pooling": pooling, "seed": seed, "mae": test["mae"], "rmse": test["rmse"], "n_test": test["n"],
                   "n_folds": 1, "seconds": run.metrics["train_seconds"], "unit": run.metrics["unit"]}
            _record(rows, row, on_run, out_dir / "pooling_runs.csv")
    summary = _summarise(rows, ("pooling",))
    _write_rows(out_dir / "pooling.csv", summary)
    unit = rows[0]["unit"] if rows else ""
    atomic_write_json(out_dir / "metrics.json", {"experiment": "pooling-advisor", "advisor": name, "unit": unit,
                                                 "summary": summary, "runs": rows})
    plot_bars(out_dir / "pooling.png", summary, "pooling", f"advisor {name} pooling (random splits, {len(seeds)} seeds)")
    return {"rows": rows, "summary": summary, "out": out_dir}


def blend_runs(runs: list[Path], out: str | os.PathLike, weights: list[float] | None = None) -> dict:
    """Cross-validated blend (weighted mean) of the held-out predictions of several CV runs.

    ``runs`` are ``adex cv`` / ``adex baseline`` folders (or one CV run inside an
    experiment folder) that were evaluated on exactly the same folds and vacancies, e.g.
    experts trained with different seeds (a seed ensemble) or an expert and the descriptor
    baseline. Every run's model saw only its fold's training vacancies, so the blend is
    as out-of-sample as its parts, provided ``weights`` are fixed in advance (default:
    equal), never fitted on the held-out predictions.

    Writes the files of ``adex cv`` into ``out`` (``folds.csv``; ``predictions.csv`` with
    the blended ``dH_pred_eV`` (eV) and the spread ``dH_std_eV`` (eV) of the parts;
    ``metrics.json`` with ``blend = {runs, weights}``; ``cv.png``), so ``adex report``
    and its shared-fold comparison treat the blend like any other model.
    Raises ConfigError when the runs differ in folds, vacancies or targets.
    """
    import csv
    import json

    from adex.studies.cv import fold_errors, plot_folds, summarize, write_table
    from adex.expert.ensemble import calibration

    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise ConfigError("a blend needs at least two CV run folders")
    weights = [1.0] * len(runs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(runs):
        raise ConfigError(f"{len(weights)} weights for {len(runs)} runs")
    if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigError(f"blend weights must be non-negative with a positive sum, got {weights}")
    w = np.array(weights) / sum(weights)

    tables, n_train, schemes = [], {}, []
    for run in runs:
        path = run / "predictions.csv"
        if not path.is_file() or not (run / "folds.csv").is_file():
            raise ConfigError(f"{run}: not a cross-validation run folder (no predictions.csv / folds.csv)")
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        table = {(r["fold"], r["id"]): r for r in rows}
        if len(table) != len(rows):
            raise ConfigError(f"{path}: a (fold, id) pair appears twice")
        tables.append(table)
        with open(run / "folds.csv", newline="") as handle:
            for r in csv.DictReader(handle):
                n_train.setdefault(r["fold"], int(r["n_train"]))
        metrics_path = run / "metrics.json"
        schemes.append(json.loads(metrics_path.read_text()).get("scheme", "") if metrics_path.is_file() else "")
    keys = sorted(tables[0])
    for run, table in zip(runs[1:], tables[1:]):
        if set(table) != set(keys):
            missing = sorted(set(keys) ^ set(table))[0]
            raise ConfigError(f"{run} and {runs[0]} were not tested on the same folds and vacancies "
                              f"(fold {missing[0]}, id {missing[1]} is in only one)")
    target = np.array([float(tables[0][k]["dH_eV"]) for k in keys])
    parts = np.array([[float(t[k]["dH_pred_eV"]) for k in keys] for t in tables])  # (n_runs, n_vacancies) eV
    for run, table in zip(runs[1:], tables[1:]):
        other = np.array([float(table[k]["dH_eV"]) for k in keys])
        if not np.allclose(other, target, atol=1e-4):
            raise ConfigError(f"{run} and {runs[0]} disagree on the DFT targets of the same vacancies")
    blended = w @ parts
    spread = np.sqrt(w @ (parts - blended) ** 2)
    predictions = [{"fold": k[0], "id": k[1], "host": tables[0][k].get("host", k[1].split("-")[0]),
                    "element": tables[0][k]["element"], "dH_eV": float(target[i]), "dH_pred_eV": float(blended[i]),
                    "dH_std_eV": float(spread[i])} for i, k in enumerate(keys)]
    fold_rows = []
    elements = np.array([p["element"] for p in predictions])
    folds = np.array([k[0] for k in keys])
    for fold in dict.fromkeys(folds.tolist()):
        sel = folds == fold
        fold_rows.append({"fold": fold, "n_train": n_train.get(fold, 0), "n_test": int(sel.sum()),
                          **fold_errors(blended[sel], target[sel], elements[sel])})
    scheme = schemes[0] if len(set(schemes)) == 1 else ""
    metrics = summarize(fold_rows, predictions, scheme)
    metrics["blend"] = {"runs": [str(r) for r in runs], "weights": [float(x) for x in w]}
    metrics["calibration"] = calibration(blended, spread, target)  # spread of the parts vs error (a seed ensemble's)
    names = [r.name for r in runs]  # the folder name, or the path where two folders share it
    metrics["parts_mae_mean"] = {(r.name if names.count(r.name) == 1 else str(r)):
                                 float(np.mean([np.abs(p[folds == f] - target[folds == f]).mean()
                                                for f in dict.fromkeys(folds.tolist())]))
                                 for r, p in zip(runs, parts)}
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_table(out_dir / "folds.csv", fold_rows)
    write_table(out_dir / "predictions.csv", predictions)
    atomic_write_json(out_dir / "metrics.json", metrics)
    plot_folds(out_dir / "cv.png", fold_rows, blended, target, elements,
               "blend of " + " + ".join(r.name for r in runs))
    return {"metrics": metrics, "folds": fold_rows, "out": out_dir}
