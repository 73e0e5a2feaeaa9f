"""adex: ADvisor-EXpert graph neural networks for vacancy formation energies.

The import package ``adex`` is assembled from the repository's top-level folders:
``adex/`` (core: graphs, layers, data, training loop, CLI), ``advisors/``,
``expert/``, ``supercell/``, ``registry/`` and ``configs/`` become ``adex.advisors``,
``adex.expert``, ... (setuptools ``package-dir``). Importing ``adex`` does no work.

The public Python API (:mod:`adex.api`), loaded on first use::

    import adex
    expert = adex.load_expert()                      # the shipped default expert
    table = expert.predict("host.cif", sites="all")  # pandas DataFrame, dH in eV
"""
from __future__ import annotations

import os as _os

__version__ = "0.1.0"


def _extend_path_for_source_checkout() -> None:
    """Let ``python -m adex`` run from the repository root.

    There, Python finds the core folder ``./adex`` before the installed package
    mapping, so ``adex.registry`` would not resolve. Appending the checkout root to
    ``__path__`` makes ``adex.<sub>`` resolve to ``<root>/<sub>``, exactly as the
    installed mapping does. Only applies inside an adex source tree.
    """
    root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
    marker = _os.path.join(root, "registry", "__init__.py")
    pyproject = _os.path.join(root, "pyproject.toml")
    if _os.path.isfile(marker) and _os.path.isfile(pyproject) and root not in __path__:
        __path__.append(root)  # noqa: F821 - module attribute of a package


_extend_path_for_source_checkout()


__all__ = ["VacancyExpert", "__version__", "load_expert"]


def __getattr__(name: str):
    """``adex.load_expert`` and ``adex.VacancyExpert`` from :mod:`adex.api`, imported on first use."""
    if name in ("load_expert", "VacancyExpert"):
        import importlib

        return getattr(importlib.import_module("adex.api"), name)
    raise AttributeError(f"module 'adex' has no attribute {name!r}")
