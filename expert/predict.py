"""Prediction with a registered expert: load it with its exact advisors, featurize
hosts once, predict any number of vacancies in batches.

:func:`predict_sites` predicts many host files chunk by chunk in this process;
:func:`adex.expert.screening.predict_sites_dask` hands the same chunks to Dask workers
(``adex predict --workers N``), which run the same steps."""
from __future__ import annotations

import warnings
from dataclasses import replace

import numpy as np
import torch
from pymatgen.core import Structure

from adex.errors import StructureError
from adex.expert.advisor_features import cached_advisor_features
from adex.expert.data import PackedVacancies, VacancyDataset, featurize_vacancy
from adex.expert.loading import LoadedExpert
from adex.graphs import Featurizer

#: Vacancies per forward pass. Small batches are faster on CPU (they stay in cache) and
#: use less memory: on the 1,481 Witman vacancies 32 ran 1.11x faster than 256 at half the
#: peak memory (benchmarks/results/benchmarks.md). Predictions do not depend on it.
DEFAULT_BATCH_SIZE = 32
#: Vacancies per unit of work in :func:`predict_sites` (hosts are never split).
CHUNK_VACANCIES = 64


class InputWarning(UserWarning):
    """A prediction was made, but its input is outside what the expert knows."""


class ElementWarning(InputWarning):
    """A host contains an element absent from the expert's training data."""


class OxidationStateWarning(InputWarning):
    """No charge-balanced oxidation states were found for a host (the expert uses them)."""


#: Longest lattice vector (Å) of a host :func:`check_host_cell` accepts: beyond it a
#: "crystal" is a number-parsing accident, and lattice reduction loses all precision.
MAX_CELL_LENGTH = 1000.0
#: Smallest volume per atom (Å³) :func:`check_host_cell` accepts (the densest solids have ~5).
MIN_VOLUME_PER_ATOM = 1.0


def check_host_cell(host: Structure, host_id: str) -> None:
    """Refuse a host whose cell cannot be a crystal (StructureError naming ``host_id``):
    non-finite numbers, a lattice vector longer than :data:`MAX_CELL_LENGTH` or shorter
    than 0.5 Å (atoms overlapping their own images), or less than
    :data:`MIN_VOLUME_PER_ATOM` per atom (a flat or collapsed cell, e.g. an angle of 0° or 180°)."""
    lattice = np.asarray(host.lattice.matrix, dtype=float)
    if not (np.isfinite(lattice).all() and np.isfinite(host.frac_coords).all()):
        raise StructureError(f"{host_id}: the cell or the coordinates are not finite numbers")
    lengths = np.linalg.norm(lattice, axis=1)
    if lengths.max() > MAX_CELL_LENGTH:
        raise StructureError(f"{host_id}: lattice vector of {lengths.max():.4g} Å (more than {MAX_CELL_LENGTH:.0f} Å): "
                             "not a crystal cell")
    if lengths.min() < 0.5:
        raise StructureError(f"{host_id}: lattice vector of {lengths.min():.4g} Å: every atom would overlap its own image")
    volume = abs(float(np.linalg.det(lattice)))
    if not volume >= MIN_VOLUME_PER_ATOM * max(len(host), 1):
        raise StructureError(f"{host_id}: cell volume {volume:.4g} Å³ for {len(host)} atoms: a flat or collapsed cell, "
                             "not a crystal")


def featurize_host_sites(expert: LoadedExpert, host: Structure, sites: list[int], host_id: str) -> PackedVacancies:
    """Supercell graphs of several vacancies of one host (the host is read and its
    symmetry analysed once). The host's cell is checked first (:func:`check_host_cell`)."""
    from adex.supercell import SupercellSettings, canonical_host_sites

    check_host_cell(host, host_id)
    model = expert.model
    featurizer = Featurizer(model.featurizer_settings)
    settings = SupercellSettings.from_dict(model.supercell)
    canonical = canonical_host_sites(host, sites, settings.symprec)
    packed = PackedVacancies.concatenate(
        [featurize_vacancy(host, site, f"{host_id}#{site}", None, featurizer, settings, can)
         for site, can in zip(sites, canonical)]
    )
    warn_about_inputs(expert, packed, host_id)
    return packed


def input_warnings(expert: LoadedExpert, packed: PackedVacancies) -> list[tuple[type, str]]:
    """(category, message) of every caveat about the hosts of ``packed``: elements the
    expert never saw in training, and hosts without charge-balanced oxidation states (for
    an expert that reads them). Messages do not name the host."""
    from pymatgen.core.periodic_table import Element

    model = expert.model
    out: list[tuple[type, str]] = []
    unseen = sorted({Element.from_Z(int(z)).symbol for z in np.unique(packed.prim_numbers)} - set(model.training_elements))
    if model.training_elements and unseen:
        out.append((ElementWarning, f"element(s) {', '.join(unseen)} never seen in the expert's training data; "
                                    "the prediction is an extrapolation"))
    if model.reads_oxidation_states and np.isnan(packed.prim_oxidation).any():
        out.append((OxidationStateWarning, "no charge-balanced oxidation states found (bond valence and composition "
                                           "guesses failed); predicted with oxidation states marked unknown"))
    return out


def warn_about_inputs(expert: LoadedExpert, packed: PackedVacancies, host_id: str) -> None:
    """Warn (once per host) about elements the expert never saw in training and about
    hosts without charge-balanced oxidation states (:func:`input_warnings`)."""
    for category, message in input_warnings(expert, packed):
        warnings.warn(f"{host_id}: {message}", category, stacklevel=3)


def featurize_files(expert: LoadedExpert, files: list[tuple[str, list[int]]]) -> list[PackedVacancies]:
    """Supercell graphs of ``(structure file, [site, ...])`` pairs, one PackedVacancies per
    file (ids ``"<file name>#<site>"``, in the order of its sites).

    Files that describe the same crystal (:func:`adex.io.read_hosts`: one CIF per vacancy,
    atoms reordered) are one host: its structure is built, its symmetry analysed and its
    graphs built once, and a vacancy that several files ask for is featurized once.

    Raises:
        StructureError: an unreadable file or a site out of range, naming the file.
    """
    from pathlib import Path

    from adex.io import read_hosts
    from adex.supercell import check_site

    hosts, host_of_file, atom_maps = read_hosts([path for path, _ in files])
    host_sites: dict[int, list[int]] = {}  # host -> its distinct vacated atoms, in order of first appearance
    position: dict[tuple[int, int], int] = {}  # (host, host atom) -> row in that host's graphs
    host_files: dict[int, list[str]] = {}
    for (path, sites), host, atom_map in zip(files, host_of_file, atom_maps):
        host = int(host)
        host_files.setdefault(host, []).append(Path(path).name)
        for site in sites:
            try:
                mapped = int(atom_map[check_site(atom_map, site)])  # atom_map: one entry per atom of the file
            except StructureError as exc:
                raise StructureError(f"{path}: {exc}") from None
            if (host, mapped) not in position:
                position[(host, mapped)] = len(host_sites.setdefault(host, []))
                host_sites[host].append(mapped)
    graphs = {}
    for host, sites in host_sites.items():
        names = host_files[host]
        name = names[0] + (f" (and {len(names) - 1} other file{'s' if len(names) > 2 else ''} of the same crystal)"
                           if len(names) > 1 else "")
        graphs[host] = featurize_host_sites(expert, hosts[host], sites, name)
    out = []
    for (path, sites), host, atom_map in zip(files, host_of_file, atom_maps):
        host = int(host)
        packed = graphs[host].subset([position[(host, int(atom_map[site]))] for site in sites])
        packed.graphs.ids = np.array([f"{Path(path).name}#{site}" for site in sites])
        out.append(packed)
    return out


def _prediction_cache_entry(expert: LoadedExpert, path: str, sites: list[int]):
    """The cache file of ``(path, sites)`` (a ``Path``), or None if the file cannot be read
    (the structure reader then names the problem)."""
    import hashlib
    from pathlib import Path

    from adex.expert.data import GRAPH_FORMAT_VERSION
    from adex.paths import cache_dir

    model = expert.model
    try:
        content = Path(path).read_bytes()
    except OSError:
        return None
    settings = repr(sorted(model.supercell.items()))
    key = hashlib.sha256(b"|".join([content, ",".join(map(str, sites)).encode(), GRAPH_FORMAT_VERSION.encode(),
                                    model.featurizer_settings.fingerprint().encode(), settings.encode()])).hexdigest()
    return cache_dir() / "predict" / key[:2] / f"{key[2:26]}.arrays"


def cached_files(expert: LoadedExpert, files: list[tuple[str, list[int]]]) -> list[PackedVacancies]:
    """:func:`featurize_files` through a content-addressed cache, one entry per file.

    The key is the sha256 of the file's bytes, the sites, the featurizer fingerprint, the
    supercell settings and the graph format version, so an edited file or any changed
    setting misses. Entries (:meth:`PackedVacancies.to_bytes`, with a sha256 of their
    content: a damaged entry is featurized again and rewritten) are written atomically under
    ``$ADEX_HOME/cache/predict`` (two processes filling the same entry write identical
    bytes); a hit skips reading, symmetry, oxidation states and graph construction; the
    misses are featurized together (files of one crystal as one host).
    """
    from pathlib import Path

    from adex.fileio import atomic_write_bytes, unpack_arrays

    entries = [_prediction_cache_entry(expert, path, sites) for path, sites in files]
    parts: list[PackedVacancies | None] = [None] * len(files)
    for k, ((path, sites), entry) in enumerate(zip(files, entries)):
        if entry is None or not entry.is_file():
            continue
        try:  # entries carry a checksum (adex.fileio.pack_arrays): a damaged one is rebuilt, never trusted
            packed = PackedVacancies.from_arrays(unpack_arrays(entry.read_bytes(), require_checksum=True))
        except Exception:
            continue
        if [str(i) for i in packed.ids] == [f"{Path(path).name}#{s}" for s in sites]:
            warn_about_inputs(expert, packed, Path(path).name)
            parts[k] = packed
    misses = [k for k in range(len(files)) if parts[k] is None]
    if misses:
        for k, packed in zip(misses, featurize_files(expert, [files[k] for k in misses])):
            parts[k] = packed
            if entries[k] is not None:
                atomic_write_bytes(entries[k], packed.to_bytes())
    return parts


def potential_energies(expert: LoadedExpert, packed: PackedVacancies, cache: bool = False) -> dict:
    """The potential's vacancy energies (eV) [B] of every vacancy of ``packed``, once per kind
    the members add: ``{(relaxation, relaxation_steps): energies}`` ({} when no member
    reads a potential; ``Expert.potential_kind``)."""
    from adex.expert.ensemble import potential_kinds

    kinds = potential_kinds(expert.model)
    if not kinds:
        return {}
    from adex.expert.potential import potential_advisor, potential_supercell, vacancy_energies
    from adex.supercell import SupercellSettings

    potential = potential_advisor(expert.advisors)
    settings = SupercellSettings.from_dict(expert.model.supercell)
    return {kind: vacancy_energies(*potential, packed, potential_supercell(settings, kind[2]), use_cache=cache,
                                   relaxation=kind[0], relaxation_steps=kind[1]) for kind in kinds}


def member_batch(batch, member, energies: dict, rows: np.ndarray | None = None):
    """``batch`` as ``member`` reads it: with the potential's energies of its kind (rows
    ``rows`` of :func:`potential_energies`' arrays, all of them if None) as
    ``potential_delta`` when it reads one, else unchanged."""
    if member.potential_kind is None:
        return batch
    delta = energies[member.potential_kind]
    delta = delta if rows is None else delta[rows]
    return replace(batch, potential_delta=torch.from_numpy(delta.astype(np.float32)))


@torch.no_grad()
def predict_packed_members(expert: LoadedExpert, packed: PackedVacancies, batch_size: int = DEFAULT_BATCH_SIZE,
                           cache: bool = False) -> np.ndarray:
    """dH (eV) of every member for every vacancy of ``packed``: float64 [M, B] (M = 1
    for a single expert). Featurization and advisors run once for all members; the
    advisors' host embeddings go through :func:`cached_advisor_features` (in memory, and
    with ``cache`` on disk too); the potential's vacancy energies run once per kind the
    members add (:func:`potential_energies`)."""
    from adex.expert.ensemble import as_members

    features = [cached_advisor_features(entry, model, packed, persistent=cache) for entry, model in expert.advisors]
    members = as_members(expert.model)
    energies = potential_energies(expert, packed, cache)
    dataset = VacancyDataset(expert.model.prepare(packed), features)
    out = [[] for _ in members]
    for start in range(0, len(dataset), batch_size):
        idx = np.arange(start, min(start + batch_size, len(dataset)))
        batch = dataset.batch(idx)
        for k, member in enumerate(members):
            out[k].append(member.predict(member_batch(batch, member, energies, idx)).double().numpy())
    return np.stack([np.concatenate(parts) if parts else np.zeros(0) for parts in out])


def predict_packed(expert: LoadedExpert, packed: PackedVacancies, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """dH (eV) for every vacancy of ``packed`` (the member mean for an ensemble): float64 [B]."""
    return predict_packed_members(expert, packed, batch_size).mean(0)


# --------------------------------------------------------------------------- many hosts
def predict_chunk(expert: LoadedExpert, chunk: list[tuple[str, list[int]]], batch_size: int = DEFAULT_BATCH_SIZE,
                  cache: bool = False, domain: bool = False):
    """Read, featurize (:func:`featurize_files`, with ``cache`` :func:`cached_files`) and
    predict one chunk of files in this process: ``[(path, sites, members [M, S], caveats,
    domain inputs)]``, caveats the file's :func:`input_warnings` messages joined by ``"; "``
    ("" if none); with ``domain`` the :class:`~adex.expert.domain.DomainInputs` of the file's
    vacancies (what the trust columns need, taken while the advisors' embeddings are in
    memory), else None. The Dask task :func:`adex.expert.screen_worker.predict_files_chunk`
    returns the same."""
    parts = cached_files(expert, chunk) if cache else featurize_files(expert, chunk)
    members = predict_packed_members(expert, PackedVacancies.concatenate(parts), batch_size, cache=cache)
    inputs = [None] * len(parts)
    if domain:
        from adex.expert.domain import domain_inputs

        inputs = [domain_inputs(expert, part, cache) for part in parts]
    bounds = np.cumsum([0, *(len(sites) for _, sites in chunk)])
    return [(path, sites, members[:, a:b], "; ".join(message for _, message in input_warnings(expert, part)), inputs_k)
            for (path, sites), a, b, part, inputs_k in zip(chunk, bounds[:-1], bounds[1:], parts, inputs)]


def host_chunks(jobs: list[tuple[str, list[int]]], chunk_vacancies: int = CHUNK_VACANCIES) -> list[list[tuple[str, list[int]]]]:
    """Consecutive hosts grouped into chunks of about ``chunk_vacancies`` sites (a host is
    never split, so its structure is read and its advisors run once)."""
    chunks, current, size = [], [], 0
    for path, sites in jobs:
        current.append((path, sites))
        size += len(sites)
        if size >= chunk_vacancies:
            chunks.append(current)
            current, size = [], 0
    return chunks + ([current] if current else [])


def collect_chunk(result, out: dict, caveats: dict | None = None, on_progress=None, domains: dict | None = None) -> None:
    """Store one predicted chunk (:func:`predict_chunk`'s list) into ``out``
    (``{(path, site): members [M]}``), ``caveats`` (``{path: text}``) and ``domains``
    (``{path: (sites, DomainInputs)}``), those if given, then report its vacancies to
    ``on_progress``; shared by every engine that predicts chunks."""
    for path, sites, members, notes, inputs in result:
        for k, site in enumerate(sites):
            out[(path, site)] = members[:, k]
        if caveats is not None:
            caveats[path] = notes
        if domains is not None and inputs is not None:
            domains[path] = (tuple(sites), inputs)
    if on_progress is not None:
        on_progress(sum(len(row[1]) for row in result))


def predict_sites(
    expert: LoadedExpert,
    jobs: list[tuple[str, list[int]]],
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress=None,
    chunk_vacancies: int | None = None,
    cache: bool = False,
    caveats: dict[str, str] | None = None,
    domains: dict | None = None,
) -> dict[tuple[str, int], np.ndarray]:
    """Vacancy formation enthalpies for many host files, in this process.

    Consecutive hosts are grouped into chunks of about ``chunk_vacancies`` sites (default
    :data:`CHUNK_VACANCIES`; a host is never split); each chunk is read, featurized and
    predicted (:func:`predict_chunk`) before the next, so memory stays bounded by the
    chunk, not the input. In parallel, on Dask: :func:`adex.expert.screening.predict_sites_dask`
    (the same result, plus ``workers`` and ``scheduler``; what ``adex predict --workers N``
    runs for N > 1).

    Args:
        jobs: ``(structure path, [site, ...])`` per host (0-based atom indices).
        on_progress: called with the number of vacancies finished, after each chunk.
        cache: keep featurized vacancies in the content-addressed cache
            (:func:`cached_files`); a second run over the same files skips featurization.
        caveats: if given, filled with ``{path: caveats}``: the :func:`input_warnings`
            messages of each host file joined by ``"; "`` ("" if none), so that a table
            of predictions can carry them (the warnings are also emitted as usual).
        domains: if given, filled with ``{path: (sites, DomainInputs)}`` of each host file
            (:func:`adex.expert.domain.domain_inputs`), for
            :func:`adex.expert.trust.table_trust` to add the trust columns without reading
            and featurizing the files again.

    Returns:
        ``{(path, site): member predictions float64 [M]}`` (eV; M = 1 for a single expert),
        in the order of ``jobs``.

    Raises:
        AdexError (e.g. StructureError) of the first failing host, with its file named.
    """
    out: dict[tuple[str, int], np.ndarray] = {}
    for chunk in host_chunks(jobs, chunk_vacancies or CHUNK_VACANCIES):
        collect_chunk(predict_chunk(expert, chunk, batch_size, cache, domains is not None), out, caveats, on_progress,
                      domains)
    return out
