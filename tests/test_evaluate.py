"""``adex evaluate`` (:mod:`adex.studies.evaluate`): spec validation names the bad key, the
table's metrics equal a hand computation, finished units are not recomputed on resume,
two worker processes give the table of one, finished runs (a run folder, a summaries
folder) enter the table, and the command writes its files.

Runs on the 13-vacancy tiny Witman copy of ``test_expert`` (5 hosts, 5 structure
families) with the descriptor baseline and a width-8 expert trained for one epoch.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from adex.studies import evaluate as ev
from conftest import assert_one_line_error
from test_expert import TINY, tiny  # noqa: F401  (fixture)

from adex.cli import main
from adex.errors import ConfigError

pytestmark = pytest.mark.usefixtures("shared_cache")


def tiny_expert(name: str = "scratch") -> dict:
    """A scratch expert of the width-8 TINY settings, one epoch."""
    settings = {}
    for text in TINY[1::2]:  # TINY is ["--set", "KEY=VALUE", ...]
        key, value = text.split("=", 1)
        settings[key] = yaml.safe_load(value)
    return {"name": name, "kind": "expert", "advisors": [], "set": {**settings, "training.epochs": 1}}


def write_spec(path: Path, models: list[dict], **top) -> Path:
    path.write_text(yaml.safe_dump({"name": "tiny", "schemes": ["family"], "folds": 2, "models": models, **top}))
    return path


def read_table(out: Path) -> list[dict]:
    with open(out / "table.csv", newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- the spec
@pytest.mark.parametrize("data, needle", [
    ({"name": "x", "model": []}, "'model'"),
    ({"name": "x", "folds": "ten"}, "spec.folds"),
    ({"name": "x", "schemes": ["nope"]}, "spec.schemes[0]"),
    ({"name": "x", "models": [{"name": "a", "kind": "expert", "potential_delta": True}]},
     "spec.models[0]: unknown key 'potential_delta'"),
    ({"name": "x", "models": [{"name": "a", "kind": "baseline", "potential_delta": "yes"}]},
     "spec.models[0].potential_delta"),
    ({"name": "x", "models": [{"name": "a", "kind": "teacher"}]}, "spec.models[0].kind"),
    ({"name": "x", "models": [{"name": "a", "kind": "baseline"}, {"name": "a", "kind": "baseline"}]},
     "spec.models[1].name"),
    ({"name": "x", "models": [{"name": "a", "kind": "baseline", "potential_delta": True}]}, "needs a potential"),
    ({"name": "x", "models": [{"name": "a/b", "kind": "baseline"}]}, "spec.models[0].name"),
])
def test_spec_errors_name_the_key(data, needle) -> None:
    with pytest.raises(ConfigError) as info:
        ev.build_spec(data)
    assert needle in str(info.value)


def test_shipped_spec_loads() -> None:
    spec = ev.load_spec("new-materials")
    kinds = {m.name: m.kind for m in spec.models}
    assert kinds == {"vacancy": "expert", "vacancy-delta": "expert", "vacancy-6": "expert", "vacancy-core": "expert",
                     "baseline-chgnet-delta": "baseline", "baseline-chgnet-relax": "baseline"}
    assert spec.schemes == ["published_struct", "loeo", "family", "published"]
    vacancy, delta, previous = spec.models[:3]  # the recipes of the default (vacancy:9), vacancy-delta:2 and vacancy:6
    assert vacancy.advisors == delta.advisors == ["builtin::advisor/chgnet:2"]
    assert vacancy.set == {"augment.min_image_distances": [10.0], "featurizer.shell_width": 0.2,
                           "training.ema_decay": 0.999, "training.val_fraction": 0.0}
    assert delta.set["model.potential_min_image_distance"] == 12.0 and delta.set["model.potential_delta"] is True
    assert previous.advisors == ["builtin::bandgap:1", "builtin::eform:1", "builtin::chgnet:1"]


def test_a_bad_spec_file_is_a_one_line_error(tmp_path, capsys) -> None:
    spec = write_spec(tmp_path / "bad.yaml", [{"name": "a", "kind": "baseline", "epochs": 3}])
    rc = main(["evaluate", str(spec), "--out", str(tmp_path / "out")])
    assert_one_line_error(rc, capsys.readouterr().err, "unknown key 'epochs'", "models[0]")
    assert_one_line_error(main(["evaluate"]), capsys.readouterr().err, "give a spec")


# --------------------------------------------------------------------------- the metrics
def test_table_metrics_equal_a_hand_computation() -> None:
    rows = []
    # fold f1: hosts h1 (O, Ti), h2 (O); fold f2: host h3 (O, Sr)
    truth = {"a-O1": ("h1", "O", 5.0, "f1"), "a-Ti1": ("h1", "Ti", 9.0, "f1"), "b-O1": ("h2", "O", 4.0, "f1"),
             "c-O1": ("h3", "O", 3.0, "f2"), "c-Sr1": ("h3", "Sr", 7.0, "f2")}
    errors = {"gnn": {"a-O1": 1.0, "a-Ti1": 0.0, "b-O1": -0.5, "c-O1": 0.2, "c-Sr1": 0.2},
              "base": {"a-O1": 0.5, "a-Ti1": 0.5, "b-O1": 0.5, "c-O1": -1.0, "c-Sr1": 1.0},
              "weak": {"a-O1": 2.0, "a-Ti1": 2.0, "b-O1": 2.0, "c-O1": 2.0, "c-Sr1": 2.0}}
    for model, errs in errors.items():
        for vid, (host, element, dh, fold) in truth.items():
            rows.append({"model": model, "scheme": "family", "fold": fold, "id": vid, "host": host, "element": element,
                         "dH_eV": dh, "dH_pred_eV": dh + errs[vid]})
    frame = pd.DataFrame(rows)
    table = {r["model"]: r for r in ev.table_rows(frame, {"gnn": "expert", "base": "baseline", "weak": "baseline"},
                                                  {"base", "weak"}, ["family"])}
    g = table["gnn"]
    # fold MAEs: gnn f1 (1 + 0 + 0.5) / 3 = 0.5, f2 0.2; base f1 0.5, f2 1.0; weak 2, 2
    assert g["mae_mean"] == pytest.approx(0.35)
    assert g["mae_std"] == pytest.approx(np.std([0.5, 0.2], ddof=1))
    assert g["mae_pooled"] == pytest.approx(1.9 / 5)
    assert g["rmse_pooled"] == pytest.approx(np.sqrt((1 + 0 + 0.25 + 0.04 + 0.04) / 5))
    assert g["mae_O"] == pytest.approx((1 + 0.5 + 0.2) / 3)
    assert g["mae_metal"] == pytest.approx((0 + 0.2) / 2)
    # host offsets: h1 (1 + 0) / 2 = 0.5, h2 -0.5, h3 0.2 -> population std
    assert g["host_offset_std"] == pytest.approx(np.std([0.5, -0.5, 0.2]))
    assert table["base"]["host_offset_std"] == pytest.approx(np.std([0.5, 0.5, 0.0]))
    # best baseline = base (0.75 < 2.0); gnn beats it on f2 only (0.5 = 0.5 on f1 is a tie: no win)
    assert g["best_baseline"] == "base" and (g["folds_won"], g["folds_compared"]) == (1, 2)
    assert table["base"]["folds_won"] is None
    assert (table["weak"]["folds_won"], table["weak"]["folds_compared"]) == (0, 2)
    assert g["n_folds"] == 2 and g["n_predictions"] == 5


def test_markdown_puts_the_per_vacancy_folds_last() -> None:
    row = {"model": "m", "kind": "baseline", "n_folds": 2, "n_predictions": 4, "mae_mean": 0.5, "mae_std": 0.1,
           "mae_pooled": 0.5, "rmse_pooled": 0.6, "mae_O": 0.4, "mae_metal": 0.6, "host_offset_std": 0.3,
           "folds_won": None, "folds_compared": None, "best_baseline": "m"}
    text = ev.markdown_table([{**row, "scheme": "published"}, {**row, "scheme": "family"}], ["published", "family"])
    header = next(line for line in text.splitlines() if line.startswith("| model | family"))
    assert header.endswith("published (per vacancy, secondary) |")


# --------------------------------------------------------------------------- running units
def test_resume_recomputes_nothing_and_writes_the_files(tiny, tmp_path, monkeypatch) -> None:  # noqa: F811
    spec = ev.build_spec({"name": "tiny", "schemes": ["family"], "folds": 2,
                          "models": [tiny_expert(), {"name": "base", "kind": "baseline"}]})
    out = tmp_path / "eval"
    first = ev.evaluate(spec, out=out, data=tiny.root, progress=False)
    assert (first.ran, first.reused, first.failed) == (4, 0, [])
    for name in ("table.csv", "table.json", "table.md", "families.csv", "per_fold_mae.png", "spec.yaml"):
        assert (out / name).is_file(), name
    units = sorted((out / "runs").glob("*/family/*/unit.json"))
    assert len(units) == 4
    mtimes = [p.stat().st_mtime_ns for p in units]
    table = read_table(out)
    assert {(r["model"], r["scheme"]) for r in table} == {("scratch", "family"), ("base", "family")}
    with open(out / "families.csv", newline="") as handle:
        families = list(csv.DictReader(handle))
    assert len(families) == 5 and sum(int(r["n_vacancies"]) for r in families) == 13
    assert "5 structure families" in first.families

    def fail(*args, **kwargs):
        raise AssertionError("a finished unit was recomputed")

    monkeypatch.setattr(ev, "_run_expert", fail)
    monkeypatch.setattr(ev, "_run_baseline", fail)
    second = ev.evaluate(spec, out=out, data=tiny.root, resume=True, progress=False)
    assert (second.ran, second.reused, second.failed) == (0, 4, [])
    assert [p.stat().st_mtime_ns for p in units] == mtimes
    assert read_table(out) == table
    # without --resume the folder is refused; another spec of the same model name is refused on resume
    with pytest.raises(ConfigError, match="not empty"):
        ev.evaluate(spec, out=out, data=tiny.root, progress=False)
    changed = ev.build_spec({"name": "tiny", "schemes": ["family"], "folds": 2,
                             "models": [{"name": "base", "kind": "baseline", "loss": "squared_error"}]})
    with pytest.raises(ConfigError, match="another spec of model base"):
        ev.evaluate(changed, out=out, data=tiny.root, resume=True, progress=False)


def test_a_failed_unit_is_reported_and_resumed(tiny, tmp_path, monkeypatch) -> None:  # noqa: F811
    spec = ev.build_spec({"name": "tiny", "schemes": ["family"], "folds": 2,
                          "models": [{"name": "base", "kind": "baseline"}]})
    real = ev._run_baseline
    calls = []

    def flaky(model, fold, task, out):
        calls.append(fold.name)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return real(model, fold, task, out)

    monkeypatch.setattr(ev, "_run_baseline", flaky)
    out = tmp_path / "eval"
    first = ev.evaluate(spec, out=out, data=tiny.root, progress=False)
    assert first.ran == 1 and len(first.failed) == 1 and "out of memory" in first.failed[0][1]
    assert "out of memory" in (out / "errors.log").read_text()
    assert not list((out / "runs").glob("*/*/.tmp-*"))
    second = ev.evaluate(spec, out=out, data=tiny.root, resume=True, progress=False)
    assert (second.ran, second.reused, second.failed) == (1, 1, [])
    assert int(read_table(out)[0]["n_folds"]) == 2


@pytest.mark.slow  # ~25 s: two spawned processes import torch, pymatgen and scikit-learn
def test_two_workers_give_the_table_of_one(tiny, tmp_path) -> None:  # noqa: F811
    spec = ev.build_spec({"name": "tiny", "schemes": ["family", "loeo"], "folds": 2,
                          "models": [{"name": "base", "kind": "baseline"}]})
    one = ev.evaluate(spec, out=tmp_path / "one", data=tiny.root, workers=1, limit=2, progress=False)
    two = ev.evaluate(spec, out=tmp_path / "two", data=tiny.root, workers=2, limit=2, progress=False)
    assert one.failed == [] and two.failed == [] and one.ran == two.ran == 4
    assert (tmp_path / "one" / "table.csv").read_text() == (tmp_path / "two" / "table.csv").read_text()


# --------------------------------------------------------------------------- finished runs and the CLI
def test_cli_with_finished_runs_and_summaries(tiny, tmp_path, capsys) -> None:  # noqa: F811
    base_run = tmp_path / "baseline-family"
    assert main(["baseline", "--cv", "family", "--folds", "2", "--data", str(tiny.root), "--out", str(base_run)]) == 0
    summaries = tmp_path / "summaries"
    assert main(["report", str(base_run), "--write-summaries", str(summaries)]) == 0
    spec = write_spec(tmp_path / "spec.yaml", [{"name": "base", "kind": "baseline"}])
    out = tmp_path / "eval"
    rc = main(["evaluate", str(spec), "--data", str(tiny.root), "--out", str(out), "--threads", "1",
               "--run", f"old={base_run}", "--run", f"summary={summaries}#baseline-family"])
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "structure families" in err and "units: 2 run now" in err
    table = {r["model"]: r for r in read_table(out)}
    assert set(table) == {"base", "old", "summary"}
    # the same baseline on the same folds: the same numbers, whichever way it entered
    assert table["old"]["mae_mean"] == table["base"]["mae_mean"] == table["summary"]["mae_mean"]
    assert table["old"]["kind"] == "run" and "old" in json.loads((out / "table.json").read_text())["baselines"]
    source = json.loads(next((out / "runs" / "old" / "family").glob("*/unit.json")).read_text())["source"]
    assert source == str(base_run)
    # a run of a scheme that is not evaluated, and a bad --run, are one-line errors
    rc = main(["evaluate", "--run", f"old={base_run}", "--schemes", "loeo", "--data", str(tiny.root),
               "--out", str(tmp_path / "e2")])
    assert_one_line_error(rc, capsys.readouterr().err, "scheme family", "--schemes")
    rc = main(["evaluate", "--run", "noequals", "--data", str(tiny.root), "--out", str(tmp_path / "e3")])
    assert_one_line_error(rc, capsys.readouterr().err, "NAME=RUN_FOLDER")


def test_a_run_supplies_its_scheme_of_a_trained_model(tiny, tmp_path) -> None:  # noqa: F811
    base_run = tmp_path / "baseline-loeo"
    assert main(["baseline", "--cv", "loeo", "--elements", "Ba,Ce", "--data", str(tiny.root),
                 "--out", str(base_run)]) == 0
    spec = ev.build_spec({"name": "tiny", "schemes": ["family", "loeo", "group"], "folds": 2, "elements": ["Ba", "Ce"],
                          "models": [{"name": "base", "kind": "baseline", "schemes": ["family", "loeo"]},
                                     {"name": "base", "kind": "run", "path": str(base_run)}]})
    result = ev.evaluate(spec, out=tmp_path / "eval", data=tiny.root, progress=False)
    assert result.ran == 2  # the family folds only: loeo comes from the run, group is not among its schemes
    kinds = {(r["model"], r["scheme"]): r["kind"] for r in result.rows}
    assert kinds == {("base", "family"): "baseline", ("base", "loeo"): "run"}
