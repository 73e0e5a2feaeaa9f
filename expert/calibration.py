"""Calibrated prediction intervals: split conformal prediction on residuals from
cross-validation grouped by host (no host on both sides of a fold), so that an interval
holds for hosts adex has never seen.

The interval of a prediction is ``dH_pred ± q_bin · s(x)``:

* ``s(x)`` is an error scale, ``exp(b0 + b1 · is_metal + b2 · log(domain + 0.001))``
  (eV), a log-linear fit of ``log(|residual| + 0.02 eV)`` on the vacated-element class (O
  or metal) and the applicability-domain distance (:mod:`adex.expert.domain`): metal
  vacancies and vacancies far from the training data get wider intervals;
* ``q_bin`` is the conformal quantile of the normalised residuals ``|r| / s(x)`` of the
  calibration vacancies in the same domain bin (Mondrian conformal: bins are quantiles of
  the calibration vacancies' domain distance; a last bin for *novel* vacancies, whose host
  has an element or oxidation state absent from training, takes at least the farthest
  bin's quantile). The finite-sample quantile is the ``ceil((n + 1) c)``-th smallest of
  ``n`` scores for nominal coverage ``c``.

:func:`cross_conformal` gives each fold of a cross-validation intervals calibrated on the
other folds only (error scale, bin edges and quantiles), which is how the coverage in a
calibration record is measured. :class:`IntervalCalibration` is what travels with a
registered model (a JSON-able dict): the scale's coefficients, the bins, the quantiles,
the nominal coverage, where the residuals came from and the coverage achieved.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from adex.errors import ConfigError

#: Default nominal coverage of the intervals.
NOMINAL = 0.9
#: eV added to |residual| before the log in the error-scale fit (a zero residual has a finite log).
SCALE_EPS = 0.02
#: Added to the domain distance before the log (a training vacancy has distance 0).
DOMAIN_EPS = 1e-3
#: Domain bins (Mondrian conformal) by default.
N_BINS = 3


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The split-conformal quantile of nonconformity ``scores`` for nominal ``coverage``:
    the ``ceil((n + 1) · coverage)``-th smallest score (``inf`` if that exceeds ``n``:
    too few scores to promise the coverage)."""
    scores = np.sort(np.asarray(scores, dtype=np.float64))
    if not 0.0 < coverage < 1.0:
        raise ConfigError(f"nominal coverage must be in (0, 1), not {coverage}")
    rank = int(math.ceil((len(scores) + 1) * coverage))
    return float("inf") if rank > len(scores) else float(scores[rank - 1])


@dataclass
class ErrorScale:
    """``s = exp(b0 + b1 · is_metal + b2 · log(domain + DOMAIN_EPS))`` (eV)."""

    coef: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @staticmethod
    def design(is_metal: np.ndarray, domain: np.ndarray) -> np.ndarray:
        is_metal = np.asarray(is_metal, dtype=np.float64)
        domain = np.nan_to_num(np.asarray(domain, dtype=np.float64), nan=1.0, posinf=1e3)
        return np.column_stack([np.ones_like(is_metal), is_metal, np.log(np.maximum(domain, 0.0) + DOMAIN_EPS)])

    @classmethod
    def fit(cls, abs_error: np.ndarray, is_metal: np.ndarray, domain: np.ndarray) -> "ErrorScale":
        """Least squares of ``log(|r| + SCALE_EPS)`` on the design (3 numbers: no risk of
        fitting the calibration set's own residuals away)."""
        X = cls.design(is_metal, domain)
        y = np.log(np.abs(np.asarray(abs_error, dtype=np.float64)) + SCALE_EPS)
        if len(y) < 3:
            raise ConfigError(f"an error scale needs at least 3 residuals, got {len(y)}")
        coef = np.linalg.lstsq(X, y, rcond=None)[0]
        return cls(tuple(float(c) for c in coef))

    def __call__(self, is_metal: np.ndarray, domain: np.ndarray) -> np.ndarray:
        return np.exp(self.design(is_metal, domain) @ np.asarray(self.coef))


@dataclass
class IntervalCalibration:
    """A fitted interval model (see the module docstring); ``to_dict`` / ``from_dict``
    give the JSON record stored with a registered model."""

    nominal: float
    scale: ErrorScale
    edges: list[float]  # inner edges of the domain bins (len = bins - 1)
    quantiles: list[float]  # conformal quantile of |r| / s per domain bin
    novel_quantile: float  # for vacancies of hosts with an unseen element / oxidation state
    counts: list[int] = field(default_factory=list)  # calibration vacancies per bin
    novel_count: int = 0
    source: dict = field(default_factory=dict)
    achieved: dict = field(default_factory=dict)

    def bin_of(self, domain: np.ndarray) -> np.ndarray:
        return np.digitize(np.nan_to_num(np.asarray(domain, dtype=np.float64), nan=np.inf), self.edges)

    def half_width(self, is_metal: np.ndarray, domain: np.ndarray, novel: np.ndarray | None = None) -> np.ndarray:
        """Half width (eV) of the interval of each prediction."""
        q = np.asarray(self.quantiles, dtype=np.float64)[self.bin_of(domain)]
        if novel is not None:
            q = np.where(np.asarray(novel, dtype=bool), np.maximum(q, self.novel_quantile), q)
        return q * self.scale(is_metal, domain)

    def to_dict(self) -> dict:
        return {
            "method": "split conformal on host-grouped cross-validation residuals, |r| normalised by a log-linear "
                      "error scale, Mondrian by domain bin",
            "nominal_coverage": self.nominal,
            "scale_model": {"form": "exp(b0 + b1*is_metal + b2*log(domain + 0.001)) eV", "coef": list(self.scale.coef),
                            "fit": "least squares of log(|residual| + 0.02 eV)"},
            "domain_bins": {"inner_edges": list(self.edges), "quantiles": list(self.quantiles), "counts": list(self.counts)},
            "novel": {"quantile": self.novel_quantile, "count": self.novel_count,
                      "rule": "hosts with an element or (element, oxidation state) absent from training: at least the "
                              "farthest bin's quantile"},
            "source": dict(self.source),
            "achieved": dict(self.achieved),
        }

    @classmethod
    def from_dict(cls, record: dict) -> "IntervalCalibration":
        try:
            bins = record["domain_bins"]
            return cls(nominal=float(record["nominal_coverage"]), scale=ErrorScale(tuple(map(float, record["scale_model"]["coef"]))),
                       edges=[float(e) for e in bins["inner_edges"]], quantiles=[float(q) for q in bins["quantiles"]],
                       novel_quantile=float(record["novel"]["quantile"]), counts=[int(c) for c in bins.get("counts", [])],
                       novel_count=int(record["novel"].get("count", 0)), source=dict(record.get("source", {})),
                       achieved=dict(record.get("achieved", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not an interval calibration record ({type(exc).__name__}: {exc})") from None


def fit_intervals(abs_error: np.ndarray, is_metal: np.ndarray, domain: np.ndarray, novel: np.ndarray | None = None,
                  nominal: float = NOMINAL, n_bins: int = N_BINS) -> IntervalCalibration:
    """Fit the error scale, the domain bins and their conformal quantiles on calibration
    residuals (held-out residuals of a host-grouped cross-validation, with each vacancy's
    domain distance measured against its own fold's training set)."""
    abs_error = np.abs(np.asarray(abs_error, dtype=np.float64))
    is_metal = np.asarray(is_metal, dtype=bool)
    domain = np.asarray(domain, dtype=np.float64)
    novel = np.zeros(len(abs_error), dtype=bool) if novel is None else np.asarray(novel, dtype=bool)
    if not (len(abs_error) == len(is_metal) == len(domain) == len(novel)):
        raise ConfigError("abs_error, is_metal, domain and novel must have one entry per vacancy")
    regular = ~novel
    scale = ErrorScale.fit(abs_error[regular], is_metal[regular], domain[regular])
    scores = abs_error / scale(is_metal, domain)
    edges = [float(e) for e in np.quantile(domain[regular], np.linspace(0, 1, n_bins + 1)[1:-1])] if n_bins > 1 else []
    bins = np.digitize(domain, edges)
    quantiles, counts = [], []
    for b in range(len(edges) + 1):
        chosen = regular & (bins == b)
        quantiles.append(conformal_quantile(scores[chosen], nominal))
        counts.append(int(chosen.sum()))
    if not all(math.isfinite(q) for q in quantiles):
        need = int(math.ceil(nominal / (1 - nominal)))
        raise ConfigError(f"too few calibration residuals for {nominal:.0%} intervals in a domain bin "
                          f"(counts {counts}; each bin needs at least {need}): use fewer bins")
    novel_q = conformal_quantile(scores[novel], nominal) if novel.any() else float("inf")
    if not math.isfinite(novel_q):  # too few novel vacancies to calibrate them: the farthest bin's quantile
        novel_q = quantiles[-1]
    return IntervalCalibration(nominal, scale, edges, quantiles, float(max(novel_q, quantiles[-1])), counts, int(novel.sum()))


def cross_conformal(abs_error: np.ndarray, is_metal: np.ndarray, domain: np.ndarray, folds: np.ndarray,
                    novel: np.ndarray | None = None, nominal: float = NOMINAL, n_bins: int = N_BINS) -> np.ndarray:
    """Half widths (eV) of every vacancy's interval, each fold's calibrated on the other
    folds' residuals only (:func:`fit_intervals` refitted once per fold)."""
    folds = np.asarray(folds)
    novel = np.zeros(len(folds), dtype=bool) if novel is None else np.asarray(novel, dtype=bool)
    abs_error, is_metal, domain = (np.asarray(a) for a in (abs_error, is_metal, domain))
    out = np.full(len(folds), np.nan)
    for fold in np.unique(folds):
        test = folds == fold
        model = fit_intervals(abs_error[~test], is_metal[~test], domain[~test], novel[~test], nominal, n_bins)
        out[test] = model.half_width(is_metal[test], domain[test], novel[test])
    return out


def coverage_report(abs_error: np.ndarray, half_width: np.ndarray, folds: np.ndarray | None = None) -> dict:
    """Coverage of intervals ``±half_width`` on residuals: ``pooled``, ``per_fold``,
    ``min_fold``, ``median_width_eV`` (full width), ``spearman_abs_error_width`` (pooled)
    and ``spearman_per_fold_mean`` (mean over folds of the within-fold rank correlation)."""
    from scipy.stats import spearmanr

    abs_error = np.abs(np.asarray(abs_error, dtype=np.float64))
    half_width = np.asarray(half_width, dtype=np.float64)
    covered = abs_error <= half_width
    out = {"n": int(len(covered)), "pooled": float(covered.mean()), "median_width_eV": float(np.median(2 * half_width)),
           "mean_width_eV": float(np.mean(2 * half_width))}
    out["spearman_abs_error_width"] = float(spearmanr(abs_error, half_width).statistic) if np.ptp(half_width) > 0 else float("nan")
    if folds is not None:
        folds = np.asarray(folds)
        per_fold, rhos = {}, []
        for fold in np.unique(folds):
            chosen = folds == fold
            per_fold[str(fold)] = float(covered[chosen].mean())
            if np.ptp(half_width[chosen]) > 0:
                rhos.append(float(spearmanr(abs_error[chosen], half_width[chosen]).statistic))
        out["per_fold"] = per_fold
        out["min_fold"] = float(min(per_fold.values()))
        out["spearman_per_fold_mean"] = float(np.mean(rhos)) if rhos else float("nan")
    return out
