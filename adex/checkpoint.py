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
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from adex.errors import RegistryError

WEIGHTS = "weights.safetensors"
ARCHITECTURE = "model.json"

#: ``model.json`` files written before ``@module``/``@class`` (the shipped models among
#: them) name their class by a short ``class`` key only: key -> (module, class name).
LEGACY_CLASS_NAMES: dict[str, tuple[str, str]] = {
    "advisor": ("adex.advisors.model", "Advisor"),
    "chgnet_advisor": ("adex.advisors.chgnet", "CHGNetAdvisor"),
    "descriptor_advisor": ("adex.advisors.descriptors", "DescriptorAdvisor"),
    "expert": ("adex.expert.model", "Expert"),
    "expert_ensemble": ("adex.expert.ensemble", "ExpertEnsemble"),
}
#: The model classes a stored ``model.json`` may name, as matgl's ``@module``/``@class``
#: (module -> class names): the classes above. Loading imports nothing else, so a crafted
#: ``model.json`` cannot make adex import arbitrary code. The core names no model class
#: itself: these are strings, resolved only when a stored model asks for one.
ALLOWED_MODEL_CLASSES: dict[str, set[str]] = {}
for _module, _name in LEGACY_CLASS_NAMES.values():
    ALLOWED_MODEL_CLASSES.setdefault(_module, set()).add(_name)


def stored_class_path(arch: dict) -> tuple[str, str]:
    """``(module, class name)`` named by an architecture dict, checked against the allow-list.

    Raises:
        RegistryError: the class is not one this adex version may load.
    """
    module, name = arch.get("@module"), arch.get("@class")
    if module is None and name is None:
        legacy = arch.get("class", "")
        if legacy not in LEGACY_CLASS_NAMES:
            raise RegistryError(f"stored model class {legacy!r} is unknown to this adex version")
        module, name = LEGACY_CLASS_NAMES[legacy]
    if not isinstance(module, str) or not isinstance(name, str) or name not in ALLOWED_MODEL_CLASSES.get(module, ()):
        raise RegistryError(f"stored model class {module}.{name} is not one adex may load (allow-list: "
                            f"adex.checkpoint.ALLOWED_MODEL_CLASSES)")
    return module, name


def stored_class(arch: dict) -> type:
    """The class an architecture dict names (allow-listed; its module is imported now)."""
    import importlib

    module, name = stored_class_path(arch)
    return getattr(importlib.import_module(module), name)


def model_files(model: nn.Module) -> dict[str, bytes]:
    """The two files that describe ``model`` (architecture JSON + safetensors weights)."""
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    arch = dict(model.architecture())
    arch["@module"], arch["@class"] = type(model).__module__, type(model).__name__
    stored_class_path(arch)  # refuse to store what could not be loaded
    return {
        ARCHITECTURE: json.dumps(arch, indent=2, sort_keys=True).encode(),
        WEIGHTS: save_safetensors(state),
    }


def load_model(entry) -> nn.Module:
    """Rebuild the model stored in registry ``entry`` (hash-verified), in eval mode."""
    arch = json.loads(entry.read_file(ARCHITECTURE))
    model = stored_class(arch).from_architecture(arch)
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
    arch = json.loads(entry.read_file(ARCHITECTURE))
    model_class = stored_class(arch)  # RegistryError for a class this adex version may not load
    check = getattr(model_class, "check_requirements", None)
    if check is not None:
        check()  # e.g. MissingExtraError when the chgnet package is absent
    return LazyModel(entry, model_class)


class LazyModel:
    """A stored model that is loaded (:func:`load_model`) only when something uses it,
    e.g. an advisor whose embeddings all come from the prediction cache: a warm
    ``adex predict --cache`` then never imports CHGNet. Attribute access is forwarded to
    the loaded module; :meth:`get` returns it."""

    def __init__(self, entry, model_class: type | None = None) -> None:
        self.entry = entry
        self._model_class = model_class
        self._model: nn.Module | None = None

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def model_class(self) -> type | None:
        """The class the stored model is built as (known without building it)."""
        if self._model_class is None:
            self._model_class = stored_class(json.loads(self.entry.read_file(ARCHITECTURE)))
        return self._model_class

    def get(self) -> nn.Module:
        if self._model is None:
            self._model = load_model(self.entry)
            for parameter in self._model.parameters():
                parameter.requires_grad_(False)
        return self._model

    def __getattr__(self, name: str):
        if name.startswith("_") or name == "entry":
            raise AttributeError(name)
        return getattr(self.get(), name)
