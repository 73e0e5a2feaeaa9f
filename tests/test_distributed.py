"""Data-parallel training under torchrun: two CPU processes (gloo) train one advisor on a
tiny set; rank 0 alone writes the run folder and registers one version, the replicas end
with identical parameters, and without torchrun nothing is distributed."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adex.distributed import context, replicas_in_sync
from adex.registry import Registry
from conftest import TINY_OVERRIDES


def test_without_torchrun_the_context_is_a_single_process(monkeypatch) -> None:
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = context()
    assert (ctx.rank, ctx.world_size, ctx.enabled, ctx.is_main) == (0, 1, False, True)
    import torch

    assert replicas_in_sync(torch.nn.Linear(2, 2))


def test_torchrun_two_processes_train_one_advisor(small_data: Path, tmp_path: Path) -> None:
    registry, out = tmp_path / "registry", tmp_path / "run"
    env = {**os.environ, "ADEX_HOME": str(tmp_path / "home"), "ADEX_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "adex", "advisor", "train", "bandgap", "--epochs", "2", "--limit", "20", "--data", str(small_data),
           *TINY_OVERRIDES, "--registry", str(registry), "--out", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    entries = Registry(registry).list()
    assert [(e.kind, e.name, e.version) for e in entries] == [("advisor", "bandgap", 1)]  # registered once
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["replicas_in_sync"] is True
    assert metrics["test"]["n"] >= 1 and metrics["test"]["mae"] > 0
    assert proc.stderr.count("registered: advisor/bandgap:1") == 1  # only rank 0 reports
