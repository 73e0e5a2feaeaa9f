"""Delta-learning on a universal potential: unrelaxed vacancy energies from an advisor.

An advisor that is an interatomic potential (CHGNet: :meth:`CHGNetAdvisor.total_energies`)
can do more than embed the host: it gives the energy of breaking the vacated atom's
bonds. For vacancy ``b``

    dE_b = E(defected supercell) - E(pristine supercell)    (eV)

at the unrelaxed positions of the canonical supercell the expert's graph is built on
(:func:`adex.supercell.build_vacancy`). With ``model.potential_delta`` the expert predicts

    dH = dE + reference[vacated element] + network residual

so the network learns only what the potential misses: the relaxation around the vacancy,
the vacated element's chemical potential and the DFT+U level of the data.

dE is the expensive part of such an expert (one potential evaluation of a ~100-atom
supercell per vacancy, ~0.3 s on one CPU core), so it is cached, content-addressed:
one entry per (advisor files, canonical primitive host, vacated primitive atom,
supercell settings) under ``$ADEX_HOME/cache/potential`` (pristine supercell energies
likewise, per host and supercell), written atomically; a damaged entry is recomputed.
"""
from __future__ import annotations

import functools
import hashlib
import json

import numpy as np

from adex.errors import ConfigError

CACHE_FORMAT = 1  # bump when the meaning of a cached energy changes


def has_method(advisor, name: str) -> bool:
    """Whether an advisor model has the method ``name``; a :class:`adex.checkpoint.LazyModel`
    is answered from its stored class, not loaded."""
    from adex.checkpoint import LazyModel

    kind = advisor.model_class if isinstance(advisor, LazyModel) else type(advisor)
    return callable(getattr(kind, name, None))


def computes_energies(advisor) -> bool:
    """Whether an advisor model is a potential (has ``total_energies(structures)``), without
    loading a :class:`adex.checkpoint.LazyModel`."""
    return has_method(advisor, "total_energies")


def potential_advisor(advisors: list) -> tuple:
    """The first ``(registry entry, model)`` of ``advisors`` that computes energies.

    Raises:
        ConfigError: none does.
    """
    for entry, model in advisors:
        if computes_energies(model):
            return entry, model
    names = ", ".join(str(entry.ref) for entry, _ in advisors) or "none"
    raise ConfigError("model.potential_delta needs a universal-potential advisor that computes energies "
                      f"(e.g. chgnet: adex advisor import chgnet) among the advisors (got: {names})")


def potential_supercell(settings, min_image_distance: float = 0.0):
    """The supercell settings the potential's dE is computed in: ``settings`` (the graph's
    :class:`adex.supercell.SupercellSettings`) with its image distance raised to
    ``min_image_distance`` Å when that is larger (``model.potential_min_image_distance``)."""
    import dataclasses

    if min_image_distance <= settings.min_image_distance:
        return settings
    return dataclasses.replace(settings, min_image_distance=float(min_image_distance))


def vacancy_energies(entry, advisor, packed, settings, batch_size: int = 16, use_cache: bool = True,
                     description: str = "potential: vacancy energies", relaxation: bool = False,
                     relaxation_steps: int = 0) -> np.ndarray:
    """Vacancy energies dE (eV) of every vacancy of ``packed``: float64 [B], unrelaxed or,
    with ``relaxation``, with the defected supercell relaxed at fixed cell first: one
    steepest-descent line search (``relaxation_steps`` 0: ``advisor.relaxed_energies``,
    ~5x the cost) or ``relaxation_steps`` FIRE steps (``advisor.fire_relaxed_energies``,
    ``relaxation_steps + 1`` force evaluations); each kind cached apart. The pristine
    supercell is not relaxed (the hosts are DFT-relaxed; 20 FIRE steps lowered the one
    host checked, 0009491, by 1e-4 eV).

    Args:
        entry: the advisor's registry entry (its file hashes key the cache; an entry
            without recorded files is never cached).
        advisor: the loaded potential (``total_energies(structures) -> eV [n]``).
        packed: :class:`adex.expert.data.PackedVacancies` (canonical primitive hosts).
        settings: :class:`adex.supercell.SupercellSettings` of the supercells (those of
            ``packed``'s graphs).
        use_cache: read and fill ``$ADEX_HOME/cache/potential``.
    """
    from adex.expert.advisor_features import advisor_identity, host_digest
    from adex.fileio import atomic_write_bytes, pack_arrays, unpack_arrays
    from adex.paths import cache_dir
    from adex.progress import progress_bar
    from adex.supercell import build_vacancy

    if relaxation_steps < 0:
        raise ConfigError(f"relaxation steps must be >= 0, got {relaxation_steps}")
    if relaxation_steps and not relaxation:
        raise ConfigError("relaxation steps need relaxation (model.potential_relaxation)")
    # the advisor's method for the defected supercells' energies, and their cache kind
    if not relaxation:
        method, vacancy_kind = "total_energies", "v"
    elif relaxation_steps:
        method, vacancy_kind = "fire_relaxed_energies", f"vf{relaxation_steps}"
    else:
        method, vacancy_kind = "relaxed_energies", "vr"
    if relaxation and not has_method(advisor, method):  # checked on the class: a cached run never loads the advisor
        raise ConfigError(f"model.potential_relaxation needs a potential with forces ({method}); {type(advisor).__name__} has none")
    n = len(packed)
    sites = packed.vacated_primitive_sites
    hosts = [host_digest(packed, b) for b in range(n)]
    settings_key = json.dumps(settings.to_dict(), sort_keys=True)
    identity = advisor_identity(entry) if use_cache else ""
    folder = cache_dir() / "potential" / hashlib.sha256(identity.encode()).hexdigest()[:24] if identity else None

    def entry_path(kind: str, text: str):
        digest = hashlib.sha256(f"{kind}|{text}|{settings_key}|{CACHE_FORMAT}".encode()).hexdigest()
        return None if folder is None else folder / digest[:2] / f"{kind}{digest[2:26]}.arrays"

    def read(path) -> float | None:
        if path is None or not path.is_file():
            return None
        try:
            value = unpack_arrays(path.read_bytes())["energy"]
        except Exception:  # a damaged entry is recomputed, never trusted
            return None
        return float(value[0]) if value.shape == (1,) and np.isfinite(value[0]) else None

    def write(path, value: float) -> None:
        if path is not None:
            atomic_write_bytes(path, pack_arrays({"energy": np.array([value], dtype=np.float64)}))

    out = np.full(n, np.nan)
    todo: dict[tuple[str, int], list[int]] = {}  # (host, site) -> vacancies
    for b in range(n):
        key = (hosts[b], int(sites[b]))
        cached = read(entry_path(vacancy_kind, f"{key[0]}|{key[1]}"))
        if cached is None:
            todo.setdefault(key, []).append(b)
        else:
            out[b] = cached
    if not todo:
        return out
    vacancies = {key: build_vacancy(packed.primitive_structure(bs[0]), key[1], settings) for key, bs in todo.items()}
    pristine_keys = {key: f"{key[0]}|{vac.supercell_matrix.tobytes().hex()}" for key, vac in vacancies.items()}
    pristine_energy = {text: read(entry_path("p", text)) for text in set(pristine_keys.values())}
    pristine_todo = {}  # text -> structure
    for key, text in pristine_keys.items():
        if pristine_energy[text] is None and text not in pristine_todo:
            pristine_todo[text] = vacancies[key].pristine
    defected_energies = getattr(advisor, method)
    if relaxation_steps:
        defected_energies = functools.partial(defected_energies, steps=relaxation_steps)
    pristine_jobs, vacancy_jobs = list(pristine_todo.items()), list(vacancies)
    with progress_bar() as progress:  # pristine supercells first, so each vacancy is stored as soon as it is known
        task = progress.add_task(description, total=len(pristine_jobs) + len(vacancy_jobs))
        for start in range(0, len(pristine_jobs), batch_size):
            chunk = pristine_jobs[start:start + batch_size]
            for (text, _), energy in zip(chunk, advisor.total_energies([s for _, s in chunk])):
                pristine_energy[text] = float(energy)
                write(entry_path("p", text), float(energy))
            progress.advance(task, len(chunk))
        for start in range(0, len(vacancy_jobs), batch_size):
            chunk = vacancy_jobs[start:start + batch_size]
            for key, energy in zip(chunk, defected_energies([vacancies[k].defected for k in chunk])):
                delta = float(energy) - pristine_energy[pristine_keys[key]]
                write(entry_path(vacancy_kind, f"{key[0]}|{key[1]}"), delta)
                out[todo[key]] = delta
            progress.advance(task, len(chunk))
    return out
