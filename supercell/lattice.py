"""Lattice reduction, exact shortest vectors and the smallest supercell with a minimum
image distance.

Conventions: a lattice is a float array [3, 3] of basis vectors in **rows** (Å), as in
pymatgen (``Lattice.matrix``). A supercell matrix ``M`` is an int array [3, 3] whose rows
give the supercell vectors in the parent basis: ``supercell_lattice = M @ lattice``
(pymatgen's ``make_supercell`` convention); it has ``|det M|`` parent cells.

Supercell search (:func:`find_supercell_matrix`): every sublattice of index ``n`` of a
lattice has exactly one basis in row Hermite normal form (upper triangular, positive
diagonal, ``0 <= H[i, j] < H[j, j]`` above the diagonal) with respect to a fixed parent
basis. For ``n = n_min, n_min + 1, ...`` all HNFs are enumerated (vectorised) and tested
against the finite set of parent-lattice vectors shorter than the requested distance: a
sublattice is acceptable iff it contains none of them. The first ``n`` with an acceptable
sublattice is the smallest possible supercell; ties are broken by geometry (largest
shortest vector, then most compact) and finally lexicographically. The search is exact;
the triangular structure of the HNF makes the membership test separable by rows, which
prunes most candidates before the full 3-D test.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

#: Two lengths closer than this (Å) are treated as equal (image distance checks, ties).
LENGTH_TOL = 1e-6
#: Default cap on the supercell size (number of parent cells) of the exact search.
DEFAULT_MAX_DETERMINANT = 2000

__all__ = [
    "lll_reduce",
    "shortest_vector_length",
    "successive_minima",
    "min_image_distance",
    "find_supercell_matrix",
    "lattice_points_in_supercell",
]


def _as_matrix(lattice) -> np.ndarray:
    matrix = np.asarray(getattr(lattice, "matrix", lattice), dtype=float)
    if matrix.shape != (3, 3):
        raise ValueError(f"expected a [3, 3] lattice matrix, got shape {matrix.shape}")
    return matrix


def lll_reduce(lattice, delta: float = 0.75) -> tuple[np.ndarray, np.ndarray]:
    """LLL-reduce a basis (rows). Deterministic.

    Args:
        lattice: float [3, 3] basis vectors in rows (Å) or a pymatgen ``Lattice``.
        delta: Lovász parameter.
    Returns:
        (reduced [3, 3] float, U [3, 3] int64 unimodular) with ``reduced = U @ lattice``.
    """
    basis = _as_matrix(lattice)
    if abs(np.linalg.det(basis)) < 1e-12:
        raise ValueError("degenerate lattice (zero volume)")
    u = np.eye(3, dtype=np.int64)

    def gram_schmidt(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        star = np.zeros_like(b)
        mu = np.zeros((3, 3))
        for i in range(3):
            star[i] = b[i]
            for j in range(i):
                mu[i, j] = b[i] @ star[j] / (star[j] @ star[j])
                star[i] = star[i] - mu[i, j] * star[j]
        return star, mu

    k = 1
    for _ in range(10_000):  # LLL terminates long before; guard against float pathologies
        if k >= 3:
            break
        b = u @ basis
        star, mu = gram_schmidt(b)
        for j in range(k - 1, -1, -1):
            q = int(round(mu[k, j]))
            if q:
                u[k] -= q * u[j]
                b = u @ basis
                star, mu = gram_schmidt(b)
        if star[k] @ star[k] >= (delta - mu[k, k - 1] ** 2) * (star[k - 1] @ star[k - 1]):
            k += 1
        else:
            u[[k - 1, k]] = u[[k, k - 1]]
            k = max(k - 1, 1)
    return u @ basis, u


def _lattice_vectors_within(reduced: np.ndarray, radius: float) -> np.ndarray:
    """All integer coefficient vectors k (int64 [m, 3]) with ``|k @ reduced| <= radius``
    (zero included). Exact: ``|k_i| <= radius * |row i of inv(reduced).T|``."""
    dual = np.linalg.inv(reduced).T
    bound = np.floor(radius * np.linalg.norm(dual, axis=1) + 1e-9).astype(np.int64)
    axes = [np.arange(-b, b + 1) for b in bound]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
    norms = np.linalg.norm(grid @ reduced, axis=1)
    return grid[norms <= radius + LENGTH_TOL]


def successive_minima(lattice) -> np.ndarray:
    """The successive minima λ1 <= λ2 <= λ3 of a lattice, float [3] (Å), computed exactly
    by enumeration over an LLL-reduced basis."""
    reduced, _ = lll_reduce(lattice)
    radius = float(np.linalg.norm(reduced, axis=1).max())
    coeffs = _lattice_vectors_within(reduced, radius)
    vectors = coeffs @ reduced
    norms = np.linalg.norm(vectors, axis=1)
    nonzero = norms > LENGTH_TOL
    coeffs, norms = coeffs[nonzero], norms[nonzero]
    order = np.argsort(norms, kind="stable")
    # Greedy: the shortest vector, the shortest one independent of it, the shortest one
    # independent of both. Independence of lattice vectors is that of their integer
    # coefficients (``reduced`` is nonsingular), tested exactly with integer cross products
    # and determinants, for all candidates at once.
    c = coeffs[order].astype(np.int64)
    cross = np.cross(c[0], c)
    second = int(np.argmax(np.any(cross != 0, axis=1)))
    det = c @ cross[second]
    third = int(np.argmax(det != 0))
    return np.array([float(norms[order[0]]), float(norms[order[second]]), float(norms[order[third]])])


def shortest_vector_length(lattice) -> float:
    """Length (Å) of the shortest nonzero vector of a lattice (exact)."""
    reduced, _ = lll_reduce(lattice)
    radius = float(np.linalg.norm(reduced, axis=1).min())
    coeffs = _lattice_vectors_within(reduced, radius)
    norms = np.linalg.norm(coeffs @ reduced, axis=1)
    return float(norms[norms > LENGTH_TOL].min())


def min_image_distance(lattice, supercell_matrix: np.ndarray | None = None) -> float:
    """Shortest distance (Å) between an atom and its own periodic images in the
    supercell ``supercell_matrix @ lattice`` (the lattice itself if no matrix)."""
    matrix = _as_matrix(lattice)
    if supercell_matrix is not None:
        matrix = np.asarray(supercell_matrix, dtype=float) @ matrix
    return shortest_vector_length(matrix)


@lru_cache(maxsize=4096)
def _divisors(n: int) -> tuple[int, ...]:
    small = [d for d in range(1, int(math.isqrt(n)) + 1) if n % d == 0]
    return tuple(sorted(set(small + [n // d for d in small])))


def _canonical_half(vectors: np.ndarray) -> np.ndarray:
    """Keep one of each ±k pair: the one whose first nonzero coefficient is positive."""
    first = np.argmax(vectors != 0, axis=1)
    lead = vectors[np.arange(len(vectors)), first]
    return vectors[lead > 0]


@lru_cache(maxsize=1024)
def _inverse_table(m: int) -> np.ndarray:
    """int64 [m]: the inverse of x modulo m for units x (0 elsewhere)."""
    x = np.arange(m, dtype=np.int64)
    table = np.zeros(m, dtype=np.int64)
    units = np.flatnonzero(np.gcd(x, m) == 1) if m > 1 else np.zeros(0, dtype=np.int64)
    table[units] = [pow(int(v), -1, m) for v in units]
    table.setflags(write=False)
    return table


def _solve_congruences(k: np.ndarray, r: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """All solutions ``x`` in ``[0, m)`` of ``k[i] x = r[i] (mod m)`` for each ``i``.

    Args:
        k: int64 [p], > 0. r: int64 [p]. m: modulus >= 1.
    Returns:
        (owner int64 [q], x int64 [q]): solution ``x[j]`` belongs to congruence ``owner[j]``.
    """
    g = np.gcd(k, m)
    solvable = (r % g) == 0
    idx = np.flatnonzero(solvable)
    if len(idx) == 0:
        return idx, idx
    g = g[idx]
    mm = m // g
    kk = (k[idx] // g) % mm
    inv = np.zeros(len(idx), dtype=np.int64)
    for gv in np.unique(g):  # few distinct gcds (divisors of m)
        sel = g == gv
        inv[sel] = _inverse_table(m // int(gv))[kk[sel]]
    x0 = ((r[idx] // g) % mm) * inv % mm
    owner = np.repeat(idx, g)
    starts = np.cumsum(g) - g
    t = np.arange(int(g.sum())) - np.repeat(starts, g)
    return owner, np.repeat(x0, g) + t * np.repeat(mm, g)


def _valid_hnfs(n: int, short: np.ndarray) -> list[tuple[int, ...]]:
    """All row-HNFs ``(a, b, c, d, e, f)`` = [[a, b, c], [0, d, e], [0, 0, f]] of
    determinant ``n`` whose sublattice contains none of the (canonical-sign) integer
    vectors ``short`` [m, 3].

    ``u`` lies in the sublattice iff ``a | u1``; with ``k1 = u1 / a``: ``d | u2 - k1 b``;
    with ``k2 = (u2 - k1 b) / d``: ``f | u3 - k1 c - k2 e``. Each short vector excludes
    the solutions of these linear congruences, marked without enumerating all (b, c, e).
    """
    s_z = short[(short[:, 0] == 0) & (short[:, 1] == 0), 2]  # along the 3rd basis vector
    s_yz = short[(short[:, 0] == 0) & (short[:, 1] > 0)][:, 1:]  # in the (2, 3) plane
    s_x = short[short[:, 0] > 0]  # with a component along the 1st basis vector
    found: list[tuple[int, ...]] = []
    for f in _divisors(n):
        if np.any(s_z % f == 0):
            continue
        for d in _divisors(n // f):
            a = n // (f * d)
            # 2-D test, e in [0, f): short (0, u2, u3) with d | u2 is in iff (u2/d) e = u3 (mod f)
            plane = s_yz[s_yz[:, 0] % d == 0]
            e_ok = np.ones(f, dtype=bool)
            if len(plane):
                _, e_bad = _solve_congruences(plane[:, 0] // d, plane[:, 1], f)
                e_ok[e_bad] = False
            e = np.flatnonzero(e_ok)
            if len(e) == 0:
                continue
            # 3-D test over (b, c, e)
            space = s_x[s_x[:, 0] % a == 0]
            bad = np.zeros((d, f, len(e)), dtype=bool)
            if len(space):
                k1 = space[:, 0] // a
                vec, b = _solve_congruences(k1, space[:, 1], d)  # k1 b = u2 (mod d)
                k1, u3 = k1[vec], space[vec, 2]
                k2 = (space[vec, 1] - k1 * b) // d
                # for every (vector, b) pair and every e: k1 c = u3 - k2 e (mod f)
                n_e = len(e)
                pair = np.repeat(np.arange(len(vec)), n_e)
                e_idx = np.tile(np.arange(n_e), len(vec))
                owner, c = _solve_congruences(k1[pair], u3[pair] - k2[pair] * e[e_idx], f)
                bad[b[pair[owner]], c, e_idx[owner]] = True
            bi, ci, ei = np.nonzero(~bad)
            found.extend((a, int(x), int(y), d, int(e[z]), f) for x, y, z in zip(bi, ci, ei))
    return found


@lru_cache(maxsize=4096)
def _valid_hnfs_cached(n: int, short_bytes: bytes) -> tuple[tuple[int, ...], ...]:
    """:func:`_valid_hnfs` (sorted) of ``n`` and the int64 [m, 3] vectors ``short_bytes``,
    memoised: it depends on the lattice only through these integer vectors, which hosts
    of one structure type (and close lattice parameters) share."""
    return tuple(sorted(_valid_hnfs(n, np.frombuffer(short_bytes, dtype=np.int64).reshape(-1, 3))))


def _hnf_matrix(entries: tuple[int, ...]) -> np.ndarray:
    a, b, c, d, e, f = entries
    return np.array([[a, b, c], [0, d, e], [0, 0, f]], dtype=np.int64)


def _reduce_supercell(matrix: np.ndarray, lattice: np.ndarray) -> np.ndarray:
    """Same sublattice, LLL-reduced rows, positive determinant."""
    _, u = lll_reduce(matrix @ lattice)
    reduced = u @ matrix
    if np.linalg.det(reduced) < 0:
        reduced = -reduced
    return reduced.astype(np.int64)


def find_supercell_matrix(
    lattice, min_image_distance: float, max_det: int = DEFAULT_MAX_DETERMINANT
) -> np.ndarray:
    """Smallest supercell whose atoms are >= ``min_image_distance`` from their own images.

    Minimises the number of cells ``|det M|`` subject to: the shortest nonzero vector of
    ``M @ lattice`` is >= ``min_image_distance`` (Å). Among the smallest supercells, picks
    the one with the largest shortest vector, then the smallest third successive minimum
    (most compact), then the lexicographically smallest HNF (w.r.t. the LLL basis).

    Args:
        lattice: float [3, 3] basis vectors in rows (Å) or a pymatgen ``Lattice``.
        min_image_distance: required minimum image distance, Å.
        max_det: search cap (parent cells). Beyond it, falls back to the diagonal
            supercell of the LLL-reduced basis with ``ceil(min_image_distance / h_i)``
            repeats along each basis vector (h_i: interplanar spacings), which is always
            valid but may be larger than necessary.
    Returns:
        int64 [3, 3] ``M`` with positive determinant and LLL-reduced rows;
        supercell lattice = ``M @ lattice``.
    """
    matrix = np.ascontiguousarray(_as_matrix(lattice), dtype=np.float64)
    target = float(min_image_distance)
    if not math.isfinite(target) or target < 0:
        raise ValueError(f"min_image_distance must be a finite number >= 0, got {min_image_distance!r}")
    # The vacancies of one host share its canonical lattice: search once per lattice.
    return _find_supercell_matrix_cached(matrix.tobytes(), target, int(max_det)).copy()


@lru_cache(maxsize=4096)
def _find_supercell_matrix_cached(matrix_bytes: bytes, target: float, max_det: int) -> np.ndarray:
    return _find_supercell_matrix(np.frombuffer(matrix_bytes, dtype=np.float64).reshape(3, 3), target, max_det)


def _find_supercell_matrix(matrix: np.ndarray, target: float, max_det: int) -> np.ndarray:
    reduced, u = lll_reduce(matrix)
    need = target - LENGTH_TOL
    if shortest_vector_length(reduced) >= need:
        return _reduce_supercell(np.eye(3, dtype=np.int64), matrix)

    # fallback: diagonal on the reduced basis; any nonzero vector has a coefficient
    # k_j != 0 and so length >= |k_j| n_j h_j >= target
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(reduced).T, axis=1)
    repeats = np.maximum(1, np.ceil(need / spacing - 1e-12)).astype(np.int64)
    fallback = np.diag(repeats) @ u
    n_fallback = int(np.prod(repeats))

    volume = abs(float(np.linalg.det(reduced)))
    # Hermite's bound in 3-D: λ1^3 <= sqrt(2) V, so V >= target^3 / sqrt(2)
    n_low = max(1, math.ceil(need**3 / (math.sqrt(2.0) * volume) - 1e-9))
    coeffs = _lattice_vectors_within(reduced, need)
    norms = np.linalg.norm(coeffs @ reduced, axis=1)
    short = _canonical_half(coeffs[(norms > LENGTH_TOL) & (norms < need)])

    for n in range(n_low, min(n_fallback, max_det) + 1):
        candidates = _valid_hnfs_cached(n, np.ascontiguousarray(short, dtype=np.int64).tobytes())
        if not candidates:
            continue
        if len(candidates) == 1:  # nothing to break a tie with
            return _reduce_supercell(_hnf_matrix(candidates[0]) @ u, matrix)
        best_key, best = None, None
        all_minima = _sublattice_minima(reduced, candidates, n * volume, need)
        for entries, minima in zip(candidates, all_minima):  # sorted
            hnf = _hnf_matrix(entries)
            if minima is None:
                minima = successive_minima(hnf @ reduced)
            key = (-round(minima[0], 4), round(minima[2], 4), -round(minima[1], 4))
            if best_key is None or key < best_key:
                best_key, best = key, hnf
        return _reduce_supercell(best @ u, matrix)
    return _reduce_supercell(fallback, matrix)


def _sublattice_minima(reduced: np.ndarray, candidates, volume: float, shortest: float) -> list:
    """:func:`successive_minima` of the sublattices ``hnf @ reduced`` of every candidate HNF
    (all of volume ``volume`` Å^3, shortest vector >= ``shortest`` Å), from one enumeration
    of the parent lattice instead of an LLL reduction and an enumeration per candidate.

    By Minkowski's second theorem (λ1 λ2 λ3 <= sqrt(2) V in 3-D), λ3 <= sqrt(2) V / shortest^2,
    so the parent vectors within that radius hold the three minima of every candidate. A
    parent vector ``k`` (integer coefficients in ``reduced``) is in the row lattice of the
    upper-triangular HNF ``[[a, b, c], [0, d, e], [0, 0, f]]`` iff ``a | k1``, ``d | k2 - b k1/a``
    and ``f | k3 - c k1/a - e (k2 - b k1/a)/d``. The minima are then picked as in
    :func:`successive_minima` (shortest, shortest independent of it, shortest independent of
    both; exact integer tests). The lengths are the same vectors' lengths computed in
    another basis (equal to ~1e-15 Å; the tie-break rounds them to 1e-4 Å). None for a
    candidate whose three minima are not found (then :func:`successive_minima` decides).
    """
    radius = math.sqrt(2.0) * volume / (shortest * shortest) * (1 + 1e-9) + LENGTH_TOL
    coeffs = _lattice_vectors_within(reduced, radius)
    norms = np.linalg.norm(coeffs @ reduced, axis=1)
    nonzero = norms > LENGTH_TOL
    coeffs, norms = coeffs[nonzero], norms[nonzero]
    order = np.argsort(norms, kind="stable")
    coeffs, norms = coeffs[order], norms[order]
    if len(coeffs) > 200_000:  # pathological cell: per-candidate search
        return [None] * len(candidates)
    hnf = np.array(candidates, dtype=np.int64)  # [c, 6]: a, b, c, d, e, f
    k1, k2, k3 = coeffs[None, :, 0], coeffs[None, :, 1], coeffs[None, :, 2]
    block = max(1, 1_000_000 // max(len(coeffs), 1))  # candidates per block: bounded memory
    rows = []
    for start in range(0, len(hnf), block):
        a, b, c, d, e, f = (hnf[start:start + block, i, None] for i in range(6))
        member = k1 % a == 0
        q1 = k1 // a
        r2 = k2 - q1 * b
        member &= r2 % d == 0
        member &= (k3 - q1 * c - (r2 // d) * e) % f == 0  # [block, m]
        rows.extend(member)
    out: list = []
    for row in rows:
        vectors, lengths = coeffs[row], norms[row]
        if len(vectors) < 3:
            out.append(None)
            continue
        cross = np.cross(vectors[0], vectors)
        parallel = ~np.any(cross != 0, axis=1)
        if parallel.all():
            out.append(None)
            continue
        second = int(np.argmin(parallel))
        det = vectors @ cross[second]
        if not np.any(det != 0):
            out.append(None)
            continue
        third = int(np.argmax(det != 0))
        out.append(np.array([float(lengths[0]), float(lengths[second]), float(lengths[third])]))
    return out


def lattice_points_in_supercell(supercell_matrix: np.ndarray) -> np.ndarray:
    """Integer translations (parent-basis coordinates) of the ``|det M|`` parent cells
    inside the supercell ``M``: one representative of each coset of Z^3 / (Z^3 M),
    chosen inside the supercell parallelepiped ``[0, 1)^3``.

    Returns:
        int64 [|det M|, 3], sorted by (L1 norm, then lexicographically): the origin first.
    """
    m = np.asarray(supercell_matrix, dtype=np.int64)
    n = int(round(abs(np.linalg.det(m))))
    if n == 0:
        raise ValueError("singular supercell matrix")
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) @ m
    lo, hi = corners.min(axis=0), corners.max(axis=0)
    grid = np.stack(np.meshgrid(*[np.arange(l, h + 1) for l, h in zip(lo, hi)], indexing="ij"), -1).reshape(-1, 3)
    frac = grid @ np.linalg.inv(m.astype(float))
    inside = np.all((frac > -1e-8) & (frac < 1 - 1e-8), axis=1)
    points = grid[inside]
    if len(points) != n:
        raise RuntimeError(f"found {len(points)} lattice points in a supercell of {n} cells")
    order = np.lexsort((points[:, 2], points[:, 1], points[:, 0], np.abs(points).sum(axis=1)))
    return points[order]
