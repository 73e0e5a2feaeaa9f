"""The reference column of ``benchmarks/run_all.py`` (issue 28, item 5): the published dGNN code is
timed by ``run.sh`` in the same run and every reference number and ratio comes from the
``reference.json`` it writes. A fake ``run.sh`` (a shell script writing a JSON) stands in for
the real one: no training, a few seconds."""
from __future__ import annotations

import datetime as dt
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

# deliberately unlike any real measurement, so a ratio can only have come from this file
FAKE = {
    "reference": "fake dGNN", "epochs": 10, "threads": 1,
    "featurize_structures_per_s": 50.0, "featurize_ms_per_structure": 20.0, "featurize_cpu_s_1481": 29.0,
    "train_epoch_s_median": 0.5, "train_epoch_cpu_s_median": 0.45, "train_peak_rss_mb": 2048.0,
    "predict_n": 149.0, "predict_cold_vacancies_per_s": 40.0, "predict_forward_only_vacancies_per_s": 1000.0,
    "predict_process_wall_s": 7.45, "predict_end_to_end_vacancies_per_s": 20.0, "predict_peak_rss_mb": 400.0,
}


def _load():
    spec = importlib.util.spec_from_file_location("bench_run_all_reference", BENCH / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def run_all():
    return _load()


def fake_reference_dir(root: Path, numbers: dict | None = FAKE, exit_code: int = 0) -> Path:
    """A folder with a ``run.sh PYTHON OUTDIR`` that writes ``numbers`` as OUTDIR/reference.json
    and a log, or fails with ``exit_code``."""
    folder = root / "fake_dgnn"
    folder.mkdir(parents=True, exist_ok=True)
    body = ['#!/usr/bin/env bash', 'set -euo pipefail', 'OUT=${2:?usage: run.sh PYTHON OUTDIR}', 'mkdir -p "$OUT"',
            'echo "TIMING threads=$THREADS" > "$OUT/1_featurize.log"', 'echo "== fake reference" >&2']
    if exit_code:
        body += ['echo "expected 1481 CIFs" >&2', f'exit {exit_code}']
    else:
        body += [f"cat > \"$OUT/reference.json\" <<'JSON'\n{json.dumps(numbers)}\nJSON"]
    (folder / "run.sh").write_text("\n".join(body) + "\n")
    return folder


def test_run_reference_reads_the_json_run_sh_writes(run_all, tmp_path):
    ref = run_all.run_reference(fake_reference_dir(tmp_path), tmp_path / "work", tmp_path / "run.log", threads=1)
    assert ref["numbers"] == FAKE
    assert ref["source"] == "run" and ref["threads"] == 1
    assert "run.sh" in ref["command"] and ref["command"].startswith("THREADS=1 ")
    assert len(ref["loadavg_before"]) == 3 and len(ref["loadavg_after"]) == 3
    assert ref["timestamp"].endswith("UTC") and ref["wall_s"] >= 0
    assert (tmp_path / "work" / "1_featurize.log").read_text().strip() == "TIMING threads=1"  # THREADS passed on


def test_failing_run_sh_is_one_line_error(run_all, tmp_path):
    with pytest.raises(run_all.ReferenceFailed) as err:
        run_all.run_reference(fake_reference_dir(tmp_path, exit_code=3), tmp_path / "work", tmp_path / "run.log", threads=1)
    message = str(err.value)
    assert "\n" not in message
    assert "exited with code 3" in message and "expected 1481 CIFs" in message


def test_missing_or_bad_reference_json_is_an_error(run_all, tmp_path):
    with pytest.raises(run_all.ReferenceFailed, match="no .*run.sh"):
        run_all.run_reference(tmp_path / "nowhere", tmp_path / "work", tmp_path / "run.log", threads=1)
    partial = {k: v for k, v in FAKE.items() if k != "train_epoch_s_median"}
    with pytest.raises(run_all.ReferenceFailed, match="train_epoch_s_median"):
        run_all.run_reference(fake_reference_dir(tmp_path, partial), tmp_path / "w2", tmp_path / "run2.log", threads=1)


def test_reference_dir_option_then_env_then_repo_default(run_all, tmp_path, monkeypatch):
    monkeypatch.delenv("ADEX_REFERENCE", raising=False)
    assert run_all.reference_dir(None) == (BENCH.parent.parent / "shared" / "reference" / "dgnn").resolve()
    monkeypatch.setenv("ADEX_REFERENCE", str(tmp_path / "env"))
    assert run_all.reference_dir(None) == (tmp_path / "env").resolve()
    assert run_all.reference_dir(str(tmp_path / "arg")) == (tmp_path / "arg").resolve()


def _featurize_group() -> dict:
    proc = {"wall_s": 3.0, "cpu_s": 3.0, "peak_rss_MB": 300.0, "peak_tree_rss_MB_sampled": 300.0}
    mp = {"n_structures": 10, "seconds": 1.0, "cpu_seconds": 1.0, "structures_per_s": 10.0, "process": proc}
    witman = {"n_vacancies": 100, "seconds": 1.0, "cpu_seconds_parent": 1.0, "process_inner_cpu_s": 1.0, "workers": 1,
              "vacancies_per_s": 100.0, "mean_nodes": 200.0, "process": proc}
    return {"mp_cold": mp, "mp_cached": mp,
            "witman_pristine": {"n_structures": 100, "process": proc, "stage_cpu_s": {"cif_parse": 0.5, "graph_4.5A": 0.5},
                                "parse_plus_graph_4.5A": {"seconds": 1.0, "structures_per_s": 100.0, "cif_parse_share": 0.5}},
            "witman_cold_1w": witman, "witman_cold_2w": {**witman, "workers": 2}, "witman_cached": witman}


def _predict_group() -> dict:
    proc = {"wall_s": 10.0, "cpu_s": 10.0, "peak_rss_MB": 200.0, "other_processes_cores": 0.0, "log": "logs/x.log"}
    run = {"process": proc, "n_vacancies": 800, "n_hosts": 800, "vacancies_per_s": 80.0, "vacancies_per_cpu_s": 80.0,
           "mae_vs_dft_eV": 0.1}
    model = {"n_vacancies": 800, "model_seconds": 1.6, "model_cpu_seconds": 1.6, "model_vacancies_per_s": 500.0,
             "mean_nodes_pruned": 66.0, "process": proc}
    return {"expert": "fake expert", "input": run,
            "all_sites_table": {**run, "n_hosts": 10},
            "all_sites_calls": {"n_calls": 2, "n_vacancies": 8, "wall_s": 4.0, "cpu_s": 4.0, "seconds_per_call": 2.0,
                                "vacancies_per_s": 2.0, "overhead_per_call_s": 1.9, "peak_rss_MB": 200.0},
            "model_only": model}


def _results(reference: dict, stamp_of_groups: str | None) -> dict:
    results = {"meta": {"date": "2026-01-01 00:00 UTC", "machine": {"cpu_count": 2, "threads": 1}, "reference": reference},
               "featurize": _featurize_group(), "predict": _predict_group()}
    for group in ("featurize", "predict"):
        results[group].update(date="2026-01-01 00:00 UTC", reference_timestamp=stamp_of_groups)
    return results


def _ref(run_all, tmp_path) -> dict:
    return run_all.run_reference(fake_reference_dir(tmp_path), tmp_path / "work", tmp_path / "run.log", threads=1)


def _row(rows: list[dict], start: str) -> dict:
    return next(r for r in rows if r["what"].startswith(start))


def _figure_labels(run_all, results: dict, out: Path, monkeypatch) -> list[str]:
    """The legend entries of the figures ``run_all.figures`` saves."""
    from matplotlib.figure import Figure

    labels, save = [], Figure.savefig

    def record(fig, *args, **kwargs):
        labels.extend(t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts())
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", record)
    assert run_all.figures(results, out) == ["scaling_vacancies.png"]
    return labels


def test_ratios_use_the_numbers_of_reference_json(run_all, tmp_path, monkeypatch):
    ref = _ref(run_all, tmp_path)
    results = _results(ref, ref["timestamp"])
    rows = run_all.summary_rows(results)
    host = _row(rows, "Witman host graphs")
    assert host["reference"] == 50.0 and host["ratio"].startswith("2.00 (2.0× faster")  # 100 / featurize 50
    predict = _row(rows, "`adex predict --input`")
    assert predict["reference"] == 40.0 and predict["ratio"].startswith("2.00 (2.0× faster")  # 80 / cold 40
    assert "memory vs ref. (149 vacancies) 0.50 (less)" in predict["note"]  # 200 MB / 400 MB
    model = _row(rows, "model only, shipped expert")
    assert model["reference"] == 1000.0 and model["ratio"].startswith("0.50 (2.0× slower")  # 500 / forward only 1000
    values = run_all.reference_values(ref)
    assert values["epoch_s"] == 0.5 and values["train_peak_GB"] == 2.0
    assert values["epochs_1000_min"] == round((1000 * 0.5 + 1481 * 0.020) / 60, 1)
    md = run_all.markdown(results)
    assert ref["timestamp"] in md and ref["command"] in md and str(ref["loadavg_before"]) in md
    assert "same machine the same day" in md
    assert "| featurize_structures_per_s | 50.0 | structures/s |" in md
    assert "| predict_forward_only_vacancies_per_s | 1,000 | vacancies/s |" in md
    for old in ("27.0", "630", "1.92", "36.0", "issue 6"):
        assert old not in md
    labels = _figure_labels(run_all, results, tmp_path, monkeypatch)
    assert "reference, 40/s featurize + forward (same run)" in labels
    assert "reference, 1000/s model only (same run)" in labels
    assert "reference predict peak (149 vacancies, same run)" in labels


def test_no_ratios_across_runs_nor_without_reference(run_all, tmp_path, monkeypatch):
    ref = _ref(run_all, tmp_path)
    rows = run_all.summary_rows(_results(ref, "2025-12-31 10:00:00 UTC"))  # groups merged from an earlier run
    assert all(r["reference"] is None and r["ratio"] == "" for r in rows)
    assert "Groups merged from an earlier run have no ratios: featurize" in run_all.markdown(
        _results(ref, "2025-12-31 10:00:00 UTC"))
    none = run_all.no_reference("--no-reference")
    results = _results(none, None)
    assert all(r["reference"] is None and r["ratio"] == "" for r in run_all.summary_rows(results))
    assert "Reference: none (--no-reference): the reference and ratio columns are empty." in run_all.markdown(results)
    labels = _figure_labels(run_all, results, tmp_path, monkeypatch)
    assert "no reference in this run" in labels and not any(label.startswith("reference") for label in labels)


def test_reused_reference_json_same_day_only(run_all, tmp_path):
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(FAKE))
    now = dt.datetime.now(dt.timezone.utc)
    ref = run_all.reuse_reference(path, 1, now)
    assert ref["source"] == "reused" and ref["reused_file"] == str(path.resolve()) and ref["numbers"] == FAKE
    assert "reused with `--reference-json" in "\n".join(run_all.reference_markdown({"meta": {"reference": ref}}))
    with pytest.raises(run_all.ReferenceFailed, match="thread"):
        run_all.reuse_reference(path, 2, now)
    old = (now - dt.timedelta(days=2)).timestamp()
    os.utime(path, (old, old))
    with pytest.raises(run_all.ReferenceFailed, match="not today"):
        run_all.reuse_reference(path, 1, now)


def _fake_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    (data / "witman2023_vacancies").mkdir(parents=True)
    (data / "witman2023_vacancies" / "vacancies.csv").write_text("id,dH_eV\n")
    return data


def test_main_stops_with_one_line_when_run_sh_fails(run_all, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the run keeps its temp folder for the log
    out = tmp_path / "out"
    code = run_all.main(["--data", str(_fake_data(tmp_path)), "--only", ",", "--out", str(out),
                         "--reference-dir", str(fake_reference_dir(tmp_path, exit_code=1))])
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("run_all:")]
    assert len(err) == 1 and "exited with code 1" in err[0]
    log = Path(err[0].rsplit("; log ", 1)[1])
    assert log.is_file() and log.is_relative_to(tmp_path)
    assert not (out / "benchmarks.json").exists() and not (out / "benchmarks.md").exists()


def test_main_records_the_reference_of_the_run(run_all, tmp_path):
    out = tmp_path / "out"
    code = run_all.main(["--data", str(_fake_data(tmp_path)), "--only", ",", "--out", str(out),
                         "--reference-dir", str(fake_reference_dir(tmp_path))])
    assert code == 0
    meta = json.loads((out / "benchmarks.json").read_text())["meta"]
    assert meta["reference"]["numbers"] == FAKE and meta["reference"]["source"] == "run"
    assert (out / "logs" / "reference" / "reference.json").is_file()
    assert meta["reference"]["timestamp"] in (out / "benchmarks.md").read_text()
