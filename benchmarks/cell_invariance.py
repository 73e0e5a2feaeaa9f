"""How far the shipped experts move when the host is written differently (issue 25).

For a host (default: the spinel of ``0009491-O1.cif``, DFT dH 6.22 eV for its O vacancy)
written as larger cells (14 to ~500 atoms) with every atom displaced by a fixed distance in
a random direction (so no symmetry reduces the cell back to the primitive one), predicts
one vacancy of each element with every expert given and records the shift against the
undistorted host, the time, and the advisors' crystal-embedding norms and changes (a sum
readout grows with the cell; a graph cut by neighbour count jumps when a tie breaks).

    python benchmarks/cell_invariance.py --data ../shared/data [--expert REF ...] [--out DIR]

Writes ``cell_invariance.json`` and ``cell_invariance.md`` to ``--out`` (default
``$ADEX_HOME/benchmarks``).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

SHIPPED = ("builtin::expert/vacancy", "builtin::expert/vacancy-core", "builtin::expert/vacancy-delta",
           "builtin::expert/vacancy-mixed")
SCALES = ((1, 1, 1), (2, 2, 2), (3, 3, 2), (4, 3, 3))  # 14, 112, 252, 504 atoms for the spinel
DISPLACEMENT = 0.02  # Å


def displaced(structure, amplitude: float, seed: int = 0):
    """Every atom moved by exactly ``amplitude`` Å in a random direction."""
    from pymatgen.core import Structure

    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(len(structure), 3))
    directions *= amplitude / np.linalg.norm(directions, axis=1, keepdims=True)
    return Structure(structure.lattice, structure.species, structure.cart_coords + directions, coords_are_cartesian=True)


def first_of_each_element(structure) -> list[int]:
    symbols = [site.specie.symbol for site in structure]
    return [symbols.index(element) for element in sorted(set(symbols))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("ADEX_DATA", "../shared/data"))
    parser.add_argument("--host", default="witman2023_vacancies/structures/0009491-O1.cif", help="relative to --data")
    parser.add_argument("--expert", action="append", help="expert reference (repeatable; default: the shipped ones)")
    parser.add_argument("--displacement", type=float, default=DISPLACEMENT, help="Å (default 0.02)")
    parser.add_argument("--out", help="output folder (default $ADEX_HOME/benchmarks)")
    args = parser.parse_args()

    import adex
    from adex.checkpoint import load_model
    from adex.expert.advisor_features import embed_hosts
    from adex.registry import Registry
    from adex.io import read_structure
    from adex.paths import adex_home

    host = read_structure(Path(args.data) / args.host)
    rows, embeddings = [], []
    for ref in args.expert or SHIPPED:
        expert = adex.load_expert(ref)
        base = None
        for scale in SCALES:
            cell = host.copy()
            cell.make_supercell(list(scale))
            for amplitude in (0.0, args.displacement):
                structure = displaced(cell, amplitude) if amplitude else cell
                sites = first_of_each_element(structure)
                start = time.perf_counter()
                table = expert.predict(structure, sites=sites)
                seconds = time.perf_counter() - start
                energies = dict(zip(table["element"], table["dH_pred_eV"].round(4)))
                if base is None:
                    base = energies
                shift = max(abs(energies[e] - base[e]) for e in energies)
                rows.append({"expert": expert.ref, "n_atoms": len(structure), "displacement_A": amplitude,
                             "dH_eV": energies, "max_shift_eV": round(float(shift), 4), "seconds": round(seconds, 2)})
                print(json.dumps(rows[-1]), flush=True)
        for advisor_ref in expert.advisors:  # the advisors' crystal embeddings on the same cells
            if any(e["advisor"] == advisor_ref for e in embeddings):
                continue
            model = load_model(Registry().resolve(advisor_ref))
            for scale in SCALES[:3]:
                cell = host.copy()
                cell.make_supercell(list(scale))
                vectors = {a: embed_hosts(model, [displaced(cell, a) if a else cell], ["x"])[1][0].astype(np.float64)
                           for a in (0.0, 0.001, 0.01, args.displacement)}
                for amplitude, vector in vectors.items():
                    change = np.linalg.norm(vector - vectors[0.0]) / np.linalg.norm(vectors[0.0])
                    embeddings.append({"advisor": advisor_ref, "n_atoms": len(cell), "displacement_A": amplitude,
                                       "norm": round(float(np.linalg.norm(vector)), 3),
                                       "change_vs_undistorted": round(float(change), 4)})
    out = Path(args.out) if args.out else adex_home() / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "cell_invariance.json").write_text(json.dumps({"host": args.host, "predictions": rows, "embeddings": embeddings}, indent=1))
    lines = ["# Cell invariance of the shipped experts", "",
             f"Host `{args.host}` written as larger cells, every atom displaced by {args.displacement} Å "
             "(random directions); one vacancy per element.", "",
             "| expert | atoms | displacement (Å) | dH per element (eV) | max shift (eV) | time (s) |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['expert']} | {r['n_atoms']} | {r['displacement_A']} | "
              + ", ".join(f"{k} {v:.2f}" for k, v in r["dH_eV"].items()) + f" | {r['max_shift_eV']:.3f} | {r['seconds']} |" for r in rows]
    lines += ["", "| advisor | atoms | displacement (Å) | crystal embedding norm | relative change vs undistorted |", "|---|---|---|---|---|"]
    lines += [f"| {e['advisor']} | {e['n_atoms']} | {e['displacement_A']} | {e['norm']} | {e['change_vs_undistorted']} |" for e in embeddings]
    (out / "cell_invariance.md").write_text("\n".join(lines) + "\n")
    print(f"-> {out / 'cell_invariance.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
