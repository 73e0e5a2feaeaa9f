"""Correcting predictions with a few DFT numbers of the user's own: empirical-Bayes
shrinkage of each host's offset, per vacated-element class (O or metal), plus an optional
per-dataset offset.

Model of the residual ``r = dH_DFT - dH_pred`` of vacancy ``i`` (host ``h_i``, class
``c_i``), all terms zero-mean Gaussian:

    r_i = d[c_i] + a[h_i, c_i] + e_i

* ``a[h, ·]``: the host's offset for its O and its metal vacancies, covariance ``C``
  (2 x 2: between-vacancy covariance of residuals in one host, by class pair);
* ``e_i``: the rest, so ``Var r_i = V[c_i]`` (without ``d``);
* ``d[·]``: an offset of the user's DFT settings against the training data's (only with
  ``dataset_offset``), prior sd ``dataset_sd`` per class, the two classes correlated by
  ``DATASET_CORRELATION``.

``C`` and ``V`` are estimated from held-out residuals of a host-grouped cross-validation
(moments, every host weighted equally). The corrected prediction of an unlabelled vacancy
``t`` adds the posterior mean of ``d[c_t] + a[h_t, c_t]`` given the labelled residuals
(Gaussian conditioning: ``k_t K^-1 r``, ``K`` the labels' covariance). With one class and
``k`` labels of one host this is the textbook ``tau^2 / (tau^2 + sigma^2 / k) * mean(r)``
with ``tau^2 = C``, ``sigma^2 = V - C``. No labels: no offset, the prediction unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from adex.errors import ConfigError

#: Correlation of the O and metal per-dataset offsets in their prior.
DATASET_CORRELATION = 0.5
#: Prior sd (eV) of a per-dataset offset when it is asked for without a value.
DEFAULT_DATASET_SD = 1.0
CLASSES = ("O", "metal")


def vacancy_class(elements) -> np.ndarray:
    """0 for O vacancies, 1 for metal (any other element) vacancies: int [B]."""
    return np.array([0 if str(e) == "O" else 1 for e in np.atleast_1d(elements)], dtype=np.int64)


@dataclass
class OffsetPrior:
    """``cov`` [2, 2]: within-host covariance of two distinct vacancies' residuals by class
    (O, metal); ``var`` [2]: a residual's variance by class (eV^2)."""

    cov: np.ndarray
    var: np.ndarray
    n_hosts: int = 0
    n_vacancies: int = 0

    def __post_init__(self) -> None:
        self.cov = np.asarray(self.cov, dtype=np.float64).reshape(2, 2)
        self.var = np.asarray(self.var, dtype=np.float64).reshape(2)

    @classmethod
    def fit(cls, residuals: np.ndarray, hosts: np.ndarray, classes: np.ndarray) -> "OffsetPrior":
        """Moment estimates from held-out residuals (eV) of a host-grouped CV; each host
        weighs the same (a host of 100 vacancies does not set the covariance alone).

        ``var[c]`` = mean over hosts of the host's mean squared residual of class c;
        ``cov[a, b]`` = mean over hosts of the mean product of residuals of two distinct
        vacancies of classes a, b. The covariance is clipped so that it stays positive
        semi-definite and below ``var`` (a host offset cannot explain more than all).
        """
        residuals = np.asarray(residuals, dtype=np.float64)
        hosts, classes = np.asarray(hosts), np.asarray(classes, dtype=np.int64)
        sums, counts = np.zeros((2, 2)), np.zeros((2, 2))
        var, var_n = np.zeros(2), np.zeros(2)
        for host in np.unique(hosts):
            chosen = hosts == host
            r, c = residuals[chosen], classes[chosen]
            products = np.outer(r, r)
            np.fill_diagonal(products, np.nan)
            for a in (0, 1):
                if (c == a).any():
                    var[a] += np.mean(r[c == a] ** 2)
                    var_n[a] += 1
                for b in (0, 1):
                    block = products[np.ix_(c == a, c == b)]
                    if np.isfinite(block).any():
                        sums[a, b] += np.nanmean(block)
                        counts[a, b] += 1
        if (var_n == 0).any() or (counts == 0).any():
            raise ConfigError("estimating host offsets needs hosts with two or more O vacancies, two or more metal "
                              "vacancies and hosts with both")
        var = var / var_n
        cov = sums / counts
        cov = 0.5 * (cov + cov.T)
        for a in (0, 1):
            cov[a, a] = float(np.clip(cov[a, a], 0.0, 0.98 * var[a]))
        limit = np.sqrt(cov[0, 0] * cov[1, 1])
        cov[0, 1] = cov[1, 0] = float(np.clip(cov[0, 1], -limit, limit))
        return cls(cov, var, int(len(np.unique(hosts))), int(len(residuals)))

    def shrinkage(self, k: int, cls: int) -> float:
        """Weight given to the mean residual of ``k`` labels of class ``cls`` of one host
        when correcting another vacancy of that class: ``tau^2 / (tau^2 + sigma^2 / k)``."""
        tau2, sigma2 = self.cov[cls, cls], self.var[cls] - self.cov[cls, cls]
        return float(tau2 / (tau2 + sigma2 / k)) if k > 0 else 0.0

    def record(self) -> dict:
        return {"model": "r = d[class] + a[host, class] + e; a ~ N(0, cov), Var r = var (eV^2); classes O, metal",
                "classes": list(CLASSES), "cov": self.cov.tolist(), "var": self.var.tolist(),
                "shrinkage_1_label": [self.shrinkage(1, c) for c in (0, 1)],
                "shrinkage_2_labels": [self.shrinkage(2, c) for c in (0, 1)],
                "n_hosts": self.n_hosts, "n_vacancies": self.n_vacancies,
                "dataset_offset": {"prior_sd_default_eV": DEFAULT_DATASET_SD, "class_correlation": DATASET_CORRELATION}}

    @classmethod
    def from_record(cls, record: dict) -> "OffsetPrior":
        try:
            return cls(np.asarray(record["cov"]), np.asarray(record["var"]), int(record.get("n_hosts", 0)),
                       int(record.get("n_vacancies", 0)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"not a host-offset record ({type(exc).__name__}: {exc})") from None


@dataclass
class Correction:
    """Per target vacancy: ``offset`` (eV, added to the prediction), ``offset_sd`` (its
    posterior sd), ``residual_sd`` (sd of the corrected prediction's error under the model)
    and ``n_known`` (labels of the same host)."""

    offset: np.ndarray
    offset_sd: np.ndarray
    residual_sd: np.ndarray
    prior_residual_sd: np.ndarray
    n_known: np.ndarray


def _covariance(prior: OffsetPrior, hosts_a, classes_a, hosts_b, classes_b, dataset_sd: float) -> np.ndarray:
    """Covariance of the offsets ``d + a`` of vacancies a and b (not the noise)."""
    same_host = np.asarray(hosts_a)[:, None] == np.asarray(hosts_b)[None, :]
    cov = np.where(same_host, prior.cov[np.ix_(classes_a, classes_b)], 0.0)
    if dataset_sd > 0:
        corr = np.where(np.asarray(classes_a)[:, None] == np.asarray(classes_b)[None, :], 1.0, DATASET_CORRELATION)
        cov = cov + dataset_sd ** 2 * corr
    return cov


def correct(prior: OffsetPrior, known_hosts, known_classes, known_residuals, target_hosts, target_classes,
            dataset_offset: bool | float = False) -> Correction:
    """Posterior offsets of target vacancies given labelled residuals (see the module
    docstring).

    Args:
        known_hosts, known_classes, known_residuals: per label: host key, class (0 O,
            1 metal: :func:`vacancy_class`), ``dH_DFT - dH_pred`` (eV).
        target_hosts, target_classes: per vacancy to correct.
        dataset_offset: False (hosts apart), True (a per-dataset offset with prior sd
            ``DEFAULT_DATASET_SD``) or the prior sd in eV.
    """
    known_hosts, target_hosts = np.asarray(known_hosts), np.asarray(target_hosts)
    known_classes = np.asarray(known_classes, dtype=np.int64)
    target_classes = np.asarray(target_classes, dtype=np.int64)
    r = np.asarray(known_residuals, dtype=np.float64)
    if not (len(known_hosts) == len(known_classes) == len(r)):
        raise ConfigError("known hosts, classes and residuals must have one entry per label")
    if not np.isfinite(r).all():
        raise ConfigError("known residuals must be finite numbers (eV)")
    dataset_sd = (DEFAULT_DATASET_SD if dataset_offset is True else float(dataset_offset or 0.0))
    prior_offset_var = prior.cov[target_classes, target_classes] + dataset_sd ** 2
    noise_var = prior.var[target_classes] - prior.cov[target_classes, target_classes]  # the part no offset explains
    n_known = (target_hosts[:, None] == known_hosts[None, :]).sum(1) if len(r) else np.zeros(len(target_hosts), dtype=np.int64)
    if not len(r):
        zeros = np.zeros(len(target_hosts))
        return Correction(zeros, np.sqrt(prior_offset_var), np.sqrt(prior.var[target_classes] + dataset_sd ** 2),
                          np.sqrt(prior.var[target_classes]), n_known)
    K = _covariance(prior, known_hosts, known_classes, known_hosts, known_classes, dataset_sd)
    K[np.diag_indices_from(K)] += prior.var[known_classes] - prior.cov[known_classes, known_classes]
    cross = _covariance(prior, target_hosts, target_classes, known_hosts, known_classes, dataset_sd)
    solved = np.linalg.solve(K, np.column_stack([r, cross.T]))
    offset = cross @ solved[:, 0]
    explained = np.einsum("ij,ji->i", cross, solved[:, 1:])
    offset_var = np.maximum(prior_offset_var - explained, 0.0)
    return Correction(offset, np.sqrt(offset_var), np.sqrt(offset_var + noise_var), np.sqrt(prior.var[target_classes]), n_known)
