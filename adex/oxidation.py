"""Oxidation states guessed from the structure alone (no DFT): bond valence sums.

:func:`guess_oxidation_states` runs :func:`bond_valence_states`, adex's faster
re-implementation of pymatgen's ``BVAnalyzer`` (bond-valence sums with charge balance, per
site, so mixed-valence hosts such as Fe3O4 get integer states on their distinct sites);
where that fails it falls back to the most likely charge-balanced composition guess
(:func:`composition_oxidation_guess`: the first answer of ``Composition.oxi_state_guesses``,
one average state per element, with a bounded search); where that fails too the states
are unknown (NaN). Results are memoised per structure.
"""
from __future__ import annotations

import functools
import hashlib
import math
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
from pymatgen.core import Structure

_MEMO: "OrderedDict[str, np.ndarray]" = OrderedDict()
_MEMO_SIZE = 512


def _key(structure: Structure, numbers: np.ndarray | None = None) -> str:
    if numbers is None:
        numbers = np.array([site.specie.Z for site in structure], dtype=np.int64)
    h = hashlib.sha256()
    h.update(np.round(structure.lattice.matrix, 6).tobytes())
    h.update(np.round(structure.frac_coords, 6).tobytes())
    h.update(np.asarray(numbers, dtype=np.int64).tobytes())
    return h.hexdigest()


def guess_oxidation_states(structure: Structure, numbers: np.ndarray | None = None,
                           orbits: np.ndarray | None = None) -> np.ndarray:
    """Oxidation state of every site: float32 [n_sites] (NaN where unknown).

    Deterministic for a given structure (same lattice, coordinates and species order).
    ``numbers`` (int [n_sites], the atomic numbers) may be given when already known: it
    only saves a pass over the sites for the memo key. ``orbits`` (int [n_sites]): the
    site orbits of a tighter symmetry search, passed on to :func:`bond_valence_states`
    (it may save its symmetry search; the states are the same).
    """
    key = _key(structure, numbers)
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return _MEMO[key].copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            states = bond_valence_states(structure, orbits=orbits).astype(np.float32)
        except Exception:  # no charge-balanced assignment (ValueError), no BV parameters for an element, ...
            species = [site.specie.symbol for site in structure]
            try:
                guess = composition_oxidation_guess(structure.composition)
            except Exception:
                guess = None
            if guess:
                states = np.array([guess.get(el, np.nan) for el in species], dtype=np.float32)
            else:
                states = np.full(len(species), np.nan, dtype=np.float32)
    _MEMO[key] = states
    if len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return states.copy()


def bond_valence_states(structure: Structure, symprec: float = 0.1, max_radius: float = 4.0,
                        max_permutations: int = 100_000, distance_scale: float = 1.015,
                        orbits: np.ndarray | None = None) -> np.ndarray:
    """Integer oxidation state of every site of an ordered structure: int64 [n_sites].

    The algorithm and defaults of pymatgen's ``BVAnalyzer().get_valences`` (O'Keefe-Brese
    bond-valence sums within ``max_radius`` Å of one representative per symmetry orbit,
    ICSD-mined posterior probability of each state, the most probable charge-neutral
    assignment with at most one unit of spread per element), returning the same states.
    What differs is only the bookkeeping: the orbits come straight from the spglib dataset
    (no symmetrized structure is built), the neighbours of all representatives come from
    one neighbour-list call, and states are mapped back to sites by index (``BVAnalyzer``
    keys a dict by ``Site``, whose hash is the same for all atoms of an element, which makes
    that step quadratic in the number of atoms).

    ``orbits`` (int [n_sites], optional): orbit ids of the sites under symmetry operations
    the structure has to a tolerance below ``symprec`` (for the canonical primitive cell of
    :func:`adex.supercell.analyze_host`: ``HostSymmetry.orbit``, found at 0.01 Å on the
    symmetrized cell). When they already put all sites of each species in one orbit, the
    search at ``symprec`` cannot do otherwise (its operations include those; orbits never
    join two species), so its ``equivalent_atoms`` are known without it: the lowest index
    of each species (:func:`_equivalent_by_species`). Most Materials Project hosts are such
    (230 of the first 300); spglib takes 1-25 ms per search on them (cubic F cells are the
    slowest). Equality with the searched orbits is tested.

    Raises:
        ValueError: disordered structure, an element without bond-valence parameters, or no
            charge-balanced assignment ("Valences cannot be assigned!").
    """
    import spglib
    from pymatgen.core import Element

    bv_params, electronegative, icsd_states = _bond_valence_tables()
    if not structure.is_ordered:
        raise ValueError("bond_valence_states needs an ordered structure")
    if missing := {el.symbol for el in structure.elements} - set(bv_params):
        raise ValueError(f"Structure contains elements not in set of BV parameters: {sorted(missing)}")
    # the cell SpacegroupAnalyzer(structure, symprec) hands to spglib (one label per distinct
    # species, no magnetic moments), without importing pymatgen.symmetry (0.8 s: scipy.cluster)
    labels: dict = {}
    cell = (structure.lattice.matrix, structure.frac_coords,
            [labels.setdefault(species, len(labels) + 1) for species in structure.species])
    equivalent = _equivalent_by_species(cell[2], orbits)
    if equivalent is None:
        dataset = spglib.get_symmetry_dataset(cell, symprec=symprec, angle_tolerance=5)
        if dataset is None:
            raise ValueError("spglib could not determine the symmetry")
        equivalent = np.asarray(dataset.equivalent_atoms)
    _, orbit_of_site = np.unique(equivalent, return_inverse=True)
    orbit_of_site = np.atleast_1d(orbit_of_site)
    orbits: list[list[int]] = [[] for _ in range(int(orbit_of_site.max()) + 1)]
    for index, orbit in enumerate(orbit_of_site):
        orbits[orbit].append(index)
    # BVAnalyzer's order: decreasing electronegativity of the orbit (stable sort)
    orbits.sort(key=lambda members: -structure[members[0]].species.average_electroneg)
    representatives = [members[0] for members in orbits]
    symbols = [site.specie.symbol for site in structure]

    centers, neighbours, _, distances = structure.get_neighbor_list(
        max_radius, sites=[structure[i] for i in representatives])
    keep = distances > 1e-8  # the centre itself (get_neighbors' numerical_tol)
    centers, neighbours, distances = centers[keep], neighbours[keep], distances[keep]

    valences: list[list[int]] = []
    probabilities: list[dict] = []
    for k, site in enumerate(representatives):
        el1 = symbols[site]
        x1 = Element(el1).X
        bv_sum = 0.0
        for j, d in zip(neighbours[centers == k], distances[centers == k]):
            el2 = symbols[j]
            if (el1 in electronegative or el2 in electronegative) and el1 != el2:
                (r1, c1), (r2, c2) = bv_params[el1], bv_params[el2]
                bond_length = r1 + r2 - r1 * r2 * (math.sqrt(c1) - math.sqrt(c2)) ** 2 / (c1 * r1 + c2 * r2)
                bv_sum += math.exp((bond_length - d * distance_scale) / 0.31) * (1 if x1 < Element(el2).X else -1)
        prob = {}
        for state, mean, sigma, prior in icsd_states.get(el1, ()):
            if prior is None:
                raise KeyError(f"no ICSD occurrence prior for {el1}{state:+d}")
            prob[state] = math.exp(-((bv_sum - mean) ** 2) / 2 / (sigma**2)) / sigma * prior
        total = sum(prob.values())
        prob = {state: p / total for state, p in prob.items()} if total else dict.fromkeys(prob, 0)
        probabilities.append(prob)
        ranked = sorted(prob, key=lambda state: -prob[state])
        valences.append([state for state in ranked if prob[state] > 0.01 * prob[ranked[0]]])
    if any(not v for v in valences):
        raise ValueError("Valences cannot be assigned!")

    best = _most_probable_neutral(valences, probabilities, [len(m) for m in orbits],
                                  [symbols[m[0]] for m in orbits], max_permutations)
    if best is None:
        raise ValueError("Valences cannot be assigned!")
    states = np.empty(len(structure), dtype=np.int64)
    for state, members in zip(best, orbits):
        states[members] = int(state)
    return states


def _equivalent_by_species(labels, orbits) -> np.ndarray | None:
    """spglib's ``equivalent_atoms`` (lowest index of each site's orbit) when ``orbits``
    [n] hold exactly one orbit per species label, else None (a search is needed)."""
    if orbits is None:
        return None
    labels = np.asarray(labels, dtype=np.int64)
    orbits = np.asarray(orbits, dtype=np.int64)
    if orbits.shape != labels.shape or labels.size == 0:
        return None
    n_labels = len(np.unique(labels))
    if len(np.unique(orbits)) != n_labels or np.unique(np.stack([labels, orbits]), axis=1).shape[1] != n_labels:
        return None
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return first[inverse.ravel()].astype(np.int64)


@functools.lru_cache(maxsize=1)
def _bond_valence_data() -> tuple[dict, dict]:
    """pymatgen's ``bvparam_1991.yaml`` and ``icsd_bv.yaml``, read from its own files with
    PyYAML's C loader (pymatgen parses them with ruamel.yaml: 0.4 s per file and process
    against 0.01 s)."""
    import yaml

    import pymatgen.core

    folder = Path(pymatgen.core.__file__).parent
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(folder / "bvparam_1991.yaml", encoding="utf-8") as handle:
            raw_params = yaml.load(handle, Loader=loader)
        with open(folder / "icsd_bv.yaml", encoding="utf-8") as handle:
            icsd = yaml.load(handle, Loader=loader)
    except OSError:  # another pymatgen layout: take the tables pymatgen itself loaded
        from pymatgen.analysis import bond_valence  # re-exported from pymatgen.core in new versions

        raw_params = {str(el): v for el, v in bond_valence.BV_PARAMS.items()}
        icsd = {"bvsum": {str(sp): v for sp, v in bond_valence.ICSD_BV_DATA.items()},
                "occurrence": {str(sp): v for sp, v in bond_valence.PRIOR_PROB.items()}}
    return raw_params, icsd


@functools.lru_cache(maxsize=1)
def _bond_valence_tables() -> tuple[dict, frozenset, dict]:
    """pymatgen's bond-valence data (:func:`_bond_valence_data`) as lookup tables; equality
    with the tables of pymatgen's ``BVAnalyzer`` is tested.

    Returns:
        ``{symbol: (r, c)}`` O'Keefe-Brese parameters; the electronegative elements of
        O'Keefe & Brese; ``{symbol: [(oxidation state, mean BV sum, std, ICSD prior or
        None)]}`` for the states BVAnalyzer considers (nonzero, std > 0), in file order.
    """
    from pymatgen.core import Species

    raw_params, icsd = _bond_valence_data()
    params = {symbol: (float(v["r"]), float(v["c"])) for symbol, v in raw_params.items()}
    priors = _occurrence_priors()
    states: dict[str, list] = {}
    for name, data in icsd["bvsum"].items():
        species = Species.from_str(name)
        if species.oxi_state != 0 and data["std"] > 0:
            states.setdefault(species.symbol, []).append(
                (species.oxi_state, data["mean"], data["std"], priors.get((species.symbol, species.oxi_state))))
    electronegative = frozenset("H B C Si N P As Sb O S Se Te F Cl Br I".split())
    return params, electronegative, states


#: Most oxidation-state combinations :func:`composition_oxidation_guess` scores (summed over
#: the elements' multisets and the products of their charge sums); past it the guess is
#: unknown. pymatgen's search has no bound: one Materials Project host (Tl8Cd3N42) took
#: 598 s in it; no host of the Witman training set comes near the bound.
MAX_COMPOSITION_COMBINATIONS = 2_000_000


@functools.lru_cache(maxsize=1)
def _occurrence_priors() -> dict[tuple[str, int], float]:
    """``{(symbol, oxidation state): ICSD occurrence prior}`` (pymatgen's ``Composition.oxi_prob``)."""
    from pymatgen.core import Species

    priors = {}
    for name, value in _bond_valence_data()[1]["occurrence"].items():
        species = Species.from_str(name)
        priors[(species.symbol, species.oxi_state)] = value
    return priors


def composition_oxidation_guess(composition, max_combinations: int = MAX_COMPOSITION_COMBINATIONS
                                ) -> dict[str, float] | None:
    """The most probable charge-balanced average oxidation state per element of a
    composition, ``{symbol: state}``, or None (not charge-balanceable, or the search would
    score more than ``max_combinations`` combinations).

    Equals ``composition.oxi_state_guesses(max_sites=-1)[0]`` (pymatgen; tested), by the same
    search in the same order: per element of the reduced formula, every multiset of its ICSD
    (else common) states, the best ICSD-prior score per charge sum; then every product of
    one sum per element, the charge-neutral one with the highest total score (the first
    one on ties). What differs: each state's prior is looked up once per element, not once
    per atom of every multiset (pymatgen builds a ``Species`` each time), and the search is
    bounded.
    """
    from itertools import combinations_with_replacement, product
    from math import comb

    from pymatgen.core import Element

    if len(composition.elements) == 1:
        return {composition.elements[0].symbol: 0.0}
    reduced = composition.reduced_composition
    amounts = reduced.get_el_amt_dict()
    if not all(amount == int(amount) for amount in amounts.values()):
        raise ValueError("Charge balance analysis requires integer values in Composition!")
    priors = _occurrence_priors()
    elements = list(amounts)
    candidates = [Element(el).icsd_oxidation_states or Element(el).common_oxidation_states for el in elements]
    work = sum(comb(int(amounts[el]) + len(oxids) - 1, int(amounts[el])) if oxids else 0
               for el, oxids in zip(elements, candidates))
    if work > max_combinations:
        return None
    sums_of: list[list[int]] = []  # per element: charge sums in order of first appearance
    score_of: list[dict] = []  # per element: {charge sum: best score}
    for el, oxids in zip(elements, candidates):
        prior = {o: priors.get((el, o), 0) for o in oxids}
        sums: list[int] = []
        best: dict = {}
        for combo in combinations_with_replacement(oxids, int(amounts[el])):
            total = sum(combo)
            score = sum(prior[o] for o in combo)
            if total not in best:
                sums.append(total)
                best[total] = score
            elif score > best[total]:
                best[total] = score
        sums_of.append(sums)
        score_of.append(best)
    size = 1
    for sums in sums_of:
        size *= len(sums)
    if work + size > max_combinations:
        return None
    best_x, best_score = None, None
    for x in product(*sums_of):
        if sum(x) == 0:
            score = 0
            for idx, v in enumerate(x):
                score += score_of[idx][v]
            if best_score is None or score > best_score:
                best_x, best_score = x, score
    if best_x is None:
        return None
    return {el: v / amounts[el] for el, v in zip(elements, best_x)}


def _most_probable_neutral(valences, probabilities, n_sites, symbols, max_permutations):
    """BVAnalyzer's depth-first search: the charge-neutral assignment of one state per orbit
    (candidates in decreasing probability) with the highest product of probabilities, in
    which no element's states spread by more than 1; prunes branches that can no longer
    reach neutrality and stops after ``max_permutations`` visited leaves.

    The same visits, pruning, counting and tie-breaking as BVAnalyzer's search, with the
    charge bounds kept as running integer sums (no array per node): the bound of a partial
    assignment is its charge so far plus the most (least) charge the unassigned orbits
    can still add.
    """
    n_orbits = len(valences)
    counts = [int(n) for n in n_sites]
    # most / least charge orbits i.. can add: suffix sums [n_orbits + 1]
    suffix_max, suffix_min = [0] * (n_orbits + 1), [0] * (n_orbits + 1)
    for i in range(n_orbits - 1, -1, -1):
        suffix_max[i] = suffix_max[i + 1] + int(max(valences[i])) * counts[i]
        suffix_min[i] = suffix_min[i + 1] + int(min(valences[i])) * counts[i]
    element_of = {symbol: k for k, symbol in enumerate(dict.fromkeys(symbols))}
    element_index = [element_of[symbol] for symbol in symbols]
    search = {"n": 0, "score": 0, "best": None}
    assigned: list = []
    # Branch and bound, when it cannot change the answer: if the whole search visits no
    # more than ``max_permutations`` leaves (counted exactly, per (orbit, charge so far)),
    # BVAnalyzer never stops early and returns the first best leaf; a subtree whose best
    # possible score (score so far x the most probable state of each orbit left) is below
    # the best found cannot hold it.
    events: dict[tuple[int, int], int] = {}

    def count(i: int, charge: int) -> int:
        if charge + suffix_max[i] < 0 or charge + suffix_min[i] > 0 or i == n_orbits:
            return 1
        key = (i, charge)
        if key not in events:
            total = 0
            for state in valences[i]:
                total += count(i + 1, charge + int(state) * counts[i])
                if total > max_permutations:
                    break
            events[key] = total
        return events[key]

    bounded = count(0, 0) <= max_permutations
    best_left = [1.0] * (n_orbits + 1)  # [n_orbits + 1]: product of the top probability of orbits i..
    for i in range(n_orbits - 1, -1, -1):
        best_left[i] = best_left[i + 1] * max(probabilities[i][state] for state in valences[i])
    partial = [1.0]  # score of the assigned states so far

    def evaluate():
        low: dict[int, int] = {}
        high: dict[int, int] = {}
        for element, state in zip(element_index, assigned):
            if state < low.get(element, state + 1):
                low[element] = state
            if state > high.get(element, state - 1):
                high[element] = state
        if max(high[e] - low[e] for e in high) > 1:
            return
        score = 1
        for prob, state in zip(probabilities, assigned):
            score = score * prob[state]
        if score > search["score"]:
            search["best"], search["score"] = list(assigned), score

    def recurse(charge: int):
        if search["n"] > max_permutations:
            return
        i = len(assigned)
        if charge + suffix_max[i] < 0 or charge + suffix_min[i] > 0:
            search["n"] += 1
            return
        if i == n_orbits:
            evaluate()
            search["n"] += 1
            return
        if bounded and search["best"] is not None and partial[-1] * best_left[i] < search["score"] * (1 - 1e-9):
            return
        for state in valences[i]:
            assigned.append(state)
            partial.append(partial[-1] * probabilities[i][state])
            recurse(charge + int(state) * counts[i])
            partial.pop()
            assigned.pop()

    recurse(0)
    return search["best"]
