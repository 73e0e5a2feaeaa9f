"""Cross-validation folds over the Witman vacancies, shared by every model that is
compared (the expert, the descriptor baseline, hyperparameter search), so that all of
them are trained and tested on exactly the same vacancies.

Schemes (``make_folds(root, scheme, ...)``):

* ``published``: the published folds ``<fraction>k0 .. k9`` (per vacancy) or
  ``<fraction>k0_struct ..`` (per compound, ``per_compound=True``); ``fraction`` is
  ``1.00``, ``0.40`` or ``0.10`` (the learning-curve subsets);
* ``kfold``: scikit-learn ``KFold`` over vacancies (shuffled with ``seed``);
* ``group``: scikit-learn ``GroupKFold`` with the host compound as group (no host on
  both sides);
* ``loeo``: leave one element out: for each element X (all but O by default, every
  host is an oxide) every vacancy of a host containing X is tested, the rest trains;
* ``l2eo``: leave two elements out: the same for pairs (X, Y) (hosts containing X or
  Y are tested), all pairs of ``elements`` or ``n_folds`` pairs drawn with ``seed``;
* ``family``: ``GroupKFold`` with the host's structure family as group
  (:func:`structure_families`: anonymised formula + space group; no family on both sides).

A fold is a name and two tuples of vacancy ids; ``train`` and ``test`` never share an id,
and for the grouped schemes never share a host.
"""
from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from adex.errors import ConfigError

SCHEMES = ("published", "kfold", "group", "loeo", "l2eo", "family")
#: Schemes whose test hosts never appear in training: validation is drawn by host too.
GROUPED_SCHEMES = ("group", "loeo", "l2eo", "family")


@dataclass(frozen=True)
class Fold:
    """One train/test split: ``name`` (e.g. ``1.00k3``, ``group3``, ``no-Ba``) and the
    vacancy ids of each side."""

    name: str
    train: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class VacancyTable:
    """Per-vacancy columns of ``vacancies.csv`` plus each host's elements."""

    ids: tuple[str, ...]
    hosts: tuple[str, ...]
    elements: tuple[str, ...]  # the vacated element
    host_elements: dict  # host -> frozenset of element symbols


@lru_cache(maxsize=8)
def vacancy_table(root: Path) -> VacancyTable:
    """Read ``vacancies.csv`` and each host's composition (from the first CIF of the host;
    a few hosts have elements none of whose sites are listed as vacancies)."""
    from adex.io import read_structure

    root = Path(root)
    with open(root / "vacancies.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    first: dict[str, str] = {}
    for r in rows:
        first.setdefault(r["host"], r["id"])
    host_elements = {
        host: frozenset(el.symbol for el in read_structure(root / "structures" / f"{vid}.cif").composition.elements)
        for host, vid in first.items()
    }
    return VacancyTable(tuple(r["id"] for r in rows), tuple(r["host"] for r in rows), tuple(r["element"] for r in rows),
                        host_elements)


def make_folds(
    root: str | Path,
    scheme: str = "published",
    n_folds: int = 10,
    seed: int = 0,
    fraction: str = "1.00",
    per_compound: bool = False,
    elements: list[str] | None = None,
) -> list[Fold]:
    """The folds of ``scheme`` (see the module docstring) over the Witman set at ``root``."""
    from adex.expert.witman import read_split

    root = Path(root)
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown cross-validation scheme {scheme!r} (choose from {', '.join(SCHEMES)})")
    if scheme == "published":
        suffix = "_struct" if per_compound else ""
        folds = []
        for k in range(n_folds):
            name = f"{fraction}k{k}{suffix}"
            train, test = read_split(root, name)
            folds.append(Fold(name, tuple(train), tuple(test)))
        return folds
    table = vacancy_table(root)
    ids = np.array(table.ids)
    if scheme in ("kfold", "group", "family"):
        from sklearn.model_selection import GroupKFold, KFold

        if scheme == "kfold":
            splits = KFold(n_folds, shuffle=True, random_state=seed).split(ids)
        else:
            families = structure_families(root) if scheme == "family" else {}
            groups = np.array([families.get(h, h) for h in table.hosts])
            splits = _group_kfold(GroupKFold, n_folds, seed).split(ids, groups=groups)
        return [Fold(f"{scheme}{k}", tuple(ids[tr]), tuple(ids[te])) for k, (tr, te) in enumerate(splits)]
    present = sorted(set().union(*table.host_elements.values()))
    chosen = list(elements) if elements else [e for e in present if e != "O"]
    unknown = [e for e in chosen if e not in present]
    if unknown:
        raise ConfigError(f"element {unknown[0]!r} is in no host of the data set (hosts contain {', '.join(present)})")
    if scheme == "loeo":
        groups = [(e,) for e in chosen]
    else:
        pairs = list(itertools.combinations(chosen, 2))
        if not elements and n_folds < len(pairs):
            pick = np.random.default_rng(seed).choice(len(pairs), n_folds, replace=False)
            pairs = [pairs[i] for i in sorted(pick)]
        groups = pairs
    folds = []
    for held in groups:
        is_test = np.array([bool(table.host_elements[h] & set(held)) for h in table.hosts])
        if is_test.all() or not is_test.any():
            continue  # nothing left to train on / nothing to test
        folds.append(Fold("no-" + "".join(held), tuple(ids[~is_test]), tuple(ids[is_test])))
    return folds


@lru_cache(maxsize=8)
def structure_families(root: Path, symprec: float = 0.01) -> dict[str, str]:
    """host -> structure family ``"<anonymised formula>|<space group number>"`` (e.g.
    ``ABC3|62``) of its canonical primitive cell: hosts of one family share a prototype up
    to the elements (199 Witman hosts: 118 families, the largest of 11 hosts)."""
    from adex.io import read_structure
    from adex.supercell import canonical_host_sites

    table = vacancy_table(Path(root))
    first: dict[str, str] = {}
    for vid, host in zip(table.ids, table.hosts):
        first.setdefault(host, vid)
    out = {}
    for host, vid in first.items():
        can = canonical_host_sites(read_structure(Path(root) / "structures" / f"{vid}.cif"), [0], symprec)[0]
        out[host] = f"{can.primitive.composition.anonymized_formula}|{can.space_group_number}"
    return out


def _group_kfold(cls, n_folds: int, seed: int):
    """``GroupKFold`` shuffled with ``seed`` where scikit-learn supports it (>= 1.6)."""
    try:
        return cls(n_folds, shuffle=True, random_state=seed)
    except TypeError:  # pragma: no cover - older scikit-learn
        return cls(n_folds)


def parse_scheme(text: str) -> dict:
    """``published``, ``published_struct``, ``kfold``, ``group``, ``loeo``, ``l2eo`` (and
    ``published@0.40`` for a learning-curve fraction) -> keyword arguments of
    :func:`make_folds`."""
    name, _, fraction = text.partition("@")
    kwargs: dict = {}
    if name == "published_struct":
        name, kwargs["per_compound"] = "published", True
    if fraction:
        if name != "published":
            raise ConfigError(f"{text!r}: a training fraction (@0.40) only applies to the published folds")
        kwargs["fraction"] = fraction
    if name not in SCHEMES:
        raise ConfigError(f"unknown cross-validation scheme {text!r} (choose from published, published_struct, "
                          f"{', '.join(SCHEMES[1:])}; published@0.10 for a fraction)")
    kwargs["scheme"] = name
    return kwargs
