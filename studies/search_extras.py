"""The optional packages of the hyperparameter search, imported only when a search runs.

Optuna (``pip install 'adex[search]'``) drives every search; psycopg2
(``pip install 'adex[postgres]'``) is needed only for a shared PostgreSQL storage. A
missing one is a :class:`~adex.errors.MissingExtraError` naming the extra to install
(the CLI prints it as a one-line ``error:``), not an ImportError.
"""
from __future__ import annotations

from types import ModuleType

from adex.errors import MissingExtraError

SEARCH_HINT = "hyperparameter search needs the optuna package: pip install 'adex[search]'"
POSTGRES_HINT = "a PostgreSQL search storage needs the psycopg2 package: pip install 'adex[postgres]'"


def require_optuna() -> ModuleType:
    """The ``optuna`` module; MissingExtraError naming ``adex[search]`` if it is not installed."""
    try:
        import optuna
    except ImportError:
        raise MissingExtraError(SEARCH_HINT) from None
    return optuna


def require_postgres() -> None:
    """MissingExtraError naming ``adex[postgres]`` unless psycopg2 is installed."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        raise MissingExtraError(POSTGRES_HINT) from None
