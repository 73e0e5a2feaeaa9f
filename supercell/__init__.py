"""Vacancy supercells that are invariant by construction (structure-level code, no torch).

A vacancy is (host structure, site index), the index meaning the atom's position in the
structure as given. Predictions must not depend on which cell the host is written in
(primitive, conventional, any supercell, any origin or atom order), nor on which of
several symmetry-equivalent atoms is removed. Rather than hoping a model learns this,
adex canonicalises the input:

1. :func:`canonical_host`: spglib's standardized primitive cell of the host (atoms in a
   fixed order), the vacated atom mapped into it and replaced by the lowest-index atom of
   its crystallographic orbit. Equivalent inputs give the same primitive cell and site.
2. :func:`find_supercell_matrix`: the smallest supercell of that primitive cell whose
   shortest lattice vector (vacancy-image distance) is >= ``min_image_distance``, found
   by an exact search over Hermite normal forms with a geometric tie-break.
3. :func:`build_vacancy`: pristine supercell, vacated index, defected supercell and the
   correspondence maps (defected -> pristine twin, supercell atom -> primitive atom).
4. :func:`build_vacancy_graph`: one graph with the pristine and defected supercells as
   two node blocks, bonds within each, and twin correspondence edges between them. By
   default the bonds come from a neighbour search on the primitive host mapped onto the
   supercell, the defected bonds from the pristine ones (:mod:`adex.supercell.fast_graph`);
   ``method="naive"`` featurizes both supercells (same edges, tested).

Because every step is a deterministic function of the canonical primitive cell and
orbit, the expert's input is identical (up to floating-point noise of the symmetrized
positions) for all equivalent descriptions of a vacancy.
"""
from adex.supercell.graph import (
    EDGE_DEFECTED,
    EDGE_DEFECTED_TO_PRISTINE,
    EDGE_PRISTINE,
    EDGE_PRISTINE_TO_DEFECTED,
    ROLE_DEFECTED,
    ROLE_PRISTINE,
    VacancyGraph,
    build_vacancy_graph,
)
from adex.supercell.lattice import (
    find_supercell_matrix,
    lattice_points_in_supercell,
    lll_reduce,
    min_image_distance,
    shortest_vector_length,
    successive_minima,
)
from adex.supercell.sites import cif_site_labels, site_from_frac, site_from_label, sites_with_label
from adex.io import check_site
from adex.supercell.symmetry import CanonicalVacancy, HostSymmetry, SiteInfo, analyze_host, canonical_host, canonical_host_sites, distinct_sites
from adex.supercell.vacancy import SupercellSettings, VacancySupercell, build_vacancy, supercell_of

__all__ = [
    "CanonicalVacancy", "HostSymmetry", "SiteInfo", "SupercellSettings", "VacancyGraph", "VacancySupercell",
    "EDGE_PRISTINE", "EDGE_DEFECTED", "EDGE_DEFECTED_TO_PRISTINE", "EDGE_PRISTINE_TO_DEFECTED",
    "ROLE_PRISTINE", "ROLE_DEFECTED",
    "analyze_host", "build_vacancy", "build_vacancy_graph", "canonical_host", "canonical_host_sites", "check_site", "cif_site_labels",
    "distinct_sites", "find_supercell_matrix", "lattice_points_in_supercell", "lll_reduce",
    "min_image_distance", "shortest_vector_length", "site_from_frac", "site_from_label",
    "sites_with_label", "successive_minima", "supercell_of",
]
