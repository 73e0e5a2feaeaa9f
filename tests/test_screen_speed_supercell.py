"""Issue 28 (screen throughput): the supercell search's shortcuts (memoised valid HNFs, no
tie-break among a single candidate, integer independence tests in the successive minima,
memoised image distances) must choose exactly the supercells of the plain search."""
from __future__ import annotations

import tarfile

import numpy as np
import pytest

from adex.io import structure_from_text
from adex.supercell import analyze_host, build_vacancy, lattice
from adex.supercell.lattice import LENGTH_TOL, lll_reduce, min_image_distance, successive_minima

N_REAL = 40


def _naive_successive_minima(basis) -> np.ndarray:
    """The greedy search with a floating-point rank test (the code before issue 28)."""
    reduced, _ = lll_reduce(basis)
    radius = float(np.linalg.norm(reduced, axis=1).max())
    coeffs = lattice._lattice_vectors_within(reduced, radius)
    vectors = coeffs @ reduced
    norms = np.linalg.norm(vectors, axis=1)
    vectors, norms = vectors[norms > LENGTH_TOL], norms[norms > LENGTH_TOL]
    minima, chosen = [], []
    for idx in np.argsort(norms, kind="stable"):
        trial = np.array(chosen + [vectors[idx]])
        if np.linalg.matrix_rank(trial, tol=1e-8 * max(1.0, norms[idx]) ** len(trial)) == len(trial):
            chosen.append(vectors[idx])
            minima.append(float(norms[idx]))
            if len(chosen) == 3:
                break
    return np.array(minima)


def _naive_find_supercell_matrix(basis: np.ndarray, target: float, max_det: int = 2000) -> np.ndarray:
    """:func:`lattice._find_supercell_matrix` without memo or shortcut (the code before issue 28)."""
    reduced, u = lll_reduce(basis)
    need = target - LENGTH_TOL
    if lattice.shortest_vector_length(reduced) >= need:
        return lattice._reduce_supercell(np.eye(3, dtype=np.int64), basis)
    spacing = 1.0 / np.linalg.norm(np.linalg.inv(reduced).T, axis=1)
    repeats = np.maximum(1, np.ceil(need / spacing - 1e-12)).astype(np.int64)
    volume = abs(float(np.linalg.det(reduced)))
    n_low = max(1, int(np.ceil(need**3 / (np.sqrt(2.0) * volume) - 1e-9)))
    coeffs = lattice._lattice_vectors_within(reduced, need)
    norms = np.linalg.norm(coeffs @ reduced, axis=1)
    short = lattice._canonical_half(coeffs[(norms > LENGTH_TOL) & (norms < need)])
    for n in range(n_low, min(int(np.prod(repeats)), max_det) + 1):
        candidates = lattice._valid_hnfs(n, short)
        if not candidates:
            continue
        best_key, best = None, None
        for entries in sorted(candidates):
            hnf = lattice._hnf_matrix(entries)
            minima = _naive_successive_minima(hnf @ reduced)
            key = (-round(minima[0], 4), round(minima[2], 4), -round(minima[1], 4))
            if best_key is None or key < best_key:
                best_key, best = key, hnf
        return lattice._reduce_supercell(best @ u, basis)
    return lattice._reduce_supercell(np.diag(repeats) @ u, basis)


def _hand_built_lattices() -> list[np.ndarray]:
    out = []
    for a in (2.9, 4.05, 5.43):
        out += [np.eye(3) * a,  # simple cubic
                a / 2 * np.array([[0.0, 1, 1], [1, 0, 1], [1, 1, 0]]),  # fcc primitive
                a / 2 * np.array([[-1.0, 1, 1], [1, -1, 1], [1, 1, -1]]),  # bcc primitive
                np.array([[a, 0, 0], [-a / 2, a * 3**0.5 / 2, 0], [0, 0, 1.63 * a]])]  # hexagonal
    rng = np.random.default_rng(7)
    out += [np.diag(rng.uniform(2.5, 7.0, 3)) + rng.normal(0, 0.7, (3, 3)) for _ in range(8)]  # triclinic
    return out


@pytest.fixture(scope="module")
def real_lattices(data_dir) -> list[np.ndarray]:
    """Canonical primitive lattices of the first N_REAL crystals of the MP archive."""
    out = []
    with tarfile.open(data_dir / "mp_formation_energy" / "structures.tar.gz", "r|*") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".cif"):
                host = structure_from_text(archive.extractfile(member).read().decode(), "cif", source=member.name)
                out.append(analyze_host(host, 0.01).primitive.lattice.matrix.copy())
                if len(out) == N_REAL:
                    break
    return out


def _check(lattices) -> None:
    for basis in lattices:
        assert np.array_equal(successive_minima(basis), _naive_successive_minima(basis))
        for target in (8.0, 10.0):
            matrix = lattice._find_supercell_matrix(basis, target, 2000)
            assert np.array_equal(matrix, _naive_find_supercell_matrix(basis, target))
            assert lattice._find_supercell_matrix(basis, target, 2000).tobytes() == matrix.tobytes()  # memo hit


def test_supercell_search_equals_the_plain_search_on_hand_built_lattices() -> None:
    _check(_hand_built_lattices())


def test_supercell_search_equals_the_plain_search_on_real_hosts(real_lattices) -> None:
    _check(real_lattices)


def test_image_distance_memo_equals_the_direct_computation(mgo) -> None:
    for site in (0, 4):
        vac = build_vacancy(mgo, site)
        direct = min_image_distance(vac.canonical.primitive.lattice, vac.supercell_matrix)
        assert vac.image_distance == direct


def test_sublattice_minima_equal_successive_minima(real_lattices) -> None:
    """The one-enumeration minima of every candidate equal the per-candidate LLL ones."""
    checked = 0
    for basis in real_lattices[:20] + _hand_built_lattices():
        reduced, _ = lll_reduce(basis)
        volume = abs(float(np.linalg.det(reduced)))
        coeffs = lattice._lattice_vectors_within(reduced, 10.0)
        norms = np.linalg.norm(coeffs @ reduced, axis=1)
        short = lattice._canonical_half(coeffs[(norms > LENGTH_TOL) & (norms < 10.0 - LENGTH_TOL)])
        for n in range(max(1, int(1000 / (np.sqrt(2) * volume))), 200):
            candidates = sorted(lattice._valid_hnfs(n, short))
            if candidates:
                break
        fast = lattice._sublattice_minima(reduced, candidates, n * volume, 10.0 - LENGTH_TOL)
        for entries, minima in zip(candidates, fast):
            expected = successive_minima(lattice._hnf_matrix(entries) @ reduced)
            assert minima is not None and np.allclose(minima, expected, rtol=0, atol=1e-9)
            checked += 1
    assert checked > 50
