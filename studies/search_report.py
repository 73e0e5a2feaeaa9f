"""Outputs of ``adex search``: ``best.yaml``, ``trials.csv`` and ``search.png``.

:func:`write_outputs` (called at the end of a search and on Ctrl-C) writes ``best.yaml``
(a full ExpertConfig: ``adex expert train --config best.yaml`` accepts it),
``trials.csv`` (one row per trial) and ``search.png`` (objective per trial with the
best-so-far line). Importing this module imports optuna
(:func:`~adex.studies.search_extras.require_optuna`).
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from adex.config import dump_yaml
from adex.expert.train import ExpertConfig
from adex.fileio import atomic_write_bytes, atomic_write_text
from adex.studies.search_extras import require_optuna
from adex.studies.search_space import SearchSpace

require_optuna()  # MissingExtraError naming adex[search] when optuna is not installed
import optuna  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

CV_LABEL = "CV MAE (eV)"


def trial_seconds(trial: FrozenTrial) -> float | None:
    """Wall time of a finished trial in seconds (None if it has not finished)."""
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def best_complete(trials: Sequence[FrozenTrial]) -> FrozenTrial | None:
    """The completed trial with the lowest finite value (the earliest among equals), or None."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    return min(complete, key=lambda t: (t.value, t.number)) if complete else None


def trials_csv(trials: Sequence[FrozenTrial], space: SearchSpace) -> str:
    """One row per trial: number, state, value, one column per parameter, seconds, worker,
    the per-fold values (``mae_<fold>``)."""
    names = list(space.parameters)
    for t in trials:
        names += [n for n in t.params if n not in names]
    folds = [f"mae_{f}" for f in space.folds]
    for t in trials:
        folds += [k for k in t.user_attrs if k.startswith("mae_") and k not in folds]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["number", "state", "value", *names, "seconds", "worker", *folds])
    for t in trials:
        seconds = trial_seconds(t)
        writer.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}",
                         *[t.params.get(n, "") for n in names], "" if seconds is None else f"{seconds:.2f}",
                         t.user_attrs.get("worker", ""),
                         *["" if t.user_attrs.get(k) is None else f"{t.user_attrs[k]:.6g}" for k in folds]])
    return out.getvalue()


def plot_search(path: Path, trials: Sequence[FrozenTrial], title: str, ylabel: str) -> None:
    """PNG: objective of each completed trial (dots), the last running value of pruned
    trials (crosses), and the best-so-far line (by trial number)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE and t.value is not None
                   and math.isfinite(t.value)), key=lambda t: t.number)
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if done:
        x = [t.number for t in done]
        y = [t.value for t in done]
        ax.plot(x, y, "o", ms=4, color="tab:blue", label="trial")
        ax.step(x, np.minimum.accumulate(y), where="post", color="tab:red", label="best so far")
    if pruned:
        ax.plot([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                "x", ms=4, color="grey", label="pruned (running value)")
    ax.set_xlabel("trial")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if done or pruned:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


@dataclass
class SearchOutputs:
    """The files :func:`write_outputs` wrote (``best_yaml`` None when no trial completed)."""

    best_yaml: Path | None
    trials_csv: Path
    plot: Path
    best: FrozenTrial | None


def write_outputs(study: optuna.Study, space: SearchSpace, base_data: dict, out: Path,
                  label: str = CV_LABEL) -> SearchOutputs:
    """``best.yaml`` (the best completed trial's full ExpertConfig, checked by loading it
    back with ``adex.config.load_config``), ``trials.csv`` and ``search.png`` in ``out``;
    ``label`` names the objective."""
    from adex.config import load_config

    out.mkdir(parents=True, exist_ok=True)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    best = best_complete(trials)
    best_path = None
    if best is not None:
        config = space.config(best.params, base_data)
        folds = ", ".join(space.folds)
        header = (f"# adex search: best trial {best.number} of study {study.study_name!r}: "
                  f"{label} {best.value:.6g} (folds {folds}).\n"
                  f"# Train it: adex expert train --config best.yaml --split SPLIT\n")
        best_path = out / "best.yaml"
        atomic_write_text(best_path, header + dump_yaml(config))
        load_config(ExpertConfig, "expert", str(best_path))  # must load back
    csv_path = out / "trials.csv"
    atomic_write_text(csv_path, trials_csv(trials, space))
    plot_path = out / "search.png"
    plot_search(plot_path, trials, f"study {study.study_name}: {len(trials)} trials", label)
    return SearchOutputs(best_path, csv_path, plot_path, best)

