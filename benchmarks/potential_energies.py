"""Fill the potential-energy cache for the Witman vacancies, one share per process.

    python benchmarks/potential_energies.py [--relaxation-steps N | --line-search | --unrelaxed]
                                            [--min-image-distance A] [--part K --of P] [--data DIR] [--out FILE.json]

Computes CHGNet's vacancy energies dE (eV) of every vacancy (or of share ``K`` of ``P``,
every P-th vacancy, so P processes on P cores fill the cache side by side) in the
supercells of the default expert config (``--min-image-distance``: at least that many Å between
images, as ``model.potential_min_image_distance``), exactly as ``adex expert train`` / ``adex
baseline`` with ``model.potential_delta`` would (same cache, so they find them), and
writes the timing and dE summary to ``--out`` (default
``$ADEX_HOME/benchmarks/potential_energies_<kind>_<K>of<P>.json``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--relaxation-steps", type=int, default=None, help="FIRE steps on the defected supercell")
    kind.add_argument("--line-search", action="store_true", help="one steepest-descent line search")
    kind.add_argument("--unrelaxed", action="store_true")
    parser.add_argument("--part", type=int, default=0)
    parser.add_argument("--of", type=int, default=1)
    parser.add_argument("--data", default=None)
    parser.add_argument("--advisor", default="chgnet")
    parser.add_argument("--min-image-distance", type=float, default=0.0,
                        help="Å: dE in supercells at least this large (model.potential_min_image_distance)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    import torch

    from adex.config import load_config
    from adex.paths import adex_home
    from adex.expert.witman import load_witman
    from adex.expert.potential import potential_supercell, vacancy_energies
    from adex.expert.train import ExpertConfig, load_advisors
    from adex.registry import Registry

    torch.set_num_threads(1)
    relaxation = not args.unrelaxed
    steps = args.relaxation_steps or 0
    label = f"fire{steps}" if steps else ("line_search" if args.line_search else "unrelaxed")
    config = load_config(ExpertConfig, "expert", "default")
    everything = load_witman(config.featurizer, config.supercell, args.data)
    packed = everything.subset(np.arange(args.part, len(everything), args.of))
    entry, model = load_advisors([args.advisor], Registry())[0]
    supercell = potential_supercell(config.supercell, args.min_image_distance)
    t0 = time.perf_counter()
    energies = vacancy_energies(entry, model, packed, supercell, relaxation=relaxation,
                                relaxation_steps=steps, description=f"{label}: vacancy energies")
    seconds = time.perf_counter() - t0
    out = Path(args.out or adex_home() / "benchmarks" / f"potential_energies_{label}{'_%g' % args.min_image_distance if args.min_image_distance else ''}_{args.part}of{args.of}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    summary = {"kind": label, "part": args.part, "of": args.of, "vacancies": len(packed), "seconds": seconds,
               "seconds_per_vacancy": seconds / max(len(packed), 1), "mean_dE_eV": float(np.mean(energies)),
               "supercell": supercell.to_dict()}
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
