"""Dask pieces of a screen: the worker plugin that loads the expert once per worker, and
the cluster (a ``LocalCluster`` or an existing scheduler) as a context manager.

This module imports ``distributed`` at the top: import it only through
:func:`adex.expert.screening.require_screen_extras` (which names the missing extra).
"""
from __future__ import annotations

import contextlib
import logging
import os

from distributed import Client, LocalCluster
from distributed.diagnostics.plugin import WorkerPlugin

from adex.expert.screen_worker import ExpertSpec, worker_expert


#: glibc ``mallopt`` parameters (malloc.h) and the values a worker sets (bytes).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
WORKER_TRIM_THRESHOLD = 256 * 1024 * 1024
WORKER_MMAP_THRESHOLD = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Undo, in this process, the ``MALLOC_TRIM_THRESHOLD_=65536`` Dask's nanny gives every
    worker (``distributed.nanny.pre-spawn-environ``): with it glibc hands freed memory back
    to the system at once, so every tensor torch allocates is fresh pages to fault in again.
    On the shared 2-core machine that made the same 600 Witman vacancies take 14.3 s in a
    Dask worker against 8.7 s in a plain process; with the thresholds raised here, 8.5 s.
    The price is at most :data:`WORKER_TRIM_THRESHOLD` of freed memory kept per worker.
    True if the thresholds were set (glibc), False elsewhere (nothing changes)."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_TRIM_THRESHOLD, WORKER_TRIM_THRESHOLD)
                    and libc.mallopt(_M_MMAP_THRESHOLD, WORKER_MMAP_THRESHOLD))
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False


class ScreenWorkerPlugin(WorkerPlugin):
    """One torch thread per worker, glibc's freed-memory thresholds raised
    (:func:`keep_freed_memory`), and the expert loaded when a worker starts (and again
    when a restarted worker joins), before any task arrives; tasks then find it in the
    process's cache (:func:`adex.expert.screen_worker.worker_expert`). A failure to load
    is not raised here: the first task raises it and the driver stops with its message."""

    name = "adex-screen"

    def __init__(self, spec: ExpertSpec) -> None:
        self.spec = spec

    def setup(self, worker) -> None:
        keep_freed_memory()
        try:
            worker_expert(self.spec)
        except Exception:  # noqa: BLE001 - reported by the first task
            pass


def default_workers() -> int:
    """Cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


@contextlib.contextmanager
def screen_client(scheduler: str | None = None, workers: int | None = None, dashboard: str | None = ":8787",
                  plugin: WorkerPlugin | None = None):
    """A Dask client: connected to ``scheduler`` (``tcp://HOST:8786``) or to a new
    ``LocalCluster`` of ``workers`` processes (default: the cores), one thread each
    (Dask's nanny gives each worker ``OMP_NUM_THREADS=1``; the plugin sets torch to 1
    thread). ``plugin`` is installed on every worker, present and future (a local
    cluster's workers run it while they start, side by side). Closed (and the local
    cluster shut down) on exit, Ctrl-C included."""
    if scheduler:
        client = Client(scheduler, timeout="30s")
        try:
            if plugin is not None:
                client.register_plugin(plugin, name=plugin.name)
            yield client
        finally:
            client.close()
        return
    cluster = LocalCluster(n_workers=workers or default_workers(), threads_per_worker=1, processes=True,
                           dashboard_address=dashboard, silence_logs=logging.ERROR,
                           **({"plugins": {plugin}} if plugin is not None else {}))
    try:
        client = Client(cluster)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


def worker_threads(client) -> int:
    """Threads over all workers the scheduler knows now (at least 1)."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return max(1, sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values()))


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False
