"""Fine-tuning an expert on a few DFT labels of the user's own (``adex expert adapt``).

Conservative by design: only the output head (the MLP after pooling) of each member is
trained; everything before it (element and role embeddings, advisor adapters,
convolutions, pooling, normaliser, element reference) stays frozen and in eval mode, so
batch-norm statistics do not move and there is no dropout. Training is full-batch Adam
on the labelled vacancies for a fixed number of steps (no validation set: a few labels
cannot spare one), MSE on the normalised target as the model was built to predict it.
An ensemble is adapted member by member (each member's head on its own output). With 0
steps the adapted model is the parent, weight for weight.

:func:`register_adapted` registers the result as a new version whose card names its
parent (exact versioned ref), the labels file's sha256, the settings and the fit
metrics (MAE on the labels before and after: a training error, not a held-out one).
A parent's trust record (``card["trust"]`` + ``trust.arrays``) is carried over
unchanged, and the card says it was calibrated for the parent.
"""
from __future__ import annotations

import copy
import dataclasses
import math
from pathlib import Path

import numpy as np
import torch

from adex.errors import ConfigError, DataError
from adex.fileio import sha256_file

#: Full-batch optimisation steps by default.
DEFAULT_EPOCHS = 50
#: Adam learning rate by default (the head only).
DEFAULT_LR = 1e-3
#: Card key of the adaptation record.
CARD_KEY = "adapted"


def labelled_inputs(loaded, rows: list[tuple[str, int, float]]):
    """``(packed, dataset, energies, targets)`` of the labelled vacancies ``rows`` (``(structure
    path, site, dH_eV)`` as :func:`adex.expert.trust.read_known` returns them), in the
    order of ``rows``: the packed graphs, a :class:`~adex.expert.data.VacancyDataset` of the graphs (pruned
    for ``loaded.model``) with the advisors' features, the potential's vacancy energies
    per kind the members add, and the labels (float64 eV)."""
    from adex.expert.advisor_features import cached_advisor_features
    from adex.expert.data import PackedVacancies, VacancyDataset
    from adex.expert.predict import featurize_files, potential_energies

    jobs: dict[str, list[int]] = {}
    where = []
    for path, site, _ in rows:
        sites = jobs.setdefault(path, [])
        where.append((path, len(sites)))
        sites.append(int(site))
    parts = featurize_files(loaded, list(jobs.items()))
    start = dict(zip(jobs, np.cumsum([0, *(len(s) for s in jobs.values())])[:-1]))
    packed = PackedVacancies.concatenate(parts)
    order = [int(start[path]) + k for path, k in where]
    packed = packed.subset(order)
    features = [cached_advisor_features(entry, model, packed, persistent=False) for entry, model in loaded.advisors]
    energies = potential_energies(loaded, packed)
    dataset = VacancyDataset(loaded.model.prepare(packed), features)
    return packed, dataset, energies, np.array([value for _, _, value in rows], dtype=np.float64)


def _head_output(member, embedded: torch.Tensor, batch) -> torch.Tensor:
    """The member's normalised output [B] from its (frozen) pre-head features."""
    from adex.scatter import scatter_mean

    if member.config.pooling == "random":  # eval readout: mean of per-node predictions
        return scatter_mean(member.head(embedded), batch.node_graph, batch.num_graphs)
    return member.head(embedded)


def adapt_member(member, batch, targets: np.ndarray, epochs: int, lr: float, seed: int):
    """A copy of expert ``member`` whose head is fitted to ``targets`` (eV) on ``batch``
    (all labelled vacancies): ``(model, final loss)``; the parent is not modified."""
    model = copy.deepcopy(member)
    model.eval()  # frozen batch norm, no dropout: the head is trained on what prediction computes
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    head = list(model.head.parameters())
    with torch.no_grad():
        x = model.node_embeddings(batch)
        embedded = x if model.config.pooling == "random" else model.readout(x, batch)
        goal = model.normalizer.norm(torch.as_tensor(targets, dtype=torch.float32) - model.target_offset(batch))
    if epochs > 0:
        torch.manual_seed(seed)
        for parameter in head:
            parameter.requires_grad_(True)
        optimizer = torch.optim.Adam(head, lr=lr)
        for _ in range(epochs):
            optimizer.zero_grad()
            step_loss = torch.nn.functional.mse_loss(_head_output(model, embedded, batch), goal)
            step_loss.backward()
            optimizer.step()
        for parameter in head:
            parameter.requires_grad_(False)
    with torch.no_grad():
        loss = float(torch.nn.functional.mse_loss(_head_output(model, embedded, batch), goal))
    model.eval()
    return model, loss


def _errors(pred: np.ndarray, target: np.ndarray) -> dict:
    err = pred - target
    return {"mae_eV": float(np.abs(err).mean()), "rmse_eV": float(np.sqrt((err ** 2).mean())),
            "mean_error_eV": float(err.mean())}


def adapt_expert(loaded, rows: list[tuple[str, int, float]], epochs: int = DEFAULT_EPOCHS, lr: float = DEFAULT_LR,
                 seed: int = 0):
    """Fine-tune the heads of expert ``loaded`` (a :class:`~adex.expert.loading.LoadedExpert`,
    single or ensemble) on labelled vacancies ``rows`` (``(structure path, site, dH_eV)``).

    Returns ``(model, metrics)``: the adapted model (same class as the parent) and
    ``{"n_labels", "n_hosts", "before": {mae_eV, rmse_eV, mean_error_eV}, "after": {...},
    "member_loss", "note"}``, errors of the (member-mean) prediction on the labels.

    Raises:
        DataError: no labels.
        ConfigError: epochs < 0, lr not a positive number.
    """
    from adex.expert.ensemble import ExpertEnsemble, as_members
    from adex.expert.predict import member_batch, predict_packed_members

    if epochs < 0:
        raise ConfigError(f"--epochs must be >= 0, not {epochs}")
    if not (math.isfinite(lr) and lr > 0):
        raise ConfigError(f"--lr must be a positive number, not {lr}")
    rows = list(rows)
    if not rows:
        raise DataError("no labelled vacancies: there is nothing to adapt to (give at least one row of structure, site, dH_eV)")
    packed, dataset, energies, targets = labelled_inputs(loaded, rows)
    batch = dataset.batch(np.arange(len(dataset)))
    members, losses = [], []
    for k, member in enumerate(as_members(loaded.model)):
        adapted, loss = adapt_member(member, member_batch(batch, member, energies), targets, epochs, lr, seed + k)
        members.append(adapted)
        losses.append(loss)
    model = ExpertEnsemble(members) if isinstance(loaded.model, ExpertEnsemble) else members[0]
    before = predict_packed_members(loaded, packed).mean(0)
    after = predict_packed_members(dataclasses.replace(loaded, model=model), packed).mean(0)
    hosts = {path for path, _, _ in rows}
    metrics = {"n_labels": len(rows), "n_files": len(hosts), "before": _errors(before, targets),
               "after": _errors(after, targets), "member_loss": losses,
               "note": "errors on the labels the heads were fitted to (a training error, not a held-out estimate); "
                       "member_loss: final MSE of each member on its normalised target"}
    return model, metrics


#: Card fields the registry writes itself (never copied from the parent).
_REGISTRY_FIELDS = ("kind", "name", "version", "created", "files", "parents", "primary_metric", "package_versions",
                    "card_sha256", "exported_from")


def register_adapted(loaded, model, metrics: dict, registry, data: str | Path, settings: dict, name: str | None = None,
                     aliases: tuple[str, ...] = (), run_dir: str | Path | None = None):
    """Register ``model`` (from :func:`adapt_expert` on ``loaded``) as a new version of
    ``name`` (default: ``<parent name>-adapted``, so that a user version never shadows the
    built-in parent's name) in the user registry. Card: the parent's card
    (description, featurizer, supercell, advisors, config) with ``card["adapted"]`` =
    parent ref, the labels file and its sha256, ``settings``, ``metrics``; the parent's
    ``metrics`` move to ``adapted.parent_metrics`` and ``metrics`` holds the fit metrics.
    A trust record of the parent is carried over unchanged (noted in the card). Parents:
    the parent expert and its parents. No primary metric: an error on the fitted labels
    must not compete for ``best`` with held-out errors."""
    from adex.checkpoint import model_files
    from adex.expert.trust import ARRAYS_FILE, CARD_KEY as TRUST_KEY

    entry = loaded.entry
    data = Path(data).resolve()
    files = model_files(model)
    card = {key: value for key, value in entry.card.items() if key not in _REGISTRY_FIELDS}
    card["description"] = f"{entry.ref} adapted to {metrics['n_labels']} DFT label(s) of {data.name} (head fine-tuned)"
    card[CARD_KEY] = {"parent": entry.ref, "data": {"file": str(data), "sha256": sha256_file(Path(data)),
                                                   "n_labels": metrics["n_labels"], "n_files": metrics["n_files"]},
                      "settings": dict(settings), "metrics": metrics, "parent_metrics": entry.card.get("metrics"),
                      **({"run_dir": str(run_dir)} if run_dir is not None else {})}
    card["metrics"] = {"adapt": metrics, "note": f"fit on the labels only; the parent's metrics: {CARD_KEY}.parent_metrics"}
    notes = dict(card.get("notes") or {})
    notes["adapted"] = (f"fine-tuned from {entry.ref}: output head only, {settings.get('epochs')} full-batch Adam steps, "
                        f"lr {settings.get('lr')}, on {metrics['n_labels']} label(s) (sha256 "
                        f"{card[CARD_KEY]['data']['sha256'][:12]}...)")
    if TRUST_KEY in entry.card and ARRAYS_FILE in entry.files:
        files[ARRAYS_FILE] = entry.read_file(ARRAYS_FILE)
        notes["trust"] = (f"trust record carried over unchanged from {entry.ref}: its intervals and domain were "
                          "calibrated for the parent, not for this adapted version")
        card[CARD_KEY]["trust"] = "carried over unchanged from the parent (calibrated for the parent)"
    else:
        card.pop(TRUST_KEY, None)
    card["notes"] = notes
    parents = [entry.ref] + [p for p in entry.parents if p != entry.ref]
    return registry.register("expert", name or f"{entry.name}-adapted", files, card, parents=parents, aliases=list(aliases))
