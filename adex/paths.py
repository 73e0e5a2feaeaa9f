"""Where adex reads data and writes models, caches and runs.

Nothing is written to the current directory unless asked. Roots:

* ``ADEX_HOME`` (default ``~/.adex``): ``registry/``, ``cache/``, ``runs/``, ``data/``, ``search/``.
* data directory: ``--data`` flag, else ``ADEX_DATA``, else ``$ADEX_HOME/data``
  (where ``adex data download`` puts datasets).
"""
from __future__ import annotations

import os
from pathlib import Path


def adex_home() -> Path:
    """Root of the user's adex state (``$ADEX_HOME``, default ``~/.adex``)."""
    return Path(os.environ.get("ADEX_HOME") or Path.home() / ".adex").expanduser()


def data_dir(explicit: str | os.PathLike | None = None) -> Path:
    """Directory holding the datasets (``--data`` > ``$ADEX_DATA`` > ``$ADEX_HOME/data``)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("ADEX_DATA")
    if env:
        return Path(env).expanduser()
    return adex_home() / "data"


def cache_dir() -> Path:
    """Featurization cache (content-addressed files, safe to delete)."""
    return Path(os.environ.get("ADEX_CACHE") or adex_home() / "cache").expanduser()


def runs_dir() -> Path:
    """Default parent folder of training runs (resolved config, metrics, plots)."""
    return adex_home() / "runs"


def registry_dir() -> Path:
    """The user's model registry."""
    return adex_home() / "registry"


def search_dir() -> Path:
    """Hyperparameter searches: ``<study>.db`` (default SQLite storage) and ``<study>/``
    (trial run folders, ``best.yaml``, ``trials.csv``, ``search.png``)."""
    return adex_home() / "search"


def new_run_dir(prefix: str, out: str | os.PathLike | None = None) -> Path:
    """``out`` (created), else a fresh ``$ADEX_HOME/runs/<prefix>-<time>/``."""
    import datetime as _dt

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    path = Path(out) if out else runs_dir() / f"{prefix}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path
