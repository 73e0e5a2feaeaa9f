"""Advisor features of vacancies: each advisor embeds every distinct host once, and the
per-atom / per-crystal embeddings are gathered onto the vacancies' supercell nodes.

:func:`compute_advisor_features` runs the advisor; :func:`cached_advisor_features` does
the same through a content-addressed per-host cache (``$ADEX_HOME/cache/advisors``),
used by ``adex predict --cache`` and, for slow deterministic advisors, by training.
Both training and prediction import this module (neither imports the other).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
from pymatgen.core import Structure

from adex.expert.data import AdvisorFeatures, PackedVacancies
from adex.graphs import Featurizer, PackedGraphs, _ranges


def unique_hosts(packed: PackedVacancies) -> tuple[np.ndarray, np.ndarray]:
    """(first vacancy of each distinct primitive host [U], host index of every vacancy [B]).

    Vacancies of the same host share its canonical primitive cell (bit-identical arrays),
    so advisors need to run once per host, not once per vacancy.
    """
    keys: dict[bytes, int] = {}
    first, inverse = [], np.empty(len(packed), dtype=np.int64)
    for b in range(len(packed)):
        key = _host_bytes(packed, b)
        if key not in keys:
            keys[key] = len(first)
            first.append(b)
        inverse[b] = keys[key]
    return np.asarray(first, dtype=np.int64), inverse


def host_bytes(lattice: np.ndarray, numbers: np.ndarray, frac: np.ndarray) -> bytes:
    """A canonical primitive host, bit for bit: lattice float64 [3, 3] Å, atomic numbers
    int64 [n], fractional coordinates float64 [n, 3] (the identity of a host for advisors
    and their cache)."""
    return b"".join(np.ascontiguousarray(a, dtype=dtype).tobytes()
                    for a, dtype in ((lattice, np.float64), (numbers, np.int64), (frac, np.float64)))


def _host_bytes(packed: PackedVacancies, b: int) -> bytes:
    """:func:`host_bytes` of vacancy ``b``'s host."""
    sl = slice(packed.prim_ptr[b], packed.prim_ptr[b + 1])
    return host_bytes(packed.prim_lattice[b], packed.prim_numbers[sl], packed.prim_frac[sl])


def distinct_hosts(packed: PackedVacancies) -> tuple[list[Structure], list[str], np.ndarray]:
    """The distinct primitive hosts of ``packed`` (structures [U], ids of their first
    vacancy [U]) and the host index of every vacancy [B]: what an advisor runs on."""
    first, inverse = unique_hosts(packed)
    return [packed.primitive_structure(int(b)) for b in first], [str(packed.ids[b]) for b in first], inverse


def per_vacancy_features(ref: str, atom: np.ndarray, crystal: np.ndarray, sizes, inverse: np.ndarray) -> AdvisorFeatures:
    """Lay out advisor embeddings of the distinct hosts (atom [sum n_u, d], crystal [U, d];
    ``sizes`` int [U], atoms per host) per vacancy (atom rows follow ``prim_ptr``)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    starts = np.r_[0, np.cumsum(sizes)[:-1]]
    rows = _ranges(starts[inverse], sizes[inverse])  # the host's atom rows for every vacancy, in order
    return AdvisorFeatures(ref, np.asarray(atom, dtype=np.float32)[rows], np.asarray(crystal, dtype=np.float32)[inverse])


def compute_advisor_features(advisor, ref: str, packed: PackedVacancies) -> AdvisorFeatures:
    """Run a (frozen) advisor once on each distinct primitive host of ``packed`` and lay
    its embeddings out per vacancy (atom rows follow ``prim_ptr``).

    Advisors with an ``embed_structures(structures) -> (atom [sum n, d], crystal [U, d])``
    method (e.g. a foundation model with its own graph construction) are called with the
    pymatgen structures; adex advisors get graphs from their own featurizer settings.
    """
    structures, ids, inverse = distinct_hosts(packed)
    atom, crystal = embed_hosts(advisor, structures, ids)
    return per_vacancy_features(ref, atom, crystal, [len(s) for s in structures], inverse)


def embed_hosts(advisor, structures: list[Structure], ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A frozen advisor's embeddings of whole hosts: (atom [sum n_u, d], crystal [U, d]),
    atom rows in the order of ``structures`` and of their sites."""
    from adex.checkpoint import LazyModel

    if not structures:
        raise ValueError("embed_hosts needs at least one structure")
    if isinstance(advisor, LazyModel):
        advisor = advisor.get()
    if hasattr(advisor, "embed_structures"):
        atom, crystal = advisor.embed_structures(structures)
        return np.asarray(atom, dtype=np.float32), np.asarray(crystal, dtype=np.float32)
    from adex.advisors.embed import run_advisor

    featurizer = Featurizer(advisor.featurizer_settings)
    emb = run_advisor(advisor, PackedGraphs.from_graphs([featurizer.featurize(s, i) for s, i in zip(structures, ids)], ids))
    return np.asarray(emb.atom, dtype=np.float32), np.asarray(emb.crystal, dtype=np.float32)


def advisor_identity(entry) -> str:
    """The identity of an advisor for content-addressed caches: the sha256 of each of its
    files (weights and model card) as recorded in its registry entry; "" if none are
    recorded (such an advisor is never cached)."""
    files = getattr(entry, "files", {}) or {}
    return "|".join(f"{name}:{info.get('sha256')}" for name, info in sorted(files.items()))


def host_digest(packed: PackedVacancies, b: int) -> str:
    """sha256 (hex) of vacancy ``b``'s canonical primitive host (the identity
    :func:`unique_hosts` uses)."""
    return hashlib.sha256(_host_bytes(packed, b)).hexdigest()


#: Host embeddings kept in memory by :func:`cached_advisor_features` (per process, least
#: recently used dropped first): enough for the hosts that neighbouring chunks of a table share.
EMBEDDING_MEMO_HOSTS = 512


_EMBEDDING_MEMO: "OrderedDict[tuple[str, str], tuple[np.ndarray, np.ndarray]]" = OrderedDict()


def cached_advisor_features(entry, advisor, packed: PackedVacancies, persistent: bool = True) -> AdvisorFeatures:
    """:func:`compute_advisor_features` through a content-addressed cache of per-host
    embeddings: the advisor runs only on hosts it has not embedded before.

    The key is the sha256 of the advisor's files (weights and model card, as recorded in
    its registry entry) and of the host's canonical primitive cell (:func:`host_digest`).
    The last :data:`EMBEDDING_MEMO_HOSTS` hosts are kept in memory; with ``persistent``
    entries (``atom`` float32 [n, d], ``crystal`` float32 [d]; :func:`adex.fileio.pack_arrays`
    files, with a checksum: a damaged entry is recomputed) are also written atomically under
    ``$ADEX_HOME/cache/advisors`` and read from there.
    An advisor embeds each host independently of the others, so a hit gives the same
    embeddings as a cold run (to float rounding: matrix kernels may sum in another order
    for another batch).
    """
    import hashlib

    from adex.expert.advisor_features import advisor_identity, embed_hosts, host_digest, per_vacancy_features, unique_hosts
    from adex.fileio import atomic_write_bytes, pack_arrays, unpack_arrays
    from adex.paths import cache_dir

    identity = advisor_identity(entry)
    if not identity:  # an advisor without recorded files cannot be cached safely
        return compute_advisor_features(advisor, entry.ref, packed)
    identity = hashlib.sha256(identity.encode()).hexdigest()[:24]
    folder = cache_dir() / "advisors" / identity
    first, inverse = unique_hosts(packed)
    sizes = packed.prim_ptr[first + 1] - packed.prim_ptr[first]  # atoms per distinct host
    digests = [host_digest(packed, int(b)) for b in first]
    paths = [folder / digest[:2] / f"{digest[2:26]}.arrays" for digest in digests]
    atoms: list = [None] * len(first)
    crystals: list = [None] * len(first)
    for u, path in enumerate(paths):
        stored = _EMBEDDING_MEMO.get((identity, digests[u]))
        if stored is not None:
            atoms[u], crystals[u] = stored
            if persistent and not path.is_file():  # embedded earlier in this process without the disk cache
                atomic_write_bytes(path, pack_arrays({"atom": atoms[u], "crystal": crystals[u]}))
            continue
        if persistent and path.is_file():
            try:
                stored = unpack_arrays(path.read_bytes(), require_checksum=True)
                atom, crystal = stored["atom"], stored["crystal"]
            except Exception:  # a damaged entry is recomputed, never trusted
                continue
            if atom.shape[0] == sizes[u]:
                atoms[u], crystals[u] = atom, crystal
    missing = [u for u in range(len(first)) if atoms[u] is None]
    if missing:  # only these hosts become pymatgen structures
        atom, crystal = embed_hosts(advisor, [packed.primitive_structure(int(first[u])) for u in missing],
                                    [str(packed.ids[first[u]]) for u in missing])
        starts = np.r_[0, np.cumsum(sizes[missing])]
        for k, u in enumerate(missing):
            atoms[u], crystals[u] = atom[starts[k]:starts[k + 1]].copy(), crystal[k].copy()
            if persistent:
                atomic_write_bytes(paths[u], pack_arrays({"atom": atoms[u], "crystal": crystals[u]}))
    for u in range(len(first)):
        _EMBEDDING_MEMO[(identity, digests[u])] = (atoms[u], crystals[u])
        _EMBEDDING_MEMO.move_to_end((identity, digests[u]))
    while len(_EMBEDDING_MEMO) > EMBEDDING_MEMO_HOSTS:
        _EMBEDDING_MEMO.popitem(last=False)
    return per_vacancy_features(entry.ref, np.concatenate(atoms), np.stack(crystals), sizes, inverse)
