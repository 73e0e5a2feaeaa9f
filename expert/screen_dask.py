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


class ScreenWorkerPlugin(WorkerPlugin):
    """One torch thread per worker, and the expert loaded when a worker starts (and again
    when a restarted worker joins), before any task arrives; tasks then find it in the
    process's cache (:func:`adex.expert.screen_worker.worker_expert`). A failure to load
    is not raised here: the first task raises it and the driver stops with its message."""

    name = "adex-screen"

    def __init__(self, spec: ExpertSpec) -> None:
        self.spec = spec

    def setup(self, worker) -> None:
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
