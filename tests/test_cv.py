"""Cross-validation folds (``adex.studies.splits``) and ``adex cv``: folds partition the
vacancies, grouped schemes never put a host on both sides, leave-element-out tests every
host containing the element, and the CV command writes per-fold and pooled numbers that
agree with its predictions.

Runs on the 13-vacancy tiny Witman copy of ``test_expert`` (hosts BaO, SrTiO3, SrFeO2,
FeO, Ce2O3) with width-8 models and one epoch.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from adex.cli import main
from adex.errors import ConfigError
from adex.studies.splits import make_folds, parse_scheme, vacancy_table
from conftest import assert_one_line_error, shared_data_path
from test_expert import TINY, reg, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("shared_cache")


def witman(tiny) -> Path:  # noqa: F811
    return tiny.root / "witman2023_vacancies"


def host(vid: str) -> str:
    return vid.rsplit("-", 1)[0]


@pytest.mark.parametrize("scheme", ["kfold", "group"])
def test_kfold_schemes_partition_the_vacancies(tiny, scheme) -> None:  # noqa: F811
    folds = make_folds(witman(tiny), scheme, n_folds=3, seed=1)
    assert len(folds) == 3
    tests = [vid for f in folds for vid in f.test]
    assert sorted(tests) == sorted(tiny.ids)  # every vacancy tested exactly once
    for f in folds:
        assert not set(f.train) & set(f.test) and len(f.train) + len(f.test) == 13
        if scheme == "group":
            assert not {host(v) for v in f.train} & {host(v) for v in f.test}


def test_leave_one_element_out_tests_every_host_with_the_element(tiny) -> None:  # noqa: F811
    table = vacancy_table(witman(tiny))
    assert table.host_elements["0010541"] == frozenset({"Sr", "Ti", "O"})
    folds = {f.name: f for f in make_folds(witman(tiny), "loeo")}
    assert set(folds) == {"no-Ba", "no-Sr", "no-Ti", "no-Fe", "no-Ce"}  # O is in every host
    sr = folds["no-Sr"]
    assert {host(v) for v in sr.test} == {"0010541", "0160074"}  # SrTiO3 and SrFeO2
    assert not {host(v) for v in sr.train} & {"0010541", "0160074"}
    pairs = make_folds(witman(tiny), "l2eo", elements=["Ba", "Ce"])
    assert [f.name for f in pairs] == ["no-BaCe"]
    assert {host(v) for v in pairs[0].test} == {"0009594", "0289862"}


def test_published_folds_are_the_files(tmp_path) -> None:
    src = shared_data_path() / "witman2023_vacancies"
    if not (src / "splits" / "train_1.00k0_struct.csv").is_file():
        pytest.skip(f"shared data not found at {src}; set ADEX_DATA")
    folds = make_folds(src, "published", n_folds=2, per_compound=True)
    assert [f.name for f in folds] == ["1.00k0_struct", "1.00k1_struct"]
    assert len(folds[0].test) == 195 and len(folds[0].train) + len(folds[0].test) == 1481
    assert not {host(v) for v in folds[0].train} & {host(v) for v in folds[0].test}
    assert [f.name for f in make_folds(src, "published", n_folds=1, fraction="0.10")] == ["1.00k0".replace("1.00", "0.10")]


def test_bad_schemes_and_elements_are_errors(tiny) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="scheme"):
        parse_scheme("leave-none-out")
    with pytest.raises(ConfigError, match="fraction"):
        parse_scheme("kfold@0.10")
    assert parse_scheme("published_struct@0.40") == {"scheme": "published", "per_compound": True, "fraction": "0.40"}
    with pytest.raises(ConfigError, match="Xe"):
        make_folds(witman(tiny), "loeo", elements=["Xe"])


def test_cv_command_writes_consistent_fold_and_pooled_numbers(tiny, reg, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "cv"
    rc = main(["cv", "--cv", "group", "--folds", "3", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
               "--advisors", "adv8", "--epochs", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    folds = list(csv.DictReader(open(out / "folds.csv")))
    predictions = list(csv.DictReader(open(out / "predictions.csv")))
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(folds) == 3 and metrics["n_folds"] == 3 and metrics["scheme"] == "group"
    assert sorted(p["id"] for p in predictions) == sorted(tiny.ids)
    for row in folds:
        mine = [p for p in predictions if p["fold"] == row["fold"]]
        err = [abs(float(p["dH_pred_eV"]) - float(p["dH_eV"])) for p in mine]
        assert float(row["mae"]) == pytest.approx(np.mean(err), abs=1e-4)
        assert (out / row["fold"] / "metrics.json").is_file()  # each fold's run folder is kept
    assert metrics["mae_mean"] == pytest.approx(np.mean([float(r["mae"]) for r in folds]), abs=1e-4)  # folds.csv holds rounded values
    assert (out / "cv.png").read_bytes()[:4] == b"\x89PNG" and (out / "config.yaml").is_file()
    assert "MAE" in capsys.readouterr().err  # the console writes to stderr; stdout stays for data


def test_cv_fold_subsets_merge_into_the_full_cv(tiny, reg, tmp_path, capsys) -> None:  # noqa: F811
    """`adex cv --fold` subsets run apart and merged (`adex experiment merge`) give the full CV's
    numbers; a repeated fold or another config is refused."""
    common = ["cv", "--cv", "group", "--folds", "3", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
              "--advisors", "adv8", "--epochs", "1"]
    assert main([*common, "--out", str(tmp_path / "full")]) == 0
    names = [r["fold"] for r in csv.DictReader(open(tmp_path / "full" / "folds.csv"))]
    assert main([*common, "--fold", names[0], "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--fold", names[1], "--fold", names[2], "--out", str(tmp_path / "b")]) == 0
    rc = main(["experiment", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
    assert rc == 0, capsys.readouterr().err
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    merged = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert merged["n_folds"] == 3 and merged["scheme"] == "group" and len(merged["merged_from"]) == 2
    assert merged["mae_mean"] == pytest.approx(full["mae_mean"], abs=1e-4)
    assert merged["pooled"]["mae"] == pytest.approx(full["pooled"]["mae"], abs=1e-4)
    assert (tmp_path / "m" / "config.yaml").read_text() == (tmp_path / "full" / "config.yaml").read_text()
    assert len(list(csv.DictReader(open(tmp_path / "m" / "predictions.csv")))) == len(tiny.ids)
    capsys.readouterr()
    rc = main(["experiment", "merge", str(tmp_path / "a"), str(tmp_path / "full"), "--out", str(tmp_path / "x")])
    assert_one_line_error(rc, capsys.readouterr().err, names[0], "in both")
    assert main([*common[:-1], "2", "--fold", names[1], "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    rc = main(["experiment", "merge", str(tmp_path / "a"), str(tmp_path / "c"), "--out", str(tmp_path / "y")])
    assert_one_line_error(rc, capsys.readouterr().err, "config.yaml differs")


def test_cv_with_an_unknown_fold_is_a_one_line_error(tiny, reg, capsys) -> None:  # noqa: F811
    rc = main(["cv", "--cv", "loeo", "--fold", "no-Xx", "--data", str(tiny.root), "--registry", str(reg.root)])
    assert_one_line_error(rc, capsys.readouterr().err, "no-Xx")


def test_an_interrupted_cv_resumes_without_retraining_finished_folds(tiny, reg, tmp_path, capsys,  # noqa: F811
                                                                     monkeypatch) -> None:
    """`adex cv --resume` reads back the folds that finished (their metrics.json and
    test_predictions.csv) and trains only the rest; the result equals the uninterrupted run's.
    Resuming with another config is refused."""
    import adex.expert.train as train_module

    common = ["cv", "--cv", "group", "--folds", "3", "--data", str(tiny.root), "--registry", str(reg.root), *TINY,
              "--advisors", "adv8", "--epochs", "1"]
    out = tmp_path / "cv"
    assert main([*common, "--out", str(out)]) == 0
    full = json.loads((out / "metrics.json").read_text())
    names = [r["fold"] for r in csv.DictReader(open(out / "folds.csv"))]
    # the interruption: the last fold had only begun, the CV summary was never written
    for path in (out / names[-1]).iterdir():
        if path.name != "config.yaml":
            path.unlink()
    for name in ("metrics.json", "folds.csv", "predictions.csv"):
        (out / name).unlink()
    trained = []
    original = train_module.train_expert

    def counting(config, **kwargs):
        trained.append(kwargs["fold"].name)
        return original(config, **kwargs)

    monkeypatch.setattr(train_module, "train_expert", counting)
    capsys.readouterr()
    assert main([*common, "--out", str(out), "--resume"]) == 0, capsys.readouterr().err
    assert trained == [names[-1]]  # the finished folds were read back
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["n_folds"] == 3
    assert resumed["mae_mean"] == pytest.approx(full["mae_mean"], abs=1e-4)  # seeded: the retrained fold is the same
    assert resumed["pooled"]["mae"] == pytest.approx(full["pooled"]["mae"], abs=1e-4)
    assert sorted(p["id"] for p in csv.DictReader(open(out / "predictions.csv"))) == sorted(tiny.ids)
    capsys.readouterr()
    rc = main([*common[:-1], "2", "--out", str(out), "--resume"])
    assert_one_line_error(rc, capsys.readouterr().err, "another config")
    rc = main([*common, "--resume"])
    assert_one_line_error(rc, capsys.readouterr().err, "resume needs the output folder of the interrupted run (--out)")
    # a finished fold folder of another fold under this fold's name is refused
    (out / names[0]).rename(out / "moved")
    (out / names[1]).rename(out / names[0])
    (out / "moved").rename(out / names[1])
    rc = main([*common, "--out", str(out), "--resume"])
    assert_one_line_error(rc, capsys.readouterr().err, "other vacancies", names[0])
