"""Saving models to, and loading them from, the registry without pickle.

A stored model is two files, as in matgl's ``model.json`` + state:

* ``model.json``: the architecture (class, featurizer settings, hyperparameters,
  target and unit) needed to rebuild the module;
* ``weights.safetensors``: every parameter and buffer (element table, normaliser mean
  and std included). safetensors holds raw tensors only, so loading never runs code.

Loading verifies the sha256 of both files (the registry does), rebuilds the module,
loads the tensors strictly and checks that the element table stored in the weights is
the one this installation would use for the same featurizer settings.
"""
from __future__ import annotations

import json
from typing import Callable

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from adex.errors import RegistryError

WEIGHTS = "weights.safetensors"
ARCHITECTURE = "model.json"

_BUILDERS: dict[str, Callable[[dict], nn.Module]] = {}
#: Per stored class, a check that its optional packages are installed, cheap enough to
#: run before building the model (raises MissingExtraError).
_REQUIREMENTS: dict[str, Callable[[], None]] = {}


def register_builder(name: str, builder: Callable[[dict], nn.Module], requires: Callable[[], None] | None = None) -> None:
    _BUILDERS[name] = builder
    if requires is not None:
        _REQUIREMENTS[name] = requires


def _builder(name: str) -> Callable[[dict], nn.Module]:
    if not _BUILDERS:
        from adex.advisors.model import Advisor

        register_builder("advisor", Advisor.from_architecture)
        from adex.advisors.chgnet import CHGNetAdvisor, require_chgnet  # chgnet itself only when a model is built

        register_builder("chgnet_advisor", CHGNetAdvisor.from_architecture, requires=require_chgnet)
        from adex.advisors.descriptors import DescriptorAdvisor

        register_builder("descriptor_advisor", DescriptorAdvisor.from_architecture)
        try:
            from adex.expert.model import Expert

            from adex.expert.ensemble import ExpertEnsemble

            register_builder("expert", Expert.from_architecture)
            register_builder("expert_ensemble", ExpertEnsemble.from_architecture)
        except ImportError:  # pragma: no cover - expert module optional during bootstrap
            pass
    if name not in _BUILDERS:
        raise RegistryError(f"stored model class {name!r} is unknown to this adex version")
    return _BUILDERS[name]


def model_files(model: nn.Module) -> dict[str, bytes]:
    """The two files that describe ``model`` (architecture JSON + safetensors weights)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return {
        ARCHITECTURE: json.dumps(model.architecture(), indent=2, sort_keys=True).encode(),
        WEIGHTS: save_safetensors(state),
    }


def load_model(entry) -> nn.Module:
    """Rebuild the model stored in registry ``entry`` (hash-verified), in eval mode."""
    arch = json.loads(entry.read_file(ARCHITECTURE))
    model = _builder(arch.get("class", ""))(arch)
    raw = entry.read_file(WEIGHTS)  # IntegrityError (tampered / truncated) propagates as is
    try:
        state = load_safetensors(raw)
    except Exception as exc:  # malformed header etc. (hash already checked)
        raise RegistryError(f"{entry.ref}: unreadable weights ({exc})") from None
    expected = model.state_dict()
    for key, tensor in state.items():
        if key.endswith("embedding.table") and key in expected and not torch.equal(expected[key], tensor):
            raise RegistryError(
                f"{entry.ref}: its element table differs from this installation's "
                f"{arch['featurizer']['element_embedding']!r} table; the checkpoint would be misread"
            )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RegistryError(f"{entry.ref}: weights do not match model.json ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model


def lazy_model(entry) -> "LazyModel":
    """The model of registry ``entry``, built on first use (:class:`LazyModel`).

    What can be checked without building it is checked now: the architecture file's
    hash and class, and that an optional package the class needs is installed
    (``MissingExtraError`` now, not in the middle of a run).
    """
    name = json.loads(entry.read_file(ARCHITECTURE)).get("class", "")
    _builder(name)  # RegistryError for a class unknown to this adex version
    if name in _REQUIREMENTS:
        _REQUIREMENTS[name]()
    return LazyModel(entry, name)


class LazyModel:
    """A stored model that is loaded (:func:`load_model`) only when something uses it,
    e.g. an advisor whose embeddings all come from the prediction cache: a warm
    ``adex predict --cache`` then never imports CHGNet. Attribute access is forwarded to
    the loaded module; :meth:`get` returns it."""

    def __init__(self, entry, class_name: str = "") -> None:
        self.entry = entry
        self.class_name = class_name  # the stored architecture's "class"
        self._model: nn.Module | None = None

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def model_class(self) -> type | None:
        """The class the stored model is built as (known without building it), or None."""
        return getattr(_builder(self.class_name), "__self__", None)

    def get(self) -> nn.Module:
        if self._model is None:
            self._model = load_model(self.entry)
            for parameter in self._model.parameters():
                parameter.requires_grad_(False)
        return self._model

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("entry", "class_name"):
            raise AttributeError(name)
        return getattr(self.get(), name)
