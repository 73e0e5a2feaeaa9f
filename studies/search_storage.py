"""Storage of ``adex search`` studies: an Optuna RDB storage.

``sqlite:///$ADEX_HOME/search/<study>.db`` by default (:func:`default_storage`); with a
PostgreSQL URL several workers on several machines share one study (psycopg2, the
``adex[postgres]`` extra). A study is resumed from its storage (finished trials are
kept). Importing this module imports neither optuna nor a database driver.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from adex.errors import ConfigError
from adex.paths import search_dir
from adex.studies.search_extras import require_optuna, require_postgres

if TYPE_CHECKING:
    import optuna


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
    ``attempts`` times, waiting 0.5, 1, 1.5 ... s). MissingExtraError when optuna (or,
    for a PostgreSQL URL, psycopg2) is not installed."""
    import warnings

    optuna = require_optuna()
    driver = driver_url(url)
    if driver.startswith("postgresql+psycopg2"):
        require_postgres()
    from sqlalchemy.exc import IntegrityError, ProgrammingError

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

