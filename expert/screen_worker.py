"""The worker side of a screen: load the expert once per process, and turn a chunk of
hosts into three Arrow tables (vacancies, hosts, errors).

:func:`screen_hosts` is the hot path. Per host: parse the text, analyse its symmetry once
(:func:`adex.supercell.analyze_host`, memoised: the distinct sites and their canonical
vacancies share it), build each distinct vacancy's graph; then all vacancies of the chunk
are predicted together (:func:`adex.expert.predict.predict_packed_members` under
``torch.inference_mode``), so each advisor (CHGNet included) embeds all the chunk's hosts
in batched calls. A host that cannot be read, analysed, featurized or predicted becomes a
row of the errors table with its reason; it never stops the chunk.

Workers keep the loaded expert in a per-process cache (:func:`worker_expert`), filled by
:class:`adex.expert.screen_dask.ScreenWorkerPlugin` when a Dask worker starts, so tasks
carry only the expert's reference, never the model. Nothing here imports Dask.
"""
from __future__ import annotations

import os
import re
import time
import traceback
from dataclasses import dataclass

import numpy as np

from adex.errors import AdexError

#: Vacancies per forward pass on a worker (predictions do not depend on it).
SCREEN_BATCH_SIZE = 32


@dataclass(frozen=True)
class ExpertSpec:
    """How a worker finds the expert: the exact reference (with version), the user
    registry root (None: ``$ADEX_HOME/registry``) and the identity the driver resolved
    (sha256 of the expert's and its advisors' files): a worker whose registry holds other
    files refuses to run rather than mixing experts in one screen."""

    ref: str
    registry: str | None
    identity: str
    torch_threads: int = 1


def expert_identity(loaded) -> str:
    """sha256 (hex) of the exact reference and files of an expert and of its advisors."""
    import hashlib

    from adex.expert.advisor_features import advisor_identity

    parts = [loaded.entry.ref, advisor_identity(loaded.entry)]
    parts += [f"{entry.ref}={advisor_identity(entry)}" for entry, _ in loaded.advisors]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


_EXPERTS: dict[ExpertSpec, object] = {}


def worker_expert(spec: ExpertSpec):
    """The :class:`~adex.expert.loading.LoadedExpert` of ``spec``, loaded once per process."""
    expert = _EXPERTS.get(spec)
    if expert is None:
        import torch

        from adex.expert.loading import load_expert
        from adex.registry import Registry

        if spec.torch_threads:
            torch.set_num_threads(spec.torch_threads)
        expert = load_expert(spec.ref, Registry(root=spec.registry))
        found = expert_identity(expert)
        if found != spec.identity:
            raise AdexError(f"worker pid {os.getpid()}: expert {spec.ref} has other files here than on the driver "
                            f"(identity {found[:12]} != {spec.identity[:12]}); workers need the same registry")
        _EXPERTS.clear()  # one expert per worker process at a time
        _EXPERTS[spec] = expert
    return expert


_TRUST: dict[int, object] = {}


def worker_trust(expert):
    """The :class:`~adex.expert.trust.TrustModel` of ``expert`` (None without a record),
    read once per loaded expert and checked against its advisors."""
    key = id(expert)
    if key not in _TRUST:
        from adex.expert.trust import expert_trust

        _TRUST.clear()
        _TRUST[key] = expert_trust(expert)
    return _TRUST[key]


def _trust_rows(expert, hosts, means: list) -> list | None:
    """Per host of ``hosts`` (each with ``packed`` and ``kept``), the trust columns of its
    vacancies (:func:`adex.expert.trust.apply_trust`): ``[(lo, hi, domain, in_domain,
    reasons)]``, arrays per vacancy and the host's out-of-domain reasons as one text
    (:func:`adex.expert.trust.host_reasons`); None for an expert without a trust record.
    The advisors' site embeddings come from the memo the prediction just filled."""
    trust = worker_trust(expert)
    if trust is None or not hosts:
        return None
    import pandas as pd

    from adex.expert.data import PackedVacancies
    from adex.expert.domain import domain_inputs
    from adex.expert.trust import apply_trust, host_reasons

    inputs = domain_inputs(expert, PackedVacancies.concatenate([p for h in hosts for p in h.packed]))
    frame, reasons = apply_trust(pd.DataFrame({"dH_pred_eV": np.concatenate(means)}), trust, inputs)
    columns = [frame[c].to_numpy() for c in ("dH_lo_eV", "dH_hi_eV", "domain", "in_domain")]
    bounds = np.cumsum([0] + [len(h.kept) for h in hosts])
    return [(*(c[a:b] for c in columns), host_reasons(reasons[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- errors
_REASONS = (
    (re.compile(r"isolated atom|no neighbour", re.I), "isolated atom (no neighbour within the cutoff)"),
    (re.compile(r"disordered|partial occupancy", re.I), "disordered sites (partial occupancy)"),
    (re.compile(r"overlapping atoms", re.I), "overlapping atoms"),
    (re.compile(r"spglib|space group not stable|primitive cell", re.I), "symmetry analysis failed"),
    (re.compile(r"cannot parse|cannot read|cannot decode|no complete structure", re.I), "unreadable structure file"),
    (re.compile(r"not a periodic", re.I), "not a periodic 3-D crystal"),
    (re.compile(r"element|embedding", re.I), "element unknown to the model"),
    (re.compile(r"out of range", re.I), "site out of range"),
)


def error_reason(stage: str, exc: BaseException | str) -> str:
    """A short category for the errors table (counted in the screen's summary)."""
    message = str(exc)
    for pattern, reason in _REASONS:
        if pattern.search(message):
            return reason
    return f"{stage}: {type(exc).__name__ if isinstance(exc, BaseException) else 'error'}"


def _message(exc: BaseException) -> str:
    if isinstance(exc, AdexError):
        return " ".join(str(exc).split())
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" at {os.path.basename(last[0].filename)}:{last[0].lineno}" if last else ""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}{where}"


# --------------------------------------------------------------------------- tables
#: Float trust columns of the vacancies table (:mod:`adex.expert.trust`; null for an expert
#: without a trust record), followed by the boolean ``in_domain``.
TRUST_FLOAT_COLUMNS = ("dH_lo_eV", "dH_hi_eV", "domain")


def schemas(ensemble: bool):
    """Arrow schemas of the three tables (``dH_std_eV`` only for an ensemble).

    vacancies: one row per distinct vacancy; ``dH_pred_eV`` (eV), its 90 % interval
    ``dH_lo_eV``/``dH_hi_eV`` (eV), ``domain`` (distance to the training sites, 1 = the
    typical held-out Witman vacancy) and ``in_domain`` (the last four null for an expert
    without a trust record). hosts: one row per predicted host; the lowest dH and its
    interval, ``max_domain`` over its vacancies, ``in_domain`` (all of them in domain) and
    ``domain_reasons`` ("" in domain). errors: one row per failed host or site.
    """
    import pyarrow as pa

    vacancy = [("host_id", pa.string()), ("formula", pa.string()), ("n_atoms", pa.int32()), ("site", pa.int32()),
               ("element", pa.string()), ("wyckoff", pa.string()), ("multiplicity", pa.int32()),
               ("defect", pa.string()), ("dH_pred_eV", pa.float64())]
    if ensemble:
        vacancy.append(("dH_std_eV", pa.float64()))
    vacancy += [(name, pa.float64()) for name in TRUST_FLOAT_COLUMNS] + [("in_domain", pa.bool_())]
    vacancy.append(("expert", pa.string()))
    host = [("host_id", pa.string()), ("source", pa.string()), ("formula", pa.string()), ("n_atoms", pa.int32()),
            ("n_primitive", pa.int32()), ("space_group", pa.string()), ("space_group_number", pa.int16()),
            ("n_vacancies", pa.int32()), ("min_dH_eV", pa.float64()), ("min_defect", pa.string()),
            ("min_site", pa.int32()), ("min_wyckoff", pa.string()),
            ("min_dH_by_element", pa.map_(pa.string(), pa.float64())), ("min_dH_lo_eV", pa.float64()),
            ("min_dH_hi_eV", pa.float64()), ("max_domain", pa.float64()), ("in_domain", pa.bool_()),
            ("domain_reasons", pa.string()), ("caveats", pa.string()),
            ("time_s", pa.float64()), ("expert", pa.string())]
    error = [("host_id", pa.string()), ("source", pa.string()), ("site", pa.int32()), ("stage", pa.string()),
             ("reason", pa.string()), ("error_type", pa.string()), ("message", pa.string()), ("expert", pa.string())]
    return pa.schema(vacancy), pa.schema(host), pa.schema(error)


@dataclass
class ChunkResult:
    """What a worker returns for a chunk: three Arrow tables and statistics
    (``pid``, ``peak_rss_mb``, ``seconds``, ``hosts``, ``vacancies``)."""

    vacancies: object
    hosts: object
    errors: object
    stats: dict


@dataclass
class _Host:
    record: object  # HostInput
    structure: object = None
    sym: object = None
    sites: list = None  # [(site, SiteInfo)]
    packed: list = None  # PackedVacancies per kept site
    kept: list = None  # [(site, SiteInfo)] whose graphs were built
    seconds: float = 0.0
    members: np.ndarray | None = None  # [M, S]


def _select_sites(structure, sym, requested) -> list:
    """[(site, SiteInfo)]: every distinct site (``requested`` None) or the distinct orbits
    of the requested sites, each once, as the first requested member."""
    from adex.io import check_site
    from adex.supercell import SiteInfo

    orbit_of_input = sym.orbit[sym.input_to_primitive]  # [n], orbit id (primitive index) per input atom
    n = len(orbit_of_input)
    if requested is None:
        order = np.lexsort((np.arange(n), orbit_of_input))
        first = order[np.r_[True, orbit_of_input[order][1:] != orbit_of_input[order][:-1]]]
        chosen = np.sort(first)
    else:
        sites = [check_site(structure, s) for s in requested]
        seen, chosen = set(), []
        for s in sites:
            if int(orbit_of_input[s]) not in seen:
                seen.add(int(orbit_of_input[s]))
                chosen.append(s)
    out = []
    for site in chosen:
        prim = int(orbit_of_input[site])
        members = np.flatnonzero(orbit_of_input == prim).astype(np.int64)
        out.append((int(site), SiteInfo(int(members[0]), sym.primitive[prim].specie.symbol,
                                        f"{int(sym.multiplicity[prim])}{sym.wyckoff[prim]}",
                                        int(sym.multiplicity[prim]), members)))
    return out


def screen_hosts(expert, hosts, batch_size: int = SCREEN_BATCH_SIZE) -> ChunkResult:
    """Every requested distinct vacancy of ``hosts`` (:class:`~adex.expert.screen_inputs.HostInput`)
    predicted with ``expert``: a :class:`ChunkResult`."""
    import resource
    import socket

    import pyarrow as pa
    import torch

    from adex.expert.data import PackedVacancies, featurize_vacancy
    from adex.expert.ensemble import as_members, ensemble_statistics
    from adex.graphs import Featurizer
    from adex.io import structure_from_text
    from adex.supercell import SupercellSettings, analyze_host, canonical_host_sites

    start = time.perf_counter()
    model = expert.model
    ref = expert.entry.ref
    ensemble = len(as_members(model)) > 1
    featurizer = Featurizer(model.featurizer_settings)
    settings = SupercellSettings.from_dict(model.supercell)
    symprec = settings.symprec
    errors: list[tuple] = []  # (host_id, source, site, stage, reason, error_type, message)

    def fail(record, stage: str, exc: BaseException, site: int | None = None) -> None:
        errors.append((record.host_id, record.source, site, stage, error_reason(stage, exc), type(exc).__name__,
                       _message(exc)))

    work: list[_Host] = []
    stage_seconds = {"read": 0.0, "symmetry": 0.0, "featurize": 0.0}
    for record in hosts:
        t0 = time.perf_counter()
        host = _Host(record)
        if record.error:
            errors.append((record.host_id, record.source, None, "read", error_reason("read", record.error),
                           "StructureError", record.error))
            continue
        stage = "read"
        try:
            host.structure = structure_from_text(record.text, record.fmt, source=record.host_id)
            t1 = time.perf_counter()
            stage_seconds["read"] += t1 - t0
            stage = "symmetry"
            host.sym = analyze_host(host.structure, symprec)
            host.sites = _select_sites(host.structure, host.sym, record.sites)
            canonical = canonical_host_sites(host.structure, [s for s, _ in host.sites], symprec)  # memo hit
        except Exception as exc:  # noqa: BLE001 - a host never stops the chunk
            fail(record, stage, exc)
            continue
        t2 = time.perf_counter()
        stage_seconds["symmetry"] += t2 - t1
        host.packed, host.kept = [], []
        for (site, info), can in zip(host.sites, canonical):
            try:
                host.packed.append(featurize_vacancy(host.structure, site, f"{record.host_id}#{site}", None,
                                                     featurizer, settings, can))
                host.kept.append((site, info))
            except Exception as exc:  # noqa: BLE001
                fail(record, "featurize", exc, site)
        host.seconds = time.perf_counter() - t0
        stage_seconds["featurize"] += time.perf_counter() - t2
        if host.kept:
            work.append(host)

    # one prediction for the whole chunk: advisors embed all its distinct hosts in batched calls
    t0 = time.perf_counter()
    if work:
        try:
            with torch.inference_mode():
                members = _predict(expert, PackedVacancies.concatenate([p for h in work for p in h.packed]), batch_size)
            bounds = np.cumsum([0] + [len(h.kept) for h in work])
            for h, a, b in zip(work, bounds[:-1], bounds[1:]):
                h.members = members[:, a:b]
        except Exception:  # noqa: BLE001 - isolate the failing host(s)
            for h in work:
                try:
                    with torch.inference_mode():
                        h.members = _predict(expert, PackedVacancies.concatenate(h.packed), batch_size)
                except Exception as exc:  # noqa: BLE001
                    fail(h.record, "predict", exc)
    predict_seconds = time.perf_counter() - t0
    done = [h for h in work if h.members is not None]
    n_vac = sum(len(h.kept) for h in done)

    caveat_of = _caveats(expert, done)
    vac_cols: dict[str, list] = {k: [] for k in ("host_id", "formula", "n_atoms", "site", "element", "wyckoff",
                                                 "multiplicity", "defect", *TRUST_FLOAT_COLUMNS, "in_domain")}
    statistics = [ensemble_statistics(h.members) for h in done]
    means, stds = [m for m, _ in statistics], [s for _, s in statistics]
    t0 = time.perf_counter()
    try:
        trusted = _trust_rows(expert, done, means)
    except Exception as exc:  # noqa: BLE001 - the predictions stand; the trust columns stay null
        trusted = None
        for h in done:
            fail(h.record, "trust", exc)
    trust_seconds = time.perf_counter() - t0
    host_rows: dict[str, list] = {name: [] for name in schemas(ensemble)[1].names}
    for index, h in enumerate(done):
        mean = means[index]
        formula = h.structure.composition.reduced_formula
        n = len(h.kept)
        sites = [s for s, _ in h.kept]
        elements = [info.element for _, info in h.kept]
        vac_cols["host_id"] += [h.record.host_id] * n
        vac_cols["formula"] += [formula] * n
        vac_cols["n_atoms"] += [len(h.structure)] * n
        vac_cols["site"] += sites
        vac_cols["element"] += elements
        vac_cols["wyckoff"] += [info.wyckoff for _, info in h.kept]
        vac_cols["multiplicity"] += [info.multiplicity for _, info in h.kept]
        vac_cols["defect"] += [_defect(e) for e in elements]
        k = int(np.argmin(mean))
        if trusted is not None:
            lo, hi, domain, inside, reasons = trusted[index]
            for name, values in zip((*TRUST_FLOAT_COLUMNS, "in_domain"), (lo, hi, domain, inside)):
                vac_cols[name] += values.tolist()
            host_trust = {"min_dH_lo_eV": float(lo[k]), "min_dH_hi_eV": float(hi[k]), "max_domain": float(domain.max()),
                          "in_domain": bool(inside.all()), "domain_reasons": reasons}
        else:
            for name in (*TRUST_FLOAT_COLUMNS, "in_domain"):
                vac_cols[name] += [None] * n
            host_trust = dict.fromkeys(("min_dH_lo_eV", "min_dH_hi_eV", "max_domain", "in_domain", "domain_reasons"))
        by_element: dict[str, float] = {}
        for e, m in zip(elements, mean):
            by_element[e] = min(by_element.get(e, np.inf), float(m))
        row = {
            "host_id": h.record.host_id, "source": h.record.source, "formula": formula, "n_atoms": len(h.structure),
            "n_primitive": len(h.sym.primitive), "space_group": h.sym.space_group,
            "space_group_number": h.sym.space_group_number, "n_vacancies": n, "min_dH_eV": float(mean[k]),
            "min_defect": _defect(elements[k]), "min_site": sites[k], "min_wyckoff": h.kept[k][1].wyckoff,
            "min_dH_by_element": list(by_element.items()), **host_trust, "caveats": caveat_of.get(id(h), ""),
            "time_s": h.seconds + predict_seconds * n / max(n_vac, 1), "expert": ref,
        }
        for name, values in host_rows.items():
            values.append(row[name])
    vac_schema, host_schema, error_schema = schemas(ensemble)
    vac_cols["dH_pred_eV"] = np.concatenate(means) if means else np.zeros(0)
    if ensemble:
        vac_cols["dH_std_eV"] = np.concatenate(stds) if stds else np.zeros(0)
    vac_cols["expert"] = [ref] * n_vac
    vacancies = pa.table({name: pa.array(vac_cols[name], type=vac_schema.field(name).type) for name in vac_schema.names},
                         schema=vac_schema)
    host_table = pa.table({name: pa.array(values, type=host_schema.field(name).type) for name, values in host_rows.items()},
                          schema=host_schema)
    columns = list(zip(*errors)) if errors else [[] for _ in range(7)]
    error_table = pa.table({name: pa.array(list(values), type=error_schema.field(name).type)
                            for name, values in zip(error_schema.names[:-1], columns)} | {
                               "expert": pa.array([ref] * len(errors), type=pa.string())}, schema=error_schema)
    stats = {"pid": os.getpid(), "host": socket.gethostname(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
             "seconds": time.perf_counter() - start, "predict_seconds": predict_seconds, "trust_seconds": trust_seconds,
             **{f"{k}_seconds": v for k, v in stage_seconds.items()}, "hosts": len(hosts),
             "hosts_done": len(done), "vacancies": n_vac}
    return ChunkResult(vacancies, host_table, error_table, stats)


def _predict(expert, packed, batch_size: int) -> np.ndarray:
    from adex.expert.predict import predict_packed_members

    return predict_packed_members(expert, packed, batch_size)


def _caveats(expert, hosts) -> dict[int, str]:
    """``{id(host): caveats}``: the expert's input warnings per host joined by "; "."""
    try:
        from adex.expert.predict import input_warnings
    except ImportError:  # an older predict module without the function
        return {}
    out = {}
    for h in hosts:
        notes = input_warnings(expert, h.packed[0])
        if notes:
            out[id(h)] = "; ".join(message for _, message in notes)
    return out


def _defect(element: str) -> str:
    """``v_O``: the name :func:`adex.api.defect_name` gives (the API sits above this layer)."""
    return f"v_{element}"


def run_chunk(spec: ExpertSpec, hosts, batch_size: int = SCREEN_BATCH_SIZE) -> ChunkResult:
    """The Dask task: :func:`screen_hosts` with this worker's cached expert."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # input caveats go to the hosts table; library noise nowhere
        return screen_hosts(worker_expert(spec), hosts, batch_size)


def predict_files_chunk(spec: ExpertSpec, chunk, batch_size: int = SCREEN_BATCH_SIZE, cache: bool = False,
                        domain: bool = False):
    """The Dask task of :func:`adex.expert.screening.predict_sites_dask`:
    :func:`adex.expert.predict.predict_chunk` of one chunk of ``(structure path, [site, ...])``
    files with this worker's cached expert (library warnings silenced: the driver shows the
    caveats it returns). Errors are raised (the caller names the failing file)."""
    import warnings

    import torch

    from adex.expert.predict import predict_chunk

    expert = worker_expert(spec)
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        return predict_chunk(expert, chunk, batch_size, cache, domain)
