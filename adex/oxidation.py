"""Oxidation states guessed from the structure alone (no DFT): bond valence sums.

:func:`guess_oxidation_states` runs pymatgen's ``BVAnalyzer`` (bond-valence sums with
charge balance, per site, so mixed-valence hosts such as Fe3O4 get integer states on
their distinct sites); where that fails it falls back to the most likely charge-balanced
composition guess (``Composition.oxi_state_guesses``, one average state per element);
where that fails too the states are unknown (NaN). Results are memoised per structure.
"""
from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict

import numpy as np
from pymatgen.core import Structure

_MEMO: "OrderedDict[str, np.ndarray]" = OrderedDict()
_MEMO_SIZE = 512


def _key(structure: Structure) -> str:
    h = hashlib.sha256()
    h.update(np.round(structure.lattice.matrix, 6).tobytes())
    h.update(np.round(structure.frac_coords, 6).tobytes())
    h.update(",".join(site.specie.symbol for site in structure).encode())
    return h.hexdigest()


def guess_oxidation_states(structure: Structure) -> np.ndarray:
    """Oxidation state of every site: float32 [n_sites] (NaN where unknown).

    Deterministic for a given structure (same lattice, coordinates and species order).
    """
    key = _key(structure)
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key].copy()
    from pymatgen.analysis.bond_valence import BVAnalyzer

    species = [site.specie.symbol for site in structure]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            states = np.array(BVAnalyzer().get_valences(structure), dtype=np.float32)
        except Exception:  # BVAnalyzer raises ValueError (and others) when no assignment balances
            try:
                guesses = structure.composition.oxi_state_guesses(max_sites=-1)
            except Exception:
                guesses = ()
            if guesses:
                states = np.array([guesses[0].get(el, np.nan) for el in species], dtype=np.float32)
            else:
                states = np.full(len(species), np.nan, dtype=np.float32)
    _MEMO[key] = states
    if len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return states.copy()
