"""Prediction throughput of ``adex predict --input`` on the Witman vacancies.

Writes a table (structure, site) for the first N Witman vacancies (all 1,481 by default),
runs the real CLI in a fresh process (cold registry load, CIF parsing, supercell graphs,
advisors and expert included) and records wall and CPU time, machine, torch version and
thread count to ``predict_throughput.json`` (+ ``.md``) in ``--out`` (default ``$ADEX_HOME/benchmarks``). The MAE of the
predictions against the DFT values is reported too (in-sample for the shipped expert,
which was trained on all 1,481 vacancies).

    python benchmarks/predict_throughput.py --data ../shared/data [--expert REF] [--n 1481] [--threads 1] [--workers 2]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("ADEX_DATA", "../shared/data"))
    parser.add_argument("--expert", default=None)
    parser.add_argument("--n", type=int, default=None, help="number of vacancies (default: all)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="adex predict --workers (processes)")
    parser.add_argument("--cache", action="store_true",
                        help="adex predict --cache, run twice in a fresh ADEX_HOME: cold (fills the cache), then warm")
    parser.add_argument("--out", default=None, help="output folder (default $ADEX_HOME/benchmarks)")
    args = parser.parse_args()

    root = Path(args.data) / "witman2023_vacancies"
    with open(root / "vacancies.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))[: args.n]
    work = Path(tempfile.mkdtemp(prefix="adex-bench-"))
    table = work / "vacancies.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["structure", "site", "id", "dH_eV"])
        for row in rows:
            writer.writerow([str((root / "structures" / f"{row['id']}.cif").resolve()), 0, row["id"], row["dH_eV"]])
    output = work / "predictions.csv"
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads), ADEX_NO_PROGRESS="1")
    command = [sys.executable, "-m", "adex", "predict", "--input", str(table), "--output", str(output)]
    if args.expert:
        command += ["--expert", args.expert]
    if args.workers > 1:
        command += ["--workers", str(args.workers)]
    cold = None
    if args.cache:
        command += ["--cache"]
        env["ADEX_CACHE"] = str(work / "cache")  # empty: the first run is cold
    for attempt in range(2 if args.cache else 1):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        if args.cache and attempt == 0:
            cold = {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2)}
    with open(output, newline="") as handle:
        pred = list(csv.DictReader(handle))
    mae = sum(abs(float(r["dH_pred_eV"]) - float(r["dH_eV"])) for r in pred) / len(pred)
    import torch

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "threads": args.threads,
        "workers": args.workers,
        "cache": "warm (second run; the first, cold run filling it: " + json.dumps(cold) + ")" if args.cache else "off",
        "expert": proc.stderr.split("expert: ", 1)[-1].split("\n", 1)[0] if "expert: " in proc.stderr else args.expert,
        "n_vacancies": len(pred),
        "n_hosts": len({r["structure"] for r in pred}),
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "vacancies_per_second": round(len(pred) / wall, 1),
        "peak_rss_mb": round(after.ru_maxrss / 1024, 1),  # the largest single process
        "mae_vs_dft_eV": round(mae, 4),
        "command": " ".join(command[1:]),
    }
    from adex.paths import adex_home

    out = Path(args.out) if args.out else adex_home() / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "predict_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    md = "| quantity | value |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in result.items())
    (out / "predict_throughput.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
