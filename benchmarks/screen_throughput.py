"""Screening throughput: ``adex screen`` on the first N crystals of the Materials Project
archive, with 1 and 2 Dask workers, for the fast expert and the default one.

Two measurements, each run side by side in one invocation (the machine's speed varies
between days, so only ratios within one run mean something; the load average is
recorded with every number):

1. per host, one process, one thread (no Dask): the path ``adex predict --input`` takes
   (``read_structure``, ``distinct_sites``, ``featurize_host_sites``, then
   ``predict_packed_members`` per chunk of ~64 vacancies) against the screen's chunk
   pipeline (``adex.expert.screen_worker.screen_hosts``: one symmetry analysis per host,
   one batched prediction and advisor call per chunk, ``torch.inference_mode``), each in
   a fresh process on the same hosts, after a warm-up host;
2. the real command, ``python -m adex screen SUBSET.tar --workers W``, wall time from
   process start to exit (cluster start, expert loading and Parquet writing included).

With ``--base-root DIR`` (another checkout of the repository, e.g. ``git worktree add
/tmp/wt_base HEAD~3``), measurement 1 compares the screen's chunk pipeline of that checkout
("base") with this one's ("after"), alternating fresh processes ``--repeat`` times: a
before/after of code changes in one invocation.

Writes ``screen_throughput.json`` and ``.md`` to ``--out`` (default
``$ADEX_HOME/benchmarks/screen_throughput-<time>``; never into the repository unless asked).

    python benchmarks/screen_throughput.py [--hosts 500] [--compare-hosts 200] [--workers 1,2]
        [--experts builtin::expert/vacancy-core,builtin::expert/vacancy] [--out DIR]
        [--base-root DIR [--repeat 2]]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path

CORE = "builtin::expert/vacancy-core"
DEFAULT = "builtin::expert/vacancy"


def _archive_default() -> Path:
    data = Path(os.environ.get("ADEX_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
    return data / "mp_formation_energy" / "structures.tar.gz"


def make_subset(archive: Path, n: int, dest: Path) -> tuple[Path, Path]:
    """The first ``n`` CIFs of ``archive`` as an uncompressed tar and as a folder, plus one
    more CIF (the warm-up host, not in the subset)."""
    tar_path, folder = dest / f"subset-{n}.tar", dest / f"subset-{n}"
    folder.mkdir(parents=True, exist_ok=True)
    count = 0
    with tarfile.open(archive, "r|*") as src, tarfile.open(tar_path, "w") as dst:
        for member in src:
            if not member.isfile() or not member.name.endswith(".cif"):
                continue
            data = src.extractfile(member).read()
            if count == n:  # the warm-up host
                (dest / "warmup.cif").write_bytes(data)
                break
            info = tarfile.TarInfo(Path(member.name).name)
            info.size = len(data)
            import io

            dst.addfile(info, io.BytesIO(data))
            (folder / Path(member.name).name).write_bytes(data)
            count += 1
    return tar_path, folder


# --------------------------------------------------------------------------- in-process paths
def use_checkout(root: Path) -> None:
    """Import the ``adex`` packages of another checkout ``root`` in this process (its
    ``pyproject.toml`` package-dir layout), ahead of the installed ones."""
    import importlib.abc
    import importlib.util
    import tomllib

    dirs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    mapping = {name: (root / path).resolve() for name, path in dirs.items()}

    class CheckoutFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path=None, target=None):
            folder = mapping.get(fullname)
            if folder is None:
                return None  # submodules follow their package's __path__
            return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                          submodule_search_locations=[str(folder)])

    sys.meta_path.insert(0, CheckoutFinder())
    import adex

    if not Path(adex.__file__).resolve().is_relative_to(root.resolve()):
        raise RuntimeError(f"adex imported from {adex.__file__}, not from {root}")


def run_path(path: str, expert_ref: str, folder: Path, n: int, warmup: Path, root: Path | None = None) -> dict:
    """One path over the first ``n`` hosts of ``folder`` in this process (1 thread);
    ``root``: the checkout whose code runs (None: the installed one)."""
    import warnings

    if root is not None:
        use_checkout(root)

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    from adex.expert.loading import load_expert
    from adex.registry import Registry

    expert = load_expert(expert_ref, Registry())
    files = sorted(folder.glob("*.cif"))[:n]
    if path == "old":
        from adex.expert.data import PackedVacancies
        from adex.expert.predict import featurize_host_sites, predict_packed_members
        from adex.io import read_structure
        from adex.supercell import distinct_sites

        def one_pass(paths):
            vacancies, chunk, size = 0, [], 0
            for f in paths:
                try:
                    host = read_structure(f)
                    sites = [info.index for info in distinct_sites(host, expert.model.supercell.get("symprec", 0.01))]
                    chunk.append(featurize_host_sites(expert, host, sites, f.name))
                    size += len(sites)
                except Exception:  # noqa: BLE001 - the old path stops on a bad host; skip it here
                    continue
                if size >= 64:
                    vacancies += predict_packed_members(expert, PackedVacancies.concatenate(chunk)).shape[1]
                    chunk, size = [], 0
            if chunk:
                vacancies += predict_packed_members(expert, PackedVacancies.concatenate(chunk)).shape[1]
            return vacancies, {}
    else:
        from adex.expert.screen_inputs import HostInput
        from adex.expert.screen_worker import screen_hosts

        def one_pass(paths):
            hosts = [HostInput(f.stem, str(f), "cif", f.read_text()) for f in paths]
            vacancies, stages = 0, {}
            for start in range(0, len(hosts), 32):
                result = screen_hosts(expert, hosts[start:start + 32])
                vacancies += result.stats["vacancies"]
                for key in ("read_seconds", "symmetry_seconds", "featurize_seconds", "predict_seconds"):
                    stages[key] = stages.get(key, 0.0) + result.stats[key]
            return vacancies, stages

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        one_pass([warmup])
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        vacancies, stages = one_pass(files)
        seconds = time.perf_counter() - t0
    return {"path": path, "root": str(root) if root else None, "expert": expert.entry.ref, "hosts": len(files),
            "vacancies": vacancies,
            "seconds": round(seconds, 3), "vacancies_per_s": round(vacancies / seconds, 2),
            "ms_per_host": round(1000 * seconds / len(files), 2), "stages_s": {k: round(v, 3) for k, v in stages.items()},
            "load_before": load, "load_after": os.getloadavg()[0]}


def _subprocess_json(args: list[str], env: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_screen(tar_path: Path, expert_ref: str, workers: int, out: Path, hosts_per_task: int, env: dict) -> dict:
    """``python -m adex screen`` in a fresh process: wall time from start to exit."""
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "adex", "screen", str(tar_path), "--out", str(out), "--expert",
                           expert_ref, "--workers", str(workers), "--hosts-per-task", str(hosts_per_task)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    summary = json.loads((out / "summary.json").read_text())
    return {"expert": summary["expert"], "workers": workers, "hosts": summary["hosts"],
            "vacancies": summary["vacancies"], "errors": summary["errors"], "wall_s": round(wall, 2),
            "vacancies_per_s": round(summary["vacancies"] / wall, 2), "hosts_per_s": round(summary["hosts"] / wall, 2),
            "engine_wall_s": summary["wall_time_s"],
            "peak_rss_mb_per_worker": summary["peak_rss_mb_per_worker"], "load_before": load,
            "load_after": os.getloadavg()[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", default=str(_archive_default()))
    parser.add_argument("--hosts", type=int, default=500, help="first N crystals of the archive (default 500)")
    parser.add_argument("--compare-hosts", type=int, default=200,
                        help="hosts for the in-process before/after comparison (default 200; 0 skips it)")
    parser.add_argument("--experts", default=f"{CORE},{DEFAULT}")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--hosts-per-task", type=int, default=32)
    parser.add_argument("--out", default=None)
    parser.add_argument("--_path", help=argparse.SUPPRESS)
    parser.add_argument("--_expert", help=argparse.SUPPRESS)
    parser.add_argument("--_folder", help=argparse.SUPPRESS)
    parser.add_argument("--base-root", default=None,
                        help="another checkout: compare its screen pipeline with this one's (measurement 1)")
    parser.add_argument("--repeat", type=int, default=2, help="alternations of base/after with --base-root (default 2)")
    parser.add_argument("--_warmup", help=argparse.SUPPRESS)
    parser.add_argument("--_root", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._path:  # child process of the before/after comparison
        root = Path(args._root) if args._root else None
        print(json.dumps(run_path(args._path, args._expert, Path(args._folder), args.compare_hosts, Path(args._warmup),
                                  root)))
        return 0

    from adex.paths import adex_home

    out = Path(args.out) if args.out else adex_home() / "benchmarks" / f"screen_throughput-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    tar_path, folder = make_subset(Path(args.archive), args.hosts, out)
    env = dict(os.environ, ADEX_NO_PROGRESS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    experts = [e for e in args.experts.split(",") if e]
    workers = [int(w) for w in args.workers.split(",") if w]
    result = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
              "archive": args.archive, "hosts": args.hosts, "hosts_per_task": args.hosts_per_task,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "per_host": [], "screens": []}
    if args.compare_hosts:
        runs = [("old", None), ("new", None)]
        if args.base_root:
            runs = [("new", str(Path(args.base_root).resolve())), ("new", None)] * max(1, args.repeat)
        for expert in experts:
            for path, root in runs:
                row = _subprocess_json(["--_path", path, "--_expert", expert, "--_folder", str(folder), "--_warmup",
                                        str(out / "warmup.cif"), "--compare-hosts", str(args.compare_hosts)]
                                       + (["--_root", root] if root else []), env)
                print(json.dumps(row), flush=True)
                result["per_host"].append(row)
    for expert in experts:
        for w in workers:
            name = f"{expert.split('/')[-1].replace(':', '-')}-w{w}"  # versions of one name apart
            row = run_screen(tar_path, expert, w, out / "runs" / name, args.hosts_per_task, env)
            print(json.dumps(row), flush=True)
            result["screens"].append(row)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    (out / "screen_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "screen_throughput.md").write_text(markdown(result))
    print(f"-> {out}")
    return 0


def markdown(result: dict) -> str:
    lines = [f"# Screening throughput ({result['started']} .. {result['finished']})", "",
             f"{result['hosts']} first crystals of `{Path(result['archive']).name}`, {result['machine']['cpus']} cores, "
             f"{result['hosts_per_task']} hosts per task. Load average (1 min) recorded before/after each row.", ""]
    if result["per_host"]:
        lines += ["## Per host, one process, one thread (no Dask)", "",
                  "| expert | path | hosts | vacancies | s | vacancies/s | ms/host | stages (s) | load |",
                  "|---|---|---:|---:|---:|---:|---:|---|---|"]
        for r in result["per_host"]:
            stages = ", ".join(f"{k.replace('_seconds', '')} {v:.2f}" for k, v in r["stages_s"].items())
            label = f"base (screen chunk, {r['root']})" if r.get("root") else \
                "before (predict path)" if r["path"] == "old" else "after (screen chunk)"
            lines.append(f"| {r['expert']} | {label} | "
                         f"{r['hosts']} | {r['vacancies']} | {r['seconds']:.1f} | {r['vacancies_per_s']:.1f} | "
                         f"{r['ms_per_host']:.1f} | {stages} | {r['load_before']:.2f}/{r['load_after']:.2f} |")
        lines.append("")
    lines += ["## `adex screen`, wall time of the command (startup included)", "",
              "| expert | workers | hosts | vacancies | errors | wall s | vacancies/s | hosts/s | peak RSS per worker (MB) | load |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["screens"]:
        rss = ", ".join(f"{v:.0f}" for v in r["peak_rss_mb_per_worker"].values())
        lines.append(f"| {r['expert']} | {r['workers']} | {r['hosts']} | {r['vacancies']} | {r['errors']} | "
                     f"{r['wall_s']:.1f} | {r['vacancies_per_s']:.1f} | {r['hosts_per_s']:.1f} | {rss} | "
                     f"{r['load_before']:.2f}/{r['load_after']:.2f} |")
    by = {(r["expert"], r["workers"]): r for r in result["screens"]}
    for expert in dict.fromkeys(r["expert"] for r in result["screens"]):
        if (expert, 1) in by and (expert, 2) in by:
            lines.append(f"\nScaling 1 -> 2 workers, {expert}: "
                         f"{by[(expert, 2)]['vacancies_per_s'] / by[(expert, 1)]['vacancies_per_s']:.2f}x")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
