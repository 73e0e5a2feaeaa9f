"""Typed, validated configuration.

Configs are dataclasses filled from YAML files in ``configs/`` (shipped as
``adex.configs``) and from command-line overrides ``--set section.key=value``.
An unknown key or a value of the wrong type is a :class:`ConfigError` that names it.
Every run writes its resolved config (``to_dict``) beside its results.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import yaml

from adex.errors import ConfigError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{where}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: expected one of {list(get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item_type, *_) = get_args(tp) or (Any,)
        items = [_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected bool, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected str, got {value!r}")
    return value


def build_dataclass(cls: type[T], data: dict, where: str = "config") -> T:
    """Instantiate dataclass ``cls`` from a mapping, checking keys and types.

    Raises:
        ConfigError: naming the unknown key or the field with a wrong type.
    """
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid keys: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(config: Any) -> dict:
    """Plain-data (YAML/JSON-safe) form of a config dataclass."""
    return dataclasses.asdict(config)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"training.lr=0.001"`` -> (["training", "lr"], 0.001); the value is YAML-parsed."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. training.lr=0.001")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r}: empty key")
    try:
        return path, yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: invalid YAML value ({exc})".replace("\n", " ")) from None


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Return a copy of ``data`` with ``--set`` overrides applied (validated later)."""
    import copy

    result = copy.deepcopy(data)
    for text in overrides or []:
        path, value = parse_override(text)
        set_nested(result, path, value)
    return result


def set_nested(data: dict, path, value) -> None:
    """``data[path[0]][path[1]]... = value``, creating (or replacing non-dict) levels."""
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file; ConfigError (one line) for a missing, unreadable,
    binary or non-mapping file."""
    if Path(path).is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (UTF-8) file; a config is YAML text") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (NUL bytes); a config is YAML text")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML (nested too deeply)") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def builtin_config(kind: str, name: str) -> dict:
    """Shipped config ``configs/<kind>/<name>.yaml`` as a mapping."""
    import re

    valid = re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", name or "") is not None
    resource = resources.files("adex.configs").joinpath(kind, f"{name}.yaml") if valid else None
    if resource is None or not resource.is_file():
        available = sorted(
            p.name[:-5] for p in resources.files("adex.configs").joinpath(kind).iterdir() if p.name.endswith(".yaml")
        )
        raise ConfigError(f"no shipped {kind} config {name!r} (available: {', '.join(available)})")
    data = yaml.safe_load(resource.read_text())
    return data or {}


def load_config(cls: type[T], kind: str, name_or_path: str, overrides: list[str] | None = None) -> T:
    """Load a config by shipped name (``eform``) or file path, apply overrides, validate."""
    if name_or_path.endswith((".yaml", ".yml")) or Path(name_or_path).exists():
        data = read_yaml(name_or_path)
        where = str(name_or_path)
    else:
        data = builtin_config(kind, name_or_path)
        where = f"configs/{kind}/{name_or_path}.yaml"
    data = apply_overrides(data, overrides)
    return build_dataclass(cls, data, where)


def dump_yaml(config: Any) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)
