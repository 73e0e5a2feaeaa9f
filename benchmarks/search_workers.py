"""Throughput of ``adex search`` workers sharing one study in an Optuna storage.

Runs 1, then 2 (``--workers``) concurrent ``python -m adex search`` processes with the cheap
synthetic objective (``--objective synthetic``; ``--seconds`` of sleep per fold mimic
training, 0 measures the storage and sampler overhead alone) on a fresh study each time,
then reads the study back and reports trials per minute between the first trial's start
and the last trial's end (process start-up excluded) and the wall time of the whole run.
Results go to ``search_workers.json`` (+ ``.md``) in ``--out`` (default ``$ADEX_HOME/benchmarks``).

    python benchmarks/search_workers.py --storage postgresql://user@127.0.0.1:5432/db [--trials 20] [--seconds 0.5]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def run(storage: str, n_workers: int, trials: int, seconds: float, sampler: str, space: str) -> dict:
    import optuna

    from adex.studies.search import driver_url

    study = f"bench-{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="adex-search-bench-"))
    env = {**os.environ, "ADEX_HOME": str(work / "home"), "ADEX_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "adex", "search", "--space", space, "--objective", "synthetic",
                               "--synthetic-seconds", str(seconds), "--sampler", sampler, "--seed", str(k),
                               "--study", study, "--storage", storage, "--n-trials", str(trials),
                               "--out", str(work / f"out{k}")],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for k in range(n_workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"worker failed:\n{err}")
    wall = time.perf_counter() - start
    loaded = optuna.load_study(study_name=study, storage=driver_url(storage))
    done = [t for t in loaded.trials if t.datetime_complete is not None]
    span = (max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)).total_seconds()
    workers = sorted({t.user_attrs.get("worker") for t in done})
    optuna.delete_study(study_name=study, storage=driver_url(storage))
    shutil.rmtree(work, ignore_errors=True)
    return {"workers": n_workers, "trials": len(done), "trials_per_worker": [sum(t.user_attrs.get("worker") == w for t in done)
                                                                         for w in workers],
            "span_s": round(span, 2), "trials_per_minute": round(len(done) / span * 60, 1), "wall_s": round(wall, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--storage", required=True, help="Optuna storage URL (e.g. postgresql://...)")
    parser.add_argument("--trials", type=int, default=20, help="trials per worker")
    parser.add_argument("--seconds", type=float, nargs="+", default=[0.0, 0.5], help="sleep per fold (2 folds per trial)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sampler", default="random")
    parser.add_argument("--out", default=None, help="output folder (default $ADEX_HOME/benchmarks)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="adex-search-space-"))
    space = work / "space.yaml"
    space.write_text("base: default\nfolds: [f0, f1]\nparameters:\n"
                     "  training.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n"
                     "  model.n_conv: {type: int, low: 1, high: 4}\n"
                     "  model.pooling: {type: categorical, choices: [attention, mean, vacancy]}\n"
                     "pruner: {type: none}\n")
    rows = []
    for seconds in args.seconds:
        for n in args.workers:
            row = {"seconds_per_fold": seconds, **run(args.storage, n, args.trials, seconds, args.sampler, str(space))}
            print(json.dumps(row), flush=True)
            rows.append(row)
    from adex.studies.search import safe_url

    result = {"storage": safe_url(args.storage).split(":")[0],
              "sampler": args.sampler, "trials_per_worker": args.trials, "folds_per_trial": 2,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
              "load_average_at_end": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), "runs": rows}
    shutil.rmtree(work, ignore_errors=True)
    from adex.paths import adex_home

    out = Path(args.out) if args.out else adex_home() / "benchmarks"
    out.mkdir(parents=True, exist_ok=True)
    (out / "search_workers.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = ["| sleep per fold (s) | workers | trials | trials/min (first start to last end) | wall (s, with start-up) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['seconds_per_fold']} | {r['workers']} | {r['trials']} ({'+'.join(map(str, r['trials_per_worker']))}) | "
              f"{r['trials_per_minute']} | {r['wall_s']} |" for r in rows]
    (out / "search_workers.md").write_text(
        f"adex search, synthetic objective, {result['storage']} storage, {args.sampler} sampler, "
        f"{result['machine']}, {result['date']} (load average at the end {result['load_average_at_end'][0]:.1f})\n\n"
        + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
