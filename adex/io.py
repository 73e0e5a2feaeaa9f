"""Reading crystal structures so that site indices mean the file's own atom order.

pymatgen's CIF parser regroups atoms by species, so "site 12" of a CIF read with it is
not the 13th atom written in the file. adex reads CIF (and extended XYZ) with ASE, which
keeps the written order, and converts to a pymatgen :class:`~pymatgen.core.Structure`.
Other formats (POSCAR/CONTCAR, ...) are read by pymatgen, which keeps their order.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from pymatgen.core import Lattice, Structure

from adex.errors import StructureError

_ASE_FORMATS = {".cif": "cif", ".mcif": "cif", ".extxyz": "extxyz", ".xyz": "extxyz"}
_CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha", "_cell_angle_beta", "_cell_angle_gamma")
_SYMOP_TAGS = ("_space_group_symop_operation_xyz", "_symmetry_equiv_pos_as_xyz")
_SPACE_GROUP_TAGS = ("_space_group_name_h-m_alt", "_symmetry_space_group_name_h-m", "_space_group_it_number",
                     "_symmetry_int_tables_number")


def _simple_p1_cif(text: str) -> tuple[np.ndarray, list[str], np.ndarray] | None:
    """Fast path for the common CIF: one data block, space group P1 (no symmetry
    operation but the identity), fractional coordinates, element type symbols, full
    occupancy, no uncertainties. Returns (cell [3, 3] Å, symbols [n], fractional
    coordinates [n, 3] wrapped into [0, 1)): ASE's cell (same orientation, same numbers),
    the file's atom order, and ASE's positions up to whole lattice vectors (ASE's own
    wrapping leaves some atoms at 1.0 rather than 0.0); or None for anything else (the
    caller then uses ASE). About 20x faster than ASE's general reader.
    """
    from pymatgen.core.periodic_table import Element

    if text.count("data_") != 1 or "\n;" in text or "\r" in text:
        return None
    scalars: dict[str, str] = {}
    loops: list[tuple[list[str], list[list[str]]]] = []
    lines = text.split("\n")
    i, n = 0, len(lines)
    while i < n:
        line = lines[i].strip()
        i += 1
        if not line or line.startswith("#") or line.startswith("data_"):
            continue
        if line.lower() == "loop_":
            tags: list[str] = []
            while i < n and lines[i].strip().startswith("_"):
                tags.append(lines[i].strip().lower())
                i += 1
            rows: list[list[str]] = []
            while i < n:
                row = lines[i].strip()
                if not row or row.startswith(("_", "loop_", "data_", "#")):
                    break
                rows.append([row] if tags[0] in _SYMOP_TAGS else row.split())
                i += 1
            loops.append((tags, rows))
        elif line.startswith("_"):
            parts = line.split(None, 1)
            if len(parts) != 2:
                return None  # value on the next line or a text field
            scalars[parts[0].lower()] = parts[1].strip().strip("'\"")
        else:
            return None
    atoms = symops = None
    for tags, rows in loops:
        if tags[0] in _SYMOP_TAGS:
            if len(tags) != 1:
                return None
            symops = rows
        elif "_atom_site_fract_x" in tags:
            atoms = (tags, rows)
    if atoms is None or any(t in scalars for t in ("_atom_site_fract_x", "_space_group_symop_operation_xyz")):
        return None
    if symops is not None:
        if [r[0].strip("'\"").replace(" ", "").lower() for r in symops] != ["x,y,z"]:
            return None
    elif any(t in scalars and scalars[t].replace(" ", "").lower() not in ("p1", "1") for t in _SPACE_GROUP_TAGS):
        return None
    try:
        cellpar = [float(scalars[t]) for t in _CELL_TAGS]
    except (KeyError, ValueError):
        return None
    tags, rows = atoms
    if "_atom_site_type_symbol" not in tags or any(len(r) != len(tags) for r in rows) or not rows:
        return None
    col = {t: k for k, t in enumerate(tags)}
    symbols = [r[col["_atom_site_type_symbol"]] for r in rows]
    if any(not Element.is_valid_symbol(s) for s in set(symbols)):
        return None
    try:
        frac = np.array([[float(r[col[f"_atom_site_fract_{a}"]]) for a in "xyz"] for r in rows])
        if "_atom_site_occupancy" in col and any(float(r[col["_atom_site_occupancy"]]) != 1.0 for r in rows):
            return None
    except ValueError:  # uncertainties "0.123(4)", "?" or "."
        return None
    frac = frac % 1.0
    if len(frac) > 2000:
        return None
    diff = frac[:, None, :] - frac[None, :, :]
    diff -= np.rint(diff)
    close = np.all(np.abs(diff) < 1e-3, axis=2)
    if np.count_nonzero(close) != len(frac):  # overlapping atoms: ASE decides what to do
        return None
    return cellpar_to_cell(cellpar), symbols, frac


def cellpar_to_cell(cellpar) -> np.ndarray:
    """Lattice vectors in rows (Å) float64 [3, 3] from (a, b, c in Å, alpha, beta, gamma in
    degrees): ``a`` along x, ``b`` in the xy plane. The same numbers as ASE's
    ``ase.geometry.cellpar_to_cell`` with its default orientation (the same formulas and
    the same exact 90° handling), in plain floats: ~20x faster for one cell.

    Raises:
        ValueError: angles that describe no cell.
    """
    from math import cos, pi, sin, sqrt

    a, b, c, alpha, beta, gamma = (float(v) for v in cellpar)
    eps = 2 * float(np.spacing(90.0))
    cos_alpha = 0.0 if abs(abs(alpha) - 90) < eps else cos(alpha * pi / 180.0)
    cos_beta = 0.0 if abs(abs(beta) - 90) < eps else cos(beta * pi / 180.0)
    if abs(gamma - 90) < eps:
        cos_gamma, sin_gamma = 0.0, 1.0
    elif abs(gamma + 90) < eps:
        cos_gamma, sin_gamma = 0.0, -1.0
    else:
        cos_gamma, sin_gamma = cos(gamma * pi / 180.0), sin(gamma * pi / 180.0)
    cx = cos_beta
    cy = (cos_alpha - cos_beta * cos_gamma) / sin_gamma
    cz_sqr = 1.0 - cx * cx - cy * cy
    if not cz_sqr >= 0:
        raise ValueError(f"cell angles {alpha}, {beta}, {gamma} describe no cell")
    return np.array([[a, 0.0, 0.0], [b * cos_gamma, b * sin_gamma, 0.0], [c * cx, c * cy, c * sqrt(cz_sqr)]])


def _from_ase(atoms, source: str) -> Structure:
    occupancy = atoms.info.get("occupancy") or {}
    for tag, occ in occupancy.items():
        total = sum(occ.values())
        if len(occ) > 1 or total < 1.0 - 1e-6:
            raise StructureError(
                f"{source}: disordered site (partial occupancy {dict(occ)}); "
                "adex needs an ordered structure"
            )
    if not np.all(atoms.pbc) or atoms.cell.rank < 3:
        raise StructureError(f"{source}: not a periodic 3-D crystal (no full unit cell)")
    return Structure(
        Lattice(np.asarray(atoms.cell[:], dtype=float)),
        atoms.get_chemical_symbols(),
        np.asarray(atoms.get_scaled_positions(wrap=False), dtype=float),
        coords_are_cartesian=False,
    )


def structure_from_text(text: str, fmt: str = "cif", source: str = "<string>") -> Structure:
    """Parse a structure from file contents, keeping the written atom order.

    Args:
        text: file contents.
        fmt: ``"cif"``, ``"extxyz"`` or ``"poscar"``.
        source: name used in error messages.
    """
    try:
        if fmt == "cif":
            simple = _simple_p1_cif(text)
            if simple is not None:
                cell, symbols, frac = simple
                return Structure(Lattice(cell), symbols, frac, coords_are_cartesian=False)
        if fmt in ("cif", "extxyz"):
            import ase.io

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                atoms = ase.io.read(io.StringIO(text), format=fmt)
            return _from_ase(atoms, source)
        return Structure.from_str(text, fmt=fmt)
    except StructureError:
        raise
    except Exception as exc:  # parsers raise anything from ValueError to IndexError
        detail = f"{type(exc).__name__}: {exc}" if str(exc) else "no complete structure found"
        raise StructureError(f"{source}: cannot parse as {fmt} ({detail})") from None


def read_structure(path: str | os.PathLike) -> Structure:
    """Read one ordered, periodic structure; site ``i`` is the file's ``i``-th atom.

    Raises:
        StructureError: missing or unreadable file, disorder, or no periodic cell.
    """
    path = Path(path)
    if not path.is_file():
        raise StructureError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix in _ASE_FORMATS:
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise StructureError(f"{path}: cannot read ({exc})") from None
        return structure_from_text(text, _ASE_FORMATS[suffix], source=str(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_file(path)
    except Exception as exc:
        raise StructureError(f"{path}: cannot parse ({type(exc).__name__}: {exc})") from None
    if not structure.is_ordered:
        raise StructureError(f"{path}: disordered sites (partial occupancy); adex needs an ordered structure")
    return structure


def _read_cell(path: Path) -> tuple[np.ndarray, list[str], np.ndarray, Structure | None]:
    """(lattice [3, 3] Å, symbols [n], fractional coordinates [n, 3], the Structure if it
    had to be built to read the file, else None). The fast P1 CIF path builds none."""
    if path.suffix.lower() in (".cif", ".mcif") and path.is_file():
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise StructureError(f"{path}: cannot read ({exc})") from None
        try:
            simple = _simple_p1_cif(text)
        except Exception:  # e.g. impossible cell angles: the general reader names the problem
            simple = None
        if simple is not None:
            cell, symbols, frac = simple
            return cell, symbols, frac, None
        structure = structure_from_text(text, "cif", source=str(path))
    else:
        structure = read_structure(path)
    return structure.lattice.matrix, [site.specie.symbol for site in structure], structure.frac_coords, structure


def read_hosts(paths) -> tuple[list[Structure], np.ndarray, list[np.ndarray]]:
    """Read structure files; files that describe the same crystal (identical lattice and
    atoms, written in any order: e.g. one CIF per vacancy with the vacated atom first)
    share one Structure, which is built once.

    Returns:
        (hosts: the distinct structures, in order of first appearance;
        host_of_file: int64 [n_files], index into ``hosts``;
        atom_maps: per file int64 [n_atoms of the file], the host atom of each file atom:
        site ``i`` of file ``f`` is site ``atom_maps[f][i]`` of ``hosts[host_of_file[f]]``).

    Files are the same crystal only if their parsed numbers are identical (no tolerance),
    so a shared host is exactly what each file would have given.

    Raises:
        StructureError: as :func:`read_structure`, naming the file.
    """
    import hashlib

    hosts: list[Structure] = []
    host_of_file: list[int] = []
    atom_maps: list[np.ndarray] = []
    seen: dict[bytes, tuple[int, np.ndarray]] = {}  # key -> (host, host atom of each sorted position)
    for path in paths:
        path = Path(path)
        lattice, symbols, frac, structure = _read_cell(path)
        lattice = np.ascontiguousarray(lattice, dtype=np.float64)
        frac = np.ascontiguousarray(frac, dtype=np.float64)
        names = np.array(symbols, dtype="U3")
        order = np.lexsort((frac[:, 2], frac[:, 1], frac[:, 0], names))
        key = hashlib.sha256(b"".join([lattice.tobytes(), names[order].tobytes(), frac[order].tobytes()])).digest()
        if key in seen:
            host, host_atoms_sorted = seen[key]
            atom_map = np.empty(len(order), dtype=np.int64)
            atom_map[order] = host_atoms_sorted
        else:
            if structure is None:
                structure = Structure(Lattice(lattice), symbols, frac, coords_are_cartesian=False)
            host = len(hosts)
            hosts.append(structure)
            seen[key] = (host, order.astype(np.int64))
            atom_map = np.arange(len(order), dtype=np.int64)
        host_of_file.append(host)
        atom_maps.append(atom_map)
    return hosts, np.array(host_of_file, dtype=np.int64), atom_maps


def check_site(structure, site: int) -> int:
    """Validate a site index of ``structure`` (or of any sequence with one entry per
    atom); returns it as ``int``.

    Raises:
        StructureError: ``"site 57 out of range: host has 20 atoms (0..19)"``.
    """
    n = len(structure)
    if isinstance(site, (bool, np.bool_)) or not isinstance(site, (int, np.integer)):
        raise StructureError(f"site {site!r} is not an integer atom index")
    if not 0 <= int(site) < n:
        raise StructureError(f"site {site} out of range: host has {n} atoms (0..{n - 1})")
    return int(site)
