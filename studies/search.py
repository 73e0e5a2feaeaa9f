"""Hyperparameter search for the expert with Optuna (``adex search``).

* **Search space** (:class:`SearchSpace`, ``configs/search/<name>.yaml``): a ``base``
  expert config, the published ``folds`` of the cross-validation objective, fixed
  ``overrides`` (dotted ExpertConfig keys) and ``parameters`` mapping dotted ExpertConfig
  keys to ``{type: float, low, high, log, step}``, ``{type: int, low, high, step, log}``
  or ``{type: categorical, choices: [...]}``. Optional sections tune the samplers
  (``ga``, ``annealing``) and the pruner (``pruner``). Everything is validated on load:
  an unknown key, a parameter that is not an ExpertConfig field or a value that does not
  fit its field is a :class:`~adex.errors.ConfigError` naming it.
* **Samplers** (:func:`make_sampler`): ``random`` (``optuna.samplers.RandomSampler``),
  ``ga`` (``optuna.samplers.NSGAIISampler`` on one objective: a random initial population,
  children by uniform crossover of elite parents, then each parameter mutated, i.e.
  redrawn uniformly, with probability ``mutation_prob`` = 0.5 by default, so about half
  of them; the elite population is the best trials so far) and ``annealing``
  (:class:`AnnealingSampler`, simulated annealing written as an Optuna sampler).
* **Objective** (:class:`CrossValidationObjective`): the mean test MAE (eV) over the
  folds, one ``train_expert`` run per fold, the running mean reported after each fold
  so a pruner (``MedianPruner`` by default) can stop bad trials early. Any callable
  ``config -> float`` or ``(config, trial) -> float`` can replace it
  (:class:`SyntheticObjective` is a cheap one for tests and benchmarks).
* **Storage**: an Optuna RDB storage, ``sqlite:///$ADEX_HOME/search/<study>.db`` by
  default; with a PostgreSQL URL several workers on several machines share one study.
  A study is resumed from its storage (finished trials are kept).
* **Outputs** (:func:`write_outputs`, at the end and on Ctrl-C): ``best.yaml`` (a full
  ExpertConfig: ``adex expert train --config best.yaml`` accepts it), ``trials.csv``
  and ``search.png`` (objective per trial with the best-so-far line).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import inspect
import io
import math
import os
import socket
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from adex.config import apply_overrides, build_dataclass, builtin_config, dump_yaml, read_yaml
from adex.errors import AdexError, ConfigError
from adex.expert.train import ExpertConfig
from adex.fileio import atomic_write_bytes, atomic_write_text
from adex.paths import search_dir

SAMPLERS: tuple[str, ...] = ("random", "ga", "annealing")
FINISHED: tuple[TrialState, ...] = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
_TOP_KEYS = ("base", "folds", "overrides", "parameters", "ga", "annealing", "pruner")
_SPEC_KEYS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}


# --------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class FloatParam:
    """A real parameter in ``[low, high]``; ``log``: sampled uniformly in log space
    (``low`` > 0); ``step``: restricted to ``low + k * step`` (not with ``log``)."""

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None

    def distribution(self) -> FloatDistribution:
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> float:
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def unit(self, value: float) -> float:
        """``value`` mapped to [0, 1] (log-scaled for ``log``)."""
        return _unit(value, self.low, self.high, self.log)

    def candidates(self) -> list:
        return [self.low, self.high]


@dataclass(frozen=True)
class IntParam:
    """An integer parameter in ``low, low + step, ..., high``; ``log`` (``step`` 1 only):
    sampled uniformly in log space."""

    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False

    def distribution(self) -> IntDistribution:
        return IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.Trial) -> int:
        return trial.suggest_int(self.name, self.low, self.high, step=self.step, log=self.log)

    def unit(self, value: float) -> float:
        return _unit(value, self.low, self.high, self.log)

    def candidates(self) -> list:
        return [self.low, self.high]


@dataclass(frozen=True)
class CategoricalParam:
    """One of ``choices`` (str, int, float, bool or null)."""

    name: str
    choices: tuple

    def distribution(self) -> CategoricalDistribution:
        return CategoricalDistribution(list(self.choices))

    def suggest(self, trial: optuna.Trial) -> Any:
        return trial.suggest_categorical(self.name, list(self.choices))

    def unit(self, value: Any) -> float:
        return self.choices.index(value) / max(len(self.choices) - 1, 1)

    def candidates(self) -> list:
        return list(self.choices)


Param = FloatParam | IntParam | CategoricalParam


def _unit(value: float, low: float, high: float, log: bool) -> float:
    if high == low:
        return 0.0
    if log:
        return (math.log(value) - math.log(low)) / (math.log(high) - math.log(low))
    return (value - low) / (high - low)


@dataclass
class GASettings:
    """Genetic algorithm (``--sampler ga``, Optuna's NSGA-II on one objective).

    Attributes:
        population_size: trials per generation; the first generation is random.
        mutation_prob: probability that a child's parameter is redrawn uniformly
            (0.5: about half of them).
        crossover_prob: probability that a child is a uniform crossover of two elite
            parents (else a copy of one parent, then mutated).
    """

    population_size: int = 10
    mutation_prob: float = 0.5
    crossover_prob: float = 0.9

    def __post_init__(self) -> None:
        if self.population_size < 2:
            raise ConfigError("ga.population_size must be >= 2")
        if not (0 <= self.mutation_prob <= 1 and 0 <= self.crossover_prob <= 1):
            raise ConfigError("ga.mutation_prob and ga.crossover_prob must be in [0, 1]")


@dataclass
class AnnealingSettings:
    """Simulated annealing (``--sampler annealing``, :class:`AnnealingSampler`).

    Attributes:
        initial_temperature: T0, in units of the objective (eV for the CV MAE): a trial
            worse by ``T`` than the current state is accepted with probability 1/e.
        cooling: geometric factor: ``T_k = T0 * cooling**k`` after ``k`` finished trials.
        step: standard deviation of a move of a numeric parameter, as a fraction of its
            range (of its log range for ``log`` parameters).
        categorical_prob: probability that a move switches a categorical parameter to
            another choice (drawn uniformly).
    """

    initial_temperature: float = 0.02
    cooling: float = 0.95
    step: float = 0.1
    categorical_prob: float = 0.2

    def __post_init__(self) -> None:
        if self.initial_temperature < 0 or not (0 < self.cooling <= 1) or self.step <= 0:
            raise ConfigError("annealing: initial_temperature must be >= 0, cooling in (0, 1], step > 0")
        if not 0 <= self.categorical_prob <= 1:
            raise ConfigError("annealing.categorical_prob must be in [0, 1]")


@dataclass
class PrunerSettings:
    """Early stopping of trials after a fold (``median``: Optuna's ``MedianPruner``,
    which stops a trial whose running mean after fold ``k`` is worse than the median of
    earlier trials after fold ``k``, once ``n_startup_trials`` trials have finished)."""

    type: Literal["median", "none"] = "median"
    n_startup_trials: int = 5
    n_warmup_steps: int = 0


@dataclass
class SearchSpace:
    """A validated search space (see the module docstring for the YAML format).

    Attributes:
        name: file stem (the default study name).
        base: expert config the trials start from (shipped name or YAML path).
        folds: published split names; the objective is the mean test MAE over them.
        overrides: fixed dotted ExpertConfig keys -> values (e.g. ``training.epochs``).
        parameters: dotted ExpertConfig keys -> searched parameter.
        raw: the YAML mapping as read (stored with the study).
    """

    name: str
    base: str
    folds: list[str]
    overrides: dict[str, Any]
    parameters: dict[str, Param]
    ga: GASettings = field(default_factory=GASettings)
    annealing: AnnealingSettings = field(default_factory=AnnealingSettings)
    pruner: PrunerSettings = field(default_factory=PrunerSettings)
    raw: dict = field(default_factory=dict)
    base_dir: Path | None = None  # folder of the space file (a relative ``base`` path is resolved there)

    def base_data(self, extra_overrides: Sequence[str] = ()) -> dict:
        """The base config as a mapping, with the space's ``overrides`` and then the
        ``--set KEY=VALUE`` strings ``extra_overrides`` applied (validated)."""
        data = _read_base(self.base, self.base_dir)
        for key, value in self.overrides.items():
            _set_dotted(data, key, copy.deepcopy(value))
        for text in extra_overrides:
            key = text.split("=", 1)[0].strip()
            field_type(key, "--set")
        data = apply_overrides(data, list(extra_overrides))
        build_dataclass(ExpertConfig, data, f"{self.base} + overrides")
        return data

    def config(self, params: dict[str, Any], base_data: dict | None = None) -> ExpertConfig:
        """The ExpertConfig of one point of the space (``base_data`` from :meth:`base_data`)."""
        data = copy.deepcopy(base_data if base_data is not None else self.base_data())
        for key, value in params.items():
            _set_dotted(data, key, value)
        return build_dataclass(ExpertConfig, data, f"search point {params}")

    def suggest(self, trial: optuna.Trial) -> dict[str, Any]:
        """Ask the trial for a value of every parameter (in the file's order)."""
        return {name: p.suggest(trial) for name, p in self.parameters.items()}

    def check_fits(self, base_data: dict) -> None:
        """Every bound and choice of every parameter gives a valid ExpertConfig."""
        for name, p in self.parameters.items():
            for value in p.candidates():
                data = copy.deepcopy(base_data)
                _set_dotted(data, name, value)
                try:
                    build_dataclass(ExpertConfig, data, "config")
                except ConfigError as exc:
                    raise ConfigError(f"search space {self.name}: parameters.{name}: value {value!r} does not fit "
                                      f"the config ({exc})") from None


def _read_base(base: str, base_dir: Path | None) -> dict:
    candidate = Path(base)
    if base_dir is not None and not candidate.is_absolute() and (base_dir / candidate).is_file():
        candidate = base_dir / candidate
    if base.endswith((".yaml", ".yml")) or candidate.is_file():
        return read_yaml(candidate)
    return builtin_config("expert", base)


def _set_dotted(data: dict, key: str, value: Any) -> None:
    from adex.config import set_nested

    set_nested(data, key.split("."), value)


def _get_dotted(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def field_type(path: str, where: str = "search space") -> Any:
    """Type of the ExpertConfig field at dotted ``path`` (e.g. ``model.n_conv`` -> int).

    Raises:
        ConfigError: naming ``path`` when it is not a field (or is a whole section).
    """
    cls: Any = ExpertConfig
    parts = [p for p in str(path).split(".")]
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"{where}: {path!r} is not an ExpertConfig field ({prefix!r} has no sub-keys)")
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        if part not in names:
            section = f"section {prefix!r}" if prefix else "the top level"
            raise ConfigError(f"{where}: {path!r} is not an ExpertConfig field (no {part!r} in {section}; "
                              f"valid: {', '.join(names)})")
        cls = typing.get_type_hints(cls)[part]
    if dataclasses.is_dataclass(cls):
        raise ConfigError(f"{where}: {path!r} is a config section, not a field")
    return cls


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_param(name: str, spec: Any, where: str) -> Param:
    """One ``parameters:`` entry -> :class:`FloatParam` / :class:`IntParam` / :class:`CategoricalParam`."""
    at = f"{where}: parameters.{name}"
    field_type(name, where)
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}: expected a mapping like {{type: float, low: 0.0001, high: 0.01, log: true}}, got {spec!r}")
    kind = spec.get("type")
    if kind not in _SPEC_KEYS:
        raise ConfigError(f"{at}: type must be float, int or categorical, got {kind!r}")
    unknown = sorted(set(spec) - set(_SPEC_KEYS[kind]))
    if unknown:
        raise ConfigError(f"{at}: unknown key {unknown[0]!r} for type {kind} (valid keys: {', '.join(_SPEC_KEYS[kind])})")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise ConfigError(f"{at}: choices must be a non-empty list, got {choices!r}")
        for c in choices:
            if c is not None and not isinstance(c, (str, int, float, bool)):
                raise ConfigError(f"{at}: choice {c!r} is not a str, number, bool or null")
        if len(set(map(repr, choices))) != len(choices):
            raise ConfigError(f"{at}: duplicate choices in {choices!r}")
        return CategoricalParam(name, tuple(choices))
    for key in ("low", "high"):
        if key not in spec:
            raise ConfigError(f"{at}: missing {key!r}")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        raise ConfigError(f"{at}: log must be true or false, got {log!r}")
    if kind == "int":
        for key, value in (("low", low), ("high", high), ("step", 1 if step is None else step)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{at}: {key} must be an int, got {value!r}")
        step = 1 if step is None else step
        if step < 1:
            raise ConfigError(f"{at}: step must be >= 1, got {step}")
        if log and step != 1:
            raise ConfigError(f"{at}: log: true needs step 1")
        if (high - low) % step:
            raise ConfigError(f"{at}: high - low ({high - low}) is not a multiple of step {step}")
    else:
        for key, value in (("low", low), ("high", high)) + ((("step", step),) if step is not None else ()):
            if not _is_number(value):
                raise ConfigError(f"{at}: {key} must be a number, got {value!r}")
        low, high = float(low), float(high)
        if step is not None:
            step = float(step)
            if step <= 0:
                raise ConfigError(f"{at}: step must be > 0, got {step}")
            if log:
                raise ConfigError(f"{at}: log: true and step cannot be combined")
            n = (high - low) / step
            if abs(n - round(n)) > 1e-6:
                raise ConfigError(f"{at}: high - low ({high - low:g}) is not a multiple of step {step:g}")
    if low > high:
        raise ConfigError(f"{at}: low ({low}) > high ({high})")
    if log and low <= 0:
        raise ConfigError(f"{at}: log: true needs low > 0, got {low}")
    if kind == "int":
        return IntParam(name, low, high, step, log)
    return FloatParam(name, low, high, log, step)


def parse_space(data: dict, name: str, where: str, base_dir: Path | None = None, check: bool = True) -> SearchSpace:
    """Validate a search-space mapping (see the module docstring) into a :class:`SearchSpace`.

    Raises:
        ConfigError: naming the unknown key, the parameter that is not an ExpertConfig
            field or the value of the wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: top level must be a mapping")
    unknown = sorted(set(data) - set(_TOP_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(_TOP_KEYS)})")
    base = data.get("base", "default")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{where}: base must be an expert config name or path, got {base!r}")
    folds = data.get("folds")
    if not isinstance(folds, list) or not folds or not all(isinstance(f, str) and f for f in folds):
        raise ConfigError(f"{where}: folds must be a non-empty list of published split names (e.g. [1.00k0, 1.00k1]), "
                          f"got {folds!r}")
    if len(set(folds)) != len(folds):
        raise ConfigError(f"{where}: folds: duplicate split in {folds!r}")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: overrides must be a mapping of dotted keys to values, got {overrides!r}")
    for key in overrides:
        field_type(str(key), f"{where}: overrides")
    raw_params = data.get("parameters")
    if not isinstance(raw_params, dict) or not raw_params:
        raise ConfigError(f"{where}: parameters must be a non-empty mapping of dotted ExpertConfig keys to ranges")
    parameters = {str(k): parse_param(str(k), v, where) for k, v in raw_params.items()}
    clash = sorted(set(parameters) & set(map(str, overrides)))
    if clash:
        raise ConfigError(f"{where}: {clash[0]!r} is both searched and fixed in overrides")
    if "split" in parameters or "split" in overrides:
        raise ConfigError(f"{where}: 'split' is set per fold by the search (use folds:)")
    sections = {}
    for key, cls in (("ga", GASettings), ("annealing", AnnealingSettings), ("pruner", PrunerSettings)):
        sections[key] = build_dataclass(cls, data.get(key) or {}, f"{where}: {key}")
    space = SearchSpace(name, base, list(folds), {str(k): v for k, v in overrides.items()}, parameters,
                        raw=copy.deepcopy(data), base_dir=base_dir, **sections)
    if check:
        space.check_fits(space.base_data())
    return space


def load_space(name_or_path: str, check: bool = True) -> SearchSpace:
    """A shipped search space by name (``default`` = ``configs/search/default.yaml``) or
    a YAML file, validated (``check``: also against its base config)."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        return parse_space(read_yaml(path), path.stem, str(path), path.resolve().parent, check)
    try:
        data = builtin_config("search", name_or_path)
    except ConfigError as exc:
        raise ConfigError(f"--space {name_or_path}: not a file, and {exc}") from None
    return parse_space(data, name_or_path, f"configs/search/{name_or_path}.yaml", None, check)


# --------------------------------------------------------------------------- simulated annealing
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
    if settings.type == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=settings.n_startup_trials, n_warmup_steps=settings.n_warmup_steps)


# --------------------------------------------------------------------------- objectives
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
            raise optuna.TrialPruned(f"pruned after step {step} (running value {value:.4g})")

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
            v = _get_dotted(config, name)
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


def _takes_trial(objective: Objective) -> bool:
    try:
        params = [p for p in inspect.signature(objective).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)]
    except (TypeError, ValueError):
        return True
    return len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


# --------------------------------------------------------------------------- storage, outputs
def default_storage(study: str) -> str:
    """``sqlite:///$ADEX_HOME/search/<study>.db`` (the folder is created)."""
    path = search_dir() / f"{study}.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"


def safe_url(url: str) -> str:
    """The storage URL with any password masked."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - only for display
        return url.split("@")[-1] if "@" in url else url


def driver_url(url: str) -> str:
    """``postgresql://`` / ``postgres://`` -> ``postgresql+psycopg2://`` (adex's declared
    driver; SQLAlchemy >= 2.1 would otherwise look for psycopg 3). Other URLs unchanged."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix):]
    return url


def open_storage(url: str, attempts: int = 6) -> optuna.storages.RDBStorage:
    """An Optuna RDB storage (SQLite, PostgreSQL, MySQL URL) with heartbeats, so trials of
    a killed worker are marked failed by the next worker after 3 minutes. A bare
    ``postgresql://`` URL uses psycopg2 (:func:`driver_url`). Workers that start together
    on an empty database race to create Optuna's tables; the loser retries (up to
    ``attempts`` times, waiting 0.5, 1, 1.5 ... s)."""
    import warnings

    from sqlalchemy.exc import IntegrityError, ProgrammingError

    driver = driver_url(url)
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if driver.startswith("sqlite"):
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(1, attempts + 1):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(driver, engine_kwargs=engine_kwargs, heartbeat_interval=60,
                                                  grace_period=180)
        except Exception as exc:  # noqa: BLE001 - any driver/connection problem is the user's input
            if isinstance(exc, (IntegrityError, ProgrammingError)) and attempt < attempts:
                time.sleep(0.5 * attempt)  # another worker is creating the schema
                continue
            message = " ".join(str(exc).split())[:300]
            raise ConfigError(f"--storage {safe_url(url)}: cannot open ({type(exc).__name__}: {message})") from None
    raise AssertionError("unreachable")


def trial_seconds(trial: FrozenTrial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def best_complete(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return min(complete, key=lambda t: (t.value, t.number)) if complete else None


def trials_csv(trials: Sequence[FrozenTrial], space: SearchSpace) -> str:
    """One row per trial: number, state, value, one column per parameter, seconds, worker,
    the per-fold values (``mae_<fold>``)."""
    names = list(space.parameters)
    for t in trials:
        names += [n for n in t.params if n not in names]
    folds = [f"mae_{f}" for f in space.folds]
    for t in trials:
        folds += [k for k in t.user_attrs if k.startswith("mae_") and k not in folds]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", "value", *names, "seconds", "worker", *folds])
    for t in trials:
        seconds = trial_seconds(t)
        writer.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}",
                         *[t.params.get(n, "") for n in names], "" if seconds is None else f"{seconds:.2f}",
                         t.user_attrs.get("worker", ""),
                         *["" if t.user_attrs.get(k) is None else f"{t.user_attrs[k]:.6g}" for k in folds]])
    return out.getvalue()


def plot_search(path: Path, trials: Sequence[FrozenTrial], title: str, ylabel: str) -> None:
    """PNG: objective of each completed trial (dots), the last running value of pruned
    trials (crosses), and the best-so-far line (by trial number)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                   and math.isfinite(t.value)), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if done:
        x = [t.number for t in done]
        y = [t.value for t in done]
        ax.plot(x, y, "o", ms=4, color="tab:blue", label="trial")
        ax.step(x, np.minimum.accumulate(y), where="post", color="tab:red", label="best so far")
    if pruned:
        ax.plot([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                "x", ms=4, color="grey", label="pruned (running value)")
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if done or pruned:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class SearchOutputs:
    best_yaml: Path | None
    trials_csv: Path
    plot: Path
    best: FrozenTrial | None


CV_LABEL = "CV MAE (eV)"


def write_outputs(study: optuna.Study, space: SearchSpace, base_data: dict, out: Path,
                  label: str = CV_LABEL) -> SearchOutputs:
    """``best.yaml`` (the best completed trial's full ExpertConfig, checked by loading it
    back with ``adex.config.load_config``), ``trials.csv`` and ``search.png`` in ``out``;
    ``label`` names the objective."""
    from adex.config import load_config

    out.mkdir(parents=True, exist_ok=True)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    best = best_complete(trials)
    best_path = None
    if best is not None:
        config = space.config(best.params, base_data)
        folds = ", ".join(space.folds)
        header = (f"# adex search: best trial {best.number} of study {study.study_name!r}: "
                  f"{label} {best.value:.6g} (folds {folds}).\n"
                  f"# Train it: adex expert train --config best.yaml --split SPLIT\n")
        best_path = out / "best.yaml"
        atomic_write_text(best_path, header + dump_yaml(config))
        load_config(ExpertConfig, "expert", str(best_path))  # must load back
    csv_path = out / "trials.csv"
    atomic_write_text(csv_path, trials_csv(trials, space))
    plot_path = out / "search.png"
    plot_search(plot_path, trials, f"study {study.study_name}: {len(trials)} trials", label)
    return SearchOutputs(best_path, csv_path, plot_path, best)


# --------------------------------------------------------------------------- the search
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
    with_trial = _takes_trial(objective)
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
