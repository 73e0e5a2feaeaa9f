"""Model registry: immutable, hash-verified versions of model files plus a JSON card.

References read ``[store::][kind/]name[:version | @alias]`` (see :mod:`adex.registry.refs`);
storage and lookup live in :mod:`adex.registry.store`. Importing does no work.
"""
from __future__ import annotations

from .refs import Ref, parse_ref
from .store import Entry, Registry, ShadowWarning, default_builtin_root, open_registry

__all__ = ["Entry", "Ref", "Registry", "ShadowWarning", "default_builtin_root", "open_registry", "parse_ref"]
