"""Vacancy supercells built on the canonical primitive cell of the host."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import cached_property, lru_cache

import numpy as np
from pymatgen.core import Lattice, Structure

from adex.errors import ConfigError
from adex.supercell.lattice import (
    DEFAULT_MAX_DETERMINANT,
    find_supercell_matrix,
    lattice_points_in_supercell,
    min_image_distance,
)
from adex.supercell.symmetry import CanonicalVacancy, canonical_host

__all__ = ["SupercellSettings", "VacancySupercell", "build_vacancy", "supercell_of"]


@dataclass(frozen=True)
class SupercellSettings:
    """How a vacancy supercell is built; saved with every expert model.

    Attributes:
        min_image_distance: minimum distance between the vacancy and its periodic images
            (shortest nonzero supercell lattice vector), Å.
        symprec: spglib distance tolerance for the symmetry analysis, Å.
    """

    min_image_distance: float = 10.0
    symprec: float = 0.01

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_image_distance) and self.min_image_distance >= 0):
            raise ConfigError("supercell: min_image_distance must be a finite number >= 0 (Å)")
        if not (math.isfinite(self.symprec) and 0 < self.symprec <= 1.0):
            raise ConfigError("supercell: symprec must be in (0, 1] (Å)")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "SupercellSettings":
        from adex.config import build_dataclass

        return build_dataclass(cls, data, "supercell")


@dataclass(frozen=True)
class VacancySupercell:
    """A vacancy in a supercell of the host's canonical primitive cell.

    Atom order of ``pristine``: primitive-atom major, ``index = p * n_cells + t`` for
    primitive atom ``p`` and cell translation ``t`` (translation 0 is the origin cell).

    The supercell is index arithmetic on the primitive cell; the pymatgen structures
    ``pristine`` and ``defected`` are only built when asked for (the fast graph
    construction of :mod:`adex.supercell.fast_graph` never needs them).

    Attributes:
        canonical: the canonicalised vacancy (primitive cell, representative site, ...).
        supercell_matrix: int64 [3, 3], rows = supercell vectors in the primitive basis.
        n_cells: number of primitive cells in the supercell (``|det supercell_matrix|``).
        vacancy_index: index in ``pristine`` of the vacated atom (the representative
            primitive atom's copy in the origin cell).
        defected_to_pristine: int64 [n_prist - 1], pristine index of each defected atom.
        pristine_to_primitive: int64 [n_prist], primitive atom each pristine atom copies.
        image_distance: shortest distance between the vacancy and its images, Å.
        settings: the settings used.
        pristine: (property) the perfect supercell (``n_prist = n_prim * n_cells`` atoms).
        defected: (property) ``pristine`` without the vacated atom (``n_prist - 1``
            atoms, same order).
    """

    canonical: CanonicalVacancy
    supercell_matrix: np.ndarray
    n_cells: int
    vacancy_index: int
    defected_to_pristine: np.ndarray
    pristine_to_primitive: np.ndarray
    image_distance: float
    settings: SupercellSettings = field(default_factory=SupercellSettings)

    @cached_property
    def pristine(self) -> Structure:
        return supercell_of(self.canonical.primitive, self.supercell_matrix)[0]

    @cached_property
    def defected(self) -> Structure:
        pristine = self.pristine
        return Structure(pristine.lattice, _species(pristine)[self.defected_to_pristine].tolist(),
                         pristine.frac_coords[self.defected_to_pristine], coords_are_cartesian=False)

    @property
    def vacancy_element(self) -> str:
        return self.canonical.element


def supercell_of(primitive: Structure, matrix: np.ndarray) -> tuple[Structure, np.ndarray]:
    """Supercell ``matrix @ primitive.lattice`` with a documented, deterministic order.

    Returns:
        (supercell Structure, pristine_to_primitive int64 [n_prim * n_cells]); atom
        ``p * n_cells + t`` is primitive atom ``p`` translated by cell ``t`` of
        :func:`adex.supercell.lattice.lattice_points_in_supercell` (``t = 0``: origin);
        fractional coordinates wrapped into [0, 1).
    """
    matrix = np.asarray(matrix, dtype=np.int64)
    translations = lattice_points_in_supercell(matrix)  # [n_cells, 3], primitive basis
    n_cells, n_prim = len(translations), len(primitive)
    super_lattice = matrix @ primitive.lattice.matrix
    prim_frac = primitive.frac_coords  # [n_prim, 3]
    frac_prim_basis = (prim_frac[:, None, :] + translations[None, :, :]).reshape(-1, 3)
    frac = frac_prim_basis @ np.linalg.inv(matrix.astype(float))
    frac -= np.floor(frac)
    frac[frac >= 1.0 - 1e-12] = 0.0
    species = np.repeat(np.array([site.specie.symbol for site in primitive], dtype=object), n_cells)
    structure = Structure(Lattice(super_lattice), species.tolist(), frac, coords_are_cartesian=False)
    return structure, np.repeat(np.arange(n_prim, dtype=np.int64), n_cells)


def build_vacancy(
    host: Structure,
    site: int,
    settings: SupercellSettings | None = None,
    max_det: int = DEFAULT_MAX_DETERMINANT,
    canonical: CanonicalVacancy | None = None,
) -> VacancySupercell:
    """Build the canonical vacancy supercell of (host, site).

    The result depends only on the crystal and on the orbit of ``site`` (plus settings),
    not on the host cell, origin or atom order given.

    Args:
        host: host structure; ``site`` indexes its atoms as given.
        site: index of the vacated atom.
        settings: supercell settings (default :class:`SupercellSettings`).
        max_det: cap of the exact supercell search (primitive cells).
        canonical: ``canonical_host(host, site, settings.symprec)`` if already known
            (:func:`adex.supercell.canonical_host_sites` analyses a host once for many sites).
    Raises:
        StructureError: site out of range, disordered host, spglib failure.
    """
    settings = settings or SupercellSettings()
    if canonical is None:
        canonical = canonical_host(host, site, settings.symprec)
    primitive = canonical.primitive
    matrix = find_supercell_matrix(primitive.lattice, settings.min_image_distance, max_det=max_det)
    n_cells = int(round(abs(np.linalg.det(matrix))))
    n_pristine = len(primitive) * n_cells
    vacancy_index = canonical.site * n_cells  # translation 0 = origin cell
    keep = np.ones(n_pristine, dtype=bool)
    keep[vacancy_index] = False
    return VacancySupercell(
        canonical=canonical,
        supercell_matrix=matrix,
        n_cells=n_cells,
        vacancy_index=int(vacancy_index),
        defected_to_pristine=np.flatnonzero(keep).astype(np.int64),
        pristine_to_primitive=np.repeat(np.arange(len(primitive), dtype=np.int64), n_cells),
        image_distance=_image_distance(primitive.lattice.matrix, matrix),
        settings=settings,
    )


def _image_distance(lattice: np.ndarray, matrix: np.ndarray) -> float:
    """:func:`min_image_distance` of ``matrix @ lattice``, memoised (the distinct vacancies
    of a host share its primitive lattice and supercell matrix)."""
    lattice = np.ascontiguousarray(lattice, dtype=np.float64)
    matrix = np.ascontiguousarray(matrix, dtype=np.int64)
    return _image_distance_cached(lattice.tobytes(), matrix.tobytes())


@lru_cache(maxsize=1024)
def _image_distance_cached(lattice_bytes: bytes, matrix_bytes: bytes) -> float:
    lattice = np.frombuffer(lattice_bytes, dtype=np.float64).reshape(3, 3)
    matrix = np.frombuffer(matrix_bytes, dtype=np.int64).reshape(3, 3)
    return min_image_distance(lattice, matrix)


def _species(structure: Structure) -> np.ndarray:
    return np.array([site.specie.symbol for site in structure], dtype=object)
