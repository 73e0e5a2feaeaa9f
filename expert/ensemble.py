"""Deep ensembles of experts: the mean of M independently trained experts as the
prediction, their spread as its uncertainty.

Members share what the input pipeline depends on (featurizer settings, supercell
settings, advisors by exact version and sha256), so one featurization and one pass of
the advisors serve all of them; each member keeps its own weights, normaliser and
element reference, and may or may not add a potential's vacancy energies (unrelaxed or
relaxed: each kind the members use is computed once, ``potential_kinds``). Stored in the
registry as one model (``class: expert_ensemble``): ``model.json`` lists the members'
architectures, ``weights.safetensors`` holds ``members.<k>.<tensor>``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from adex.errors import ConfigError
from adex.expert.model import Expert


class ExpertEnsemble(nn.Module):
    """M experts with a common input pipeline (same featurizer and supercell settings, the
    same advisors: same weights by sha256, in the same order; members read the advisors
    through member 0's references).

    ``predict_members(batch)`` -> dH (eV) [M, B]; ``predict(batch)`` -> member mean [B].
    The spread reported by adex is the population standard deviation over members
    (0 for a single member, whose mean equals the plain expert).
    """

    def __init__(self, members: list[Expert]):
        super().__init__()
        if not members:
            raise ConfigError("an ensemble needs at least one member")
        first = members[0]

        def advisor_identity(expert: Expert) -> list:
            # an advisor is the same one if its weights and architecture are (the ref may be spelt builtin::... or not)
            return [(s.weights_sha256 or s.ref, s.model_sha256, s.width) for s in expert.advisors]

        def advisor_names(expert: Expert) -> str:
            return ", ".join(f"{s.ref} (sha256 {s.weights_sha256[:12]})" for s in expert.advisors)

        for k, member in enumerate(members[1:], start=1):
            mismatches = (
                ("featurizer settings", member.featurizer_settings.to_dict() != first.featurizer_settings.to_dict(),
                 member.featurizer_settings.to_dict(), first.featurizer_settings.to_dict()),
                ("supercell settings", member.supercell != first.supercell, member.supercell, first.supercell),
                ("advisors", advisor_identity(member) != advisor_identity(first), advisor_names(member), advisor_names(first)),
            )
            for what, differs, mine, theirs in mismatches:
                if differs:
                    raise ConfigError(f"ensemble member {k} has other {what} than member 0 ({mine} vs {theirs}); "
                                      "members must share the input pipeline")
        self.members = nn.ModuleList(members)

    # The input pipeline (what adex.expert.predict and the training code read).
    @property
    def featurizer_settings(self):
        return self.members[0].featurizer_settings

    @property
    def supercell(self) -> dict:
        return self.members[0].supercell

    @property
    def advisors(self):
        return self.members[0].advisors

    @property
    def training_elements(self) -> list[str]:
        """Elements every member saw in training (a host element outside this set warns)."""
        common = set(self.members[0].training_elements)
        for member in self.members[1:]:
            common &= set(member.training_elements)
        return sorted(common)

    @property
    def reads_oxidation_states(self) -> bool:
        return any(m.config.oxidation_states for m in self.members)

    @property
    def potential_kinds(self) -> list[tuple[bool, int, float]]:
        """:func:`potential_kinds` of the members (members may differ: prediction computes
        each kind once and gives every member its own)."""
        return potential_kinds(self)

    @property
    def receptive_hops(self) -> int | None:
        hops = [m.receptive_hops for m in self.members]
        return None if any(h is None for h in hops) else max(hops)

    @property
    def hops_origin(self) -> str:
        """``"vacancy"`` if every member reads the vacated node only, else ``"hood"``."""
        return "vacancy" if all(m.hops_origin == "vacancy" for m in self.members) else "hood"

    def prepare(self, packed):
        """Packed graphs pruned to the largest receptive field among the members (a
        member's eval output does not change on a graph pruned to more hops than it needs)."""
        hops = self.receptive_hops
        return packed if hops is None else packed.prune(hops, origin=self.hops_origin)

    def __len__(self) -> int:
        return len(self.members)

    @torch.no_grad()
    def predict_members(self, batch) -> torch.Tensor:
        """dH (eV) of every member: [M, B]."""
        return torch.stack([member.predict(batch) for member in self.members])

    @torch.no_grad()
    def predict(self, batch) -> torch.Tensor:
        """Ensemble mean dH (eV) [B]."""
        return self.predict_members(batch).mean(0)

    def forward(self, batch) -> torch.Tensor:  # pragma: no cover - guard
        raise TypeError("an ExpertEnsemble is not trained as one module; use predict / predict_members")

    # ---------------------------------------------------------------- serialisation
    def architecture(self) -> dict:
        return {
            "class": "expert_ensemble",
            "featurizer": self.featurizer_settings.to_dict(),
            "members": [member.architecture() for member in self.members],
            "target": "vacancy_formation_enthalpy",
            "unit": "eV",
        }

    @classmethod
    def from_architecture(cls, arch: dict) -> "ExpertEnsemble":
        return cls([Expert.from_architecture(member) for member in arch["members"]])


def as_members(model) -> list:
    """The members of an ensemble, or ``[model]`` for a single expert."""
    return list(model.members) if isinstance(model, ExpertEnsemble) else [model]


def potential_kinds(model) -> list[tuple[bool, int, float]]:
    """The distinct ``(relaxation, relaxation_steps, min_image_distance)``
    (``Expert.potential_kind``) of the experts of ``model`` (an ensemble or a single expert)
    that add a potential's vacancy energies (sorted; empty if none does): the energies a
    prediction must compute, once each."""
    return sorted({m.potential_kind for m in as_members(model) if m.potential_kind is not None})


def ensemble_statistics(member_predictions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean [B], population std [B]) of member predictions [M, B] (eV)."""
    member_predictions = np.asarray(member_predictions, dtype=np.float64)
    return member_predictions.mean(0), member_predictions.std(0)


def calibration(mean: np.ndarray, std: np.ndarray, target: np.ndarray) -> dict:
    """How well the ensemble spread tracks the error on a labelled set.

    Returns ``n``, ``mae`` (eV), ``mean_std`` (eV), ``frac_within_1std`` and
    ``frac_within_2std`` (fraction of vacancies with |error| <= k std; a Gaussian with
    the right width gives 0.683 / 0.954), ``spearman_abs_error_std`` (rank correlation
    of |error| and std; NaN when the std is constant) and ``mae_low_std_half`` /
    ``mae_high_std_half`` (MAE of the vacancies below / above the median std).
    """
    from scipy.stats import spearmanr

    mean, std, target = (np.asarray(a, dtype=np.float64) for a in (mean, std, target))
    err = np.abs(mean - target)
    out = {
        "n": int(len(err)),
        "mae": float(err.mean()),
        "mean_std": float(std.mean()),
        "frac_within_1std": float((err <= std).mean()),
        "frac_within_2std": float((err <= 2 * std).mean()),
    }
    if len(err) >= 3 and np.ptp(std) > 0:
        out["spearman_abs_error_std"] = float(spearmanr(err, std).statistic)
        low = std <= np.median(std)
        out["mae_low_std_half"] = float(err[low].mean())
        out["mae_high_std_half"] = float(err[~low].mean()) if (~low).any() else float("nan")
    else:
        out["spearman_abs_error_std"] = float("nan")
    return out


def plot_calibration(path, mean: np.ndarray, std: np.ndarray, target: np.ndarray, title: str) -> None:
    """|error| vs ensemble std (eV) scatter with the 1 and 2 std lines, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    err = np.abs(np.asarray(mean) - np.asarray(target))
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(std, err, s=8, alpha=0.6)
    top = float(max(std.max(initial=0.0) * 2.2, 1e-3))
    grid = np.linspace(0, top / 2, 10)
    ax.plot(grid, grid, "k--", lw=1, label="|error| = std")
    ax.plot(grid, 2 * grid, "k:", lw=1, label="|error| = 2 std")
    ax.set_xlabel("ensemble std (eV)")
    ax.set_ylabel("|error| (eV)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compose_ensemble(refs: list[str], registry, name: str, aliases: tuple[str, ...] = (), notes: dict | None = None):
    """Register the experts ``refs`` (single experts or ensembles, flattened) as one
    ensemble ``expert/<name>``; returns the new registry entry.

    Members must share featurizer, supercell settings and advisors (exact versions and
    sha256; members may add different potential energies). The composed model has no
    evaluation of its own: its card lists each member's reference and metrics, and it
    gets no primary metric (so it never takes the ``best`` alias from an evaluated
    model). ``notes.how_trained`` records the composition; ``notes`` adds to the card's
    notes.
    """
    from adex.checkpoint import model_files
    from adex.expert.loading import load_expert

    if len(refs) < 2:
        raise ConfigError("an ensemble needs at least two experts to compose")
    loaded = [load_expert(ref, registry) for ref in refs]
    members = [member for item in loaded for member in as_members(item.model)]
    ensemble = ExpertEnsemble(members)  # checks the shared input pipeline
    first = loaded[0]
    card = {
        "description": f"{name} expert ({len(members)}-member ensemble composed from {', '.join(e.entry.ref for e in loaded)}): "
                       "neutral vacancy formation enthalpy (eV), mean and std over members",
        "featurizer": dict(first.entry.card.get("featurizer", ensemble.featurizer_settings.to_dict())),
        "featurizer_fingerprint": first.entry.card.get("featurizer_fingerprint"),
        "element_embedding": first.entry.card.get("element_embedding"),
        "supercell": ensemble.supercell,
        "target": {"name": "vacancy_formation_enthalpy", "unit": "eV"},
        "advisors": [s.to_dict() for s in ensemble.advisors],
        "composed_from": [{"ref": e.entry.ref, "members": len(as_members(e.model)),
                           "config": e.entry.card.get("config"), "metrics": e.entry.card.get("metrics"),
                           "dataset": e.entry.card.get("dataset")} for e in loaded],
        "metrics": {"ensemble_size": len(members), "note": "composed ensemble: see composed_from for each member's metrics"},
        "notes": {"how_trained": f"composed, no training: adex expert ensemble {' '.join(refs)} --name {name}", **(notes or {})},
    }
    parents = [e.entry.ref for e in loaded]
    for adv_entry, _ in first.advisors:
        if adv_entry.ref not in parents:
            parents.append(adv_entry.ref)
    return registry.register("expert", name, model_files(ensemble), card, parents=parents, aliases=list(aliases))
