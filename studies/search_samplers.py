"""Samplers and pruner of ``adex search``: ``random``, ``ga`` and simulated ``annealing``.

:func:`make_sampler` gives ``random`` (``optuna.samplers.RandomSampler``), ``ga``
(``optuna.samplers.NSGAIISampler`` on one objective: a random initial population,
children by uniform crossover of elite parents, then each parameter mutated, i.e.
redrawn uniformly, with probability ``mutation_prob`` = 0.5 by default, so about half of
them; the elite population is the best trials so far) or ``annealing``
(:class:`AnnealingSampler`, simulated annealing written as an Optuna sampler, with its
Metropolis rule :func:`acceptance_probability`, cooling :func:`temperature_at` and moves
:func:`neighbour`). :func:`make_pruner` gives the early stopping of trials.

Importing this module imports optuna (:func:`~adex.studies.search_extras.require_optuna`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from adex.errors import ConfigError
from adex.studies.search_extras import require_optuna
from adex.studies.search_space import AnnealingSettings, PrunerSettings, SearchSpace

require_optuna()  # MissingExtraError naming adex[search] when optuna is not installed
import optuna  # noqa: E402
from optuna.distributions import BaseDistribution, CategoricalDistribution, IntDistribution  # noqa: E402
from optuna.samplers import BaseSampler  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

SAMPLERS: tuple[str, ...] = ("random", "ga", "annealing")
FINISHED: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def acceptance_probability(delta: float, temperature: float) -> float:
    """Metropolis rule for minimisation: ``1`` if ``delta = f_new - f_cur <= 0``, else
    ``exp(-delta / T)`` (0 at ``T = 0``)."""
    if delta <= 0:
        return 1.0
    if temperature <= 0:
        return 0.0
    return math.exp(-delta / temperature)


def temperature_at(k: int, settings: AnnealingSettings) -> float:
    """Geometric cooling: ``T_k = T0 * cooling**k`` (objective units) after ``k`` finished trials."""
    return settings.initial_temperature * settings.cooling ** k


def _reflect(x: float, low: float, high: float) -> float:
    """``x`` folded back into ``[low, high]`` (mirror at the bounds)."""
    width = high - low
    if width <= 0:
        return low
    y = (x - low) % (2 * width)
    return low + (2 * width - y if y > width else y)


def neighbour(distribution: BaseDistribution, value: Any, rng: np.random.RandomState, step: float,
              categorical_prob: float) -> Any:
    """A random point near ``value`` inside ``distribution``: numeric values move by a
    Gaussian of standard deviation ``step`` x range (in log space for log parameters),
    mirrored at the bounds and snapped to the grid of ``step`` parameters; a categorical
    value switches to another choice with probability ``categorical_prob``."""
    if isinstance(distribution, CategoricalDistribution):
        choices = list(distribution.choices)
        if len(choices) > 1 and rng.rand() < categorical_prob:
            others = [c for c in choices if c != value]
            return others[rng.randint(len(others))]
        return value
    low, high = float(distribution.low), float(distribution.high)
    log = distribution.log
    if log:
        low, high, x = math.log(low), math.log(high), math.log(value)
    else:
        x = float(value)
    x = _reflect(x + rng.normal(0.0, step * (high - low)), low, high)
    if log:
        x = min(max(math.exp(x), distribution.low), distribution.high)
    grid = distribution.step
    if isinstance(distribution, IntDistribution):
        k = round((x - distribution.low) / grid)
        return int(min(max(distribution.low + k * grid, distribution.low), distribution.high))
    if grid is not None:
        k = round((x - distribution.low) / grid)
        x = min(max(distribution.low + k * grid, distribution.low), distribution.high)
    return float(x)


_MISSING = object()


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether ``value`` (an external parameter value) lies in ``distribution``."""
    if value is _MISSING:
        return False
    try:
        return bool(distribution._contains(distribution.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


class AnnealingSampler(BaseSampler):
    """Simulated annealing as an Optuna sampler (minimisation).

    The chain's *current state* is the most recently completed trial that was accepted
    (system attribute ``annealing:accepted``; a study without one starts from its best
    trial, an empty study with a random point). Each new trial is a neighbour of it
    (:func:`neighbour`, every parameter sampled independently). When the trial finishes
    with value ``f_new``, it becomes the current state with the Metropolis probability
    ``min(1, exp(-(f_new - f_cur) / T))``; pruned or failed trials are rejected.

    Temperature schedule (geometric cooling): ``T_k = T0 * cooling**k`` where ``k`` is
    the number of other trials of the study that had finished (complete, pruned or
    failed) when the trial finished; ``T0`` is in units of the objective (eV for the CV
    MAE). With the defaults (0.02 eV, 0.95) a trial 0.02 eV worse than the current state
    is accepted with probability 1/e = 0.37 at the start, 0.06 after 20 trials and
    0.0004 after 40.

    The state lives in the storage, so a resumed study continues its chain and several
    workers share one chain.
    """

    ACCEPTED = "annealing:accepted"
    TEMPERATURE = "annealing:temperature"

    def __init__(self, settings: AnnealingSettings | None = None, seed: int | None = None) -> None:
        self.settings = settings or AnnealingSettings()
        self._rng = np.random.RandomState(seed)
        self._random = optuna.samplers.RandomSampler(seed=seed)
        self._current: dict[int, FrozenTrial | None] = {}

    def reseed_rng(self) -> None:
        self._rng = np.random.RandomState()
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: optuna.Study, trial: FrozenTrial,
                        search_space: dict[str, BaseDistribution]) -> dict[str, Any]:
        return {}

    @classmethod
    def current_state(cls, study: optuna.Study) -> FrozenTrial | None:
        """The chain's current state (see the class docstring), or None."""
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        accepted = [t for t in complete if t.system_attrs.get(cls.ACCEPTED)]
        if accepted:
            return max(accepted, key=lambda t: (t.datetime_complete, t.number))
        if complete:
            return min(complete, key=lambda t: (t.value, t.number))
        return None

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._current[trial.number] = self.current_state(study)

    def sample_independent(self, study: optuna.Study, trial: FrozenTrial, param_name: str,
                           param_distribution: BaseDistribution) -> Any:
        if trial.number not in self._current:
            self._current[trial.number] = self.current_state(study)
        current = self._current[trial.number]
        if current is None or not _contains(param_distribution, current.params.get(param_name, _MISSING)):
            return self._random.sample_independent(study, trial, param_name, param_distribution)
        return neighbour(param_distribution, current.params[param_name], self._rng, self.settings.step,
                         self.settings.categorical_prob)

    def accept(self, f_new: float, f_current: float, temperature: float) -> bool:
        """Metropolis decision: always for a better or equal value, else with probability
        :func:`acceptance_probability` (one uniform draw from the sampler's generator)."""
        p = acceptance_probability(f_new - f_current, temperature)
        return p >= 1.0 or bool(self._rng.rand() < p)

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState,
                    values: Sequence[float] | None) -> None:
        current = self._current.pop(trial.number, None)
        k = len(study.get_trials(deepcopy=False, states=FINISHED))
        temperature = temperature_at(k, self.settings)
        accepted = False
        if state == TrialState.COMPLETE and values:
            accepted = current is None or current.value is None or self.accept(values[0], current.value, temperature)
        study._storage.set_trial_system_attr(trial._trial_id, self.ACCEPTED, bool(accepted))
        study._storage.set_trial_system_attr(trial._trial_id, self.TEMPERATURE, float(temperature))


def make_sampler(name: str, space: SearchSpace, seed: int | None = None) -> BaseSampler:
    """``random``, ``ga`` or ``annealing`` sampler for ``space`` (settings from its YAML)."""
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "ga":
        g = space.ga
        return optuna.samplers.NSGAIISampler(population_size=g.population_size, mutation_prob=g.mutation_prob,
                                             crossover_prob=g.crossover_prob, seed=seed)
    if name == "annealing":
        return AnnealingSampler(space.annealing, seed=seed)
    raise ConfigError(f"unknown sampler {name!r} (choose from {', '.join(SAMPLERS)})")


def make_pruner(settings: PrunerSettings) -> optuna.pruners.BasePruner:
    """``median`` (Optuna's ``MedianPruner`` with the space's settings) or ``none``."""
    if settings.type == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=settings.n_startup_trials, n_warmup_steps=settings.n_warmup_steps)

