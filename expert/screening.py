"""Screening at scale: every symmetry-distinct vacancy of many crystals, on Dask.

:func:`screen` is the engine behind ``adex screen``. The driver reads the inputs lazily
(:mod:`adex.expert.screen_inputs`: files, folders, ``--input`` tables, tar archives read
member by member), cuts them into tasks of ``hosts_per_task`` consecutive hosts, and keeps
a bounded number of tasks in flight on a Dask cluster (a ``LocalCluster`` by default,
or ``scheduler="tcp://HOST:8786"``), so its memory does not grow with the input. Each
worker loads the expert once (:class:`adex.expert.screen_dask.ScreenWorkerPlugin`) and
returns Arrow tables per task (:func:`adex.expert.screen_worker.screen_hosts`); the
driver writes them as Parquet partitions, one file per task and table, each atomically
(temporary file + rename)::

    OUT/screen.json                          manifest: expert, inputs, settings, status
    OUT/summary.json                         totals of the finished screen
    OUT/vacancies/part-000012-<key>.parquet  one row per distinct vacancy
    OUT/hosts/part-000012-<key>.parquet      one row per predicted host (lowest dH...)
    OUT/errors/part-000012-<key>.parquet     one row per host (or site) that failed

A task's partition name carries the sha256 of the screen format, the expert's identity
(the sha256 of its and its advisors' files), and its hosts (ids, sites, file contents),
so a rerun skips exactly the tasks already written (``vacancies/`` is written last: it
marks a task done), and nothing is reused for another expert or other input. Dask
reruns the tasks of a worker that dies; the driver writes each task once, when its result
arrives. A task that keeps killing workers (Dask gives up after
``distributed.scheduler.allowed-failures`` deaths) is split into single hosts, and a host
that still kills its worker goes to the errors table.

Read the result with pandas: ``pd.read_parquet("OUT/vacancies")``.
"""
from __future__ import annotations

import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from adex.errors import AdexError, MissingExtraError
from adex.expert.screen_inputs import SCREEN_FORMAT, ScreenInputs, ScreenTask, plan_tasks
from adex.expert.screen_worker import SCREEN_BATCH_SIZE, ExpertSpec, expert_identity

#: Hosts per task (per Dask task and per partition file): enough for batched advisor calls,
#: small enough that a task takes seconds and holds little memory.
DEFAULT_HOSTS_PER_TASK = 32
TABLES = ("hosts", "errors", "vacancies")  # written in this order: vacancies/ marks a task done
INSTALL_HINT = "pip install 'adex[screen]'"


def require_screen_extras(purpose: str = "screening", parquet: bool = True) -> None:
    """Raise :class:`MissingExtraError` (one line, naming ``purpose`` and the extra to
    install) unless dask.distributed and, with ``parquet``, pyarrow import."""
    needed = (("distributed", "dask[distributed]"), ("pyarrow", "pyarrow"))
    for module, package in needed if parquet else needed[:1]:
        try:
            __import__(module)
        except ImportError:
            raise MissingExtraError(f"{purpose} needs {package}, which is not installed: {INSTALL_HINT}") from None


def resolve_expert(ref: str | None, registry=None, registry_root: str | None = None) -> tuple[ExpertSpec, object, str | None]:
    """(spec for the workers, the driver's loaded expert with lazy advisors, note or None).

    Without ``ref`` the shipped default expert, or ``vacancy-core`` when the default
    needs a missing optional package (the note says so)."""
    from adex.expert.loading import load_default_expert, load_expert
    from adex.registry import Registry

    registry = registry or Registry(root=registry_root)
    note = None
    if ref:
        loaded = load_expert(ref, registry, lazy_advisors=True)
    else:
        loaded, note = load_default_expert(registry, lazy_advisors=True)
    return ExpertSpec(loaded.entry.ref, registry_root, expert_identity(loaded)), loaded, note


@dataclass
class ScreenSummary:
    """Totals of a screen (over all its partitions, resumed ones included) and of this run."""

    out: str
    expert: str
    status: str = "running"
    hosts: int = 0
    hosts_predicted: int = 0
    vacancies: int = 0
    errors: int = 0
    hosts_with_errors: int = 0
    errors_by_reason: dict = field(default_factory=dict)  # error rows (hosts or sites) per reason
    error_hosts_by_reason: dict = field(default_factory=dict)  # hosts with at least one error row, per reason
    tasks: int = 0
    tasks_skipped: int = 0
    tasks_split: int = 0
    wall_time_s: float = 0.0
    run_vacancies: int = 0
    run_hosts: int = 0
    vacancies_per_s: float = 0.0
    hosts_per_s: float = 0.0
    workers: int = 0
    peak_rss_mb_per_worker: dict = field(default_factory=dict)
    dashboard: str = ""
    load_average: list = field(default_factory=list)

    def as_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _partition(out: Path, table: str, task: ScreenTask) -> Path:
    return out / table / f"{task.name}.parquet"


def task_done(out: Path, task: ScreenTask) -> bool:
    """A task is done when all three partition files exist (vacancies/ is written last)."""
    return all(_partition(out, table, task).is_file() for table in TABLES)


def _write_parquet(path: Path, table) -> None:
    import pyarrow.parquet as pq

    from adex.fileio import atomic_write_bytes

    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    atomic_write_bytes(path, buffer.getvalue())


def _manifest_identity(spec: ExpertSpec, inputs: ScreenInputs, hosts_per_task: int) -> dict:
    return {"format": SCREEN_FORMAT, "expert": spec.ref, "expert_identity": spec.identity,
            "inputs": inputs.describe(), "hosts_per_task": hosts_per_task}


def _check_out(out: Path, identity: dict, overwrite: bool) -> None:
    """An existing screen in ``out`` must be the same screen (it is resumed); another
    one is refused unless ``overwrite`` (its partitions are then deleted)."""
    manifest = out / "screen.json"
    if out.exists() and not out.is_dir():
        raise AdexError(f"--out {out}: exists and is not a folder")
    if not manifest.is_file():
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise AdexError(f"--out {out} exists, is not empty and holds no screen: give a new folder or --overwrite")
        return
    try:
        old = json.loads(manifest.read_text())
    except (OSError, ValueError):
        old = {}
    same = all(old.get(k) == v for k, v in identity.items())
    if same:
        return
    if not overwrite:
        differs = [k for k, v in identity.items() if old.get(k) != v]
        raise AdexError(f"--out {out} holds another screen (different {', '.join(differs)}): give a new folder, "
                        "the same inputs and settings to resume it, or --overwrite to replace it")
    _remove_partitions(out, keep=set())


def _remove_partitions(out: Path, keep: set[str]) -> int:
    """Delete partition files of ``out`` whose stem is not in ``keep``; returns how many."""
    removed = 0
    for table in TABLES:
        folder = out / table
        if not folder.is_dir():
            continue
        for path in folder.glob("part-*.parquet"):
            if path.stem not in keep:
                path.unlink()
                removed += 1
    return removed


def _error_result(task: ScreenTask, spec: ExpertSpec, ensemble: bool, stage: str, exc: BaseException):
    """A :class:`ChunkResult` with every host of ``task`` in the errors table."""
    import pyarrow as pa

    from adex.expert.screen_worker import ChunkResult, error_reason, schemas

    vac, host, err = schemas(ensemble)
    reason = error_reason(stage, exc)
    if type(exc).__name__ == "KilledWorker":
        reason = "worker process died on this host"
    message = " ".join(str(exc).split())[:500]
    n = len(task.hosts)
    errors = pa.table({"host_id": [h.host_id for h in task.hosts], "source": [h.source for h in task.hosts],
                       "site": pa.array([None] * n, pa.int32()), "stage": [stage] * n, "reason": [reason] * n,
                       "error_type": [type(exc).__name__] * n, "message": [message] * n, "expert": [spec.ref] * n},
                      schema=err)
    return ChunkResult(vac.empty_table(), host.empty_table(), errors,
                       {"pid": None, "peak_rss_mb": 0.0, "hosts": n, "hosts_done": 0, "vacancies": 0})


def _merge(results: list):
    import pyarrow as pa

    from adex.expert.screen_worker import ChunkResult

    stats = {"pid": None, "peak_rss_mb": 0.0, "hosts": 0, "hosts_done": 0, "vacancies": 0}
    for r in results:
        for k in ("hosts", "hosts_done", "vacancies"):
            stats[k] += r.stats.get(k, 0)
    return ChunkResult(*(pa.concat_tables([getattr(r, t) for r in results]) for t in ("vacancies", "hosts", "errors")),
                       stats), [r.stats for r in results]


def screen(
    inputs: ScreenInputs,
    out: str | os.PathLike,
    expert: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    hosts_per_task: int = DEFAULT_HOSTS_PER_TASK,
    batch_size: int = SCREEN_BATCH_SIZE,
    registry: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dashboard: str | None = ":8787",
    on_message=None,
    on_partition=None,
) -> ScreenSummary:
    """Predict every requested distinct vacancy of ``inputs`` into Parquet under ``out``.

    Args:
        inputs: what to screen (:class:`ScreenInputs`).
        out: output folder; an earlier run of the same screen there is resumed.
        expert: registry reference (default: the shipped default expert, or vacancy-core
            when the default's optional package is missing).
        scheduler: address of a running Dask scheduler; default a new ``LocalCluster``
            of ``workers`` processes (default: the cores), one thread each.
        hosts_per_task: hosts per Dask task and per partition file.
        on_message: called with each line to show the user (default: the rich console).
        on_partition: called as ``on_partition(task, stats, client)`` after each task's
            partitions are written (tests use it to kill a worker mid-run).

    Returns:
        :class:`ScreenSummary` (also written to ``out/summary.json``).

    Raises:
        MissingExtraError: dask.distributed or pyarrow missing.
        AdexError: bad inputs, an expert that cannot load, another screen in ``out``.
    """
    require_screen_extras()
    from adex.expert.screen_dask import ScreenWorkerPlugin, screen_client, worker_threads
    from adex.fileio import atomic_write_json
    from adex.progress import console, progress_bar

    started = time.perf_counter()
    say = on_message or (lambda line: console().print(line, soft_wrap=True, highlight=False))
    inputs.check()
    if workers is not None and workers < 1:
        raise AdexError(f"--workers must be >= 1, not {workers}")
    out = Path(out).expanduser()
    spec, loaded, note = resolve_expert(expert, registry_root=registry)
    if note:
        say(f"note: {note}")
    from adex.expert.ensemble import as_members

    ensemble = len(as_members(loaded.model)) > 1
    identity = _manifest_identity(spec, inputs, hosts_per_task)
    _check_out(out, identity, overwrite)
    for table in TABLES:
        (out / table).mkdir(parents=True, exist_ok=True)
    manifest = {**identity, "status": "running", "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "batch_size": batch_size, "scheduler": scheduler or "LocalCluster"}
    atomic_write_json(out / "screen.json", manifest)
    total_hosts = inputs.count()
    summary = ScreenSummary(out=str(out), expert=spec.ref, load_average=list(os.getloadavg()))
    say(f"expert: {spec.ref}" + (f" ({len(as_members(loaded.model))}-member ensemble)" if ensemble else ""))
    del loaded  # the workers load their own copy

    written: set[str] = set()
    peak: dict[str, float] = {}
    run_hosts = run_vacancies = 0
    status = "interrupted"
    with screen_client(scheduler, workers, dashboard, ScreenWorkerPlugin(spec)) as client:
        summary.dashboard = str(client.dashboard_link or "")
        summary.workers = len(client.scheduler_info().get("workers", {}))
        try:
            import bokeh  # noqa: F401

            hint = ""
        except ImportError:
            hint = " (pip install bokeh to serve it)"
        say(f"dask: {summary.workers} worker{'s' if summary.workers != 1 else ''} "
            f"({scheduler or 'LocalCluster'}), dashboard {summary.dashboard}{hint}")
        from distributed import as_completed

        max_in_flight = 2 * worker_threads(client) + 2
        tasks = plan_tasks(iter(inputs), hosts_per_task, json.dumps(identity, sort_keys=True))
        queue = as_completed()
        owner: dict = {}  # future -> (task, parent task key or None, slot)
        splits: dict[str, tuple[ScreenTask, list]] = {}
        in_flight = 0
        exhausted = False

        def submit(task: ScreenTask, parent: str | None = None, slot: int = 0) -> None:
            nonlocal in_flight
            from adex.expert.screen_worker import run_chunk

            future = client.submit(run_chunk, spec, task.hosts, batch_size, key=f"adex-screen-{task.key[:32]}-{slot}",
                                   retries=1)
            owner[future] = (task, parent, slot)
            queue.add(future)
            in_flight += 1

        def fill() -> None:
            nonlocal exhausted
            while not exhausted and in_flight < max_in_flight:
                task = next(tasks, None)
                if task is None:
                    exhausted = True
                    return
                summary.tasks += 1
                if task_done(out, task):
                    summary.tasks_skipped += 1
                    written.add(task.name)
                    bar.advance(host_bar, len(task.hosts))
                    bar.advance(vac_bar, _rows(_partition(out, "vacancies", task)))
                    continue
                submit(task)

        def finish(task: ScreenTask, result, stats_list) -> None:
            nonlocal run_hosts, run_vacancies
            for table in TABLES:
                _write_parquet(_partition(out, table, task), getattr(result, table))
            written.add(task.name)
            for stats in stats_list:
                if stats.get("pid") is not None:
                    key = f"{stats.get('host', '')}:{stats['pid']}"
                    peak[key] = max(peak.get(key, 0.0), float(stats.get("peak_rss_mb", 0.0)))
            run_hosts += len(task.hosts)
            run_vacancies += result.stats["vacancies"]
            bar.advance(host_bar, len(task.hosts))
            bar.advance(vac_bar, result.stats["vacancies"])
            if on_partition is not None:
                on_partition(task, result.stats, client)

        try:
            with progress_bar(disable=not progress) as bar:
                host_bar = bar.add_task("hosts", total=total_hosts)
                vac_bar = bar.add_task("vacancies", total=None)
                fill()
                while in_flight:
                    future = next(queue)
                    in_flight -= 1
                    task, parent, slot = owner.pop(future)
                    try:
                        result = future.result()
                    except AdexError:
                        raise  # the expert cannot load on a worker: nothing can succeed
                    except Exception as exc:  # noqa: BLE001 - a worker died, or a bug in one chunk
                        if parent is None and len(task.hosts) > 1:
                            summary.tasks_split += 1
                            splits[task.key] = (task, [None] * len(task.hosts))
                            for k, host in enumerate(task.hosts):
                                submit(ScreenTask(task.index, (host,), task.key), task.key, k + 1)
                            future.release()
                            continue
                        result = _error_result(task, spec, ensemble, "worker", exc)
                    future.release()
                    if parent is None:
                        finish(task, result, [result.stats])
                    else:
                        whole, parts = splits[parent]
                        parts[slot - 1] = result
                        if all(p is not None for p in parts):
                            merged, stats_list = _merge(parts)
                            del splits[parent]
                            finish(whole, merged, stats_list)
                    fill()
            status = "finished"
        except BaseException as exc:
            status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            if isinstance(exc, KeyboardInterrupt):  # the totals so far, for the user and for a report
                _close_summary(out, summary, started, run_hosts, run_vacancies, peak, status)
            raise
        finally:
            manifest["status"] = status
            atomic_write_json(out / "screen.json", manifest)

    _remove_partitions(out, keep=written)  # partitions of an earlier, different chunking
    return _close_summary(out, summary, started, run_hosts, run_vacancies, peak, status)


def _close_summary(out: Path, summary: ScreenSummary, started: float, run_hosts: int, run_vacancies: int,
                   peak: dict, status: str) -> ScreenSummary:
    """Fill this run's figures and the screen's totals into ``summary``; write summary.json."""
    from adex.fileio import atomic_write_json

    wall = time.perf_counter() - started
    summary.status = status
    summary.wall_time_s = round(wall, 3)
    summary.run_hosts, summary.run_vacancies = run_hosts, run_vacancies
    summary.vacancies_per_s = round(run_vacancies / wall, 2) if wall > 0 else 0.0
    summary.hosts_per_s = round(run_hosts / wall, 2) if wall > 0 else 0.0
    summary.peak_rss_mb_per_worker = {k: round(v, 1) for k, v in sorted(peak.items())}
    summary.load_average = summary.load_average[:3] + list(os.getloadavg())
    _totals(out, summary)
    atomic_write_json(out / "summary.json", summary.as_dict())
    return summary


def _rows(path: Path) -> int:
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # noqa: BLE001 - a count for the progress bar only
        return 0


def _totals(out: Path, summary: ScreenSummary) -> None:
    """Fill the screen-wide totals of ``summary`` from the partitions in ``out``."""
    import pyarrow.dataset as ds

    hosts = ds.dataset(out / "hosts", format="parquet").to_table(columns=["host_id", "source"]).to_pandas()
    errors = ds.dataset(out / "errors", format="parquet").to_table(columns=["host_id", "source", "reason"]).to_pandas()
    summary.hosts_predicted = len(hosts)
    summary.vacancies = sum(_rows(p) for p in (out / "vacancies").glob("part-*.parquet"))
    summary.errors = len(errors)
    failed = set(zip(errors["host_id"], errors["source"]))
    summary.hosts_with_errors = len(failed)
    summary.hosts = len(set(zip(hosts["host_id"], hosts["source"])) | failed)
    summary.errors_by_reason = {str(k): int(v) for k, v in errors["reason"].value_counts().items()}
    summary.error_hosts_by_reason = {str(k): int(v) for k, v in errors.drop_duplicates(["host_id", "source", "reason"])[
        "reason"].value_counts().items()}


def read_screen(out: str | os.PathLike, table: str = "vacancies"):
    """One table of a screen as a pandas DataFrame (``vacancies``, ``hosts`` or ``errors``),
    partitions in task order."""
    require_screen_extras()
    import pandas as pd
    import pyarrow.parquet as pq

    if table not in TABLES:
        raise AdexError(f"no table {table!r} in a screen (tables: {', '.join(TABLES)})")
    files = sorted((Path(out) / table).glob("part-*.parquet"))
    if not files:
        return pd.DataFrame()
    return pd.concat([pq.read_table(f).to_pandas() for f in files], ignore_index=True)


def predict_sites_dask(
    expert,
    jobs: list[tuple[str, list[int]]],
    batch_size: int = SCREEN_BATCH_SIZE,
    workers: int | None = None,
    scheduler: str | None = None,
    on_progress=None,
    chunk_vacancies: int | None = None,
    cache: bool = False,
    caveats: dict[str, str] | None = None,
    registry: str | None = None,
    domains: dict | None = None,
):
    """:func:`adex.expert.predict.predict_sites` on Dask (the engine of ``adex screen``): the
    engine of ``adex predict --input --workers N`` (N > 1) and ``--scheduler``; same
    arguments and result (the same numbers: each chunk is read, featurized and predicted
    as in :func:`adex.expert.predict.predict_chunk`).

    Args:
        expert: a :class:`~adex.expert.loading.LoadedExpert` (workers load the same
            version themselves, once each, from ``registry``: the user registry root the
            caller opened, None for ``$ADEX_HOME/registry``) or a reference.
        jobs: ``(structure path, [site, ...])`` per host file; the paths must be readable
            by the workers (always true on a LocalCluster; on a remote cluster, a shared
            file system).
        workers: LocalCluster processes (default: the cores; never more than the chunks),
            one torch thread each; ignored with ``scheduler``. Without ``scheduler``, jobs
            that make a single chunk are predicted in this process
            (:func:`~adex.expert.predict.predict_chunk`): a cluster could only slow them down.
        on_progress: called with the number of vacancies finished, after each chunk.
        cache: as :func:`~adex.expert.predict.predict_sites` (each worker reads and fills
            ``$ADEX_HOME/cache``).
        domains: as :func:`~adex.expert.predict.predict_sites` (the workers compute them).
        caveats: if given, filled with ``{path: caveats}``. The caveats of each file are
            also emitted here, in the driver, as one
            :class:`~adex.expert.predict.InputWarning` per file (the workers' own warnings
            are not shown).

    Returns:
        ``{(path, site): member predictions float64 [M]}`` (eV), in the order of ``jobs``
        (as :func:`~adex.expert.predict.predict_sites`), whatever order the chunks finish in.

    Raises:
        MissingExtraError: dask.distributed missing. AdexError of the first failing chunk.
    """
    require_screen_extras("parallel prediction on Dask", parquet=False)
    import warnings

    from adex.expert.predict import CHUNK_VACANCIES, InputWarning, collect_chunk, host_chunks, predict_chunk
    from adex.expert.screen_dask import ScreenWorkerPlugin, default_workers, screen_client, worker_threads
    from adex.expert.screen_worker import predict_files_chunk

    if isinstance(expert, str):
        spec, expert, _ = resolve_expert(expert, registry_root=registry)
    else:
        spec = ExpertSpec(expert.entry.ref, registry, expert_identity(expert))
    chunks = host_chunks(jobs, chunk_vacancies or CHUNK_VACANCIES)
    out: dict = {}
    if not chunks:
        return out
    if not scheduler and len(chunks) == 1:
        collect_chunk(predict_chunk(expert, chunks[0], batch_size, cache, domains is not None), out, caveats, on_progress,
                      domains)
        return out
    workers = None if scheduler else min(workers or default_workers(), len(chunks))
    with screen_client(scheduler, workers, None, ScreenWorkerPlugin(spec)) as client:
        from distributed import as_completed

        limit = 2 * worker_threads(client) + 2
        pending = iter(chunks)
        queue = as_completed()

        def top_up() -> None:
            while queue.count() < limit:
                chunk = next(pending, None)
                if chunk is None:
                    return
                queue.add(client.submit(predict_files_chunk, spec, chunk, batch_size, cache, domains is not None,
                                        pure=False))

        top_up()
        for future in queue:
            result = future.result()  # an AdexError of the chunk is raised here, naming the file
            future.release()
            for path, _, _, notes, _ in result:  # the workers' warnings stay on the workers
                if notes:
                    warnings.warn(f"{Path(path).name}: {notes}", InputWarning, stacklevel=2)
            collect_chunk(result, out, caveats, on_progress, domains)
            top_up()
    return {key: out[key] for key in dict.fromkeys((path, site) for path, sites in jobs for site in sites)}
