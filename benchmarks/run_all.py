"""The adex benchmark suite (GitHub issue 6): featurization, training, prediction, scaling.

    python benchmarks/run_all.py --data ../shared/data [--quick] [--only featurize,train,predict,scaling]
                                 [--threads 1] [--budget-minutes 20] [--out DIR]

Every measurement runs in a fresh subprocess (imports, caches and memory isolated) with
``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` and the torch thread count set to ``--threads``
(default 1, like the reference). For each process the suite records wall time, CPU time
(user + system, from ``os.wait4``, including the process's own worker processes), peak
RSS of the largest single process (``ru_maxrss``) and, sampled every 0.25 s, the peak
summed RSS of the process tree (differs from the former only with worker pools), plus
how many cores *other* processes used meanwhile (``/proc/stat``): the machine is shared.

Cold runs get a new, empty ``ADEX_HOME`` (no featurization cache); warm runs reuse the
``ADEX_HOME`` a cold run filled. The real adex APIs and CLI are measured:
``adex.datasets.load_dataset``, ``adex.graphs.Featurizer``, ``adex.expert.witman.load_witman``,
``adex advisor train``, ``adex expert train``, ``adex predict``; in-process stage timings
come from ``benchmarks/steps.py``.

Outputs (``--out``, default ``$ADEX_HOME/benchmarks``, ``$ADEX_HOME/benchmarks/quick`` with ``--quick``; the
committed ones in ``benchmarks/results`` came from ``--out benchmarks/results``):
``benchmarks.json`` (every number with its unit, machine, torch version, threads, commit,
load average, and the reference's raw numbers), ``benchmarks.md`` (tables with the reference column and
adex/reference ratios), ``scaling_supercell.png``, ``scaling_vacancies.png`` and the logs of every child
process in ``logs/`` (written there when the run ends; the reference's own logs and its
``reference.json`` in ``logs/reference/``). ``--only`` reruns some groups and merges them into the existing JSON
(each entry carries its own date; a merged group measured beside an older reference run gets no ratios).

Reference: the published dGNN code (Witman et al. 2023, ``mwitman1/cgcnndefect``), timed IN THE SAME RUN
on the same machine: before the adex measurements the suite runs ``run.sh PYTHON OUTDIR`` of
``--reference-dir`` (default: env ``ADEX_REFERENCE``, else ``<repo>/../shared/reference/dgnn``) with
``THREADS=--threads`` and reads its ``reference.json``; every reference column, ratio and
reference line of the figures comes from that file (this machine's speed varies 2x from day to
day, so numbers from another run are never used). ``--reference-json FILE`` reuses a
``reference.json`` written the same day (recorded as reused); ``--no-reference`` leaves the
reference columns empty. If ``run.sh`` fails the suite stops with a one-line error.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STEPS_PY = HERE / "steps.py"
GROUPS = ("featurize", "train", "predict", "scaling")

DEFAULT_REFERENCE_DIR = REPO.parent / "shared" / "reference" / "dgnn"
REFERENCE_SETUP = ("published dGNN code (Witman et al. 2023, mwitman1/cgcnndefect Paper1 985a248) run unchanged by "
                   "`run.sh` with the paper's flags: 1,481 Witman structures, 4.5 Å cutoff, 12 neighbours, 2 convolutions "
                   "of width 8, batch 256, 1 torch thread per process")
# reference.json (written by run.sh): the keys the report uses, with their units and meaning
REFERENCE_KEYS = {
    "epochs": ("epochs", "training epochs run.sh ran (EPOCHS; the paper trains 1,000)"),
    "threads": ("threads", "OMP/MKL threads of the reference's processes (THREADS = --threads)"),
    "featurize_structures_per_s": ("structures/s", ("featurization of the 1,481 structures (ASE CIF read, 4.5 Å "
                                                    "neighbours, 12 nbrs, G2 edges, .locals/.globals): featurize rows")),
    "featurize_ms_per_structure": ("ms", "the same per structure: 1,000-epoch estimate (graphs once)"),
    "featurize_cpu_s_1481": ("s", "CPU time of that featurization"),
    "train_epoch_s_median": ("s", "median epoch (train + validation, epochs 2..N) on fold 1.00k0: epoch rows"),
    "train_epoch_cpu_s_median": ("s", "CPU time of that epoch"),
    "train_peak_rss_mb": ("MB", "peak RSS of the training process: training memory row"),
    "predict_n": ("vacancies", "held-out vacancies predicted (hold_1.00k0)"),
    "predict_cold_vacancies_per_s": ("vacancies/s", ("featurize + forward of those, process start-up and checkpoint "
                                                     "load excluded: `adex predict` rows")),
    "predict_forward_only_vacancies_per_s": ("vacancies/s", "forward only on cached graphs: model-only rows"),
    "predict_process_wall_s": ("s", "the whole prediction process"),
    "predict_end_to_end_vacancies_per_s": ("vacancies/s", "predict_n / the whole process (start-up included)"),
    "predict_peak_rss_mb": ("MB", "peak RSS of the prediction process: memory of the `adex predict` rows"),
}


class ReferenceFailed(RuntimeError):
    """The reference could not be measured (or a reused reference.json is unusable): one line."""


SIZES = {
    "full": {"mp": 5000, "pristine": 1481, "witman": None, "adv_limit": 5000, "adv_epochs": 2, "exp_epochs": 3,
             "exp_split": "1.00k0", "exp_limit": None, "predict": 1481, "hosts": 100, "calls": 10, "model": None,
             "profile": 200, "sc_n": 30, "sc_d": [8.0, 12.0, 16.0, 20.0], "vac_model": [100, 1000, 10000],
             "vac_e2e": [100, 1000, 10000]},
    "quick": {"mp": 300, "pristine": 200, "witman": 100, "adv_limit": 300, "adv_epochs": 1, "exp_epochs": 1,
              "exp_split": None, "exp_limit": 100, "predict": 200, "hosts": 8, "calls": 2, "model": 100, "profile": 40,
              "sc_n": 6, "sc_d": [8.0, 12.0, 16.0, 20.0], "vac_model": [100, 300, 1000], "vac_e2e": [50, 200]},
}


# --------------------------------------------------------------------------- machine


def _sh(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=30, cwd=REPO).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def cpu_model() -> str:
    for line in _sh(["lscpu"]).splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU jiffies of the whole machine since boot."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def tree_rss_bytes(root: int) -> int:
    """Summed RSS of ``root`` and all its descendants (from /proc)."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    parent[int(entry)] = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, pp in parent.items():
            if pp == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for pid in tree:
        try:
            with open(f"/proc/{pid}/statm") as handle:
                total += int(handle.read().split()[1]) * page
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_info(threads: int) -> dict:
    probe = subprocess.run(
        [sys.executable, "-c", "import torch, json; print(json.dumps([torch.__version__, torch.get_num_threads()]))"],
        check=False, capture_output=True, text=True, env=child_env(threads, None))
    torch_version, torch_threads = json.loads(probe.stdout) if probe.returncode == 0 else ("unknown", None)
    mem_kb = 0
    try:
        with open("/proc/meminfo") as handle:
            mem_kb = int(handle.readline().split()[1])
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "memory_GB": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        "torch": torch_version,
        "threads": threads,
        "torch_threads_in_child": torch_threads,
        "git_commit": _sh(["git", "rev-parse", "HEAD"]),
        "git_dirty": bool(_sh(["git", "status", "--porcelain", "--untracked-files=no"])),
    }


def child_env(threads: int, home: Path | None, progress: bool = False) -> dict:
    env = dict(os.environ)
    env.pop("ADEX_CACHE", None)  # the cache must live in the step's ADEX_HOME
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               PYTHONWARNINGS="ignore")
    if home is not None:
        env["ADEX_HOME"] = str(home)
    if progress:
        env.pop("ADEX_NO_PROGRESS", None)  # training prints one line per epoch into the log
    else:
        env["ADEX_NO_PROGRESS"] = "1"
    return env


# --------------------------------------------------------------------------- the reference, measured in this run


def reference_dir(arg: str | None) -> Path:
    """``--reference-dir``, else env ``ADEX_REFERENCE``, else ``<repo>/../shared/reference/dgnn``."""
    chosen = arg or os.environ.get("ADEX_REFERENCE")
    return Path(chosen).expanduser().resolve() if chosen else DEFAULT_REFERENCE_DIR.resolve()


def read_reference_numbers(path: Path) -> dict:
    """The raw numbers of a ``reference.json`` written by ``run.sh``; ReferenceFailed if unusable."""
    try:
        numbers = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ReferenceFailed(f"cannot read {path}: {exc}") from None
    if not isinstance(numbers, dict):
        raise ReferenceFailed(f"{path} is not a JSON object")
    bad = [k for k in REFERENCE_KEYS if not isinstance(numbers.get(k), (int, float)) or isinstance(numbers.get(k), bool)
           or not numbers[k] > 0]
    if bad:
        raise ReferenceFailed(f"{path} lacks positive numbers for {', '.join(bad)}")
    return numbers


def _utc(ts: float | None = None) -> dt.datetime:
    return dt.datetime.fromtimestamp(time.time() if ts is None else ts, dt.timezone.utc)


def run_reference(ref_dir: Path, work: Path, log: Path, threads: int, python: str | None = None) -> dict:
    """Run ``ref_dir/run.sh PYTHON work`` now (``THREADS=threads``) and return what it measured
    with when, how (command, wall and CPU time) and under which load; ReferenceFailed (one line)
    if it cannot run, fails or writes no usable ``reference.json``."""
    script = ref_dir / "run.sh"
    if not script.is_file():
        raise ReferenceFailed(f"no {script} (pass --reference-dir DIR, set ADEX_REFERENCE, or run with --no-reference)")
    python = python or sys.executable
    work.mkdir(parents=True, exist_ok=True)
    cmd = ["bash", str(script), python, str(work)]
    env = {**os.environ, "THREADS": str(threads)}
    epochs = env.get("EPOCHS")
    started, load_before = _utc(), [round(x, 2) for x in os.getloadavg()]
    busy0, _ = busy_jiffies()
    start = time.perf_counter()
    with open(log, "w") as handle:
        handle.write("$ THREADS=" + str(threads) + (f" EPOCHS={epochs}" if epochs else "") + " " + " ".join(cmd) + "\n")
        handle.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=work)
        except OSError as exc:
            raise ReferenceFailed(f"cannot start {script}: {exc}") from None
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    busy1, _ = busy_jiffies()
    code = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    if code != 0:
        raise ReferenceFailed(f"reference run failed: {script} exited with code {code} after {wall:.0f} s "
                              f"({_last_line(log) or 'no output'}); log {log}")
    numbers = read_reference_numbers(work / "reference.json")
    others = max((busy1 - busy0) / os.sysconf("SC_CLK_TCK") - cpu, 0.0) / wall if wall > 0 else 0.0
    return {"source": "run", "command": ("THREADS=" + str(threads) + (f" EPOCHS={epochs}" if epochs else "") + " "
                                         + " ".join(cmd)),
            "timestamp": started.strftime("%Y-%m-%d %H:%M:%S UTC"), "loadavg_before": load_before,
            "loadavg_after": [round(x, 2) for x in os.getloadavg()], "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "peak_rss_MB": round(usage.ru_maxrss / 1024, 1), "other_processes_cores": round(others, 2),
            "threads": threads, "setup": REFERENCE_SETUP, "numbers": numbers}


def reuse_reference(path: Path, threads: int, today: dt.datetime) -> dict:
    """A ``reference.json`` measured earlier the same (UTC) day, recorded as reused. The
    timestamp, command and load come from ``reference_run.json`` beside it (what this suite
    writes) when there is one, else the file's modification time stands in."""
    path = Path(path).expanduser().resolve()
    numbers = read_reference_numbers(path)
    meta = {}
    sidecar = path.with_name("reference_run.json")
    if sidecar.is_file():
        try:
            meta = {k: v for k, v in json.loads(sidecar.read_text()).items() if k != "numbers"}
        except ValueError:
            meta = {}
    written = _utc(path.stat().st_mtime)
    stamp = meta.get("timestamp") or written.strftime("%Y-%m-%d %H:%M:%S UTC")
    if stamp[:10] != today.strftime("%Y-%m-%d"):
        raise ReferenceFailed(f"{path} was measured on {stamp[:10]}, not today ({today:%Y-%m-%d}); this machine's speed "
                              "varies between days: drop --reference-json to rerun run.sh")
    if int(numbers.get("threads", threads)) != threads:
        raise ReferenceFailed(f"{path} was measured with {numbers.get('threads')} thread(s), this run uses {threads}")
    return {"command": "(not recorded)", "loadavg_before": None, "loadavg_after": None, **meta,
            "source": "reused", "reused_file": str(path), "timestamp": stamp, "threads": threads,
            "setup": REFERENCE_SETUP, "numbers": numbers}


def no_reference(why: str) -> dict:
    return {"source": "none", "note": why, "timestamp": None, "numbers": None}


def reference_values(reference: dict | None) -> dict | None:
    """What the report compares against, computed from the raw numbers of ``reference.json``."""
    n = (reference or {}).get("numbers")
    if not n:
        return None
    return {
        "graphs_per_s": n["featurize_structures_per_s"],
        "epoch_s": n["train_epoch_s_median"],
        "epoch_cpu_s": n["train_epoch_cpu_s_median"],
        # like adex's estimate: 1000 epochs + the 1,481 graphs once
        "epochs_1000_min": round((1000 * n["train_epoch_s_median"] + 1481 * n["featurize_ms_per_structure"] / 1000) / 60, 1),
        "train_peak_GB": round(n["train_peak_rss_mb"] / 1024, 2),
        "predict_vacancies_per_s": n["predict_cold_vacancies_per_s"],
        "predict_process_vacancies_per_s": round(n["predict_end_to_end_vacancies_per_s"], 1),
        "predict_n": int(n["predict_n"]),
        "predict_peak_MB": n["predict_peak_rss_mb"],
        "model_only_vacancies_per_s": n["predict_forward_only_vacancies_per_s"],
    }


def group_reference(results: dict, group: str) -> dict | None:
    """The reference values for ``group``'s rows: only if that group was measured in the run
    that measured (or reused) this reference, else None (no ratios across runs)."""
    ref = results.get("meta", {}).get("reference")
    values = reference_values(ref)
    if values is None or (results.get(group) or {}).get("reference_timestamp") != ref.get("timestamp"):
        return None
    return values


# --------------------------------------------------------------------------- running children


@dataclass
class Context:
    args: argparse.Namespace
    sizes: dict
    tmp: Path
    logs: Path
    progress: object
    task: object
    console: object
    started: float
    results: dict = field(default_factory=dict)
    _homes: dict = field(default_factory=dict)
    _n_children: int = 0
    children_wall_s: float = 0.0
    children_cpu_s: float = 0.0

    def home(self, name: str | None) -> Path:
        """The ADEX_HOME called ``name`` (created empty on first use); None: a new one."""
        if name is None:
            name = f"fresh{len(self._homes) + 1}"
        if name not in self._homes:
            path = self.tmp / "homes" / name
            path.mkdir(parents=True, exist_ok=True)
            self._homes[name] = path
        return self._homes[name]

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def child(self, label: str, cmd: list[str], home: str | None, progress: bool = False) -> dict:
        """Run ``cmd`` in a fresh process; wall/CPU time, peak RSS and machine load."""
        self._n_children += 1
        log = self.logs / f"{self._n_children:02d}-{label.replace(' ', '_').replace('/', '_')}.log"
        env = child_env(self.args.threads, self.home(home), progress)
        busy0, _ = busy_jiffies()
        start = time.perf_counter()
        with open(log, "w") as handle:
            handle.write("$ " + " ".join(cmd) + f"\n# ADEX_HOME={env['ADEX_HOME']} OMP_NUM_THREADS={env['OMP_NUM_THREADS']}\n")
            handle.flush()
            proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=self.tmp)
        peak_tree, last_sample, status, usage = 0, 0.0, None, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            now = time.perf_counter()
            if now - last_sample > 0.25:
                peak_tree = max(peak_tree, tree_rss_bytes(proc.pid))
                last_sample = now
                self.progress.update(self.task, info=f"{label}: {now - start:5.0f} s  {_last_line(log)}"[:110])
            time.sleep(0.05)
        wall = time.perf_counter() - start
        busy1, _ = busy_jiffies()
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime
        tick = os.sysconf("SC_CLK_TCK")
        others = max((busy1 - busy0) / tick - cpu, 0.0) / wall if wall > 0 else 0.0
        out = {"label": label, "command": " ".join(str(c) for c in cmd[1:]), "wall_s": round(wall, 2),
               "cpu_s": round(cpu, 2), "user_s": round(usage.ru_utime, 2), "sys_s": round(usage.ru_stime, 2),
               "peak_rss_MB": round(usage.ru_maxrss / 1024, 1), "peak_tree_rss_MB_sampled": round(peak_tree / 2**20, 1),
               "other_processes_cores": round(others, 2), "returncode": proc.returncode,
               "log": str(log.relative_to(self.logs.parent))}
        self.children_wall_s += wall
        self.children_cpu_s += cpu
        if proc.returncode != 0:
            raise StepFailed(f"{label}: exit code {proc.returncode}; see {log}\n{_tail(log)}")
        return out

    def steps(self, label: str, step: str, home: str | None, *extra: str) -> dict:
        """Run ``benchmarks/steps.py STEP`` in a fresh process; its JSON merged with the process figures."""
        result = self.tmp / f"result-{self._n_children + 1}-{step}.json"
        proc = self.child(label, [sys.executable, str(STEPS_PY), step, "--result", str(result), "--data", self.args.data,
                                  "--threads", str(self.args.threads), *extra], home)
        return {**json.loads(result.read_text()), "process": proc}

    def adex(self, label: str, home: str | None, *arguments: str, progress: bool = False) -> dict:
        return self.child(label, [sys.executable, "-m", "adex", *arguments], home, progress)


class StepFailed(RuntimeError):
    pass


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.path.getsize(path) - 400))
            lines = [line.strip() for line in handle.read().decode(errors="replace").replace("\r", "\n").splitlines()]
        return next((line for line in reversed(lines) if line), "")
    except OSError:
        return ""


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


# --------------------------------------------------------------------------- tables of inputs


def witman_rows(data: str) -> list[dict]:
    with open(Path(data) / "witman2023_vacancies" / "vacancies.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def write_table(path: Path, rows: list[tuple]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["structure", "site", "id", "dH_eV"])
        writer.writerows(rows)
    return path


def witman_table(ctx: Context, n: int, replicate_hosts: bool = False) -> Path:
    """Table of ``n`` Witman vacancies (site 0 of each CIF). Beyond 1,481 rows the host
    files are copied (``rep1/``, ``rep2/``, ...) so every row is a distinct host file that
    ``adex predict`` reads and featurizes (it featurizes each (file, site) once)."""
    rows = witman_rows(ctx.args.data)
    src = (Path(ctx.args.data) / "witman2023_vacancies" / "structures").resolve()
    out = []
    for i in range(n):
        row, rep = rows[i % len(rows)], i // len(rows)
        path = src / f"{row['id']}.cif"
        if replicate_hosts and rep > 0:
            copy = ctx.tmp / "hosts" / f"rep{rep}" / f"{row['id']}.cif"
            if not copy.exists():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
            path = copy
        out.append((str(path), 0, row["id"], row["dH_eV"]))
    return write_table(ctx.tmp / f"table-{n}{'-rep' if replicate_hosts else ''}.csv", out)


def _expert_line(log: Path) -> str | None:
    """What ``adex predict`` printed after ``expert:`` (reference, ensemble size, advisors)."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("expert: "):
            return line[len("expert: "):].strip()
    return None


def predictions_mae(path: Path) -> tuple[int, float | None]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and "dH_eV" in rows[0]:
        return len(rows), round(sum(abs(float(r["dH_pred_eV"]) - float(r["dH_eV"])) for r in rows) / len(rows), 4)
    return len(rows), None


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 2) if seconds > 0 else float("nan")


# --------------------------------------------------------------------------- groups


def run_featurize(ctx: Context) -> dict:
    s, out = ctx.sizes, {}
    n_mp = s["mp"]
    out["mp_cold"] = ctx.steps(f"MP graphs cold ({n_mp})", "mp", "mp", "--n", str(n_mp), "--workers", "1")
    out["mp_cached"] = ctx.steps(f"MP graphs cached ({n_mp})", "mp", "mp", "--n", str(n_mp), "--workers", "1")
    out["witman_pristine"] = ctx.steps(f"Witman host graphs ({s['pristine']})", "witman_pristine", None, "--n", str(s["pristine"]))
    limit = [] if s["witman"] is None else ["--n", str(s["witman"])]
    out["witman_cold_1w"] = ctx.steps("Witman supercell graphs cold, 1 worker", "witman_vacancies", "main", *limit, "--workers", "1")
    out["witman_cold_2w"] = ctx.steps("Witman supercell graphs cold, 2 workers", "witman_vacancies", None, *limit, "--workers", "2")
    out["witman_cached"] = ctx.steps("Witman supercell graphs cached", "witman_vacancies", "main", *limit, "--workers", "1")
    return out


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def run_train(ctx: Context) -> dict:
    s, out, t = ctx.sizes, {}, str(ctx.args.threads)
    data = ["--data", ctx.args.data]
    run = ctx.tmp / "runs" / "advisor-eform"
    proc = ctx.adex("advisor eform", "mp", "advisor", "train", "eform", "--epochs", str(s["adv_epochs"]), "--limit",
                    str(s["adv_limit"]), "--no-register", "--threads", t, "--out", str(run), *data, progress=True)
    m = _metrics(run)
    out["advisor_eform"] = {"process": proc, "limit": s["adv_limit"], "epochs": m["epochs_run"],
                            "n_train": _n_train(run), "seconds_per_epoch": m["seconds_per_epoch"],
                            "train_seconds": m["train_seconds"], "featurize_seconds": m["featurize_seconds"],
                            "torch_threads": m["torch_threads"]}
    split = ["--split", s["exp_split"]] if s["exp_split"] else ["--limit", str(s["exp_limit"])]
    variants = {
        "expert_scratch": ("expert, no advisors", ["--advisors", "none"], "main"),
        "expert_advised": ("expert, advisors bandgap+eform",
                           ["--advisors", "builtin::bandgap:1,builtin::eform:1"], "main"),
        "expert_advised_attention": ("expert, advisors bandgap+eform, attention readout",
                                     ["--advisors", "builtin::bandgap:1,builtin::eform:1", "--pooling", "attention"], "main"),
        "expert_reference_size": ("expert, reference size (cold 4.5 Å graphs)",
                                  ["--advisors", "none", "--set", "model.atom_fea_len=8", "--set", "featurizer.cutoff=4.5",
                                   "--set", "training.batch_size=256", "--set", "model.oxidation_states=false"], "main"),
    }
    for key, (label, extra, home) in variants.items():
        run = ctx.tmp / "runs" / key
        proc = ctx.adex(label, home, "expert", "train", *extra, *split, "--epochs", str(s["exp_epochs"]),
                        "--no-register", "--threads", t, "--out", str(run), *data, progress=True)
        m = _metrics(run)
        out[key] = {"process": proc, "split": m["split"], "n_train": (m.get("train") or {}).get("n"),
                    "n_val": (m.get("val") or {}).get("n"), "epochs": m["epochs_run"],
                    "seconds_per_epoch": m["seconds_per_epoch"], "train_seconds": m["train_seconds"],
                    "featurize_seconds": m["featurize_seconds"], "advisor_seconds": m["advisor_seconds"],
                    "mean_nodes_per_vacancy": round(m["mean_nodes_per_vacancy"], 1),
                    "mean_nodes_per_vacancy_used": round(m["mean_nodes_per_vacancy_used"], 1),
                    "torch_threads": m["torch_threads"], "options": " ".join(extra)}
    return out


def _n_train(run_dir: Path) -> int | None:
    try:
        return _metrics(run_dir)["train"]["n"]
    except (KeyError, TypeError):
        return None


def run_predict(ctx: Context) -> dict:
    s, out = ctx.sizes, {}
    n = s["predict"]
    table = witman_table(ctx, n)
    pred = ctx.tmp / "pred-input.csv"
    proc = ctx.adex(f"predict --input ({n})", None, "predict", "--input", str(table), "--output", str(pred))
    n_out, mae = predictions_mae(pred)
    out["expert"] = _expert_line(ctx.logs.parent / proc["log"])
    out["input"] = {"process": proc, "n_vacancies": n_out, "n_hosts": n_out,
                    "vacancies_per_s": _rate(n_out, proc["wall_s"]), "vacancies_per_cpu_s": _rate(n_out, proc["cpu_s"]),
                    "mae_vs_dft_eV": mae, "note": "whole process: start-up, cold registry load, CIF parsing, "
                                                  "oxidation states, supercell graphs, advisors, expert"}
    pred = ctx.tmp / "pred-input-w2.csv"
    proc = ctx.adex(f"predict --input ({n}) --workers 2", None, "predict", "--input", str(table), "--output", str(pred),
                    "--workers", "2")
    n_out, mae = predictions_mae(pred)
    out["input_workers2"] = {"process": proc, "n_vacancies": n_out, "vacancies_per_s": _rate(n_out, proc["wall_s"]),
                            "vacancies_per_cpu_s": _rate(n_out, proc["cpu_s"]), "mae_vs_dft_eV": mae}
    for label, key in (("first run, fills the cache", "input_cache_cold"), ("rerun, warm cache", "input_cache_warm")):
        pred = ctx.tmp / f"pred-{key}.csv"
        proc = ctx.adex(f"predict --input ({n}) --workers 2 --cache, {label}", "predict-cache", "predict", "--input",
                        str(table), "--output", str(pred), "--workers", "2", "--cache")
        n_out, mae = predictions_mae(pred)
        out[key] = {"process": proc, "n_vacancies": n_out, "vacancies_per_s": _rate(n_out, proc["wall_s"]),
                    "vacancies_per_cpu_s": _rate(n_out, proc["cpu_s"]), "mae_vs_dft_eV": mae, "label": label}
    tables = ctx.tmp / "tables"
    out["tables_setup"] = ctx.steps("distinct sites of the hosts (setup)", "make_tables", None, "--hosts", str(s["hosts"]),
                                    "--out-dir", str(tables))
    pred = ctx.tmp / "pred-all-sites.csv"
    proc = ctx.adex(f"predict all sites of {s['hosts']} hosts (one table)", None, "predict", "--input",
                    str(tables / "all_sites.csv"), "--output", str(pred))
    n_out, _ = predictions_mae(pred)
    out["all_sites_table"] = {"process": proc, "n_hosts": s["hosts"], "n_vacancies": n_out,
                              "vacancies_per_s": _rate(n_out, proc["wall_s"]), "vacancies_per_cpu_s": _rate(n_out, proc["cpu_s"])}
    hosts = (tables / "hosts.txt").read_text().split()[: s["calls"]]
    calls = []
    for k, host in enumerate(hosts):
        pred = ctx.tmp / f"pred-call-{k}.csv"
        proc = ctx.adex(f"predict --all-sites call {k + 1}/{len(hosts)}", None, "predict", "--structure", host,
                        "--all-sites", "--output", str(pred))
        calls.append({**proc, "n_vacancies": predictions_mae(pred)[0]})
    wall, cpu, nv = (sum(c[k] for c in calls) for k in ("wall_s", "cpu_s", "n_vacancies"))
    table_rate = out["all_sites_table"]["vacancies_per_s"]
    out["all_sites_calls"] = {"n_calls": len(calls), "n_vacancies": nv, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                              "seconds_per_call": round(wall / len(calls), 2), "vacancies_per_s": _rate(nv, wall),
                              "overhead_per_call_s": round((wall - nv / table_rate) / len(calls), 2),
                              "peak_rss_MB": max(c["peak_rss_MB"] for c in calls),
                              "other_processes_cores": round(sum(c["other_processes_cores"] for c in calls) / len(calls), 2),
                              "calls": calls,
                              "note": "overhead per call = (total wall - vacancies / rate of the one-table run) / calls"}
    model_n = [] if s["model"] is None else ["--n", str(s["model"])]
    out["model_only"] = ctx.steps("model only (cached graphs)", "model_only", "main", *model_n, "--repeat", "2")
    out["model_only_batch256"] = ctx.steps("model only, batch 256", "model_only", "main", *model_n, "--batch-size", "256")
    out["model_only_reference_size"] = ctx.steps("model only, reference-size expert", "model_only", "main", *model_n,
                                                 "--repeat", "2", "--reference-size", "--batch-size", "256")
    out["profile"] = ctx.steps(f"profile of predict ({s['profile']})", "profile", None, "--n", str(s["profile"]))
    return out


def _capped(ctx: Context, out: dict, what: str, n: int, done: list[dict], estimate: Callable[[dict, int], float]) -> int:
    """``n``, or less (a multiple of 1,000, at least 2,000; else 0 = skip) when ``estimate(largest
    run so far, n)`` (seconds) says that ``n`` would not finish within the time budget."""
    if not done or n <= done[-1]["n_vacancies"]:
        return n
    left = 60 * ctx.args.budget_minutes - ctx.elapsed() - 30  # ~30 s for the report and the figures
    need = estimate(done[-1], n)
    if need <= left:
        return n
    capped = max((m for m in range(2000, n, 1000) if estimate(done[-1], m) <= left), default=0)
    capped = capped if capped > done[-1]["n_vacancies"] else 0
    note = (f"{what}: {n:,} vacancies would take ~{need:.0f} s, over the {ctx.args.budget_minutes:g}-min budget "
            f"({ctx.elapsed():.0f} s used); " + (f"capped at {capped:,}" if capped else "skipped"))
    ctx.console.print(f"[yellow]scaling: {note}")
    out.setdefault("notes", []).append(note)
    return capped


def _model_estimate(last: dict, n: int) -> float:
    return last["process"]["wall_s"] - last["model_seconds"] + n / last["model_vacancies_per_s"]


def _e2e_estimate(last: dict, n: int) -> float:
    return n / last["vacancies_per_s"]


def run_scaling(ctx: Context) -> dict:
    """Supercell size, then the number of vacancies; the largest runs last, capped to the budget."""
    s, out = ctx.sizes, {"supercell": [], "vacancies_model": [], "vacancies_e2e": []}
    for d in s["sc_d"]:
        out["supercell"].append(ctx.steps(f"supercell {d:g} Å ({s['sc_n']} vacancies)", "supercell", None, "--n",
                                          str(s["sc_n"]), "--min-image", str(d)))
    base = out["supercell"][0]["predictions_eV"] if out["supercell"] else None
    for r in out["supercell"]:
        r["mean_abs_change_vs_first_eV"] = round(sum(abs(a - b) for a, b in zip(r["predictions_eV"], base)) / len(base), 4)
    model_n = [] if s["model"] is None else ["--n", str(s["model"])]

    def model_run(n: int) -> None:
        n = _capped(ctx, out, "expert only", n, out["vacancies_model"], _model_estimate)
        if n:
            out["vacancies_model"].append(ctx.steps(f"model only, {n} vacancies", "model_only", "main", *model_n,
                                                    "--replicate", str(n)))

    def e2e_run(n: int) -> None:
        n = _capped(ctx, out, "end to end", n, out["vacancies_e2e"], _e2e_estimate)
        if not n:
            return
        table = witman_table(ctx, n, replicate_hosts=True)
        pred = ctx.tmp / f"pred-scaling-{n}.csv"
        proc = ctx.adex(f"predict --input, {n} vacancies", None, "predict", "--input", str(table), "--output", str(pred))
        n_out, mae = predictions_mae(pred)
        out["vacancies_e2e"].append({"process": proc, "n_vacancies": n_out, "vacancies_per_s": _rate(n_out, proc["wall_s"]),
                                     "vacancies_per_cpu_s": _rate(n_out, proc["cpu_s"]), "mae_vs_dft_eV": mae})

    small_model, large_model = s["vac_model"][:-1], s["vac_model"][-1:]
    small_e2e, large_e2e = s["vac_e2e"][:-1], s["vac_e2e"][-1:]
    for n in small_model:
        model_run(n)
    for n in small_e2e:
        e2e_run(n)
    for n in large_model:
        model_run(n)
    for n in large_e2e:
        e2e_run(n)
    return out


RUNNERS: dict[str, Callable[[Context], dict]] = {"featurize": run_featurize, "train": run_train,
                                                  "predict": run_predict, "scaling": run_scaling}


# --------------------------------------------------------------------------- report


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits - 1}f}" if abs(value) >= 1 else f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _ratio(adex: float | None, ref: float | None, higher_is_better: bool) -> str:
    if adex is None or ref is None or not adex or math.isnan(adex):
        return ""
    r = adex / ref
    better = r > 1 if higher_is_better else r < 1
    factor = r if r >= 1 else 1 / r
    return f"{r:.2f} ({factor:.1f}× {'faster' if better else 'slower'})" if abs(r - 1) > 0.005 else "1.00"


def _mem_ratio(mb: float | None, ref_mb: float | None) -> str:
    if not mb or not ref_mb:
        return ""
    r = mb / ref_mb
    return f"{r:.2f} ({'less' if r < 1 else 'more'})"


def summary_rows(results: dict) -> list[dict]:
    """One row per headline number: what, n, wall, CPU, result (unit), peak RSS, reference, adex/ref."""
    rows = []

    def add(group, what, n, proc, value, unit, ref=None, ratio="", rss=None, note=""):
        rows.append({"group": group, "what": what, "n": n, "wall_s": proc.get("wall_s") if proc else None,
                     "cpu_s": proc.get("cpu_s") if proc else None, "value": value, "unit": unit,
                     "peak_rss_MB": rss if rss is not None else (proc or {}).get("peak_rss_MB"),
                     "reference": ref, "ratio": ratio, "note": note})

    f = results.get("featurize", {})
    if f:
        R = group_reference(results, "featurize") or {}
        graphs = R.get("graphs_per_s")
        for key, label in (("mp_cold", "MP pristine graphs, cold (8 Å, 1 process)"), ("mp_cached", "MP pristine graphs, from cache")):
            r = f[key]
            add("featurize", label, r["n_structures"], {"wall_s": r["seconds"], "cpu_s": r["cpu_seconds"]},
                r["structures_per_s"], "structures/s", rss=r["process"]["peak_rss_MB"],
                note=f"random subset of {r['n_structures']:,} of 36,835; cached load includes hashing the 14 MB archive")
        r = f["witman_pristine"]
        p = r["parse_plus_graph_4.5A"]
        add("featurize", "Witman host graphs (CIF as given, 4.5 Å, 12 nbrs), no cache", r["n_structures"],
            {"wall_s": p["seconds"], "cpu_s": round(r["stage_cpu_s"]["cif_parse"] + r["stage_cpu_s"]["graph_4.5A"], 2)},
            p["structures_per_s"], "structures/s", graphs, _ratio(p["structures_per_s"], graphs, True),
            rss=r["process"]["peak_rss_MB"], note=f"{100 * p['cif_parse_share']:.0f} % CIF parsing; adex caches no host graphs")
        for key, label in (("witman_cold_1w", "Witman supercell graphs (pristine+defected, 5 Å, 8 Å images), cold, 1 process"),
                           ("witman_cold_2w", "Witman supercell graphs, cold, 2 worker processes"),
                           ("witman_cached", "Witman supercell graphs, from cache")):
            r = f[key]
            cached = key == "witman_cached"
            # CPU of the load itself: the parent's share plus that of its worker processes (reaped children)
            workers_cpu = max(r["process"]["cpu_s"] - r["process_inner_cpu_s"], 0.0) if r["workers"] > 1 else 0.0
            add("featurize", label, r["n_vacancies"], {"wall_s": r["seconds"], "cpu_s": round(r["cpu_seconds_parent"] + workers_cpu, 2)},
                r["vacancies_per_s"], "vacancies/s", graphs,
                _ratio(r["vacancies_per_s"], graphs, True) + (" (ref. is never cached)" if cached and graphs else ""),
                rss=r["process"]["peak_rss_MB"],
                note=f"{r['mean_nodes']:.0f} nodes per graph; includes oxidation states" + ("" if key != "witman_cold_2w" else
                     f"; tree RSS {r['process']['peak_tree_rss_MB_sampled']:.0f} MB"))
    t = results.get("train", {})
    if t:
        R = group_reference(results, "train") or {}
        r = t["advisor_eform"]
        add("train", f"advisor eform (MP subset {r['limit']:,}, {r['n_train']:,} train), per epoch", r["epochs"], r["process"],
            r["seconds_per_epoch"], "s/epoch", rss=r["process"]["peak_rss_MB"],
            note=f"graphs from cache in {r['featurize_seconds']} s")
        for key, label in (("expert_scratch", "expert (default config), no advisors"),
                           ("expert_advised", "expert (default config), advisors bandgap+eform"),
                           ("expert_advised_attention", "expert, advisors bandgap+eform, attention readout"),
                           ("expert_reference_size", "expert, reference size (width 8, 4.5 Å, batch 256, no ox. states)")):
            r = t.get(key)
            if r is None:
                continue
            note = f"{r['n_train']:,} train + {r['n_val']} val vacancies, {r['mean_nodes_per_vacancy_used']:.0f} nodes used per graph"
            if key.startswith("expert_advised"):
                note += f"; advisor features once: {r['advisor_seconds']} s"
            if key == "expert_reference_size":
                note += f"; cold 4.5 Å graphs (2 workers) {r['featurize_seconds']} s"
            ref = R.get("epoch_s") if key in ("expert_reference_size", "expert_advised") else None
            if ref:
                note += f"; ref. epoch CPU {R['epoch_cpu_s']} s"
            add("train", f"{label}, per epoch", r["epochs"], r["process"], r["seconds_per_epoch"], "s/epoch", ref,
                _ratio(r["seconds_per_epoch"], ref, False) if ref else "", note=note)
        r = t["expert_reference_size"]
        minutes = round((1000 * r["seconds_per_epoch"] + r["featurize_seconds"]) / 60, 1)
        add("train", "1,000 epochs at reference size (estimate: 1000 × s/epoch + graphs once)", 1000, None, minutes, "min",
            R.get("epochs_1000_min"), _ratio(minutes, R.get("epochs_1000_min"), False),
            note="ref.: 1000 × its median epoch + its 1,481 graphs once" if R else "")
        peak = max(t[k]["process"]["peak_rss_MB"] for k in ("expert_scratch", "expert_advised", "expert_reference_size"))
        add("train", "peak memory of the expert trainings", None, None, round(peak / 1024, 2), "GB", R.get("train_peak_GB"),
            _mem_ratio(peak, (R.get("train_peak_GB") or 0) * 1024), rss=peak,
            note="ref.: peak RSS of its training process" if R else "")
    p = results.get("predict", {})
    if p:
        R = group_reference(results, "predict") or {}
        pred, ref_mb = R.get("predict_vacancies_per_s"), R.get("predict_peak_MB")
        r = p["input"]
        add("predict", "`adex predict --input`, Witman vacancies (everything from a cold start)", r["n_vacancies"], r["process"],
            r["vacancies_per_s"], "vacancies/s", pred, _ratio(r["vacancies_per_s"], pred, True),
            note=f"{r['vacancies_per_cpu_s']} per CPU s; MAE vs DFT {r['mae_vs_dft_eV']} eV (in-sample)"
                 + (f"; ref. rate without its start-up (whole ref. process: {R['predict_process_vacancies_per_s']}/s "
                    f"for {R['predict_n']}); memory vs ref. ({R['predict_n']} vacancies) "
                    f"{_mem_ratio(r['process']['peak_rss_MB'], ref_mb)}" if R else ""))
        r = p.get("input_workers2")
        if r:
            add("predict", "the same with `--workers 2` (2 processes)", r["n_vacancies"], r["process"], r["vacancies_per_s"],
                "vacancies/s", pred, _ratio(r["vacancies_per_s"], pred, True),
                note=f"{r['vacancies_per_cpu_s']} per CPU s"
                     + (f"; memory vs ref. {_mem_ratio(r['process']['peak_rss_MB'], ref_mb)}" if R else ""))
        for key in ("input_cache_cold", "input_cache_warm"):
            r = p.get(key)
            if r:
                add("predict", f"the same with `--workers 2 --cache`, {r['label']}", r["n_vacancies"], r["process"],
                    r["vacancies_per_s"], "vacancies/s", pred, _ratio(r["vacancies_per_s"], pred, True),
                    note=f"{r['vacancies_per_cpu_s']} per CPU s")
        r = p["all_sites_table"]
        add("predict", f"all distinct sites of {r['n_hosts']} hosts, one `--input` table", r["n_vacancies"], r["process"],
            r["vacancies_per_s"], "vacancies/s", pred, _ratio(r["vacancies_per_s"], pred, True))
        r = p["all_sites_calls"]
        add("predict", f"`--all-sites`, {r['n_calls']} separate calls (one host each)", r["n_vacancies"], r, r["vacancies_per_s"],
            "vacancies/s", rss=r["peak_rss_MB"],
            note=f"{r['seconds_per_call']} s per call, of which ~{r['overhead_per_call_s']} s start-up (imports, registry)")
        for key, label in (("model_only", "model only, shipped expert (pruned graphs + advisor features in memory), batch 32"),
                           ("model_only_batch256", "model only, batch 256"),
                           ("model_only_reference_size", ("model only, expert of the reference's size (4.5 Å, width 8, "
                                                          "no advisors, untrained), batch 256"))):
            r = p.get(key)
            if not r:
                continue
            add("predict", label, r["n_vacancies"], {"wall_s": r["model_seconds"], "cpu_s": r["model_cpu_seconds"]},
                r["model_vacancies_per_s"], "vacancies/s", R.get("model_only_vacancies_per_s"),
                _ratio(r["model_vacancies_per_s"], R.get("model_only_vacancies_per_s"), True), rss=r["process"]["peak_rss_MB"],
                note=f"{r['mean_nodes_pruned']:.0f} nodes per pruned graph; "
                     + ("time does not depend on the weights" if key == "model_only_reference_size" else f"expert {r.get('expert', '?')}"))
        r = p["model_only"]
        if "predict_packed_vacancies_per_s" in r:
            add("predict", "`predict_packed` from cached graphs (advisors + model)", r["n_vacancies"],
                {"wall_s": r["predict_packed_seconds"]}, r["predict_packed_vacancies_per_s"], "vacancies/s",
                rss=r["process"]["peak_rss_MB"])
    return rows


def reference_markdown(results: dict) -> list[str]:
    """The report's paragraph on the reference: when and how it was measured, under which
    load, its raw numbers, and which groups' ratios divide by them."""
    ref = results.get("meta", {}).get("reference") or no_reference("no reference recorded in these results")
    if not ref.get("numbers"):
        return [f"Reference: none ({ref.get('note', 'not measured')}): the reference and ratio columns are empty.", ""]
    load = (f"load average before / after it {ref.get('loadavg_before')} / {ref.get('loadavg_after')}"
            if ref.get("loadavg_before") is not None else "load average not recorded")
    if ref["source"] == "run":
        how = (f"measured in this run, at {ref['timestamp']} before the adex measurements, by `{ref['command']}` "
               f"({ref['wall_s']} s wall, {ref['cpu_s']} s CPU, peak RSS {_fmt(ref.get('peak_rss_MB'))} MB; {load}; "
               f"other processes used {ref.get('other_processes_cores')} cores meanwhile)")
    else:
        how = (f"reused with `--reference-json {ref['reused_file']}`, measured the same day at {ref['timestamp']} "
               f"by `{ref.get('command')}` ({load}), not rerun in this run")
    stale = [f"{g} ({(results.get(g) or {}).get('date', '?')})" for g in GROUPS
             if g in results and group_reference(results, g) is None]
    lines = [f"Reference: {ref.get('setup', REFERENCE_SETUP)}; {how}. Every reference number and ratio below comes from "
             "this reference run's `reference.json`, on the same machine the same day as the adex numbers (this "
             "machine's speed varies up to 2× between days); no number is carried over from another day."
             + (f" Groups merged from an earlier run have no ratios: {', '.join(stale)}." if stale else ""),
             "", "| reference.json | value | unit | used for |", "|---|---|---|---|"]
    for key, value in ref["numbers"].items():
        unit, use = REFERENCE_KEYS.get(key, ("", ""))
        lines.append(f"| {key} | {_fmt(round(value, 3) if isinstance(value, float) else value)} | {unit} | {use} |")
    return lines + [""]


def markdown(results: dict) -> str:
    meta = results.get("meta", {})
    m = meta.get("machine", {})
    lines = [
        "# adex benchmarks",
        "",
        (f"Produced by `python benchmarks/run_all.py{' --quick' if meta.get('quick') else ''}` on {meta.get('date', '?')} "
         f"in {meta.get('duration_min', '?')} min (children: {meta.get('children_cpu_s_total', '?')} s CPU in "
         f"{meta.get('children_wall_s_total', '?')} s wall): {m.get('cpu_count')} × {m.get('cpu_model')} ({m.get('machine')}, "
         f"{m.get('memory_GB')} GB), Python {m.get('python')}, torch {m.get('torch')}, {m.get('threads')} thread(s) "
         f"(OMP_NUM_THREADS and torch; torch reports {m.get('torch_threads_in_child')} in a child), commit "
         f"`{str(m.get('git_commit', ''))[:10]}`{' (uncommitted changes)' if m.get('git_dirty') else ''}."),
        (f"Load average before / after: {meta.get('loadavg_start')} / {meta.get('loadavg_end')} "
         f"(other processes used {meta.get('other_processes_cores_mean', '?')} of {m.get('cpu_count')} cores on average "
         "during the measurements: wall times are pessimistic, CPU times are the steadier figure)."),
        "",
        *reference_markdown(results),
        "Ratio = adex / reference in the row's unit."
        + (f" Prediction rows use the default expert `{results['predict']['expert']}`."
           if results.get("predict", {}).get("expert") else ""),
        "",
        "| group | measurement | n | wall (s) | CPU (s) | result | peak RSS (MB) | reference | adex / ref. | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in summary_rows(results):
        lines.append(f"| {r['group']} | {r['what']} | {_fmt(r['n'])} | {_fmt(r['wall_s'])} | {_fmt(r['cpu_s'])} | "
                     f"{_fmt(r['value'])} {r['unit']} | {_fmt(r['peak_rss_MB'])} | "
                     f"{'' if r['reference'] is None else _fmt(r['reference']) + ' ' + r['unit']} | {r['ratio']} | {r['note']} |")
    prof = results.get("predict", {}).get("profile")
    if prof:
        lines += ["", (f"Where prediction time goes (`benchmarks/steps.py profile`: the CLI's library calls on the first "
                       f"{prof['n_vacancies']} Witman vacancies, one host file each; process start-up and imports "
                       f"{prof['python_and_imports_s']} s come on top):"), "",
                  "| stage | ms per vacancy (wall) | ms per vacancy (CPU) | share | process peak RSS after the stage (MB) |",
                  "|---|---|---|---|---|"]
        n = prof["n_vacancies"]
        rss = prof.get("peak_rss_MB_after_stage", {})
        for stage, share in prof["share"].items():
            lines.append(f"| {stage} | {prof['stage_wall_s'][stage] * 1000 / n:.2f} | "
                         f"{prof['stage_cpu_s'][stage] * 1000 / n:.2f} | {100 * share:.1f} % | {_fmt(rss.get(stage))} |")
    sc = results.get("scaling", {})
    if sc.get("supercell"):
        lines += ["", (f"Scaling with the supercell size ({sc['supercell'][0]['n_vacancies']} vacancies spread over the "
                       "Witman set, shipped expert trained at 8 Å; figure `scaling_supercell.png`):"), "",
                  ("| min. image distance (Å) | nodes per graph (full / pruned) | edges (full / pruned) | featurize ms/vac "
                   "(wall / CPU) | advisors ms/vac | expert ms/vac (pruned / full graph) | peak RSS (MB) | mean abs. change of "
                   "dH vs first (eV) |"), "|---|---|---|---|---|---|---|---|"]
        for r in sc["supercell"]:
            lines.append(f"| {r['min_image_distance_A']:g} | {r['mean_nodes_full']:.0f} / {r['mean_nodes_pruned']:.0f} | "
                         f"{r['mean_edges_full']:.0f} / {r['mean_edges_pruned']:.0f} | {r['featurize_ms_per_vacancy']:.0f} / "
                         f"{r['featurize_cpu_ms_per_vacancy']:.0f} | {r['advisors_ms_per_vacancy']:.1f} | "
                         f"{r['model_pruned_ms_per_vacancy']:.1f} / {r['model_full_ms_per_vacancy']:.1f} | "
                         f"{r['process']['peak_rss_MB']:.0f} | {r['mean_abs_change_vs_first_eV']:.4f} |")
    if sc.get("vacancies_model") or sc.get("vacancies_e2e"):
        lines += ["", ("Scaling with the number of vacancies (figure `scaling_vacancies.png`; end to end = `adex predict "
                       "--input` in a fresh process on distinct host files (hosts copied beyond 1,481; the 1,481 row is the "
                       "prediction group's run); model only = the shipped expert on cached graphs replicated, advisor "
                       "features precomputed, batch 32; its peak RSS includes the 1,481 cached graphs it replicates from):"), "",
                  ("| vacancies | end to end: wall (s) | CPU (s) | vacancies/s | peak RSS (MB) | model only: s | vacancies/s | "
                   "peak RSS (MB) |"), "|---|---|---|---|---|---|---|---|"]
        e2e = {r["n_vacancies"]: r for r in _e2e_points(results)}
        mod = {r["n_vacancies"]: r for r in sc.get("vacancies_model", [])}
        for n in sorted(set(e2e) | set(mod)):
            e, o = e2e.get(n), mod.get(n)
            lines.append(f"| {n:,} | " + (f"{e['process']['wall_s']:.1f} | {e['process']['cpu_s']:.1f} | {e['vacancies_per_s']:.1f} | "
                                         f"{e['process']['peak_rss_MB']:.0f} | " if e else "– | – | – | – | ")
                         + (f"{o['model_seconds']:.2f} | {o['model_vacancies_per_s']:.0f} | {o['process']['peak_rss_MB']:.0f} |"
                            if o else "– | – | – |"))
        for note in sc.get("notes", []):
            lines.append(f"\nNote: {note}.")
    return "\n".join(lines) + "\n"


def _e2e_points(results: dict) -> list[dict]:
    """End-to-end ``adex predict --input`` runs: the scaling runs plus the prediction group's."""
    points = list(results.get("scaling", {}).get("vacancies_e2e") or [])
    r = results.get("predict", {}).get("input")
    if r and r["n_vacancies"] not in {p["n_vacancies"] for p in points}:
        points.append(r)
    return sorted(points, key=lambda p: p["n_vacancies"])


def figures(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    sc = results.get("scaling", {})
    rows = sc.get("supercell") or []
    if rows:
        d = [r["min_image_distance_A"] for r in rows]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        ax = axes[0]
        ax.plot(d, [r["featurize_ms_per_vacancy"] for r in rows], "o-", label="featurize (wall)")
        ax.plot(d, [r["featurize_cpu_ms_per_vacancy"] for r in rows], "o--", label="featurize (CPU)")
        ax.plot(d, [r["advisors_ms_per_vacancy"] for r in rows], "s-", label="advisors")
        ax.plot(d, [r["model_pruned_ms_per_vacancy"] for r in rows], "^-", label="expert, pruned graph (adex)")
        ax.plot(d, [r["model_full_ms_per_vacancy"] for r in rows], "v:", label="expert, full graph")
        ax.set_xlabel("minimum image distance (Å)")
        ax.set_ylabel("ms per vacancy")
        ax.set_yscale("log")
        ax.set_title("time")
        ax.legend(fontsize=7)
        ax = axes[1]
        ax.plot(d, [r["mean_nodes_full"] for r in rows], "o-", label="nodes, full graph")
        ax.plot(d, [r["mean_nodes_pruned"] for r in rows], "o--", label="nodes, pruned (2 hops)")
        ax.plot(d, [r["mean_edges_full"] / 10 for r in rows], "s-", label="edges / 10, full")
        ax.plot(d, [r["mean_edges_pruned"] / 10 for r in rows], "s--", label="edges / 10, pruned")
        ax.set_xlabel("minimum image distance (Å)")
        ax.set_ylabel("per vacancy graph")
        ax.set_title("graph size")
        ax.legend(fontsize=7)
        ax = axes[2]
        ax.plot(d, [r["process"]["peak_rss_MB"] for r in rows], "o-")
        ax.set_xlabel("minimum image distance (Å)")
        ax.set_ylabel("peak RSS of the process (MB)")
        ax.set_title(f"memory ({rows[0]['n_vacancies']} vacancies)")
        fig.tight_layout()
        fig.savefig(out / "scaling_supercell.png", dpi=120)
        plt.close(fig)
        made.append("scaling_supercell.png")
    e2e, mod = _e2e_points(results), sc.get("vacancies_model") or []
    # reference lines only beside points measured in the reference's run (scaling, and predict's 1,481 row)
    plotted = [g for g in ("scaling", "predict") if g in results and (g == "predict" or e2e or mod)]
    ref = group_reference(results, plotted[0]) if plotted else None
    if any(group_reference(results, g) is None for g in plotted):
        ref = None
    if e2e or mod:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        ax = axes[0]
        if e2e:
            n = [r["n_vacancies"] for r in e2e]
            ax.plot(n, [r["process"]["wall_s"] for r in e2e], "o-", label="adex predict --input, wall")
            ax.plot(n, [r["process"]["cpu_s"] for r in e2e], "o--", label="adex predict --input, CPU")
        if mod:
            n = [r["n_vacancies"] for r in mod]
            ax.plot(n, [r["model_seconds"] for r in mod], "s-", label="expert only (cached graphs, advisor features given)")
        nn = sorted({r["n_vacancies"] for r in e2e + mod})
        if ref:
            rate, fwd = ref["predict_vacancies_per_s"], ref["model_only_vacancies_per_s"]
            ax.plot(nn, [x / rate for x in nn], "k:", label=f"reference, {rate:.0f}/s featurize + forward (same run)")
            ax.plot(nn, [x / fwd for x in nn], "k-.", label=f"reference, {fwd:.0f}/s model only (same run)")
        else:
            ax.plot([], [], " ", label="no reference in this run")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("vacancies")
        ax.set_ylabel("seconds")
        ax.set_title("time")
        ax.legend(fontsize=7)
        ax = axes[1]
        if e2e:
            ax.plot([r["n_vacancies"] for r in e2e], [r["process"]["peak_rss_MB"] for r in e2e], "o-", label="adex predict --input")
        if mod:
            ax.plot([r["n_vacancies"] for r in mod], [r["process"]["peak_rss_MB"] for r in mod], "s-", label="expert only")
        if ref:
            ax.axhline(ref["predict_peak_MB"], color="k", ls=":",
                       label=f"reference predict peak ({ref['predict_n']} vacancies, same run)")
        ax.set_xscale("log")
        ax.set_xlabel("vacancies")
        ax.set_ylabel("peak RSS (MB)")
        ax.set_title("memory")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "scaling_vacancies.png", dpi=120)
        plt.close(fig)
        made.append("scaling_vacancies.png")
    return made


def _other_cores(results: dict) -> float | None:
    values = []

    def walk(obj):
        if isinstance(obj, dict):
            if "other_processes_cores" in obj and "wall_s" in obj:
                values.append(obj["other_processes_cores"])
            for v in obj.values():
                walk(v)
        elif isinstance(obj, list):
            for v in obj:
                walk(v)

    walk({k: v for k, v in results.items() if k != "meta"})
    return round(sum(values) / len(values), 2) if values else None


# --------------------------------------------------------------------------- main


def obtain_reference(args: argparse.Namespace, tmp: Path, logs: Path, today: dt.datetime, console) -> dict:
    """The reference for this run: run.sh now (default), a reused same-day reference.json, or
    none (``--no-reference``). Its own logs and reference.json go to ``logs/reference/``."""
    if args.no_reference:
        console.print("[yellow]reference: not measured (--no-reference); the reference columns stay empty")
        return no_reference("--no-reference")
    if args.reference_json:
        ref = reuse_reference(Path(args.reference_json), args.threads, today)
        console.print(f"reference: reusing {ref['reused_file']} (measured {ref['timestamp']})")
    else:
        ref_dir = reference_dir(args.reference_dir)
        work = tmp / "reference"
        console.print(f"reference: {ref_dir / 'run.sh'} (~2 min) ...")
        with console.status("reference: timing the published dGNN code"):
            ref = run_reference(ref_dir, work, logs / "00-reference_run.sh.log", args.threads)
        keep = logs / "reference"
        keep.mkdir(exist_ok=True)
        for f in sorted(work.glob("*.log")) + [work / "reference.json"]:
            shutil.copyfile(f, keep / f.name)
        (keep / "reference_run.json").write_text(json.dumps(ref, indent=1, ensure_ascii=False) + "\n")
        ref["logs"] = "logs/reference"
    n = ref["numbers"]
    console.print(f"  [green]✓[/] reference: featurize {n['featurize_structures_per_s']}/s, epoch {n['train_epoch_s_median']} s, "
                  f"predict {n['predict_cold_vacancies_per_s']}/s (forward only {n['predict_forward_only_vacancies_per_s']}/s)"
                  + (f"; {ref['wall_s']} s, load {ref['loadavg_before']} -> {ref['loadavg_after']}" if "wall_s" in ref else ""))
    return ref




def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("ADEX_DATA", "../shared/data"))
    parser.add_argument("--quick", action="store_true", help="small sizes (~3 min), results in OUT/quick")
    parser.add_argument("--only", default=",".join(GROUPS), help=f"comma-separated groups ({', '.join(GROUPS)})")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS and torch threads of every child")
    parser.add_argument("--budget-minutes", type=float, default=20.0,
                        help="the largest vacancy-scaling run is capped to finish within this")
    parser.add_argument("--out", default=None, help="results folder (default $ADEX_HOME/benchmarks[/quick])")
    parser.add_argument("--keep-temp", action="store_true", help="keep the temporary ADEX_HOMEs, tables and runs")
    parser.add_argument("--reference-dir", default=None,
                        help="folder of the reference's run.sh, run at the start of every run (default: env ADEX_REFERENCE, "
                             "else <repo>/../shared/reference/dgnn)")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--reference-json", default=None, metavar="FILE",
                     help="reuse a reference.json measured the same day instead of running run.sh (recorded as reused)")
    how.add_argument("--no-reference", action="store_true", help="do not measure the reference: no reference columns")
    args = parser.parse_args(argv)
    args.data = str(Path(args.data).expanduser().resolve())
    groups = [g.strip() for g in args.only.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {unknown}; choose from {GROUPS}")
    if not (Path(args.data) / "witman2023_vacancies" / "vacancies.csv").is_file():
        parser.error(f"no Witman data under {args.data} (pass --data DIR)")
    from adex.paths import adex_home

    out = Path(args.out) if args.out else adex_home() / "benchmarks" / ("quick" if args.quick else "")
    out.mkdir(parents=True, exist_ok=True)

    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = Console(stderr=True)
    previous = {}
    json_path = out / "benchmarks.json"
    if json_path.is_file() and set(groups) != set(GROUPS):
        previous = json.loads(json_path.read_text())
    sizes = SIZES["quick" if args.quick else "full"]
    started_at = dt.datetime.now(dt.timezone.utc)
    load_start = [round(x, 2) for x in os.getloadavg()]
    meta = {"date": started_at.strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick, "groups": groups,
            "machine": machine_info(args.threads), "loadavg_start": load_start, "sizes": sizes,
            "command": "python benchmarks/run_all.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    console.print(f"[bold]adex benchmarks[/] ({'quick' if args.quick else 'full'}; {', '.join(groups)}) on "
                  f"{meta['machine']['cpu_count']} × {meta['machine']['cpu_model']}, torch {meta['machine']['torch']}, "
                  f"{args.threads} thread(s); load average {load_start}")
    tmp = Path(tempfile.mkdtemp(prefix="adex-bench-"))
    logs = tmp / "logs"  # moved to OUT/logs at the end, so a run never leaves a mix of two runs' logs
    logs.mkdir()
    results = {k: v for k, v in previous.items() if k in GROUPS and k not in groups}
    t0 = time.perf_counter()
    try:
        meta["reference"] = obtain_reference(args, tmp, logs, started_at, console)
    except ReferenceFailed as exc:
        print(f"run_all: {exc}", file=sys.stderr)
        if not any(logs.iterdir()):
            shutil.rmtree(tmp, ignore_errors=True)
        return 2
    meta["reference_s"] = round(time.perf_counter() - t0, 1)
    status, ctx = 0, None
    try:
        with Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(bar_width=20), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[info]}"), console=console) as progress:
            task = progress.add_task("benchmarks", total=len(groups), info="")
            ctx = Context(args, sizes, tmp, logs, progress, task, console, time.perf_counter())  # budget: adex only
            original_child = ctx.child

            def child_with_report(label, cmd, home, progress_env=False):
                r = original_child(label, cmd, home, progress_env)
                console.print(f"  [green]✓[/] {label}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU, "
                              f"peak {r['peak_rss_MB']:.0f} MB, other processes {r['other_processes_cores']:.1f} cores "
                              f"[dim](total {ctx.elapsed() / 60:.1f} min)")
                return r

            ctx.child = child_with_report
            for group in groups:
                progress.update(task, description=group)
                try:
                    results[group] = RUNNERS[group](ctx)
                    results[group]["date"] = meta["date"]
                    results[group]["reference_timestamp"] = meta["reference"]["timestamp"]
                except StepFailed as exc:
                    console.print(f"[red]✗ {group}: {exc}")
                    status = 1
                progress.advance(task)
    finally:
        duration = time.perf_counter() - t0
        if ctx is not None:
            meta.update({"children_wall_s_total": round(ctx.children_wall_s, 1),
                         "children_cpu_s_total": round(ctx.children_cpu_s, 1),
                         "note_cpu_total": "the children run one after the other with 1 thread each: their summed CPU "
                                           "time approximates the suite's duration on an otherwise idle machine"})
        meta.update({"duration_s": round(duration, 1), "duration_min": round(duration / 60, 1),
                     "loadavg_end": [round(x, 2) for x in os.getloadavg()]})
        results["meta"] = meta
        meta["other_processes_cores_mean"] = _other_cores(results)
        if previous.get("meta") and set(groups) != set(GROUPS):
            meta["merged_from_previous_run"] = previous["meta"].get("date")
        ordered = {"meta": meta, **{g: results[g] for g in GROUPS if g in results}}
        json_path.write_text(json.dumps(ordered, indent=1, ensure_ascii=False) + "\n")
        md = markdown(ordered)
        (out / "benchmarks.md").write_text(md)
        made = figures(ordered, out)
        final_logs = out / "logs"
        if final_logs.is_dir() and set(groups) == set(GROUPS):
            shutil.rmtree(final_logs)
        shutil.copytree(logs, final_logs, dirs_exist_ok=True)
        if not args.keep_temp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(md)
    console.print(f"[bold]done in {duration / 60:.1f} min[/]: {json_path}, {out / 'benchmarks.md'}"
                  + "".join(f", {out / f}" for f in made))
    return status


if __name__ == "__main__":
    sys.exit(main())
