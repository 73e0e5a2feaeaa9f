"""Typed configuration (adex.config): validation, --set overrides, shipped configs, round trip."""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import yaml

from adex.advisors.model import AdvisorConfig, AdvisorModelConfig
from adex.config import apply_overrides, build_dataclass, dump_yaml, load_config, parse_override, to_dict
from adex.datasets import DATASETS
from adex.errors import ConfigError
from adex.graphs import FeaturizerSettings
from adex.training import TrainingConfig

SHIPPED_ADVISORS = sorted(
    p.name[: -len(".yaml")] for p in resources.files("adex.configs").joinpath("advisors").iterdir() if p.name.endswith(".yaml")
)


def load(overrides: list[str] | None = None, name: str = "bandgap") -> AdvisorConfig:
    return load_config(AdvisorConfig, "advisors", name, overrides)


def test_shipped_advisor_configs_exist() -> None:
    assert {"bandgap", "eform"} <= set(SHIPPED_ADVISORS)


@pytest.mark.parametrize("name", SHIPPED_ADVISORS)
def test_shipped_configs_load(name: str) -> None:
    config = load(name=name)
    assert isinstance(config, AdvisorConfig)
    assert config.name == name
    assert config.dataset in DATASETS
    assert isinstance(config.featurizer, FeaturizerSettings)
    assert isinstance(config.model, AdvisorModelConfig)
    assert isinstance(config.training, TrainingConfig)
    assert isinstance(config.training.lr, float)


def test_shipped_values_are_read() -> None:
    raw = yaml.safe_load(resources.files("adex.configs").joinpath("advisors", "eform.yaml").read_text())
    config = load(name="eform")
    assert config.training.epochs == raw["training"]["epochs"]
    assert config.training.max_minutes == raw["training"]["max_minutes"]
    assert config.model.atom_fea_len == raw["model"]["atom_fea_len"]
    assert config.dataset == "mp_formation_energy"


@pytest.mark.parametrize(
    "override, key",
    [("bogus=1", "bogus"), ("training.bogus=1", "bogus"), ("featurizer.radius=5", "radius"), ("model.n_layers=2", "n_layers")],
)
def test_unknown_key_is_named(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key '{key}'"):
        load([override])


@pytest.mark.parametrize(
    "override, field",
    [
        ("training.epochs=ten", "training.epochs"),
        ("training.epochs=2.5", "training.epochs"),
        ("training.epochs=true", "training.epochs"),
        ("training.lr=fast", "training.lr"),
        ("training.loss=hinge", "training.loss"),
        ("training.limit=many", "training.limit"),
        ("featurizer.cutoff=[1, 2]", "featurizer.cutoff"),
        ("model=3", "model"),
    ],
)
def test_wrong_type_names_the_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        load([override])
    assert field in str(info.value)
    assert "\n" not in str(info.value)


def test_invalid_values_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="training"):
        load(["training.epochs=0"])
    with pytest.raises(ConfigError, match="element_embedding"):
        load(["featurizer.element_embedding=nope"])
    with pytest.raises(ConfigError, match="val_fraction"):
        load(["training.val_fraction=0.6", "training.test_fraction=0.6"])


def test_set_overrides_apply_nested() -> None:
    config = load(["model.n_conv=1", "training.lr=1", "featurizer.cutoff=6", "training.limit=20", "model.pooling=attention"])
    assert config.model.n_conv == 1
    assert config.training.lr == 1.0 and isinstance(config.training.lr, float)  # int accepted for float
    assert config.featurizer.cutoff == 6.0
    assert config.training.limit == 20
    assert config.model.pooling == "attention"
    default = load()
    assert default.model.n_conv != 1 and default.training.limit is None
    # untouched fields keep the file's values
    assert config.training.epochs == default.training.epochs
    # the last override wins; null clears an optional value
    assert load(["training.epochs=3", "training.epochs=5"]).training.epochs == 5
    assert load(["training.limit=5", "training.limit=null"]).training.limit is None


def test_apply_overrides_does_not_mutate_input() -> None:
    data = {"training": {"epochs": 3}}
    out = apply_overrides(data, ["training.epochs=4", "model.n_conv=2"])
    assert data == {"training": {"epochs": 3}}
    assert out == {"training": {"epochs": 4}, "model": {"n_conv": 2}}


def test_parse_override() -> None:
    assert parse_override("training.lr=0.001") == (["training", "lr"], 0.001)
    assert parse_override("name=a=b") == (["name"], "a=b")
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_override("training.lr")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("=3")


def test_dump_reload_roundtrip(tmp_path: Path) -> None:
    config = load(["model.n_conv=2", "training.limit=7", "featurizer.max_neighbors=9", "training.max_minutes=1.5"])
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_yaml(config))
    back = load_config(AdvisorConfig, "advisors", str(path))
    assert back == config
    assert to_dict(back) == to_dict(config)
    # and a file config takes overrides too
    assert load_config(AdvisorConfig, "advisors", str(path), ["model.n_conv=4"]).model.n_conv == 4


def test_build_dataclass_requires_mapping_and_required_fields() -> None:
    with pytest.raises(ConfigError, match="mapping"):
        build_dataclass(AdvisorConfig, ["not", "a", "dict"])
    with pytest.raises(ConfigError):  # name and dataset are required
        build_dataclass(AdvisorConfig, {"name": "x"})


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(AdvisorConfig, "advisors", str(tmp_path / "missing.yaml"))
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n  dataset: x\n")
    with pytest.raises(ConfigError, match="invalid YAML") as info:
        load_config(AdvisorConfig, "advisors", str(broken))
    assert "\n" not in str(info.value)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(AdvisorConfig, "advisors", str(scalar))
    with pytest.raises(ConfigError, match="available: .*bandgap"):
        load_config(AdvisorConfig, "advisors", "no_such_config")


@pytest.mark.parametrize("override, field", [("model.pooling=bogus", "model.pooling"), ("model.atom_fea_len=0", "model"),
                                             ("model.dropout=1.5", "model")])
def test_model_values_are_validated(override: str, field: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(field)):
        load([override])
