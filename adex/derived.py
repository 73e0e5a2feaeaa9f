"""Files a downloaded dataset derives from its source, as the shipped data does.

* ``witman2023_vacancies/vacancies.csv`` from the CIFs read in file order and
  ``id_prop.csv`` (:func:`build_vacancies_csv`);
* ``oxide_bandgaps/id_prop.csv`` with repeated rows dropped, and CIFs without a row
  dropped (:func:`dedupe_id_prop`);
* ``mp_formation_energy/structures.tar.gz``: the source's CIFs packed
  (:func:`adex.archive.pack_structures`).

:func:`derive` runs the step of a dataset (if it has one) in its staging folder.
"""
from __future__ import annotations

import csv
import io
import os
import shutil
from pathlib import Path
from typing import Callable

from adex.catalog import PACK_DIR
from adex.errors import DataError

VACANCY_COLUMNS = ("id", "host", "site_label", "element", "frac_x", "frac_y", "frac_z", "n_atoms", "dH_eV")

Note = Callable[[str], None]


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return [row for row in csv.reader(handle) if row and row[0].strip()]


def _vacated_sites(paths: list[str]) -> list[tuple[str, float, float, float, int] | str]:
    """Element, fractional coordinates of atom 0 and atom count of each CIF (or an error).

    Read with ASE's CIF reader, coordinates as written (not wrapped into [0, 1): the
    shipped file has 1.000000 and -0.000000 where the CIF has them), atoms in file order.
    """
    import warnings

    import ase.io

    out: list[tuple[str, float, float, float, int] | str] = []
    for path in paths:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                atoms = ase.io.read(path, format="cif")
        except Exception as exc:  # parsers raise anything from ValueError to IndexError
            out.append(f"{path}: cannot parse as cif ({type(exc).__name__}: {exc})")
            continue
        if len(atoms) == 0 or not all(atoms.pbc) or atoms.cell.rank < 3:
            out.append(f"{path}: not a periodic 3-D crystal")
            continue
        x, y, z = (float(v) for v in atoms.get_scaled_positions(wrap=False)[0])
        out.append((atoms[0].symbol, x, y, z, len(atoms)))
    return out


def build_vacancies_csv(root: Path, workers: int | None = None, progress: bool = False) -> Path:
    """Write ``root/vacancies.csv`` from ``root/structures/*.cif`` and ``root/id_prop.csv``.

    One row per ``id_prop.csv`` row, in its order: ``id,host,site_label,element,
    frac_x,frac_y,frac_z,n_atoms,dH_eV``, where the vacated atom is atom 0 of the CIF as
    written (read with ASE, which keeps the file's order and coordinates; not
    :func:`adex.io.read_structure`, whose fast CIF path wraps coordinates into [0, 1)),
    ``host``/``site_label`` are the parts of the id around its first ``-`` and ``dH_eV``
    is copied verbatim. Reproduces the shipped file byte for byte.
    """
    from adex.progress import progress_bar

    rows = _read_rows(root / "id_prop.csv")
    paths = [str(root / "structures" / f"{row[0].strip()}.cif") for row in rows]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise DataError(f"witman2023_vacancies: {Path(missing[0]).name} is missing (named in id_prop.csv)")
    chunk = 64
    chunks = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    if workers is None:
        workers = min(os.cpu_count() or 1, 8) if len(paths) > 200 else 1
    results: list[tuple[str, float, float, float, int] | str] = []
    with progress_bar(disable=not progress) as bar:
        task = bar.add_task("reading CIFs", total=len(paths))
        if workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            import ase.io  # noqa: F401  (imported once here, inherited by forked workers)

            with ProcessPoolExecutor(workers) as pool:
                for part in pool.map(_vacated_sites, chunks):
                    results.extend(part)
                    bar.advance(task, len(part))
        else:
            for paths_chunk in chunks:
                part = _vacated_sites(paths_chunk)
                results.extend(part)
                bar.advance(task, len(part))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(VACANCY_COLUMNS)
    for row, site in zip(rows, results):
        if isinstance(site, str):
            raise DataError(f"witman2023_vacancies: cannot build vacancies.csv: {site}")
        vid, value = row[0].strip(), row[1].strip()
        host, _, label = vid.partition("-")
        element, x, y, z, n_atoms = site
        writer.writerow([vid, host, label, element, f"{x:.6f}", f"{y:.6f}", f"{z:.6f}", n_atoms, value])
    out = root / "vacancies.csv"
    with open(out, "w", newline="") as handle:
        handle.write(buffer.getvalue())
    return out


def dedupe_id_prop(root: Path) -> tuple[int, list[str]]:
    """Drop repeated rows of ``root/id_prop.csv`` and CIFs in ``root/structures`` without a row.

    Returns ``(number of rows dropped, names of the CIFs removed)``. The first occurrence
    of each row is kept, in order, bytes unchanged.
    """
    path = root / "id_prop.csv"
    seen: set[bytes] = set()
    kept: list[bytes] = []
    dropped = 0
    for line in path.read_bytes().splitlines(keepends=True):
        key = line.rstrip(b"\r\n").strip()
        if not key:
            continue
        if key in seen:
            dropped += 1
            continue
        seen.add(key)
        kept.append(line)
    path.write_bytes(b"".join(kept))
    ids = {line.split(b",", 1)[0].strip().decode("utf-8") for line in kept}
    structures = root / "structures"
    stray: list[str] = []
    if structures.is_dir():
        present = set()
        for cif in sorted(structures.iterdir()):
            if cif.suffix == ".cif" and cif.stem in ids:
                present.add(cif.stem)
            else:
                stray.append(cif.name)
                cif.unlink()
        lacking = sorted(ids - present)
        if lacking:
            raise DataError(f"{root.name}: no structure for {lacking[0]} (named in id_prop.csv)")
    return dropped, stray


# --------------------------------------------------------------------------- per dataset


def _derive_witman(stage: Path, note: Note, progress: bool) -> None:
    build_vacancies_csv(stage, progress=progress)


def _derive_oxide(stage: Path, note: Note, progress: bool) -> None:
    removed_rows, stray = dedupe_id_prop(stage)
    if removed_rows:
        note(f"dropped {removed_rows} repeated rows of id_prop.csv")
    for name in stray:
        note(f"dropped {name}: no row in id_prop.csv (stray duplicate)")


def _derive_mp(stage: Path, note: Note, progress: bool) -> None:
    from adex.archive import pack_structures

    source = stage / PACK_DIR / "structures"
    if not source.is_dir():
        raise DataError("mp_formation_energy: the archive holds no pretraindata/*.cif")
    byte_identical = pack_structures(source, stage / "structures.tar.gz")
    if not byte_identical:
        note("structures.tar.gz packed with zlib (GNU gzip not found): content-equal, not byte-identical")
    shutil.rmtree(stage / PACK_DIR)


# The derive step of each dataset of adex.catalog.CATALOG that has one (a behaviour, not
# a property of the table: the table stays pure data).
DERIVE_STEPS: dict[str, Callable[[Path, Note, bool], None]] = {
    "witman2023_vacancies": _derive_witman,
    "mp_formation_energy": _derive_mp,
    "oxide_bandgaps": _derive_oxide,
}


def derive(name: str, stage: Path, note: Note, progress: bool = False) -> None:
    """Build the derived files of dataset ``name`` in its staging folder ``stage``.

    ``note`` records what the step changed (e.g. rows dropped); ``progress``: show a
    progress bar for long steps.
    """
    step = DERIVE_STEPS.get(name)
    if step is not None:
        step(stage, note, progress)
