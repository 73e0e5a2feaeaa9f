"""How far to trust a prediction: calibrated intervals (:mod:`adex.expert.calibration`),
the applicability domain (:mod:`adex.expert.domain`) and the correction from a few DFT
numbers of the user's own (:mod:`adex.expert.correction`), composed for one expert.

A :class:`TrustModel` is built once per expert from its recipe's host-grouped
cross-validation (:func:`build_trust`: the held-out residuals of the per-compound folds, and
the Witman vacancies the expert was trained on as the domain's reference) and travels with
the model: :func:`register_trusted` registers a new version of the expert whose card holds
the record (``card["trust"]``: method, nominal coverage, scale model, bins and quantiles,
domain unit and threshold, host-offset prior, the CV it came from and the coverage it
achieved there) and whose extra file ``trust.arrays`` holds the domain's reference
embeddings. :func:`load_trust` reads it back (None for a model without one).

:func:`apply_trust` adds to a table of predictions the columns

* ``dH_lo_eV``, ``dH_hi_eV``: the interval (nominal coverage in the record, 90 %);
* ``domain`` (0 = a training site, 1 = the typical held-out vacancy in CV) and
  ``in_domain`` (False: unseen element or oxidation state, or ``domain`` above the
  threshold); :func:`domain_warnings` gives one line per out-of-domain host;
* with known labels: ``dH_model_eV`` (uncorrected), ``offset_eV`` (added), ``n_known``
  (labels of the host), ``dH_pred_eV`` corrected; the interval moves with the prediction
  and keeps its width (narrowing it by the offset model's posterior sd under-covered on the
  per-compound folds: 0.86 / 0.84 with 1 / 2 labels against 0.91 / 0.92 kept;
  benchmarks/trust_eval.py).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from adex.errors import ConfigError, DataError, RegistryError
from adex.expert.calibration import NOMINAL, IntervalCalibration, coverage_report, cross_conformal, fit_intervals
from adex.expert.correction import OffsetPrior, correct, vacancy_class
from adex.expert.domain import DomainInputs, DomainModel, calibrate, domain_inputs, held_out_domain

#: Card key of the trust record.
CARD_KEY = "trust"
#: Extra registry file with the domain's arrays.
ARRAYS_FILE = "trust.arrays"
#: File of the record when a trust model is saved to a folder.
RECORD_FILE = "trust.json"
#: Version of the record's layout.
FORMAT = 1
#: Quantile of held-out domain distances above which a vacancy is out of domain.
THRESHOLD_QUANTILE = 0.8
#: Columns :func:`apply_trust` adds (plus, with known labels, :data:`CORRECTION_COLUMNS`).
TRUST_COLUMNS = ("dH_lo_eV", "dH_hi_eV", "domain", "in_domain")
CORRECTION_COLUMNS = ("dH_model_eV", "offset_eV", "n_known")


class OutOfDomainWarning(UserWarning):
    """A host is outside the expert's applicability domain (one warning per host)."""


@dataclass
class TrustModel:
    intervals: IntervalCalibration
    domain: DomainModel
    offsets: OffsetPrior
    expert: str = ""  # the expert reference it was built for
    notes: dict | None = None

    # ------------------------------------------------------------------ storage
    def record(self) -> dict:
        return {"format": FORMAT, "expert": self.expert, "intervals": self.intervals.to_dict(),
                "domain": self.domain.record(), "host_offsets": self.offsets.record(), "notes": dict(self.notes or {})}

    @classmethod
    def from_record(cls, record: dict, arrays: dict) -> "TrustModel":
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ConfigError(f"not a trust record of format {FORMAT} (found {record.get('format') if isinstance(record, dict) else record!r})")
        return cls(IntervalCalibration.from_dict(record["intervals"]), DomainModel.from_record(record["domain"], arrays),
                   OffsetPrior.from_record(record["host_offsets"]), record.get("expert", ""), record.get("notes"))

    def arrays_bytes(self) -> bytes:
        from adex.fileio import pack_arrays

        return pack_arrays(self.domain.arrays())

    def save(self, folder: str | Path) -> Path:
        """Write ``trust.json`` and ``trust.arrays`` into ``folder``."""
        from adex.fileio import atomic_write_bytes, atomic_write_text

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / RECORD_FILE, json.dumps(self.record(), indent=1, allow_nan=False) + "\n")
        atomic_write_bytes(folder / ARRAYS_FILE, self.arrays_bytes())
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> "TrustModel":
        from adex.fileio import unpack_arrays

        folder = Path(folder)
        try:
            record = json.loads((folder / RECORD_FILE).read_text())
            arrays = unpack_arrays((folder / ARRAYS_FILE).read_bytes(), require_checksum=True)
        except FileNotFoundError as exc:
            raise DataError(f"{folder}: no trust model ({Path(exc.filename).name} missing)") from None
        except (ValueError, OSError) as exc:
            raise DataError(f"{folder}: unreadable trust model ({exc})") from None
        return cls.from_record(record, arrays)

    def check_advisors(self, loaded) -> None:
        """Refuse an expert whose advisors are not the ones the domain embeddings came from."""
        expected = [a.get("weights_sha256") for a in self.domain.advisors]
        found = [slot.weights_sha256 for slot in loaded.model.advisors]
        if expected and expected != found:
            raise ConfigError(f"the trust model was built with advisors {[a.get('ref') for a in self.domain.advisors]}, "
                              f"{loaded.entry.ref} reads {[s.ref for s in loaded.model.advisors]} (other weights)")


def load_trust(entry) -> TrustModel | None:
    """The trust model stored with a registry entry, or None if it has none."""
    from adex.fileio import unpack_arrays

    record = entry.card.get(CARD_KEY)
    if record is None or ARRAYS_FILE not in entry.files:
        return None
    return TrustModel.from_record(record, unpack_arrays(entry.read_file(ARRAYS_FILE), require_checksum=True))


def expert_trust(loaded) -> TrustModel | None:
    """The trust model of a loaded expert (:func:`load_trust` of its entry), checked
    against the advisors it was loaded with; None if it carries none."""
    trust = load_trust(loaded.entry)
    if trust is not None:
        trust.check_advisors(loaded)
    return trust


# ---------------------------------------------------------------------- applying
def known_labels(inputs: DomainInputs, predicted: np.ndarray, dft: np.ndarray) -> dict:
    """Labels for :func:`apply_trust` from the labelled vacancies' domain inputs, their
    (uncorrected) predictions and the user's DFT values (eV)."""
    predicted, dft = np.asarray(predicted, dtype=np.float64), np.asarray(dft, dtype=np.float64)
    if not (len(inputs) == len(predicted) == len(dft)):
        raise ConfigError("one prediction and one DFT value per labelled vacancy")
    if not np.isfinite(dft).all():
        raise DataError("known dH_eV values must be numbers (eV)")
    return {"host": np.asarray(inputs.host), "cls": vacancy_class(inputs.element), "residual": dft - predicted}


def apply_trust(frame, trust: TrustModel, inputs: DomainInputs, known: dict | None = None,
                dataset_offset: bool | float = False):
    """``frame`` (pandas, one row per vacancy of ``inputs``, in order, with ``dH_pred_eV``)
    with the trust columns added (module docstring); a copy. Returns ``(frame, reasons)``,
    ``reasons`` the out-of-domain reason of every row ("" in domain).

    ``known``: :func:`known_labels` (labels of any hosts; a host's labels correct that
    host, and all of them the per-dataset offset with ``dataset_offset``). Without labels
    ``dH_pred_eV`` is returned unchanged.
    """
    if len(frame) != len(inputs):
        raise ConfigError(f"{len(frame)} rows for {len(inputs)} vacancies")
    out = frame.copy()
    result = trust.domain.assess(inputs)
    is_metal = vacancy_class(inputs.element) == 1
    half = trust.intervals.half_width(is_metal, result.domain, result.novel)
    pred = out["dH_pred_eV"].to_numpy(dtype=np.float64)
    if known is not None and len(known["residual"]):
        fix = correct(trust.offsets, known["host"], known["cls"], known["residual"], np.asarray(inputs.host),
                      is_metal.astype(np.int64), dataset_offset)
        out["dH_model_eV"] = pred
        out["offset_eV"] = fix.offset
        out["n_known"] = fix.n_known.astype(np.int64)
        pred = pred + fix.offset
        out["dH_pred_eV"] = pred
    out["dH_lo_eV"] = pred - half
    out["dH_hi_eV"] = pred + half
    out["domain"] = result.domain
    out["in_domain"] = result.in_domain
    return out, result.reasons


def host_reasons(reasons) -> str:
    """The distinct out-of-domain reasons of one host's vacancies ("" for those in domain),
    one per kind (the text before " ("), in order of first appearance, joined by "; "."""
    parts: list[str] = []
    kinds: list[str] = []
    for reason in reasons:
        for part in filter(None, reason.split("; ")):
            kind = part.split(" (")[0]
            if kind not in kinds:
                kinds.append(kind)
                parts.append(part)
    return "; ".join(parts)


def domain_warnings(hosts, reasons, in_domain) -> list[str]:
    """One line per out-of-domain host (in order of first appearance): ``<host>: out of
    the applicability domain (<reasons>): N of M vacancies; wider intervals``."""
    rows: dict = {}  # host -> [out-of-domain count, count, reasons of those out of domain]
    for host, reason, inside in zip(hosts, reasons, in_domain):
        row = rows.setdefault(host, [0, 0, []])
        row[1] += 1
        if not inside:
            row[0] += 1
            row[2].append(reason)
    return [f"{host}: out of the applicability domain ({host_reasons(row[2])}): {row[0]} of {row[1]} "
            "vacancies; their intervals are wider" for host, row in rows.items() if row[0]]


def file_domain_inputs(loaded, jobs: list[tuple[str, list[int]]], cache: bool = False) -> list[DomainInputs]:
    """:class:`DomainInputs` of each ``(structure path, [site, ...])`` job, in order: the
    files are read and featurized again (the advisors' host embeddings come from the
    in-memory memo prediction filled, or from the disk cache with ``cache``). Prediction
    can hand them over instead (``domains`` of :func:`adex.expert.predict.predict_sites`)."""
    from adex.expert.predict import cached_files, featurize_files

    if not jobs:
        return []
    parts = cached_files(loaded, jobs) if cache else featurize_files(loaded, jobs)
    return [domain_inputs(loaded, part, cache) for part in parts]


def _jobs_domain_inputs(loaded, jobs: list[tuple[str, list[int]]], domains: dict | None, cache: bool) -> DomainInputs:
    """The domain inputs of ``jobs`` in order: those prediction computed (``domains``:
    ``{path: (sites, DomainInputs)}``, used where the sites match) and the rest computed here."""
    domains = domains or {}
    missing = [(path, sites) for path, sites in jobs if path not in domains or tuple(domains[path][0]) != tuple(sites)]
    computed = dict(zip((path for path, _ in missing), file_domain_inputs(loaded, missing, cache)))
    return DomainInputs.concatenate([computed[path] if path in computed else domains[path][1] for path, _ in jobs])


def read_known(path: str | Path) -> list[tuple[str, int, float]]:
    """``(structure path, site, dH_eV)`` rows of a known-labels CSV (columns ``structure``,
    ``site``, ``dH_eV``; paths relative to the table's folder). One-line DataError on a
    missing column, a bad site or a value that is not a number."""
    import csv

    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in ("structure", "site", "dH_eV") if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column {missing[0]!r} (need structure, site, dH_eV)")
            rows = []
            for row in reader:
                line = reader.line_num
                try:
                    site = int(row["site"])
                except (TypeError, ValueError):
                    raise DataError(f"{path}:{line}: site {row['site']!r} is not an integer atom index") from None
                try:
                    value = float(row["dH_eV"])
                except (TypeError, ValueError):
                    raise DataError(f"{path}:{line}: dH_eV {row['dH_eV']!r} is not a number (eV)") from None
                if not math.isfinite(value):
                    raise DataError(f"{path}:{line}: dH_eV {row['dH_eV']!r} is not a finite number (eV)")
                structure = Path(str(row["structure"] or "").strip()).expanduser()
                if not str(structure) or str(structure) == ".":
                    raise DataError(f"{path}:{line}: empty 'structure' field")
                rows.append((str((structure if structure.is_absolute() else path.parent / structure).resolve()), site, value))
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    return rows


def table_trust(loaded, trust: TrustModel, predictions: dict, known: list[tuple[str, int, float]] | None = None,
                dataset_offset: bool | float = False, cache: bool = False, batch_size: int = 32,
                domains: dict | None = None) -> tuple[dict, list[str]]:
    """The trust columns of ``adex predict --input`` (and ``--known``).

    Args:
        predictions: ``{(structure path, site): member predictions [M]}`` as
            :func:`adex.expert.predict.predict_sites` returns them.
        known: :func:`read_known` rows; vacancies not in ``predictions`` are predicted here.
        dataset_offset, cache, batch_size: as for :func:`apply_trust` and
            :func:`adex.expert.predict.predict_sites`.
        domains: ``{path: (sites, DomainInputs)}`` from the prediction
            (:func:`adex.expert.predict.predict_sites`' ``domains``); files without them
            are read and featurized again here.

    Returns:
        ``({(path, site): {column: value}}, warning lines)``: the columns ``dH_pred_eV``
        (corrected when ``known`` has labels of the host), ``dH_lo_eV``, ``dH_hi_eV``,
        ``domain``, ``in_domain`` and, with labels, ``dH_model_eV``, ``offset_eV``,
        ``n_known``; one warning line per out-of-domain host (files of the same crystal
        are one host, named by its first file).
    """
    import pandas as pd

    from adex.expert.predict import predict_sites

    known = list(known or [])
    missing: dict[str, list[int]] = {}
    for path, site, _ in known:
        if (path, site) not in predictions:
            missing.setdefault(path, []).append(site)
    members = dict(predictions)
    if missing:
        members.update(predict_sites(loaded, [(p, sorted(set(s))) for p, s in missing.items()], batch_size,
                                     cache=cache))
    keys = list(members)
    jobs: dict[str, list[int]] = {}
    for path, site in keys:
        jobs.setdefault(path, []).append(site)
    order = [(path, site) for path, sites in jobs.items() for site in sites]
    inputs = _jobs_domain_inputs(loaded, list(jobs.items()), domains, cache)
    row_of = {key: k for k, key in enumerate(order)}
    mean = np.array([float(np.mean(members[key])) for key in order])
    targets = [row_of[key] for key in predictions]
    labels = None
    if known:
        rows = [row_of[(path, site)] for path, site, _ in known]
        labels = known_labels(inputs.subset(rows), mean[rows], np.array([value for _, _, value in known]))
    frame = pd.DataFrame({"dH_pred_eV": mean[targets]})
    chosen = inputs.subset(targets)
    out, reasons = apply_trust(frame, trust, chosen, labels, dataset_offset)
    first_file: dict[str, str] = {}
    for (path, _), host in zip(order, inputs.host):
        first_file.setdefault(host, Path(path).name)
    lines = domain_warnings([first_file[h] for h in chosen.host], reasons, out["in_domain"].to_numpy())
    columns = list(out.columns)
    return {key: dict(zip(columns, values)) for key, values in zip(predictions, out.itertuples(index=False, name=None))}, lines


# ---------------------------------------------------------------------- building
def heldout_residuals(summaries: str | Path, experiment: str, data: str | Path | None = None):
    """Held-out predictions of ``experiment`` in ``heldout_predictions.csv.gz`` (the CV
    summaries of ``adex report --write-summaries``) with each vacancy's host and vacated
    element from the Witman ``vacancies.csv``: pandas DataFrame with ``experiment, fold,
    id, dH_eV, dH_pred_eV, dH_std_eV, host, element, residual`` (``dH_eV - dH_pred_eV``)."""
    import pandas as pd

    from adex.datasets import dataset_root

    path = Path(summaries)
    path = path / "heldout_predictions.csv.gz" if path.is_dir() else path
    table = pd.read_csv(path, dtype={"id": str, "fold": str})
    table = table[table["experiment"] == experiment]
    if table.empty:
        raise DataError(f"{path}: no held-out predictions of experiment {experiment!r}")
    root = dataset_root("witman2023_vacancies", data)
    vacancies = pd.read_csv(root / "vacancies.csv", dtype={"id": str, "host": str})[["id", "host", "element"]]
    merged = table.merge(vacancies, on="id", how="left")
    if merged["host"].isna().any():
        raise DataError(f"{int(merged['host'].isna().sum())} held-out ids of {experiment!r} are not in {root / 'vacancies.csv'}")
    merged["residual"] = merged["dH_eV"] - merged["dH_pred_eV"]
    return merged.reset_index(drop=True)


def witman_inputs(loaded, ids, data: str | Path | None = None, workers: int | None = 1) -> DomainInputs:
    """:class:`DomainInputs` of Witman vacancies ``ids`` (in that order) for ``loaded``'s
    advisors (graphs from the vacancy cache; the advisors run once per host)."""
    from adex.expert.witman import load_witman
    from adex.supercell import SupercellSettings

    model = loaded.model
    packed = load_witman(model.featurizer_settings, SupercellSettings.from_dict(model.supercell), data=data,
                         ids=list(ids), workers=workers)
    return domain_inputs(loaded, packed)


@dataclass
class CrossValidated:
    """Per held-out vacancy of the calibration CV: fold, host, class, residual, domain
    distance against its fold's training side (in the final unit), novelty and the
    cross-conformal half width."""

    table: object  # pandas DataFrame
    report: dict


def build_trust(loaded, residuals, inputs: DomainInputs, reference: DomainInputs, nominal: float = NOMINAL,
                threshold_quantile: float = THRESHOLD_QUANTILE, source: dict | None = None,
                n_bins: int | None = None) -> tuple[TrustModel, CrossValidated]:
    """A trust model for ``loaded`` from held-out CV ``residuals`` (:func:`heldout_residuals`
    rows; ``inputs`` their domain inputs, in the same order) and the expert's training
    vacancies ``reference`` (the domain's reference set). Returns the model and the
    cross-validated evaluation its record quotes (intervals of each fold calibrated on the
    other folds only)."""
    from adex.expert.calibration import N_BINS

    n_bins = N_BINS if n_bins is None else n_bins
    folds = residuals["fold"].to_numpy()
    raw, novel = held_out_domain(inputs, folds)
    advisors = [{"ref": entry.ref, "weights_sha256": slot.weights_sha256}
                for (entry, _), slot in zip(loaded.advisors, loaded.model.advisors)]
    domain = calibrate(DomainModel.fit(reference, advisors=advisors), raw, threshold_quantile)
    distance = raw / domain.unit
    residual = residuals["residual"].to_numpy(dtype=np.float64)
    is_metal = vacancy_class(residuals["element"].to_numpy()) == 1
    half = cross_conformal(np.abs(residual), is_metal, distance, folds, novel, nominal, n_bins)
    report = coverage_report(np.abs(residual), half, folds)
    intervals = fit_intervals(np.abs(residual), is_metal, distance, novel, nominal, n_bins)
    intervals.source = dict(source or {})
    intervals.achieved = {"how": "cross-conformal: each fold's intervals calibrated on the other folds only",
                          **{k: report[k] for k in ("n", "pooled", "min_fold", "per_fold", "median_width_eV",
                                                    "spearman_abs_error_width", "spearman_per_fold_mean")}}
    offsets = OffsetPrior.fit(residual, residuals["host"].to_numpy(), is_metal.astype(np.int64))
    trust = TrustModel(intervals, domain, offsets, loaded.entry.ref,
                       {"caveat": "calibrated on the held-out residuals of single models of the recipe, each trained on "
                                  "9/10 of the hosts; the registered expert may be an ensemble trained on all hosts "
                                  "(more accurate, so the intervals should be conservative for it)"})
    table = residuals.assign(domain=distance, novel=novel, half_width=half, is_metal=is_metal)
    return trust, CrossValidated(table, report)


def register_trusted(ref: str, registry, trust: TrustModel, name: str | None = None, aliases: tuple[str, ...] = ()):
    """Register a new version of expert ``ref`` that carries ``trust``: the same model
    files plus ``trust.arrays``, the same card plus ``card["trust"]`` (the record) and a
    note; parents: ``ref`` and its advisors. Returns the new entry.

    The model must read the advisors the trust model was built with (checked)."""
    from adex.expert.loading import load_expert

    loaded = load_expert(ref, registry)
    trust.check_advisors(loaded)
    entry = loaded.entry
    registry_fields = ("kind", "name", "version", "created", "files", "parents", "primary_metric", "package_versions",
                       "card_sha256", "exported_from")
    files = {filename: entry.read_file(filename) for filename in entry.files if filename != ARRAYS_FILE}
    files[ARRAYS_FILE] = trust.arrays_bytes()
    card = {key: value for key, value in entry.card.items() if key not in registry_fields}
    card[CARD_KEY] = trust.record()
    notes = dict(card.get("notes") or {})
    notes["trust"] = (f"{entry.ref} with a calibration record (card.trust, file {ARRAYS_FILE}): "
                      f"{trust.intervals.nominal:.0%} intervals, applicability domain, host-offset prior")
    card["notes"] = notes
    metric = entry.primary_metric
    if not math.isfinite(float(trust.intervals.quantiles[-1])):
        raise RegistryError("the trust model has an uncalibrated domain bin (infinite quantile)")
    parents = [entry.ref] + [p for p in entry.parents if p != entry.ref]
    return registry.register("expert", name or entry.name, files, card, parents=parents, primary_metric=metric,
                             aliases=list(aliases))
