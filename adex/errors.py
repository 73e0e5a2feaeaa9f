"""Exception types with one-line, user-facing messages.

The CLI prints ``error: <message>`` for any :class:`AdexError` and exits with code 2;
anything else is a bug and shows a traceback.
"""
from __future__ import annotations


class AdexError(Exception):
    """Base class: a problem with the user's input, data or models (not a bug)."""


class StructureError(AdexError):
    """A structure file could not be read or is not usable (disorder, isolated atom...)."""


class UnknownElementError(AdexError):
    """An element has no entry in the element embedding a model was trained with."""


class ConfigError(AdexError):
    """A configuration file or override is invalid (unknown key, wrong type)."""


class DataError(AdexError):
    """A dataset is missing, incomplete or does not match its checksum."""


class RegistryError(AdexError):
    """A registry reference is unknown, or a stored model fails verification."""


class MissingExtraError(RegistryError):
    """A stored model needs an optional package that is not installed (e.g. CHGNet)."""


class IntegrityError(RegistryError):
    """A stored file's sha256 does not match its card: tampered or truncated."""
