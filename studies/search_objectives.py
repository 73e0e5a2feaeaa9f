"""Objectives of ``adex search``: what a trial's configuration scores (lower is better).

* :class:`CrossValidationObjective`: the mean test MAE (eV) over the space's folds, one
  ``train_expert`` run per fold, the running mean reported after each fold so a pruner
  (``MedianPruner`` by default) can stop bad trials early.
* :class:`SyntheticObjective`: a cheap stand-in for tests and storage benchmarks.

Any callable ``config -> float`` or ``(config, trial) -> float`` can replace them; the
trial it sees is a :class:`TrialHandle`. Importing this module does not import optuna.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

from adex.expert.train import ExpertConfig
from adex.studies.search_extras import require_optuna
from adex.studies.search_space import CategoricalParam, SearchSpace, get_dotted

if TYPE_CHECKING:
    import optuna


class TrialHandle:
    """What an objective sees of its Optuna trial: ``number``, ``dir`` (its run folder),
    ``report(step, value)`` (may raise ``optuna.TrialPruned``) and ``set_attr``."""

    def __init__(self, trial: optuna.Trial, directory: Path) -> None:
        self.trial = trial
        self.number = trial.number
        self.dir = directory

    def report(self, step: int, value: float, prune: bool = True) -> None:
        """Report the running objective after ``step`` (0-based fold); with ``prune``,
        stop the trial (``optuna.TrialPruned``) if the pruner says so."""
        self.trial.report(float(value), step)
        if prune and self.trial.should_prune():
            raise require_optuna().TrialPruned(f"pruned after step {step} (running value {value:.4g})")

    def set_attr(self, key: str, value: Any) -> None:
        self.trial.set_user_attr(key, value)


Objective = Callable[..., float]  # (config) -> float or (config, TrialHandle) -> float


class CrossValidationObjective:
    """Mean test MAE (eV) over ``folds``: for each published split, ``train_expert`` with
    that split (not registered), run folder ``<trial dir>/<fold>``. Each fold's MAE is a
    trial user attribute ``mae_<fold>``; the running mean is reported after each fold
    (pruning happens before the last one)."""

    def __init__(self, folds: Sequence[str], data: str | os.PathLike | None = None, registry=None) -> None:
        self.folds = list(folds)
        self.data = data
        self.registry = registry

    def __call__(self, config: ExpertConfig, trial: TrialHandle) -> float:
        from adex.expert.train import train_expert

        maes: list[float] = []
        for k, fold in enumerate(self.folds):
            run = train_expert(dataclasses.replace(config, split=fold), data=self.data, registry=self.registry,
                               register=False, out=trial.dir / fold)
            test = run.metrics.get("test") or {}
            mae = float(test.get("mae", float("nan")))
            maes.append(mae)
            trial.set_attr(f"mae_{fold}", mae)
            trial.report(k, float(np.mean(maes)), prune=k < len(self.folds) - 1)
        return float(np.mean(maes))


class SyntheticObjective:
    """A cheap stand-in for the CV MAE (tests, storage benchmarks): the squared distance
    of the config's point from a fixed optimum in the unit cube of the space (numeric
    parameters at 0.3 of their (log) range, categorical ones at their first choice,
    other choices cost 0.25 each). Reported per fold like the CV objective, the fold
    values spread around the value (their mean is exactly it); ``seconds``: sleep per
    fold, to mimic training time."""

    def __init__(self, space: SearchSpace, seconds: float = 0.0, target: float = 0.3) -> None:
        self.space = space
        self.seconds = seconds
        self.target = target

    def value(self, config: ExpertConfig) -> float:
        total = 0.0
        for name, p in self.space.parameters.items():
            v = get_dotted(config, name)
            if isinstance(p, CategoricalParam):
                total += 0.0 if v == p.choices[0] else 0.25
            else:
                total += (p.unit(v) - self.target) ** 2
        return total

    def __call__(self, config: ExpertConfig, trial: TrialHandle) -> float:
        f = self.value(config)
        folds = self.space.folds
        n = len(folds)
        running = []
        for k, fold in enumerate(folds):
            if self.seconds:
                time.sleep(self.seconds)
            fold_value = f * (1 + 0.1 * (k - (n - 1) / 2) / max(n - 1, 1))
            running.append(fold_value)
            trial.set_attr(f"mae_{fold}", fold_value)
            trial.report(k, float(np.mean(running)), prune=k < n - 1)
        return f


def takes_trial(objective: Objective) -> bool:
    """Whether ``objective`` takes ``(config, trial)`` rather than ``(config)``."""
    try:
        params = [p for p in inspect.signature(objective).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return True
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)

