"""The public Python API: vacancy formation enthalpies from a notebook.

>>> import adex
>>> expert = adex.load_expert()                      # the shipped default expert
>>> table = expert.predict("host.cif", sites="all")  # every symmetry-distinct vacancy
>>> table[["defect", "wyckoff", "dH_pred_eV"]]

:func:`load_expert` returns a :class:`VacancyExpert`; its :meth:`~VacancyExpert.predict`
takes a pymatgen ``Structure``, an ASE ``Atoms``, a structure file path, or
pymatgen-analysis-defects ``Vacancy`` objects, and returns a pandas DataFrame with the
columns of ``adex predict``. An expert that carries a trust record (``card["trust"]``,
:mod:`adex.expert.trust`) adds a calibrated interval (``dH_lo_eV``, ``dH_hi_eV``), its
applicability ``domain`` and ``in_domain``, and corrects its predictions with the DFT
numbers given as ``known``. The module sits at the top of the layers (beside
``adex/cli/``): it composes the expert's loading, prediction and trust model and adds
nothing they do not do.

>>> table = expert.predict("host.cif", known=[{"site": 3, "dH_eV": 4.1}])  # corrected by one DFT number
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from adex.errors import AdexError, StructureError

__all__ = ["VacancyExpert", "load_expert"]

#: Columns of :meth:`VacancyExpert.predict`, in order (``dH_std_eV`` for ensembles only).
COLUMNS = ("structure", "site", "element", "wyckoff", "defect", "dH_pred_eV", "dH_std_eV")
#: Added by an expert with a trust record (with ``known`` labels also ``dH_model_eV``,
#: ``offset_eV``, ``n_known``).
TRUST_COLUMNS = ("dH_lo_eV", "dH_hi_eV", "domain", "in_domain")


def load_expert(ref: str | None = None, registry: str | os.PathLike | None = None,
                trust: str | os.PathLike | None = None) -> "VacancyExpert":
    """Load a registered expert with the exact advisor versions it was trained with.

    Args:
        ref: registry reference, e.g. ``"builtin::expert/vacancy-core"``, ``"vacancy@latest"``
            or ``"expert/vacancy:3"``. Default: the shipped default expert (or, when it needs
            an optional package that is not installed, ``builtin::expert/vacancy-core``, with
            a warning).
        registry: user registry root (default ``$ADEX_HOME/registry``).
        trust: a folder with a trust model (``trust.json``, ``trust.arrays``, as
            ``benchmarks/trust_eval.py`` writes them) to use instead of the one the expert's
            card carries (if any).

    Raises:
        RegistryError: unknown reference, tampered files, missing advisor.
    """
    from adex.expert.loading import load_default_expert
    from adex.expert.loading import load_expert as _load
    from adex.registry import Registry

    store = Registry(root=registry)
    if ref is None:
        loaded, note = load_default_expert(store)
        if note:
            warnings.warn(note, stacklevel=2)
    else:
        loaded = _load(ref, store)
    expert = VacancyExpert(loaded)
    if trust is not None:
        from adex.expert.trust import TrustModel

        expert.use_trust(TrustModel.load(trust))
    return expert


@dataclass
class _Host:
    structure: Any  # pymatgen Structure, atoms in the order given
    name: str
    labels: list[str] | None  # CIF site labels (files) or site labels (Structure), or None


class VacancyExpert:
    """A loaded expert (single model or ensemble) and its advisors.

    Attributes:
        ref: the exact registry reference, e.g. ``builtin::expert/vacancy:6``.
        n_members: ensemble size (1 for a single model).
        advisors: the advisors' exact references.
    """

    def __init__(self, loaded) -> None:
        from adex.expert.ensemble import as_members

        self._loaded = loaded
        self.ref: str = loaded.entry.ref
        self.n_members: int = len(as_members(loaded.model))
        self.advisors: list[str] = [entry.ref for entry, _ in loaded.advisors]
        self._trust = None
        self._trust_read = False
        self._warned_no_trust = False

    @property
    def card(self) -> dict:
        """The registry card (metrics, training config, data fingerprint, parents)."""
        return dict(self._loaded.entry.card)

    @property
    def trust(self):
        """The expert's trust model (:class:`adex.expert.trust.TrustModel`: intervals,
        applicability domain, host-offset prior), or None if it carries none."""
        if not self._trust_read:
            from adex.expert.trust import expert_trust

            self._trust, self._trust_read = expert_trust(self._loaded), True
        return self._trust

    def use_trust(self, trust) -> None:
        """Use ``trust`` (a :class:`adex.expert.trust.TrustModel` built for this expert's
        advisors) for the interval, domain and correction columns."""
        trust.check_advisors(self._loaded)
        self._trust, self._trust_read = trust, True

    def __repr__(self) -> str:
        return f"VacancyExpert({self.ref!r}, members={self.n_members}, advisors={self.advisors})"

    def predict(self, structure, sites: int | str | Sequence[int | str] | None = None, batch_size: int = 32,
                known=None, dataset_offset: bool | float = False):
        """Vacancy formation enthalpies (eV) of one host, one row per vacancy.

        Args:
            structure: a pymatgen ``Structure``, an ASE ``Atoms``, a path to a structure file
                (CIF, POSCAR, extxyz, ...), or one or a list of pymatgen-analysis-defects
                ``Vacancy`` objects (then ``sites`` must be None).
            sites: which atoms to remove: an index (0-based, in the order given), a list of
                indices, a site label (``"O2"``: CIF ``_atom_site_label`` for files,
                ``Site.label`` for structures; ambiguous labels are refused), or ``"all"``
                / None for every symmetry-distinct vacancy.
            batch_size: vacancies per forward pass (does not change the numbers).
            known: DFT numbers of the user's own for some vacancies (needs a trust record):
                a pandas DataFrame, a list of dicts or a CSV path with columns ``site``
                (index or label, as ``sites``) and ``dH_eV``, optionally ``structure``
                (rows naming another structure file are other hosts: used for the
                per-dataset offset only, see ``dataset_offset``), or a dict
                ``{site: dH_eV}``. The host's offset (per class, O or metal) is estimated
                by empirical-Bayes shrinkage and added to every prediction of the host.
            dataset_offset: also fit an offset of the user's DFT settings against the
                training data's shared by all hosts of ``known`` (True: prior sd 1 eV; a
                number: that prior sd in eV).

        Returns:
            pandas DataFrame with columns ``structure`` (file name or formula), ``site``,
            ``element``, ``wyckoff``, ``defect`` (``v_O`` style), ``dH_pred_eV`` (eV; the
            member mean for an ensemble) and, for an ensemble, ``dH_std_eV`` (eV). An
            expert with a trust record adds ``dH_lo_eV``, ``dH_hi_eV`` (the calibrated
            interval, 90 % nominal), ``domain`` (distance from the training sites: 1 = the
            typical new host in cross-validation) and ``in_domain`` (bool; an
            :class:`adex.expert.trust.OutOfDomainWarning` names each host outside); with
            ``known`` also ``dH_model_eV`` (uncorrected), ``offset_eV`` and ``n_known``,
            and ``dH_pred_eV`` is corrected (unchanged when no label is given).

        Raises:
            StructureError: unreadable structure, site out of range, unknown label.
            AdexError: ``known`` without a trust record, or unreadable.
        """
        if _is_vacancy(structure) or (isinstance(structure, (list, tuple)) and structure and all(map(_is_vacancy, structure))):
            if sites is not None:
                raise AdexError("give sites=None with pymatgen-analysis-defects Vacancy objects (they carry their site)")
            if known is not None:
                raise AdexError("known= needs a structure (file, Structure or Atoms), not Vacancy objects")
            return self._predict_vacancies([structure] if _is_vacancy(structure) else list(structure), batch_size)
        host = _as_host(structure)
        return self._predict_host(host, self._resolve_sites(host, sites), batch_size, known, dataset_offset)

    # ------------------------------------------------------------------ internals
    def _resolve_sites(self, host: _Host, sites) -> list[int]:
        from adex.io import check_site
        from adex.supercell import distinct_sites

        if sites is None or (isinstance(sites, str) and sites == "all"):
            return [info.index for info in distinct_sites(host.structure, self._loaded.model.supercell.get("symprec", 0.01))]
        items = [sites] if isinstance(sites, (str, int, np.integer)) else list(sites)
        if not items:
            raise AdexError("sites is empty: give an index, a list of indices, a label or 'all'")
        return [self._label_site(host, s) if isinstance(s, str) else check_site(host.structure, s) for s in items]

    def _label_site(self, host: _Host, label: str) -> int:
        """The atom labelled ``label``; a label shared by inequivalent atoms is refused with
        the candidates (:func:`adex.supercell.site_from_label`, as ``adex predict --site-label``)."""
        from adex.supercell import site_from_label

        if not host.labels:
            raise StructureError(f"{host.name}: no site labels to look up {label!r}; give an atom index")
        return site_from_label(host.labels, label, host.structure, self._loaded.model.supercell.get("symprec", 0.01))

    def _members(self, host: _Host, sites: list[int], batch_size: int):
        from adex.expert.predict import featurize_host_sites, predict_packed_members

        packed = featurize_host_sites(self._loaded, host.structure, sites, host.name)
        return packed, predict_packed_members(self._loaded, packed, batch_size)

    def _predict_host(self, host: _Host, sites: list[int], batch_size: int, known=None, dataset_offset=False):
        trust = self.trust
        labels = _known_rows(known, host) if known is not None else None
        if trust is None:
            if labels is not None:
                raise AdexError(f"{self.ref} carries no trust record (host-offset prior): known= cannot correct its "
                                "predictions; register a version with adex.expert.trust.register_trusted or pass "
                                "load_expert(..., trust=FOLDER)")
            if not self._warned_no_trust:
                self._warned_no_trust = True
                warnings.warn(f"{self.ref} carries no trust record: no interval (dH_lo_eV, dH_hi_eV) or domain columns",
                              stacklevel=3)
            packed, members = self._members(host, sites, batch_size)
            return self._frame([host.name] * len(sites), sites, packed.info, members)
        own = [] if labels is None else [(self._resolve_sites(host, [site])[0], value) for site, value, other in labels if other is None]
        extra = [site for site, _ in own if site not in sites]
        packed, members = self._members(host, sites + list(dict.fromkeys(extra)), batch_size)
        return self._trusted_frame(host, sites, packed, members, own, labels, dataset_offset, batch_size)

    def _trusted_frame(self, host: _Host, sites, packed, members, own, labels, dataset_offset, batch_size):
        from adex.expert.domain import DomainInputs, domain_inputs
        from adex.expert.ensemble import ensemble_statistics
        from adex.expert.trust import OutOfDomainWarning, apply_trust, domain_warnings, known_labels

        inputs = domain_inputs(self._loaded, packed)
        everything = list(sites) + [s for s in dict.fromkeys(s for s, _ in own) if s not in sites]
        row_of = {site: k for k, site in enumerate(everything)}
        mean = ensemble_statistics(members)[0]
        known = None
        if labels is not None:
            parts, predicted, values = [], [], []
            if own:
                rows = [row_of[site] for site, _ in own]
                parts.append(inputs.subset(rows))
                predicted.append(mean[rows])
                values.append([value for _, value in own])
            others = [(site, value, path) for site, value, path in labels if path is not None]
            if others and not dataset_offset:
                warnings.warn(f"{len(others)} known value(s) of other structures ignored (dataset_offset=True uses them "
                              "for a per-dataset offset)", stacklevel=4)
            elif others:
                by_path: dict = {}
                for site, value, path in others:
                    by_path.setdefault(path, []).append((site, value))
                for path, items in by_path.items():
                    other = _as_host(path)
                    other_sites = [self._resolve_sites(other, [site])[0] for site, _ in items]
                    other_packed, other_members = self._members(other, other_sites, batch_size)
                    parts.append(domain_inputs(self._loaded, other_packed))
                    predicted.append(ensemble_statistics(other_members)[0])
                    values.append([value for _, value in items])
            if parts:
                known = known_labels(DomainInputs.concatenate(parts), np.concatenate(predicted), np.concatenate(values))
        n = len(sites)
        frame = self._frame([host.name] * n, list(sites), packed.info[:n], members[:, :n])
        frame, reasons = apply_trust(frame, self.trust, inputs.subset(np.arange(n)), known, dataset_offset)
        for line in domain_warnings([host.name] * n, reasons, frame["in_domain"].to_numpy()):
            warnings.warn(line, OutOfDomainWarning, stacklevel=4)
        return frame

    def _predict_vacancies(self, vacancies: list, batch_size: int):
        import pandas as pd

        frames = []
        for vacancy in vacancies:
            host = _Host(vacancy.structure.copy(), vacancy.structure.composition.reduced_formula, None)
            frames.append(self._predict_host(host, [_vacancy_site(vacancy)], batch_size))
        return pd.concat(frames, ignore_index=True)

    def _frame(self, names: list[str], sites: list[int], info: np.ndarray, members: np.ndarray):
        import pandas as pd

        from adex.expert.ensemble import ensemble_statistics

        mean, std = ensemble_statistics(members)
        frame = pd.DataFrame({
            "structure": names,
            "site": np.asarray(sites, dtype=np.int64),
            "element": info[:, 0],
            "wyckoff": info[:, 1],
            "defect": [defect_name(element) for element in info[:, 0]],
            "dH_pred_eV": mean.astype(np.float64),
        })
        if self.n_members > 1:
            frame["dH_std_eV"] = std.astype(np.float64)
        return frame


def _known_rows(known, host: _Host) -> list[tuple]:
    """``known`` as ``[(site, dH_eV, other structure path or None)]``: rows without a
    ``structure``, or naming this host (its name or file), are this host's."""
    import pandas as pd

    base = Path(".")
    if isinstance(known, (str, os.PathLike)):
        path = Path(known)
        try:
            table = pd.read_csv(path, dtype={"structure": str, "site": str})
        except (OSError, ValueError) as exc:
            raise AdexError(f"known={path}: cannot read the table ({exc})") from None
        base = path.parent
    elif isinstance(known, dict):
        table = pd.DataFrame({"site": list(known), "dH_eV": list(known.values())})
    elif isinstance(known, pd.DataFrame):
        table = known
    else:
        table = pd.DataFrame(list(known))
    missing = [c for c in ("site", "dH_eV") if c not in table.columns]
    if missing:
        raise AdexError(f"known: missing column {missing[0]!r} (need site and dH_eV, optionally structure)")
    rows = []
    for record in table.to_dict("records"):
        try:
            value = float(record["dH_eV"])
        except (TypeError, ValueError):
            raise AdexError(f"known: dH_eV {record['dH_eV']!r} is not a number (eV)") from None
        if not np.isfinite(value):
            raise AdexError(f"known: dH_eV {record['dH_eV']!r} is not a finite number (eV)")
        site = record["site"]
        if isinstance(site, str) and site.strip().lstrip("-").isdigit():
            site = int(site)
        elif isinstance(site, (float, np.floating)) and float(site).is_integer():
            site = int(site)
        name = record.get("structure")
        other = None
        if isinstance(name, str) and name.strip() and name.strip() != host.name:
            candidate = Path(name).expanduser()
            candidate = candidate if candidate.is_absolute() else base / candidate
            if candidate.name != host.name:
                other = candidate
        rows.append((site, value, other))
    return rows


def defect_name(element: str) -> str:
    """The defect community's name of a neutral vacancy of ``element``: ``v_O``."""
    return f"v_{element}"


def _is_vacancy(obj) -> bool:
    """A pymatgen-analysis-defects ``Vacancy`` (checked by class name: the package is optional)."""
    return type(obj).__name__ == "Vacancy" and hasattr(obj, "structure") and hasattr(obj, "site")


def _vacancy_site(vacancy) -> int:
    """Index in ``vacancy.structure`` of the atom the vacancy removes."""
    structure, site = vacancy.structure, vacancy.site
    frac = np.asarray(structure.frac_coords) - np.asarray(site.frac_coords)
    frac -= np.round(frac)
    distance = np.linalg.norm(frac @ structure.lattice.matrix, axis=1)
    index = int(np.argmin(distance))
    if distance[index] > 1e-3 or structure[index].species != site.species:
        raise StructureError("Vacancy: its site is not an atom of its structure")
    return index


def _is_ase_atoms(obj) -> bool:
    try:
        from ase import Atoms
    except ImportError:  # pragma: no cover - ase is a dependency
        return False
    return isinstance(obj, Atoms)


def _as_host(structure) -> _Host:
    """A structure, an ASE Atoms or a file path as a host (atoms in the order given)."""
    from pymatgen.core import Structure

    if isinstance(structure, (str, os.PathLike)):
        from adex.io import read_hosts
        from adex.supercell import cif_site_labels

        path = Path(structure)
        host = read_hosts([path])[0][0]
        labels = None
        if path.suffix.lower() == ".cif":
            try:
                labels = cif_site_labels(path)
            except StructureError:
                labels = None
        return _Host(host, path.name, labels)
    if isinstance(structure, Structure):
        labels = [site.label for site in structure]
        return _Host(structure, structure.composition.reduced_formula, labels)
    if _is_ase_atoms(structure):
        from pymatgen.io.ase import AseAtomsAdaptor

        converted = AseAtomsAdaptor.get_structure(structure)
        return _Host(converted, converted.composition.reduced_formula, None)
    raise AdexError(f"cannot read a structure from a {type(structure).__name__}: give a pymatgen Structure, "
                    "an ASE Atoms, a file path or pymatgen-analysis-defects Vacancy objects")

