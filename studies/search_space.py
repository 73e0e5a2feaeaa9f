"""The search space of ``adex search``: parameters, sampler settings, YAML parsing and validation.

A space (``configs/search/<name>.yaml``) names a ``base`` expert config, the published
``folds`` of the cross-validation objective, fixed ``overrides`` (dotted ExpertConfig
keys) and ``parameters`` mapping dotted ExpertConfig keys to
``{type: float, low, high, log, step}``, ``{type: int, low, high, step, log}`` or
``{type: categorical, choices: [...]}``. Optional sections tune the samplers (``ga``,
``annealing``) and the pruner (``pruner``). Everything is validated on load: an unknown
key, a parameter that is not an ExpertConfig field or a value that does not fit its
field is a :class:`~adex.errors.ConfigError` naming it.

Reading and validating a space needs no optuna; only :meth:`FloatParam.distribution`
and the ``suggest`` methods (called while a search runs) import it.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

from adex.config import apply_overrides, build_dataclass, builtin_config, read_yaml
from adex.errors import ConfigError
from adex.expert.train import ExpertConfig
from adex.studies.search_extras import require_optuna

if TYPE_CHECKING:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

_TOP_KEYS = ("base", "folds", "overrides", "parameters", "ga", "annealing", "pruner")
_SPEC_KEYS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}


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
        return require_optuna().distributions.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

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
        return require_optuna().distributions.IntDistribution(self.low, self.high, log=self.log, step=self.step)

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
        return require_optuna().distributions.CategoricalDistribution(list(self.choices))

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


def get_dotted(obj: Any, key: str) -> Any:
    """The value at dotted ``key`` of a config object (e.g. ``training.lr``)."""
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

