"""Hyperparameter search for the expert with Optuna (``adex search``): the run.

:func:`run_search` runs (or resumes) a study; each job it combines lives in its own
module:

* :mod:`adex.studies.search_space`: the search space (``configs/search/<name>.yaml``),
  its parameters and sampler settings, parsed and validated (no optuna needed);
* :mod:`adex.studies.search_samplers`: the ``random``, ``ga`` (NSGA-II) and ``annealing``
  (:class:`AnnealingSampler`) samplers and the pruner;
* :mod:`adex.studies.search_objectives`: the cross-validation objective (mean test MAE
  over the folds, reported per fold for pruning) and a cheap synthetic one;
* :mod:`adex.studies.search_storage`: the Optuna RDB storage (SQLite by default, a shared
  PostgreSQL database for several workers);
* :mod:`adex.studies.search_report`: ``best.yaml``, ``trials.csv`` and ``search.png``;
* :mod:`adex.studies.search_extras`: optuna and psycopg2 are optional extras
  (``adex[search]``, ``adex[postgres]``); a missing one is a MissingExtraError.

The names of those modules are also importable from here (``__all__``). Importing this
module imports optuna.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from adex.errors import AdexError, ConfigError
from adex.paths import search_dir
from adex.studies.search_extras import require_optuna
from adex.studies.search_objectives import (
    CrossValidationObjective,
    Objective,
    SyntheticObjective,
    TrialHandle,
    takes_trial,
)
from adex.studies.search_report import (
    CV_LABEL,
    SearchOutputs,
    best_complete,
    plot_search,
    trial_seconds,
    trials_csv,
    write_outputs,
)
from adex.studies.search_samplers import (
    FINISHED,
    SAMPLERS,
    AnnealingSampler,
    acceptance_probability,
    make_pruner,
    make_sampler,
    neighbour,
    temperature_at,
)
from adex.studies.search_space import (
    AnnealingSettings,
    CategoricalParam,
    FloatParam,
    GASettings,
    IntParam,
    Param,
    PrunerSettings,
    SearchSpace,
    field_type,
    load_space,
    parse_param,
    parse_space,
)
from adex.studies.search_storage import default_storage, driver_url, open_storage, safe_url

require_optuna()  # MissingExtraError naming adex[search] when optuna is not installed
import optuna  # noqa: E402
from optuna.trial import FrozenTrial  # noqa: E402

__all__ = [
    # the run
    "SearchResult", "run_search",
    # search_space
    "AnnealingSettings", "CategoricalParam", "FloatParam", "GASettings", "IntParam", "Param", "PrunerSettings",
    "SearchSpace", "field_type", "load_space", "parse_param", "parse_space",
    # search_samplers
    "FINISHED", "SAMPLERS", "AnnealingSampler", "acceptance_probability", "make_pruner", "make_sampler",
    "neighbour", "temperature_at",
    # search_objectives
    "CrossValidationObjective", "Objective", "SyntheticObjective", "TrialHandle",
    # search_storage
    "default_storage", "driver_url", "open_storage", "safe_url",
    # search_report
    "CV_LABEL", "SearchOutputs", "best_complete", "plot_search", "trial_seconds", "trials_csv", "write_outputs",
]


@dataclass
class SearchResult:
    """What :func:`run_search` did: ``n_before`` finished trials were in the storage,
    ``n_run`` trials ran in this call; ``best`` is over the whole study."""

    study_name: str
    storage: str  # password masked
    out: Path
    n_before: int
    n_run: int
    n_finished: int
    best: FrozenTrial | None
    outputs: SearchOutputs | None


def run_search(
    space: SearchSpace,
    *,
    sampler: str = "random",
    study_name: str | None = None,
    storage: str | None = None,
    seed: int | None = None,
    n_trials: int | None = None,
    timeout_minutes: float | None = None,
    objective: Objective | None = None,
    data: str | os.PathLike | None = None,
    registry=None,
    out: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
    label: str = CV_LABEL,
) -> SearchResult:
    """Run (or resume) a study: ``n_trials`` new trials and/or until ``timeout_minutes``
    (checked between trials), then write :func:`write_outputs` into ``out`` (default
    ``$ADEX_HOME/search/<study>``), also when interrupted (the interrupt is re-raised).

    Args:
        space: the search space; ``overrides``: extra ``KEY=VALUE`` applied to its base.
        sampler: ``random``, ``ga`` or ``annealing``; ``seed`` seeds it (give each worker
            its own seed).
        storage: Optuna storage URL (default: SQLite under ``$ADEX_HOME/search``); a
            shared PostgreSQL URL lets several workers run one study.
        objective: ``config -> float`` or ``(config, TrialHandle) -> float`` (lower is
            better); default :class:`CrossValidationObjective` over ``space.folds``.
        log: called with one line per event (study opened, each finished trial).
        label: name of the objective in the plot and in best.yaml.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own lines report every trial
    study_name = study_name or space.name
    url = storage or default_storage(study_name)
    out_dir = Path(out) if out else search_dir() / study_name
    base_data = space.base_data(overrides)
    space.check_fits(base_data)
    if objective is None:
        from adex.registry import Registry

        objective = CrossValidationObjective(space.folds, data, registry or Registry())
    with_trial = takes_trial(objective)
    say = log or (lambda line: None)
    study = optuna.create_study(study_name=study_name, storage=open_storage(url), sampler=make_sampler(sampler, space, seed),
                                pruner=make_pruner(space.pruner), direction="minimize", load_if_exists=True)
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise ConfigError(f"study {study_name!r} in {safe_url(url)} maximizes; adex search minimizes the CV MAE")
    stored_space = study.user_attrs.get("space")
    if stored_space is None:
        study.set_user_attr("space", space.raw)
        study.set_user_attr("overrides", list(overrides))
    elif stored_space != space.raw:
        say(f"warning: study {study_name!r} was started with another search space; its trials are kept")
    before = study.get_trials(deepcopy=False, states=FINISHED)
    n_before = len(before)
    best0 = best_complete(before)
    say(f"study {study_name!r} ({safe_url(url)}): "
        + (f"resuming, {n_before} finished trials" + (f", best {best0.value:.4f} (trial {best0.number})" if best0 else "")
           if n_before else "new study")
        + f"; sampler {sampler}; folds {', '.join(space.folds)}")
    worker = f"{socket.gethostname()}:{os.getpid()}"
    counter = {"run": 0}

    def optuna_objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        params = space.suggest(trial)
        config = space.config(params, base_data)
        handle = TrialHandle(trial, out_dir / f"trial_{trial.number}")
        value = objective(config, handle) if with_trial else objective(config)
        return float(value)

    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        counter["run"] += 1
        finished = study.get_trials(deepcopy=False, states=FINISHED)
        best = best_complete(finished)
        value = f"{trial.value:.4f}" if trial.value is not None else (
            f"running {trial.intermediate_values[max(trial.intermediate_values)]:.4f}" if trial.intermediate_values else "-")
        seconds = trial_seconds(trial)
        say(f"trial {trial.number} {trial.state.name.lower()}: {value}"
            + (f" ({seconds:.1f} s)" if seconds is not None else "")
            + (f" | best {best.value:.4f} (trial {best.number})" if best else "")
            + f" | {counter['run']}" + (f"/{n_trials}" if n_trials is not None else "")
            + f" this run, {len(finished)} finished in the study")

    outputs = None
    try:
        study.optimize(optuna_objective, n_trials=n_trials, timeout=None if timeout_minutes is None else timeout_minutes * 60,
                       callbacks=[callback], catch=(), gc_after_trial=False)
    except KeyboardInterrupt:
        say(f"stopped: {counter['run']} trials finished in this run (the interrupted one is marked failed); "
            f"run the same command to resume; outputs in {out_dir}")
        raise
    finally:
        try:
            outputs = write_outputs(study, space, base_data, out_dir, label)
        except AdexError:
            raise
        except Exception as exc:  # noqa: BLE001 - do not hide the original error (e.g. Ctrl-C)
            say(f"warning: could not write the search outputs: {exc}")
    finished = study.get_trials(deepcopy=False, states=FINISHED)
    return SearchResult(study_name, safe_url(url), out_dir, n_before, counter["run"], len(finished),
                        best_complete(finished), outputs)

