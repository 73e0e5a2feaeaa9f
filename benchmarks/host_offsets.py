"""How much of a cross-validation's error is one offset per host compound?

    python benchmarks/host_offsets.py RUN_DIR... [--data ../shared/data] [--out FILE.csv]
                                      [--oracle-baseline DIR]

For every run folder (``adex cv`` / ``adex baseline`` / ``adex experiment blend``; their
``predictions.csv``) this prints and writes (``--out``, default
``$ADEX_HOME/benchmarks/host_offsets.csv``):

* ``mae``: MAE over all held-out vacancies (eV; pooled, so it differs slightly from the
  mean over folds);
* ``mae_minus_host_offset``: the MAE left after subtracting from every prediction the
  mean signed error of its host (the part no per-host constant can fix);
* ``mae_minus_host_class_offset``: the same with one offset per host and vacancy class
  (O or metal);
* ``host_offset_mae``: the mean absolute per-host offset (weighted by vacancies);
* ``top10_hosts_share``: share of the summed absolute error in the 10 worst hosts;
* ``corr_offset_gap_O`` / ``_metal``, ``corr_offset_hf_O`` / ``_metal``: Pearson correlation
  of the per-host offsets (O and metal vacancies apart) with the host's DFT band gap and
  formation enthalpy per atom (``hosts/*.csv`` of the Witman data).

``--oracle-baseline DIR`` also cross-validates the best descriptor baseline per compound
(CHGNet embeddings + line-search relaxed ``dE``, as ``adex baseline --cv published_struct
--advisors chgnet --potential-delta --potential-relaxation``) with the *true* DFT band gap
and formation enthalpy of the host added as two features, into ``DIR``: an upper bound on
what an advisor that predicted those two host properties exactly could add.
"""
from __future__ import annotations

import argparse
import csv
import glob
import os
import sys
from pathlib import Path

import numpy as np


def host_properties(root: Path) -> dict[str, tuple[float, float]]:
    """host id -> (DFT band gap in eV, formation enthalpy in eV/atom) from ``hosts/*.csv``."""
    out = {}
    for path in glob.glob(str(root / "hosts" / "*.csv")):
        with open(path, newline="") as fh:
            row = next(csv.DictReader(fh))
        out[Path(path).stem.split("NREL_MatDb.")[-1]] = (float(row["bandgap_eV"]), float(row["dH_eV_per_atom"]))
    return out


def offsets_table(run: Path, props: dict[str, tuple[float, float]]) -> dict:
    """The statistics above for one run folder."""
    from adex.studies.cv import host_offsets

    with open(run / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    hosts = np.array([r["host"] for r in rows])
    is_oxygen = np.array([r["element"] == "O" for r in rows])
    err = np.array([float(r["dH_pred_eV"]) - float(r["dH_eV"]) for r in rows])  # eV, signed

    def group_means(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mean signed error of each row's group [n], group index of each row [n])."""
        means, inverse = host_offsets(err, keys)
        return means[inverse], inverse

    host_offset, inverse = group_means(hosts)
    class_offset, _ = group_means(np.char.add(hosts, np.where(is_oxygen, ":O", ":M")))
    summed = np.bincount(inverse, weights=np.abs(err))  # eV, per host
    result = {"run": run.name, "n": len(err), "mae": np.abs(err).mean(),
              "mae_minus_host_offset": np.abs(err - host_offset).mean(),
              "mae_minus_host_class_offset": np.abs(err - class_offset).mean(),
              "host_offset_mae": np.abs(host_offset).mean(),
              "top10_hosts_share": np.sort(summed)[::-1][:10].sum() / summed.sum()}
    for label, mask in (("O", is_oxygen), ("metal", ~is_oxygen)):
        keys = hosts[mask]
        names = np.unique(keys)
        offset, _ = host_offsets(err[mask], keys)
        known = np.array([name in props for name in names])
        gap = np.array([props[n][0] for n in names[known]])
        hf = np.array([props[n][1] for n in names[known]])
        result[f"corr_offset_gap_{label}"] = float(np.corrcoef(offset[known], gap)[0, 1])
        result[f"corr_offset_hf_{label}"] = float(np.corrcoef(offset[known], hf)[0, 1])
    return {k: (round(float(v), 4) if isinstance(v, (float, np.floating)) else v) for k, v in result.items()}


def oracle_baseline(data: str, props: dict[str, tuple[float, float]], out: str) -> dict:
    """The per-compound baseline (CHGNet + relaxed dE) with the true host gap and enthalpy added."""
    from dataclasses import replace

    from adex.cli.common import open_registry_from
    from adex.datasets import dataset_root
    from adex.studies.baseline import ModelSettings, baseline_table, run_baseline
    from adex.studies.splits import make_folds, parse_scheme
    from adex.expert.train import load_advisors

    root = dataset_root("witman2023_vacancies", data)
    advisors = load_advisors(["chgnet"], open_registry_from(argparse.Namespace(registry=None)))
    table = baseline_table(data, advisors, potential_delta=True, relaxation=True)
    oracle = np.array([props[str(h)] for h in table.hosts])
    table = replace(table, X=np.hstack([table.X, oracle]), names=list(table.names) + ["dft_host_gap", "dft_host_hf"])
    folds = make_folds(root, n_folds=10, seed=0, **parse_scheme("published_struct"))
    config = {"command": "benchmarks/host_offsets.py --oracle-baseline", "advisors": ["chgnet"], "potential_delta": True,
              "potential_relaxation": True, "extra_features": ["dft_host_gap", "dft_host_hf"]}
    return run_baseline(table, folds, ModelSettings(), grouped=True, scheme="published_struct", out=out,
                        config=config).metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1].strip(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--data", default=os.environ.get("ADEX_DATA"))
    parser.add_argument("--out", type=Path, default=None, help="CSV to write (default $ADEX_HOME/benchmarks/host_offsets.csv)")
    parser.add_argument("--oracle-baseline", help="run folder of the baseline with the true host properties")
    args = parser.parse_args(argv)
    from adex.datasets import dataset_root

    props = host_properties(dataset_root("witman2023_vacancies", args.data))
    if args.oracle_baseline:
        m = oracle_baseline(args.data, props, args.oracle_baseline)
        print(f"oracle baseline per compound: MAE {m['mae_mean']:.3f} ± {m['mae_std']:.3f} eV ({args.oracle_baseline})")
    from adex.studies.cv import write_table

    table = [offsets_table(run, props) for run in args.runs]
    if args.out is None:
        from adex.paths import adex_home

        args.out = adex_home() / "benchmarks" / "host_offsets.csv"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_table(args.out, table)
    writer = csv.DictWriter(sys.stdout, fieldnames=list(table[0]))
    writer.writeheader()
    writer.writerows(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
