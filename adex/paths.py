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


def check_writable_folder(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`adex.errors.AdexError` (one line) unless files can be created in
    ``path``, or, when it does not exist yet, in its nearest existing ancestor (probed
    with a temporary file, nothing else is created). ``what`` names it in the message,
    e.g. ``"the cache folder"``."""
    import errno
    import tempfile

    from adex.errors import AdexError

    path = Path(path)
    folder = path
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    hint = f" (ADEX_HOME is {adex_home()})"
    if not folder.is_dir():
        raise AdexError(f"{what} {path} cannot be created: {folder} is not a folder{hint}")
    try:
        fd, probe = tempfile.mkstemp(prefix=".adex-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or errno.errorcode.get(exc.errno or 0, type(exc).__name__)
        raise AdexError(f"{what} {path} is not writable: {folder}: {reason}{hint}") from None
