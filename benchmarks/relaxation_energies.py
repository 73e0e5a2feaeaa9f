"""How informative are CHGNet's relaxation energies about the DFT vacancy energies?

    python benchmarks/relaxation_energies.py [--data DIR] [--relaxation-steps 10] [--out FILE.json]

For every Witman vacancy (supercells of the default expert config; the energies come from
the potential cache, so run after ``benchmarks/potential_energies.py`` or a training that
filled it) this compares CHGNet's vacancy energy dE unrelaxed, after one line search
(``model.potential_relaxation``) and after N FIRE steps (``..._steps``):

* ``relaxation_eV``: mean / min / max of dE(unrelaxed) - dE(relaxed) (eV);
* ``per_element_mae_eV``: the MAE of the simplest delta model dH = dE + c(vacated element),
  c the median of dH - dE per element (all data, no split: a property of dE, not a model
  score), for all, O and metal vacancies;
* ``scaled_relaxation_mae_eV``: the same for dE(unrelaxed) - a * relaxation energy, a = 0, 0.25, ..., 1.

Writes ``--out`` (default ``$ADEX_HOME/benchmarks/relaxation_energies.json``).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def per_element_abs_errors(residual: np.ndarray, elements: np.ndarray) -> np.ndarray:
    """|residual - median residual of its element| [n] (eV)."""
    out = np.empty_like(residual)
    for element in np.unique(elements):
        mask = elements == element
        out[mask] = np.abs(residual[mask] - np.median(residual[mask]))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--relaxation-steps", type=int, default=10)
    parser.add_argument("--advisor", default="chgnet")
    parser.add_argument("--out", default=None, help="JSON to write (default $ADEX_HOME/benchmarks/relaxation_energies.json)")
    args = parser.parse_args(argv)

    from adex.config import load_config
    from adex.expert.witman import load_witman
    from adex.expert.potential import vacancy_energies
    from adex.expert.train import ExpertConfig, load_advisors
    from adex.registry import Registry

    config = load_config(ExpertConfig, "expert", "default")
    packed = load_witman(config.featurizer, config.supercell, args.data)
    entry, model = load_advisors([args.advisor], Registry())[0]
    energies = {
        "unrelaxed": vacancy_energies(entry, model, packed, config.supercell),
        "line_search": vacancy_energies(entry, model, packed, config.supercell, relaxation=True),
        f"fire{args.relaxation_steps}": vacancy_energies(entry, model, packed, config.supercell, relaxation=True,
                                                         relaxation_steps=args.relaxation_steps),
    }
    target = np.asarray(packed.targets, dtype=np.float64)  # DFT dH (eV)
    elements = np.array([str(row[0]) for row in packed.info])  # vacated element
    oxygen = elements == "O"
    result = {"n": len(target), "relaxation_eV": {}, "per_element_mae_eV": {}, "scaled_relaxation_mae_eV": {}}
    for name, dE in energies.items():
        if name != "unrelaxed":
            relaxation = energies["unrelaxed"] - dE
            result["relaxation_eV"][name] = {"mean": float(relaxation.mean()), "min": float(relaxation.min()),
                                             "max": float(relaxation.max())}
            result["scaled_relaxation_mae_eV"][name] = {
                str(a): float(per_element_abs_errors(target - (energies["unrelaxed"] - a * relaxation), elements).mean())
                for a in (0.0, 0.25, 0.5, 0.75, 1.0)}
        errors = per_element_abs_errors(target - dE, elements)
        result["per_element_mae_eV"][name] = {"all": float(errors.mean()), "O": float(errors[oxygen].mean()),
                                              "metal": float(errors[~oxygen].mean())}
    if args.out is None:
        from adex.paths import adex_home

        args.out = adex_home() / "benchmarks" / "relaxation_energies.json"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
