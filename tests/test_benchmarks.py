"""Smoke tests of the benchmark suite (``benchmarks/run_all.py``, ``benchmarks/steps.py``): one
in-process step on two vacancies (cold, then from the cache) and the report (table and
figures) from a small results dict. A few seconds."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_witman_step_cold_then_cached(data_dir, tmp_path):
    env = {**os.environ, "ADEX_HOME": str(tmp_path / "home"), "ADEX_NO_PROGRESS": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ADEX_CACHE", None)
    results = []
    for k in range(2):
        out = tmp_path / f"r{k}.json"
        subprocess.run([sys.executable, str(BENCH / "steps.py"), "witman_vacancies", "--n", "2", "--data", str(data_dir),
                        "--result", str(out)], env=env, check=True, timeout=120)
        results.append(json.loads(out.read_text()))
    cold, warm = results
    assert cold["n_vacancies"] == warm["n_vacancies"] == 2
    assert not cold["cache_hit"] and warm["cache_hit"]
    assert cold["mean_nodes"] == warm["mean_nodes"] > 0
    assert warm["seconds"] > 0 and cold["vacancies_per_s"] > 0


def test_report_from_results(tmp_path):
    run_all = _load("run_all")
    proc = {"wall_s": 2.0, "cpu_s": 1.5, "peak_rss_MB": 400.0, "other_processes_cores": 0.1}
    supercell = [{"min_image_distance_A": d, "n_vacancies": 3, "featurize_ms_per_vacancy": 10.0 * d,
                  "featurize_cpu_ms_per_vacancy": 8.0 * d, "advisors_ms_per_vacancy": 5.0, "model_pruned_ms_per_vacancy": 2.0,
                  "model_full_ms_per_vacancy": 0.5 * d, "mean_nodes_full": 20.0 * d, "mean_nodes_pruned": 100.0,
                  "mean_edges_full": 250.0 * d, "mean_edges_pruned": 1200.0, "mean_abs_change_vs_first_eV": 0.0,
                  "process": proc} for d in (8.0, 12.0)]
    vac = [{"n_vacancies": n, "vacancies_per_s": 20.0, "model_seconds": n / 100, "model_vacancies_per_s": 100.0,
            "process": {**proc, "wall_s": n / 20}} for n in (100, 1000)]
    results = {"meta": {"date": "2026-01-01 00:00 UTC", "machine": {"cpu_count": 2, "threads": 1}},
               "scaling": {"supercell": supercell, "vacancies_model": vac, "vacancies_e2e": vac, "notes": ["capped"]}}
    md = run_all.markdown(results)
    assert "| 8 | 160 / 100 |" in md and "| 1,000 |" in md and "capped" in md
    assert run_all.figures(results, tmp_path) == ["scaling_supercell.png", "scaling_vacancies.png"]
    assert (tmp_path / "scaling_supercell.png").stat().st_size > 0
    assert run_all._ratio(54.0, 27.0, True).startswith("2.00 (2.0× faster")
    assert run_all._ratio(3.84, 1.92, False).startswith("2.00 (2.0× slower")
