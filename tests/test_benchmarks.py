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


def test_host_offsets_split_error_into_host_levels(tmp_path):
    """Two hosts whose errors are a constant per host and class: nothing is left once the
    offsets are removed; one per host alone leaves the O / metal difference."""
    host_offsets = _load("host_offsets")
    run = tmp_path / "run"
    run.mkdir()
    rows = ["fold,id,host,element,dH_eV,dH_pred_eV"]
    errors = {("h1", "O"): 0.5, ("h1", "Fe"): 1.5, ("h2", "O"): -0.2, ("h2", "Ba"): -0.2}
    for i, ((host, element), e) in enumerate(errors.items()):
        for j in range(2):
            rows.append(f"k0,{host}-{element}{j},{host},{element},{3.0 + i + j},{3.0 + i + j + e}")
    (run / "predictions.csv").write_text("\n".join(rows) + "\n")
    props = {"h1": (1.0, -2.0), "h2": (3.0, -3.0)}
    t = host_offsets.offsets_table(run, props)
    assert t["n"] == 8 and t["mae"] == pytest.approx((0.5 + 1.5 + 0.2 + 0.2) / 4)
    assert t["mae_minus_host_class_offset"] == pytest.approx(0.0, abs=1e-9)
    assert t["mae_minus_host_offset"] == pytest.approx((0.5 + 0.5 + 0 + 0) / 4)  # h1: mean +1.0, errors 0.5 / 1.5
    assert t["host_offset_mae"] == pytest.approx((1.0 + 0.2) / 2)
    assert t["corr_offset_gap_O"] == pytest.approx(-1.0)  # two hosts: O offsets 0.5 / -0.2 against gaps 1 / 3
