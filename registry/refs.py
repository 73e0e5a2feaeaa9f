"""Registry references: ``[store::][kind/]name[:version | @alias]``.

Examples: ``bandgap``, ``bandgap:3``, ``bandgap@best``, ``advisor/bandgap:3``,
``builtin::bandgap@latest``. Without a version or alias a reference means ``@latest``.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from adex.errors import RegistryError

STORES = ("user", "builtin")
#: kinds, names, aliases and file names share this spelling (no ``/ : @`` or leading dot).
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\Z")


def check_token(value: str, what: str) -> str:
    """Return ``value`` if it is a valid kind/name/alias, else raise :class:`RegistryError`."""
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise RegistryError(
            f"invalid {what} {value!r}: use letters, digits and _ . + - (not starting with . _ + -)"
        )
    return value


def check_alias(alias: str) -> str:
    """Validate an alias name (a token that is not a plain version number)."""
    check_token(alias, "alias")
    if alias.isdigit():
        raise RegistryError(f"invalid alias {alias!r}: an alias cannot be a number")
    return alias


@dataclass(frozen=True)
class Ref:
    """A parsed reference; ``version`` and ``alias`` are never both set."""

    name: str
    kind: str | None = None
    store: str | None = None
    version: int | None = None
    alias: str | None = None

    @property
    def selector(self) -> str:
        """The alias to follow when no exact version is given (``latest`` by default)."""
        return self.alias or "latest"


def parse_ref(text: str) -> Ref:
    """Parse ``[store::][kind/]name[:version | @alias]``; raise :class:`RegistryError` if malformed."""

    def bad(reason: str) -> RegistryError:
        return RegistryError(
            f"invalid registry reference {text!r}: {reason} "
            "(expected [store::][kind/]name[:version|@alias], e.g. advisor/bandgap@best)"
        )

    if not isinstance(text, str) or not text.strip():
        raise bad("empty")
    rest = text.strip()
    store = None
    if "::" in rest:
        store, rest = rest.split("::", 1)
        if store not in STORES:
            raise bad(f"unknown store {store!r} (stores: {', '.join(STORES)})")
    kind = None
    if "/" in rest:
        kind, rest = rest.split("/", 1)
    version = alias = None
    if "@" in rest:
        rest, alias = rest.split("@", 1)
        if ":" in alias or ":" in rest:
            raise bad("give a version or an alias, not both")
    elif ":" in rest:
        rest, number = rest.split(":", 1)
        if not number.isdigit() or int(number) < 1:
            raise bad(f"version {number!r} is not a positive integer")
        version = int(number)
    try:
        check_token(rest, "name")
        if kind is not None:
            check_token(kind, "kind")
        if alias is not None:
            check_alias(alias)
    except RegistryError as exc:
        raise bad(str(exc)) from None
    return Ref(name=rest, kind=kind, store=store, version=version, alias=alias)
