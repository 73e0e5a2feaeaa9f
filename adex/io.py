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
        raise StructureError(f"{source}: cannot parse as {fmt} ({type(exc).__name__}: {exc})") from None


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
