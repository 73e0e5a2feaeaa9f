"""The new-materials table: ``adex evaluate``.

Several models (expert recipes, descriptor baselines, already finished run folders) are
evaluated on exactly the same folds of several schemes (:mod:`adex.studies.splits`), and
one table compares them: per compound (``published_struct``), leave one element out
(``loeo``), leave one structure family out (``family``: hosts grouped by anonymised
formula + space group) and, as a secondary column, the published per-vacancy folds
(``published``).

A *spec* (YAML, ``configs/evaluate/*.yaml``; :func:`load_spec`) names the models; each
(model, scheme, fold) is one *unit* of work whose result lands atomically (a temporary
folder renamed into place) in ``<out>/runs/<model>/<scheme>/<fold>/``: ``predictions.csv``
(fold, id, host, element, dH_eV, dH_pred_eV in eV), ``unit.json`` (written last: the model's
resolved spec, the fold's test ids digest, seconds) and, for trained units, the run folder
of ``adex cv`` / ``adex baseline`` for that one fold. With ``resume`` finished units are
read back, not recomputed. Units run in ``workers`` processes (spawned) side by side.

The out folder then gets:

* ``spec.yaml``: the resolved spec (every default filled in, the folds of every scheme);
* ``table.csv`` / ``table.json`` / ``table.md``: one row per (model, scheme), see
  :func:`table_rows`;
* ``families.csv``: for the family scheme, one row per structure family (family,
  n_hosts, n_vacancies, fold, hosts) and in ``table.md`` a line with their number and sizes;
* ``per_fold_mae.png``: per scheme a panel, per fold each model's MAE.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adex.errors import ConfigError

#: Model kinds of a spec: trained per fold (expert, baseline) or read from a finished run.
KINDS = ("expert", "baseline", "run")
#: Default schemes, in table order; the per-vacancy ``published`` folds come last (secondary).
DEFAULT_SCHEMES = ("published_struct", "loeo", "family", "published")
UNIT_FILE = "unit.json"
PREDICTIONS_FILE = "predictions.csv"
PREDICTION_COLUMNS = ("fold", "id", "host", "element", "dH_eV", "dH_pred_eV")
TABLE_COLUMNS = ("model", "kind", "scheme", "n_folds", "n_predictions", "mae_mean", "mae_std", "mae_pooled",
                 "rmse_pooled", "mae_O", "mae_metal", "host_offset_std", "folds_won", "folds_compared",
                 "best_baseline")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


# --------------------------------------------------------------------------------- the spec
@dataclass
class ExpertModel:
    """An expert recipe, cross-validated per fold as ``adex cv`` does: the shipped config
    ``config`` (name or YAML path), ``advisors`` (registry refs; ``[]`` = none, ``null`` =
    the config's), ``set`` (``--set`` overrides as a mapping, e.g.
    ``{augment.min_image_distances: [10.0]}``), ``ensemble`` members, ``seed``;
    ``schemes``: only these of the evaluated schemes (default: all)."""

    name: str
    kind: str = "expert"
    config: str = "default"
    advisors: list[str] | None = None
    set: dict[str, Any] = field(default_factory=dict)
    ensemble: int = 1
    seed: int = 0
    schemes: list[str] | None = None
    description: str = ""


@dataclass
class BaselineModel:
    """The descriptor baseline as ``adex baseline`` runs it: ``advisors`` (embeddings
    added), ``potential_delta`` (learn dH - dE of the potential among the advisors),
    ``potential_relaxation`` (line-search relaxed dE), ``relaxation_steps`` (FIRE steps
    instead), ``loss``, ``host_weight_power``, ``seed``; ``schemes``: only these of the
    evaluated schemes (default: all)."""

    name: str
    kind: str = "baseline"
    advisors: list[str] = field(default_factory=list)
    potential_delta: bool = False
    potential_relaxation: bool = False
    relaxation_steps: int = 0
    loss: str = "auto"
    host_weight_power: float = 0.0
    seed: int = 0
    schemes: list[str] | None = None
    description: str = ""


@dataclass
class RunModel:
    """Held-out predictions that exist already: ``path`` is an ``adex cv`` / ``adex
    baseline`` / ``adex experiment blend|merge`` folder (``predictions.csv``), or a summaries
    folder (``adex report --write-summaries``: ``experiments.csv`` +
    ``heldout_predictions.csv.gz``) with ``experiment`` naming the run in it. The scheme
    is the run's own; ``baseline`` (default: guessed from the run) says whether it competes
    as a baseline. A run may share its name with other runs (of other folds) and with a
    trained model, which is then not trained on the run's scheme: the run supplies that
    row (e.g. a baseline trained on the family folds here and read from an earlier run on
    the published ones)."""

    name: str
    kind: str = "run"
    path: str = ""
    experiment: str | None = None
    baseline: bool | None = None
    description: str = ""


@dataclass
class EvaluateSpec:
    """A spec file: ``name``, ``schemes`` (evaluated for every trained model),
    ``folds`` (number of folds of the k-fold schemes, e.g. ``family``), ``fold_seed``
    (their shuffling), ``elements`` (loeo / l2eo; default every element but O), ``models``."""

    name: str = "evaluate"
    description: str = ""
    schemes: list[str] = field(default_factory=lambda: list(DEFAULT_SCHEMES))
    folds: int = 10
    fold_seed: int = 0
    elements: list[str] | None = None
    models: list[Any] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


_MODEL_CLASSES = {"expert": ExpertModel, "baseline": BaselineModel, "run": RunModel}


def build_spec(data: dict, where: str = "spec") -> EvaluateSpec:
    """Validate a spec mapping (ConfigError naming the key: unknown key, wrong type, a key
    of another model kind, a repeated or unsafe model name, an unknown scheme)."""
    from adex.studies.splits import parse_scheme

    from adex.config import build_dataclass

    spec = build_dataclass(EvaluateSpec, data, where)
    if not _NAME.fullmatch(spec.name):
        raise ConfigError(f"{where}.name: {spec.name!r} must be letters, digits, '_', '.', '+', '-'")
    if spec.folds < 2:
        raise ConfigError(f"{where}.folds: must be >= 2, got {spec.folds}")
    if not spec.schemes:
        raise ConfigError(f"{where}.schemes: give at least one scheme")
    for i, scheme in enumerate(spec.schemes):
        try:
            parse_scheme(scheme)
        except ConfigError as exc:
            raise ConfigError(f"{where}.schemes[{i}]: {exc}") from None
    if len(set(spec.schemes)) != len(spec.schemes):
        raise ConfigError(f"{where}.schemes: a scheme is listed twice")
    models, owner = [], {}
    for i, item in enumerate(spec.models):
        here = f"{where}.models[{i}]"
        if not isinstance(item, dict):
            if isinstance(item, (ExpertModel, BaselineModel, RunModel)):
                item = asdict(item)
            else:
                raise ConfigError(f"{here}: expected a mapping, got {item!r}")
        kind = item.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"{here}.kind: expected one of {list(KINDS)}, got {kind!r}")
        cls = _MODEL_CLASSES[kind]
        valid = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(item) - valid)
        if unknown:
            raise ConfigError(f"{here}: unknown key {unknown[0]!r} for a {kind} model "
                              f"(valid keys: {', '.join(sorted(valid))})")
        model = build_dataclass(cls, item, here)
        _check_model(model, here)
        if model.name in owner and kind != "run" and owner[model.name] != "run":
            raise ConfigError(f"{here}.name: model {model.name!r} is named twice (only runs may share a name)")
        owner.setdefault(model.name, kind)
        if kind != "run":
            owner[model.name] = kind
        for j, scheme in enumerate(getattr(model, "schemes", None) or []):
            try:
                parse_scheme(scheme)
            except ConfigError as exc:
                raise ConfigError(f"{here}.schemes[{j}]: {exc}") from None
        models.append(model)
    spec.models = models
    return spec


def _check_model(model, where: str) -> None:
    if not _NAME.fullmatch(model.name):
        raise ConfigError(f"{where}.name: {model.name!r} must be letters, digits, '_', '.', '+', '-' (a folder name)")
    if isinstance(model, ExpertModel) and model.ensemble < 1:
        raise ConfigError(f"{where}.ensemble: must be >= 1, got {model.ensemble}")
    if isinstance(model, BaselineModel):
        if model.potential_delta and not model.advisors:
            raise ConfigError(f"{where}.potential_delta: needs a potential among advisors (e.g. [chgnet])")
        if model.potential_relaxation and not model.potential_delta:
            raise ConfigError(f"{where}.potential_relaxation: needs potential_delta")
        if model.relaxation_steps < 0 or (model.relaxation_steps and not model.potential_relaxation):
            raise ConfigError(f"{where}.relaxation_steps: must be >= 0 and needs potential_relaxation")
        if model.host_weight_power < 0:
            raise ConfigError(f"{where}.host_weight_power: must be >= 0, got {model.host_weight_power}")
    if isinstance(model, RunModel) and not model.path:
        raise ConfigError(f"{where}.path: a run model needs the path of its run folder")


def load_spec(name_or_path: str) -> EvaluateSpec:
    """A spec by shipped name (``new-materials`` = ``configs/evaluate/new-materials.yaml``)
    or YAML path, validated (:func:`build_spec`)."""
    from adex.config import builtin_config, read_yaml

    if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).exists():
        return build_spec(read_yaml(name_or_path), str(name_or_path))
    return build_spec(builtin_config("evaluate", name_or_path), f"configs/evaluate/{name_or_path}.yaml")


def parse_run_option(text: str) -> RunModel:
    """``NAME=PATH`` or ``NAME=SUMMARIES_DIR#EXPERIMENT`` (``--run``) -> a :class:`RunModel`."""
    name, sep, target = text.partition("=")
    if not sep or not name.strip() or not target.strip():
        raise ConfigError(f"--run {text!r}: expected NAME=RUN_FOLDER or NAME=SUMMARIES_FOLDER#EXPERIMENT")
    path, _, experiment = target.partition("#")
    model = RunModel(name=name.strip(), path=path.strip(), experiment=experiment.strip() or None)
    _check_model(model, f"--run {text}")
    return model


# --------------------------------------------------------------------------------- planning
@dataclass
class Unit:
    """One (model, scheme, fold) and its folder ``<out>/runs/<model>/<scheme>/<fold>``."""

    model: Any
    scheme: str
    fold: Any  # adex.studies.splits.Fold
    grouped: bool
    folder: Path


def scheme_folds(root: Path, spec: EvaluateSpec, limit: int | None = None) -> dict[str, list]:
    """scheme -> its folds (the first ``limit`` of each with ``limit``)."""
    from adex.studies.splits import make_folds, parse_scheme

    out = {}
    for scheme in spec.schemes:
        folds = make_folds(root, n_folds=spec.folds, seed=spec.fold_seed, elements=spec.elements,
                           **parse_scheme(scheme))
        if not folds:
            raise ConfigError(f"scheme {scheme}: no folds (nothing to train on or to test)")
        out[scheme] = folds[:limit] if limit else folds
    return out


def is_grouped(scheme: str) -> bool:
    """Whether validation is drawn by host (the test hosts never appear in training)."""
    from adex.studies.splits import GROUPED_SCHEMES, parse_scheme

    kwargs = parse_scheme(scheme)
    return kwargs["scheme"] in GROUPED_SCHEMES or kwargs.get("per_compound", False)


def model_record(model) -> dict:
    """The resolved spec of one model as stored in each unit (``kind`` first)."""
    record = asdict(model)
    return {"kind": record.pop("kind"), **record}


def ids_digest(ids) -> str:
    """sha256 of a fold's sorted test ids (a unit is reused only for the same vacancies)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode()).hexdigest()


def finished_unit(folder: Path) -> dict | None:
    """The ``unit.json`` of a finished unit folder, else None."""
    path = folder / UNIT_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError:
        return None


# --------------------------------------------------------------------------------- units
def run_unit(task: dict) -> dict:
    """Train and test one (model, scheme, fold) into a temporary folder beside
    ``task["folder"]`` and rename it into place (atomic). Runs in a worker process or in
    the caller's; returns ``{"folder", "seconds", "mae"}``.

    ``task``: ``model`` (:func:`model_record`), ``scheme``, ``grouped``, ``fold``
    (name, train ids, test ids), ``folder``, ``data``, ``registry`` (root or None), ``threads``.
    """
    from adex.studies.splits import Fold

    folder = Path(task["folder"])
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".tmp-{folder.name}-{os.getpid()}-{time.time_ns()}"
    fold = Fold(task["fold"][0], tuple(task["fold"][1]), tuple(task["fold"][2]))
    model = task["model"]
    t0 = time.perf_counter()
    try:
        if model["kind"] == "expert":
            predictions = _run_expert(model, fold, task, tmp)
        elif model["kind"] == "baseline":
            predictions = _run_baseline(model, fold, task, tmp)
        else:  # pragma: no cover - runs are imported, not run
            raise ConfigError(f"model {model['name']}: a {model['kind']} model has no units to run")
        seconds = time.perf_counter() - t0
        info = _publish(tmp, folder, predictions, model, task["scheme"], fold, seconds, source="trained")
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return info


def _publish(tmp: Path, folder: Path, predictions: list[dict], model: dict, scheme: str, fold, seconds: float,
             source: str) -> dict:
    """Write ``predictions.csv`` and ``unit.json`` into ``tmp`` and rename it to ``folder``."""
    import shutil

    from adex.studies.cv import fold_errors, write_table

    from adex.fileio import atomic_write_json

    tmp.mkdir(parents=True, exist_ok=True)
    rows = [{c: p[c] for c in PREDICTION_COLUMNS} for p in predictions]
    write_table(tmp / PREDICTIONS_FILE, rows)
    errors = fold_errors(np.array([p["dH_pred_eV"] for p in rows], dtype=float),
                         np.array([p["dH_eV"] for p in rows], dtype=float),
                         np.array([p["element"] for p in rows], dtype=str)) if rows else {}
    atomic_write_json(tmp / UNIT_FILE, {"model": model, "scheme": scheme, "fold": fold.name, "n_test": len(rows),
                                        "ids_digest": ids_digest(fold.test), "source": source,
                                        "seconds": round(seconds, 2), **errors})
    if folder.exists():  # an unfinished or outdated unit (no unit.json, or recomputed on purpose)
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return {"folder": str(folder), "seconds": seconds, "mae": errors.get("mae")}


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _registry(root: str | None):
    from adex.registry import Registry

    return Registry(root=root) if root else None


def _run_expert(model: dict, fold, task: dict, out: Path) -> list[dict]:
    """One fold of ``adex cv`` for an expert recipe; its held-out predictions (eV)."""
    from adex.expert.train import ExpertConfig
    from adex.studies.cv import cross_validate

    from adex.config import load_config

    overrides = []
    if model["advisors"] is not None:
        overrides.append(f"advisors={json.dumps(list(model['advisors']))}")
    overrides += [f"{key}={json.dumps(value)}" for key, value in (model["set"] or {}).items()]
    overrides += [f"ensemble={model['ensemble']}", f"training.seed={model['seed']}",
                  f"training.threads={task['threads']}"]
    config = load_config(ExpertConfig, "expert", model["config"], overrides)
    _set_threads(task["threads"])
    cross_validate(config, [fold], data=task["data"], registry=_registry(task["registry"]), out=out,
                   grouped=task["grouped"], scheme=task["scheme"])
    return _read_predictions(out / PREDICTIONS_FILE)


_TABLES: dict[tuple, Any] = {}  # per process: the baseline's feature table per (data, advisors, dE kind)


def _run_baseline(model: dict, fold, task: dict, out: Path) -> list[dict]:
    """One fold of ``adex baseline`` (the feature table is built once per process)."""
    from adex.studies.baseline import run_baseline
    from adex.studies.baseline_features import baseline_table
    from adex.studies.baseline_model import ModelSettings
    from adex.supercell.descriptors import BaselineSettings

    _set_threads(task["threads"])
    key = (task["data"], task["registry"], tuple(model["advisors"]), model["potential_delta"],
           model["potential_relaxation"], model["relaxation_steps"])
    if key not in _TABLES:
        advisors = []
        if model["advisors"]:
            from adex.expert.train import load_advisors
            from adex.registry import open_registry

            advisors = load_advisors(list(model["advisors"]), _registry(task["registry"]) or open_registry())
        _TABLES[key] = baseline_table(task["data"], advisors, potential_delta=model["potential_delta"],
                                      relaxation=model["potential_relaxation"],
                                      relaxation_steps=model["relaxation_steps"], settings=BaselineSettings())
    table = _TABLES[key]
    config = {"command": "evaluate", "advisors": list(model["advisors"]), "potential_delta": model["potential_delta"],
              "potential_relaxation": model["potential_relaxation"], "relaxation_steps": model["relaxation_steps"]}
    run_baseline(table, [fold], ModelSettings(loss=model["loss"], host_weight_power=model["host_weight_power"]),
                 seed=model["seed"], grouped=task["grouped"], scheme=task["scheme"], out=out, config=config,
                 threads=task["threads"])
    return _read_predictions(out / PREDICTIONS_FILE)


def _read_predictions(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [{**r, "dH_eV": float(r["dH_eV"]), "dH_pred_eV": float(r["dH_pred_eV"])} for r in rows]


# --------------------------------------------------------------------------------- finished runs
def read_run(model: RunModel, root: Path) -> tuple[str, dict[str, list[dict]], bool]:
    """(scheme, fold -> held-out predictions, is a baseline) of a finished run.

    Host and vacated element come from ``vacancies.csv`` under ``root`` (the summaries
    keep only ids); an id not in the data set is a ConfigError.
    """
    from adex.studies.splits import vacancy_table

    path = Path(model.path).expanduser()
    if model.experiment:
        from adex.studies.report import Summaries

        summaries = Summaries(path)
        row = summaries[model.experiment]
        frame = summaries.predictions(model.experiment)
        records = frame.to_dict("records")
        scheme, baseline = str(row.get("scheme") or ""), row.get("kind") == "baseline"
    else:
        if not (path / PREDICTIONS_FILE).is_file():
            raise ConfigError(f"run {model.name}: {path} holds no {PREDICTIONS_FILE} (an adex cv / baseline run folder, "
                              "or a summaries folder with NAME=FOLDER#EXPERIMENT)")
        records = _read_predictions(path / PREDICTIONS_FILE)
        metrics = json.loads((path / "metrics.json").read_text()) if (path / "metrics.json").is_file() else {}
        scheme = str(metrics.get("scheme") or "")
        baseline = bool(metrics.get("n_features")) and not metrics.get("blend")
    scheme = re.sub(r"@1\.00$", "", scheme)
    if not scheme:
        raise ConfigError(f"run {model.name}: {path} does not say which cross-validation scheme it ran")
    table = vacancy_table(Path(root))
    where = {vid: (host, el) for vid, host, el in zip(table.ids, table.hosts, table.elements)}
    folds: dict[str, list[dict]] = {}
    for r in records:
        vid = str(r["id"])
        if vid not in where:
            raise ConfigError(f"run {model.name}: vacancy {vid} is not in the data set at {root}")
        folds.setdefault(str(r["fold"]), []).append(
            {"fold": str(r["fold"]), "id": vid, "host": where[vid][0], "element": where[vid][1],
             "dH_eV": float(r["dH_eV"]), "dH_pred_eV": float(r["dH_pred_eV"])})
    return scheme, folds, baseline if model.baseline is None else bool(model.baseline)


# --------------------------------------------------------------------------------- the run
@dataclass
class EvaluateResult:
    """What :func:`evaluate` wrote: the table rows, the units run now / reused, failures."""

    out: Path
    rows: list[dict]
    ran: int
    reused: int
    failed: list[tuple[str, str]]
    families: str


def evaluate(
    spec: EvaluateSpec,
    out: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    registry: str | None = None,
    workers: int = 1,
    threads: int = 1,
    resume: bool = False,
    limit: int | None = None,
    progress: bool = True,
    log=None,
) -> EvaluateResult:
    """Run every unit of ``spec`` that is not finished, then write the table.

    Args:
        out: the evaluation folder (default ``$ADEX_HOME/evaluations/<spec name>-<time>``);
            an existing non-empty folder needs ``resume`` (ConfigError otherwise).
        workers: units run at once, each in its own (spawned) process; 1 runs them here.
        threads: torch / OpenMP threads per unit.
        resume: reuse finished units (a unit of another model spec or other test
            vacancies is a ConfigError).
        limit: only the first ``limit`` folds of every scheme (a smoke run).
        log: called with one line per event (unit finished or failed), or None.
    Returns an :class:`EvaluateResult`; failed units are reported there, the table covers
    the finished ones.
    """
    import datetime as _dt

    import yaml

    from adex.datasets import dataset_root
    from adex.fileio import atomic_write_text
    from adex.paths import adex_home

    if workers < 1 or threads < 1:
        raise ConfigError(f"--{'workers' if workers < 1 else 'threads'} must be >= 1")
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a number of folds >= 1, not {limit}")
    if not spec.models:
        raise ConfigError("nothing to evaluate: the spec lists no model (add models or --run NAME=FOLDER)")
    root = dataset_root("witman2023_vacancies", data)
    if out is None:
        if resume:
            raise ConfigError("--resume needs the folder of the interrupted evaluation (--out)")
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = adex_home() / "evaluations" / f"{spec.name}-{stamp}"
    out_dir = Path(out).expanduser()
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir}: exists and is not a folder")
    if not resume and out_dir.is_dir() and any(out_dir.iterdir()):
        raise ConfigError(f"--out {out_dir} exists and is not empty: give a new folder, or --resume to continue it")
    folds = scheme_folds(root, spec, limit)
    say = log or (lambda line: None)

    # finished runs: checked against the folds, then imported as units
    # (a trained model is not trained on a scheme that a run of its name supplies)
    runs, baselines, kinds, seen, supplied = [], set(), {}, {}, set()
    for model in spec.models:
        if isinstance(model, BaselineModel):
            baselines.add(model.name)
        if isinstance(model, RunModel):
            scheme, by_fold, is_baseline = read_run(model, root)
            if scheme not in folds:
                raise ConfigError(f"run {model.name} ({model.path}) is of scheme {scheme}, which is not among the "
                                  f"schemes evaluated ({', '.join(folds)}); add it to --schemes")
            known = {f.name: f for f in folds[scheme]}
            for name, preds in by_fold.items():
                if name not in known:
                    if limit:
                        continue
                    raise ConfigError(f"run {model.name}: fold {name} is not a fold of {scheme} "
                                      f"({', '.join(known)})")
                if sorted(p["id"] for p in preds) != sorted(known[name].test):
                    raise ConfigError(f"run {model.name}: fold {name} tested other vacancies than the {scheme} "
                                      "fold of that name (other fold seed or number of folds?)")
            kinds[model.name, scheme] = "run"
            supplied.add((model.name, scheme))
            if is_baseline:
                baselines.add(model.name)
            for name in by_fold:
                if (model.name, scheme, name) in seen:
                    raise ConfigError(f"run {model.name}: fold {name} of {scheme} is in both {seen[model.name, scheme, name]} "
                                      f"and {model.path}")
                seen[model.name, scheme, name] = model.path
            runs.append((model, scheme, by_fold))
    trained = {m.name: [s for s in model_schemes(m, folds) if (m.name, s) not in supplied] for m in spec.models
               if not isinstance(m, RunModel)}
    for name, schemes in trained.items():
        kinds.update({(name, s): next(m.kind for m in spec.models if m.name == name) for s in schemes})

    out_dir.mkdir(parents=True, exist_ok=True)
    resolved = spec.to_dict()
    resolved["models"] = [model_record(m) for m in spec.models]
    resolved.update({"data": str(root), "limit": limit, "baselines": sorted(baselines), "trained": trained,
                     "fold_names": {s: [f.name for f in fs] for s, fs in folds.items()}})
    atomic_write_text(out_dir / "spec.yaml", yaml.safe_dump(resolved, sort_keys=False))
    _remove_stale_temporaries(out_dir / "runs")

    # every unit: imported runs first (cheap), then the ones to train
    units: list[Unit] = []
    reused, ran, failed = 0, 0, []
    for model, scheme, by_fold in runs:
        record = model_record(model)
        for fold in folds[scheme]:
            if fold.name not in by_fold:
                continue
            unit = Unit(model, scheme, fold, is_grouped(scheme), _unit_folder(out_dir, model.name, scheme, fold.name))
            units.append(unit)
            if resume and _reusable(unit, record):
                reused += 1
                continue
            tmp = unit.folder.parent / f".tmp-{fold.name}-{os.getpid()}-{time.time_ns()}"
            _publish(tmp, unit.folder, by_fold[fold.name], record, scheme, fold, 0.0,
                     source=f"{model.path}{'#' + model.experiment if model.experiment else ''}")
    tasks = []
    for model in spec.models:
        if isinstance(model, RunModel):
            continue
        record = model_record(model)
        for scheme in trained[model.name]:
            for fold in folds[scheme]:
                unit = Unit(model, scheme, fold, is_grouped(scheme), _unit_folder(out_dir, model.name, scheme,
                                                                                  fold.name))
                units.append(unit)
                if resume and _reusable(unit, record):
                    reused += 1
                    continue
                tasks.append({"model": record, "scheme": scheme, "grouped": unit.grouped,
                              "fold": (fold.name, list(fold.train), list(fold.test)), "folder": str(unit.folder),
                              "data": str(data) if data else None, "registry": registry, "threads": threads})
    if tasks:
        ran, failed = _execute(tasks, workers, threads, progress, say, out_dir)
    rows, families = write_outputs(out_dir, units, kinds, baselines, spec, folds, root)
    return EvaluateResult(out_dir, rows, ran, reused, failed, families)


def model_schemes(model, folds: dict) -> list[str]:
    """The evaluated schemes a model is trained on (its ``schemes``, default all)."""
    if isinstance(model, RunModel):
        return []
    return [s for s in folds if model.schemes is None or s in model.schemes]


def _unit_folder(out_dir: Path, model: str, scheme: str, fold: str) -> Path:
    return out_dir / "runs" / model / scheme / fold


def _reusable(unit: Unit, record: dict) -> bool:
    """A finished unit of the same model spec and test vacancies (ConfigError if it differs)."""
    info = finished_unit(unit.folder)
    if info is None:
        return False
    if info.get("model") != record:
        raise ConfigError(f"cannot resume: {unit.folder} was computed with another spec of model {record['name']} "
                          "(change the model's name, or give a new --out)")
    if info.get("ids_digest") != ids_digest(unit.fold.test):
        raise ConfigError(f"cannot resume: {unit.folder} tested other vacancies than fold {unit.fold.name} "
                          "(other fold seed or number of folds?)")
    return True


def _remove_stale_temporaries(runs: Path) -> None:
    import shutil

    if runs.is_dir():
        for tmp in runs.glob("*/*/.tmp-*"):
            shutil.rmtree(tmp, ignore_errors=True)


def _worker_init(threads: int) -> None:
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["ADEX_NO_PROGRESS"] = "1"


def _execute(tasks: list[dict], workers: int, threads: int, progress: bool, say, out_dir: Path):
    """Run ``tasks`` (at most ``workers`` at once); (number finished, [(unit, error)])."""
    import traceback

    from adex.progress import progress_bar

    done, failed = 0, []

    def label(task: dict) -> str:
        return f"{task['model']['name']}/{task['scheme']}/{task['fold'][0]}"

    def finished(task: dict, info: dict | None, error: BaseException | None) -> None:
        nonlocal done
        if error is None:
            done += 1
            say(f"{label(task)}: MAE {info['mae']:.3f} eV ({info['seconds']:.0f} s)")
        else:
            message = f"{type(error).__name__}: {error}".splitlines()[0]
            failed.append((label(task), message))
            say(f"{label(task)}: failed ({message})")
            with open(out_dir / "errors.log", "a") as handle:
                handle.write(f"== {label(task)}\n{''.join(traceback.format_exception(error))}\n")

    with progress_bar(disable=not progress, info=True) as bar:
        job = bar.add_task("evaluate", total=len(tasks), info="")
        if workers == 1:
            for task in tasks:
                bar.update(job, info=label(task))
                try:
                    info, error = run_unit(task), None
                except Exception as exc:  # noqa: BLE001 - one failed unit does not stop the others
                    info, error = None, exc
                finished(task, info, error)
                bar.advance(job)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init,
                                     initargs=(threads,)) as pool:
                futures = {pool.submit(run_unit, task): task for task in tasks}
                for future in as_completed(futures):
                    try:
                        info, error = future.result(), None
                    except Exception as exc:  # noqa: BLE001
                        info, error = None, exc
                    finished(futures[future], info, error)
                    bar.advance(job)
    return done, failed


# --------------------------------------------------------------------------------- the table
def collect_predictions(units: list[Unit]):
    """All held-out predictions of the finished ``units`` as one pandas DataFrame with the
    columns ``model, scheme`` + :data:`PREDICTION_COLUMNS` (eV)."""
    import pandas as pd

    frames = []
    for unit in units:
        if finished_unit(unit.folder) is None:
            continue
        frame = pd.read_csv(unit.folder / PREDICTIONS_FILE, dtype={"fold": str, "id": str, "host": str,
                                                                   "element": str})
        frames.append(frame.assign(model=unit.model.name, scheme=unit.scheme))
    if not frames:
        return pd.DataFrame(columns=["model", "scheme", *PREDICTION_COLUMNS])
    return pd.concat(frames, ignore_index=True)[["model", "scheme", *PREDICTION_COLUMNS]]


def fold_maes(predictions) -> dict[tuple[str, str], dict[str, float]]:
    """(model, scheme) -> fold -> MAE (eV) of a predictions frame."""
    err = (predictions["dH_pred_eV"] - predictions["dH_eV"]).abs()
    out: dict[tuple[str, str], dict[str, float]] = {}
    for (model, scheme, fold), value in err.groupby([predictions["model"], predictions["scheme"],
                                                     predictions["fold"]], sort=False).mean().items():
        out.setdefault((model, scheme), {})[fold] = float(value)
    return out


def table_rows(predictions, kinds: dict, baselines, schemes: list[str] | None = None,
               models: list[str] | None = None) -> list[dict]:
    """One row per (model, scheme) of a predictions frame (columns ``model, scheme`` +
    :data:`PREDICTION_COLUMNS`; energies eV), in the order of ``schemes`` (default: of
    appearance) then of ``models`` (default: of appearance):

    * ``n_folds``, ``n_predictions`` (a vacancy tested in two loeo folds counts twice);
    * ``mae_mean`` / ``mae_std``: MAE over each fold's vacancies, mean and std (ddof=1)
      over folds; ``mae_pooled`` / ``rmse_pooled``: over all held-out predictions;
      ``mae_O`` / ``mae_metal``: pooled MAE of O / metal vacancies
      (:func:`adex.studies.cv.summarize`);
    * ``host_offset_std``: population std over hosts of the per-host mean signed error
      (prediction - DFT) pooled over the scheme's folds (:func:`adex.studies.cv.host_offset_std`);
    * ``folds_won`` of ``folds_compared``: folds (shared with the best baseline) where the
      model's MAE is strictly lower than that of ``best_baseline``, the baseline with the
      lowest ``mae_mean`` on the scheme (ties are no win; empty for the best baseline
      itself and when the scheme has no baseline).

    ``kinds``: (model, scheme) or model -> ``expert`` / ``baseline`` / ``run``;
    ``baselines``: the models that compete as baselines.
    """
    from adex.studies.cv import fold_errors, host_offset_std, summarize

    baselines = set(baselines)
    per_fold = fold_maes(predictions)
    order_schemes = list(schemes) if schemes else list(dict.fromkeys(predictions["scheme"]))
    order_models = list(dict.fromkeys([*(models or []), *predictions["model"]]))
    rows = []
    for scheme in order_schemes:
        in_scheme = predictions[predictions["scheme"] == scheme]
        if in_scheme.empty:
            continue
        summaries = {}
        for model in order_models:
            part = in_scheme[in_scheme["model"] == model]
            if part.empty:
                continue
            fold_rows, records = [], part.to_dict("records")
            for fold, sel in part.groupby("fold", sort=False):
                errors = fold_errors(sel["dH_pred_eV"].to_numpy(float), sel["dH_eV"].to_numpy(float),
                                     sel["element"].to_numpy(str))
                fold_rows.append({"fold": fold, "n_test": len(sel), **errors})
            m = summarize(fold_rows, records, scheme)
            signed = (part["dH_pred_eV"] - part["dH_eV"]).to_numpy(float)
            kind = kinds.get((model, scheme), kinds.get(model, ""))
            summaries[model] = {"model": model, "kind": kind, "scheme": scheme,
                                "n_folds": m["n_folds"], "n_predictions": m["pooled"]["n"],
                                "mae_mean": m["mae_mean"], "mae_std": m["mae_std"], "mae_pooled": m["pooled"]["mae"],
                                "rmse_pooled": m["pooled"]["rmse"], "mae_O": m["pooled"]["mae_O"],
                                "mae_metal": m["pooled"]["mae_metal"],
                                "host_offset_std": host_offset_std(signed, part["host"].to_numpy(str))}
        competing = [name for name in summaries if name in baselines]
        best = min(competing, key=lambda name: summaries[name]["mae_mean"]) if competing else None
        for model, row in summaries.items():
            won = compared = None
            if best is not None and model != best:
                mine, theirs = per_fold[(model, scheme)], per_fold[(best, scheme)]
                shared = [f for f in mine if f in theirs]
                compared = len(shared)
                won = sum(mine[f] < theirs[f] for f in shared)
            rows.append({**row, "folds_won": won, "folds_compared": compared, "best_baseline": best or ""})
    return rows


def family_table(root: Path, folds) -> list[dict]:
    """One row per structure family of the ``family`` folds: family, n_hosts,
    n_vacancies, fold (the fold that tests it), hosts (``;``-separated); largest first."""
    from adex.studies.splits import structure_families, vacancy_table

    families = structure_families(Path(root))
    table = vacancy_table(Path(root))
    fold_of = {vid: fold.name for fold in folds for vid in fold.test}
    rows: dict[str, dict] = {}
    for vid, host in zip(table.ids, table.hosts):
        family = families.get(host, host)
        row = rows.setdefault(family, {"family": family, "n_hosts": 0, "n_vacancies": 0, "fold": "", "hosts": []})
        if host not in row["hosts"]:
            row["hosts"].append(host)
            row["n_hosts"] += 1
        row["n_vacancies"] += 1
        row["fold"] = fold_of.get(vid, row["fold"])
    out = [{**r, "hosts": ";".join(r["hosts"])} for r in rows.values()]
    return sorted(out, key=lambda r: (-r["n_hosts"], -r["n_vacancies"], r["family"]))


def family_summary(root: Path, folds) -> str:
    """One line: number of structure families over the hosts, and their size distribution."""
    rows = family_table(root, folds)
    sizes = [r["n_hosts"] for r in rows]
    counts = {s: sizes.count(s) for s in sorted(set(sizes))}
    largest = rows[0] if rows else {"family": "-", "n_hosts": 0}
    return (f"{len(rows)} structure families (anonymised formula | space group) over {sum(sizes)} hosts, "
            f"in {len(folds)} folds; families of " + ", ".join(f"{s} host{'s' if s > 1 else ''}: {n}"
                                                             for s, n in counts.items())
            + f"; largest {largest['family']} ({largest['n_hosts']} hosts)")


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _won(row: dict) -> str:
    return "–" if row["folds_won"] is None else f"{row['folds_won']}/{row['folds_compared']}"


def markdown_table(rows: list[dict], schemes: list[str], families: str = "") -> str:
    """``table.md``: the long table (one row per model and scheme) and a compact one (one
    row per model, MAE mean ± std per scheme; the per-vacancy ``published`` folds last)."""
    lines = [("| model | kind | scheme | folds | n | MAE mean ± std | MAE pooled | RMSE | MAE O | MAE metal | "
              "host offset std | folds won | best baseline |"),
             "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['kind']} | {r['scheme']} | {r['n_folds']} | {r['n_predictions']} | "
                     f"{_fmt(r['mae_mean'])} ± {_fmt(r['mae_std'])} | {_fmt(r['mae_pooled'])} | "
                     f"{_fmt(r['rmse_pooled'])} | {_fmt(r['mae_O'])} | {_fmt(r['mae_metal'])} | "
                     f"{_fmt(r['host_offset_std'])} | {_won(r)} | {r['best_baseline'] or '–'} |")
    ordered = [s for s in schemes if s != "published"] + [s for s in schemes if s == "published"]
    present = [s for s in ordered if any(r["scheme"] == s for r in rows)]
    header = [("published (per vacancy, secondary)" if s == "published" else s) for s in present]
    compact = ["| model | " + " | ".join(header) + " |", "|---|" + "---|" * len(present)]
    by = {(r["model"], r["scheme"]): r for r in rows}
    for model in dict.fromkeys(r["model"] for r in rows):
        cells = []
        for s in present:
            r = by.get((model, s))
            cells.append("–" if r is None else f"{_fmt(r['mae_mean'])} ± {_fmt(r['mae_std'])} ({_won(r)})")
        compact.append(f"| {model} | " + " | ".join(cells) + " |")
    text = ["# Evaluation", "", "MAE in eV: mean ± std over folds (folds won against the best baseline).", "",
            *compact, "", "## Per model and scheme", "", *lines, ""]
    if families:
        text += [f"Structure families: {families}.", ""]
    return "\n".join(text)


def plot_per_fold(path: Path, predictions, schemes: list[str], models: list[str] | None = None) -> None:
    """``per_fold_mae.png``: one panel per scheme, per fold each model's MAE (eV); a model
    keeps its colour in every panel (``models``: their order, default of appearance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_fold = fold_maes(predictions)
    present = [s for s in schemes if any(k[1] == s for k in per_fold)]
    n = max(len(present), 1)
    fig, axes = plt.subplots(n, 1, figsize=(10, 3.2 * n), squeeze=False)
    models = [m for m in dict.fromkeys([*(models or []), *predictions["model"]]) if m in set(predictions["model"])]
    for ax, scheme in zip(axes[:, 0], present):
        folds = list(dict.fromkeys(predictions.loc[predictions["scheme"] == scheme, "fold"]))
        x = {f: i for i, f in enumerate(folds)}
        for k, model in enumerate(models):
            maes = per_fold.get((model, scheme))
            if not maes:
                continue
            xs = [x[f] for f in maes]
            order = np.argsort(xs)
            ax.plot(np.array(xs)[order], np.array(list(maes.values()))[order], marker="o", ms=4, lw=1, color=f"C{k % 10}",
                    label=f"{model} ({np.mean(list(maes.values())):.3f})")
        ax.set_xticks(range(len(folds)), folds, rotation=60 if len(folds) > 12 else 30, fontsize=6 if len(folds) > 20 else 8)
        ax.set_ylabel("MAE (eV)")
        ax.set_title(f"{scheme}: MAE per fold (legend: mean over folds)", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(out_dir: Path, units: list[Unit], kinds: dict, baselines, spec: EvaluateSpec, folds: dict,
                  root: Path) -> tuple[list[dict], str]:
    """``table.csv`` / ``table.json`` / ``table.md``, ``families.csv`` and
    ``per_fold_mae.png`` of the finished units; returns the table rows and the line on
    the structure families (empty without the family scheme)."""
    from adex.studies.cv import write_table

    from adex.fileio import atomic_write_json, atomic_write_text

    predictions = collect_predictions(units)
    schemes = list(spec.schemes)
    rows = table_rows(predictions, kinds, baselines, schemes, [m.name for m in spec.models])
    families = ""
    if "family" in folds:
        write_table(out_dir / "families.csv", family_table(root, folds["family"]))
        families = family_summary(root, folds["family"])
    write_table(out_dir / "table.csv", [{c: ("" if r[c] is None else r[c]) for c in TABLE_COLUMNS} for r in rows])
    atomic_write_json(out_dir / "table.json", {"unit": "eV", "spec": spec.name, "schemes": schemes,
                                               "baselines": sorted(baselines), "families": families, "rows": rows})
    atomic_write_text(out_dir / "table.md", markdown_table(rows, schemes, families))
    if not predictions.empty:
        plot_per_fold(out_dir / "per_fold_mae.png", predictions, schemes, [m.name for m in spec.models])
    return rows, families
