"""``adex experiment learning-curve`` / ``pooling`` and ``adex report`` on tiny data.

The tiny Witman copy of ``test_expert`` has one published split (``tiny``); the learning
curve reads ``<fraction>k<i>`` files, so this module writes ``0.50k0``/``1.00k0`` splits
of the tiny set, and trains width-8 models for one epoch.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from adex.cli import main
from adex.errors import ConfigError
from adex.studies.experiments import variant_overrides
from conftest import assert_one_line_error
from test_expert import TINY, reg, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.fixture(scope="module")
def curve_data(tiny, tmp_path_factory) -> Path:  # noqa: F811
    """The tiny data with published-style folds 0.50k0 (half the training ids) and 1.00k0."""
    root = tmp_path_factory.mktemp("curve") / "data"
    shutil.copytree(tiny.root, root)
    splits = root / "witman2023_vacancies" / "splits"
    rows = {r["id"]: r["dH_eV"] for r in tiny.rows}
    for name, train in (("0.50k0", tiny.train[:5]), ("1.00k0", tiny.train)):
        (splits / f"train_{name}.csv").write_text("".join(f"{i},{rows[i]}\n" for i in train))
        (splits / f"hold_{name}.csv").write_text("".join(f"{i},{rows[i]}\n" for i in tiny.hold))
    return root


def test_learning_curve_table_and_plot(curve_data, reg, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "lc"
    rc = main(["experiment", "learning-curve", "--data", str(curve_data), "--registry", str(reg.root), *TINY,
               "--advisors", "adv8", "--epochs", "1", "--fractions", "0.50,1.00", "--variants", "scratch,advised",
               "--seeds", "0,1", "--folds", "1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    runs = list(csv.DictReader(open(out / "learning_curve_runs.csv")))
    summary = list(csv.DictReader(open(out / "learning_curve.csv")))
    assert len(runs) == 2 * 2 * 2 and len(summary) == 4
    assert {(r["fraction"], r["variant"]) for r in summary} == {("0.50", "scratch"), ("0.50", "advised"),
                                                                ("1.00", "scratch"), ("1.00", "advised")}
    half = [r for r in summary if r["fraction"] == "0.50"]
    assert {int(r["n_train"]) for r in half} == {5}
    for r in summary:  # mean over the two seeds of the per-run CV MAE
        mine = [float(x["mae"]) for x in runs if x["fraction"] == r["fraction"] and x["variant"] == r["variant"]]
        assert float(r["mae_mean"]) == pytest.approx(sum(mine) / 2, rel=1e-5)
    # the scratch runs really had no advisors, the advised ones had adv8
    scratch_cfg = (out / "0.50_scratch_seed0" / "config.yaml").read_text()
    advised_cfg = (out / "0.50_advised_seed1" / "config.yaml").read_text()
    assert "advisors: []" in scratch_cfg and "adv8" in advised_cfg and "seed: 1" in advised_cfg
    assert (out / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    # the report turns it into Markdown with the figure linked relative to the report
    report = tmp_path / "reports" / "report.md"
    rc = main(["report", str(out), str(out / "1.00_advised_seed0"), "-o", str(report)])
    assert rc == 0
    text = report.read_text()
    assert "Learning curve" in text and "](../lc/learning_curve.png)" in text
    assert "Cross-validation" in text and "| fold |" in text


def test_merge_learning_curves(curve_data, reg, tmp_path, capsys) -> None:  # noqa: F811
    """Variants and seeds run separately merge into one table and figure; overlaps are refused."""
    common = ["experiment", "learning-curve", "--data", str(curve_data), "--registry", str(reg.root), *TINY,
              "--advisors", "adv8", "--epochs", "1", "--fractions", "0.50,1.00", "--folds", "1"]
    assert main([*common, "--variants", "scratch", "--seeds", "0", "--out", str(tmp_path / "a")]) == 0
    assert main([*common, "--variants", "scratch,advised", "--seeds", "1", "--out", str(tmp_path / "b")]) == 0
    rc = main(["experiment", "merge", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "m")])
    assert rc == 0, capsys.readouterr().err
    summary = list(csv.DictReader(open(tmp_path / "m" / "learning_curve.csv")))
    scratch = [r for r in summary if r["variant"] == "scratch"]
    assert len(summary) == 4 and {r["n_seeds"] for r in scratch} == {"2"}
    runs = list(csv.DictReader(open(tmp_path / "m" / "learning_curve_runs.csv")))
    mine = [float(r["mae"]) for r in runs if r["variant"] == "scratch" and r["fraction"] == "1.00"]
    assert float(next(r for r in scratch if r["fraction"] == "1.00")["mae_mean"]) == pytest.approx(sum(mine) / 2, rel=1e-5)
    assert (tmp_path / "m" / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
    rc = main(["experiment", "merge", str(tmp_path / "a"), str(tmp_path / "a"), "--out", str(tmp_path / "n")])
    assert_one_line_error(rc, capsys.readouterr().err, "seed 0")
    # a descriptor-baseline CV folder becomes one more line, its spread over folds
    base = tmp_path / "baseline"
    base.mkdir()
    (base / "metrics.json").write_text(json.dumps({"scheme": "published@0.50", "n_features": 248, "mae_mean": 0.5}))
    (base / "folds.csv").write_text("fold,n_train,n_test,mae,rmse,mae_O,mae_metal\n0.50k0,5,2,0.4,0.5,0.3,0.5\n"
                                    "0.50k1,5,2,0.6,0.7,0.5,0.7\n")
    rc = main(["experiment", "merge", str(tmp_path / "a"), "--baseline", str(base), "--out", str(tmp_path / "mb")])
    assert rc == 0, capsys.readouterr().err
    line = next(r for r in csv.DictReader(open(tmp_path / "mb" / "learning_curve.csv")) if r["variant"] == "descriptor baseline")
    assert line["fraction"] == "0.50" and float(line["mae_mean"]) == pytest.approx(0.5)
    assert float(line["mae_std"]) == pytest.approx(0.1414, abs=1e-3) and line["spread_over"] == "folds"


def test_pooling_comparison_on_the_same_folds(curve_data, reg, tmp_path, capsys) -> None:  # noqa: F811
    out = tmp_path / "pool"
    rc = main(["experiment", "pooling", "--data", str(curve_data), "--registry", str(reg.root), *TINY,
               "--advisors", "adv8", "--epochs", "1", "--poolings", "vacancy,mean", "--seeds", "0",
               "--cv", "kfold", "--folds", "2", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    summary = list(csv.DictReader(open(out / "pooling.csv")))
    assert [r["pooling"] for r in summary] == ["vacancy", "mean"]
    for pooling in ("vacancy", "mean"):
        ids = {r["id"] for r in csv.DictReader(open(out / f"{pooling}_seed0" / "predictions.csv"))}
        assert len(ids) == 13  # both on the same 2-fold partition of all 13 vacancies
    folds_a = [r["fold"] for r in csv.DictReader(open(out / "vacancy_seed0" / "folds.csv"))]
    assert folds_a == ["kfold0", "kfold1"]
    assert json.loads((out / "metrics.json").read_text())["experiment"] == "pooling"
    assert (out / "pooling.png").is_file()


def test_unknown_variant_and_pooling_are_errors(curve_data, reg, capsys) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="variant"):
        variant_overrides("half-frozen")
    rc = main(["experiment", "pooling", "--data", str(curve_data), "--poolings", "median", "--cv", "kfold", "--folds", "2"])
    assert_one_line_error(rc, capsys.readouterr().err, "median")


def test_report_of_a_folder_without_metrics_is_a_one_line_error(tmp_path, capsys) -> None:
    rc = main(["report", str(tmp_path), "-o", str(tmp_path / "r.md")])
    assert_one_line_error(rc, capsys.readouterr().err, "metrics.json")


def test_advisor_pooling_comparison(small_data, tmp_path, capsys) -> None:
    from conftest import TINY_OVERRIDES

    out = tmp_path / "adv_pool"
    rc = main(["experiment", "pooling", "--advisor", "bandgap", "--data", str(small_data), *TINY_OVERRIDES,
               "--epochs", "1", "--limit", "20", "--poolings", "mean,max", "--seeds", "0,1", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    runs = list(csv.DictReader(open(out / "pooling_runs.csv")))
    assert [(r["pooling"], r["seed"]) for r in runs] == [("mean", "0"), ("mean", "1"), ("max", "0"), ("max", "1")]
    assert "pooling: max" in (out / "max_seed1" / "config.yaml").read_text()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["experiment"] == "pooling-advisor" and metrics["unit"] == "eV"


def test_report_compares_models_on_shared_folds(tmp_path) -> None:
    """Runs evaluated on the same folds get one table: mean ± std over folds, the per-fold
    difference to the descriptor baseline and how many folds each model wins."""
    from adex.studies.report import comparison, write_report

    def cv_folder(path: Path, maes: dict[str, float], **extra) -> Path:
        path.mkdir(parents=True)
        with open(path / "folds.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["fold", "n_test", "mae"])
            writer.writerows([[f, 10, m] for f, m in maes.items()])
        values = list(maes.values())
        (path / "metrics.json").write_text(json.dumps({"mae_mean": sum(values) / len(values), "scheme": "published",
                                                       "n_folds": len(values), **extra}))
        return path

    base = cv_folder(tmp_path / "baseline", {"k0": 0.40, "k1": 0.30, "k2": 0.35}, n_features=248)
    gnn = cv_folder(tmp_path / "gnn", {"k0": 0.45, "k1": 0.25, "k2": 0.50})
    other = cv_folder(tmp_path / "other_folds", {"j0": 1.0, "j1": 2.0})
    experiment = tmp_path / "lc"
    cv_folder(experiment / "1.00_scratch_seed0", {"k0": 0.50, "k1": 0.40, "k2": 0.45})
    lines = comparison([gnn, base, other, experiment])  # the baseline is found by its metrics, not its place
    text = "\n".join(lines)
    assert "### Same 3 folds (k0, k1, k2)" in text and "j0" not in text  # a lone fold set gets no table
    rows = {line.split(" | ")[0].strip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert "+0.050 ± 0.100" in rows["gnn"] and "1 / 3" in rows["gnn"]  # diffs +0.05, -0.05, +0.15
    assert "+0.100 ± 0.000" in rows["lc/1.00_scratch_seed0"] and "0 / 3" in rows["lc/1.00_scratch_seed0"]
    assert [line.split(" | ")[0].strip("| ") for line in lines if line.startswith("| ") and "---" not in line][1:] == [
        "baseline", "gnn", "lc/1.00_scratch_seed0"]  # sorted by mean MAE (after the header row)
    (experiment / "metrics.json").write_text(json.dumps({"experiment": "learning-curve", "summary": []}))
    report = write_report([base, gnn, experiment], tmp_path / "r.md").read_text()
    assert "## Comparison on shared folds" in report and "| 0.400 |" in report  # CSV cells shown rounded


def _cv_run(path: Path, predictions: dict[tuple[str, str], tuple[float, float]], scheme: str = "published") -> Path:
    """A minimal CV folder: predictions.csv ((fold, id) -> (target, prediction)), folds.csv, metrics.json."""
    path.mkdir(parents=True)
    with open(path / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "id", "host", "element", "dH_eV", "dH_pred_eV"])
        for (fold, vid), (target, pred) in predictions.items():
            writer.writerow([fold, vid, vid.split("-")[0], "".join(c for c in vid.split("-")[1] if c.isalpha()), target, pred])
    with open(path / "folds.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "n_train", "n_test", "mae"])
        for fold in sorted({f for f, _ in predictions}):
            writer.writerow([fold, 7, sum(f == fold for f, _ in predictions), 0.0])
    (path / "metrics.json").write_text(json.dumps({"scheme": scheme, "mae_mean": 0.0}))
    return path


def test_blend_averages_held_out_predictions_fold_by_fold(tmp_path, capsys) -> None:
    """The blend's fold MAE is that of the weighted mean prediction; it shows up in the report
    and its shared-fold comparison; folds or targets that differ are refused."""
    truth = {("k0", "h1-O1"): 1.0, ("k0", "h1-Fe1"): 3.0, ("k1", "h2-O1"): 2.0, ("k1", "h2-Ti1"): 4.0}
    a = _cv_run(tmp_path / "gnn", {k: (t, t + 0.4) for k, t in truth.items()})           # always 0.4 too high
    b = _cv_run(tmp_path / "base", {k: (t, t - 0.2) for k, t in truth.items()})          # always 0.2 too low
    rc = main(["experiment", "blend", str(a), str(b), "--out", str(tmp_path / "blend")])
    assert rc == 0
    metrics = json.loads((tmp_path / "blend" / "metrics.json").read_text())
    assert metrics["mae_mean"] == pytest.approx(0.1)  # (0.4 - 0.2) / 2 on every vacancy
    assert metrics["parts_mae_mean"] == pytest.approx({"gnn": 0.4, "base": 0.2})
    assert metrics["scheme"] == "published" and metrics["blend"]["weights"] == [0.5, 0.5]
    assert metrics["calibration"]["mean_std"] == pytest.approx(0.3)  # the parts' spread: |0.4 - (-0.2)| / 2
    rows = list(csv.DictReader(open(tmp_path / "blend" / "predictions.csv")))
    assert len(rows) == 4 and float(rows[0]["dH_std_eV"]) == pytest.approx(0.3)
    assert [r["fold"] for r in csv.DictReader(open(tmp_path / "blend" / "folds.csv"))] == ["k0", "k1"]
    assert (tmp_path / "blend" / "cv.png").is_file()
    assert "blend (0.50, 0.50), 2 folds: MAE 0.100" in capsys.readouterr().err

    main(["experiment", "blend", str(a), str(b), "--weights", "1,2", "--out", str(tmp_path / "weighted")])
    metrics = json.loads((tmp_path / "weighted" / "metrics.json").read_text())
    assert metrics["mae_mean"] == pytest.approx(0.0, abs=1e-9)  # (0.4 - 2 * 0.2) / 3
    from adex.studies.report import write_report

    report = write_report([b, tmp_path / "weighted"], tmp_path / "r.md").read_text()
    assert "blend (weighted mean of held-out predictions) of gnn (0.33), base (0.67)" in report
    assert "### Same 2 folds" in report

    other = _cv_run(tmp_path / "other", {**{k: (t, t) for k, t in truth.items() if k[1] != "h2-Ti1"},
                                         ("k1", "h3-Ti1"): (4.0, 4.0)})
    wrong = _cv_run(tmp_path / "wrong", {k: (t + 1, t) for k, t in truth.items()})
    for argv, message in (([str(a), str(other)], "same folds and vacancies"), ([str(a), str(wrong)], "DFT targets"),
                          ([str(a)], "at least two"), ([str(a), str(b), "--weights", "1"], "1 weights for 2 runs"),
                          ([str(a), str(b), "--weights", "1,-1"], "non-negative"),
                          ([str(a), str(b), "--weights", "1,x"], "--weights: 'x' is not a number"),
                          ([str(a), str(tmp_path)], "not a cross-validation run folder")):
        rc = main(["experiment", "blend", *argv, "--out", str(tmp_path / "x")])
        assert_one_line_error(rc, capsys.readouterr().err, message)


@pytest.mark.parametrize("command", ["learning-curve", "pooling"])
def test_bad_seed_lists_are_one_line_errors(command, capsys) -> None:
    rc = main(["experiment", command, "--seeds", "0,a"])
    assert_one_line_error(rc, capsys.readouterr().err, "--seeds: 'a' is not an integer")


def _scored_cv_run(path: Path, errors: dict[tuple[str, str], float], config: str = "training: {seed: 0}\n") -> Path:
    """A CV folder as ``adex cv`` writes it, with folds.csv / metrics.json computed from the
    signed errors ((fold, id) -> prediction - target; targets 5.0)."""
    import numpy as np

    path.mkdir(parents=True)
    with open(path / "predictions.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "id", "host", "element", "dH_eV", "dH_pred_eV"])
        for (fold, vid), error in errors.items():
            writer.writerow([fold, vid, vid.split("-")[0], vid.split("-")[1].rstrip("0123456789"), 5.0, 5.0 + error])
    folds = sorted({f for f, _ in errors})
    maes = {f: float(np.mean([abs(e) for (g, _), e in errors.items() if g == f])) for f in folds}
    with open(path / "folds.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["fold", "n_train", "n_test", "mae", "rmse", "mae_O", "mae_metal"])
        for f in folds:
            writer.writerow([f, 8, sum(g == f for g, _ in errors), maes[f], maes[f], maes[f], maes[f]])
    values = list(maes.values())
    (path / "metrics.json").write_text(json.dumps({
        "scheme": "kfold", "n_folds": len(folds), "mae_mean": float(np.mean(values)),
        "mae_std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0, "rmse_mean": float(np.mean(values)),
        "mae_O": {"mean": 0.1, "n": len(folds)}, "mae_metal": {"mean": 0.2, "n": len(folds)},
        "pooled": {"mae": float(np.mean([abs(e) for e in errors.values()])), "n": len(errors)},
        "per_fold": {f: {"mae": maes[f]} for f in folds}, "unit": "eV"}))
    (path / "config.yaml").write_text(config)
    return path


@pytest.fixture()
def summarized(tmp_path, capsys) -> tuple[Path, Path]:
    """Run folders (two CVs, the halves of a third and their merge, a blend, a learning-curve
    experiment with one run inside) and their summaries, written by the CLI."""
    runs = tmp_path / "runs"
    ids = {"k0": ["h1-O1", "h1-Fe1"], "k1": ["h2-O1", "h2-Ti1"]}
    _scored_cv_run(runs / "gnn", {("k0", "h1-O1"): 0.2, ("k0", "h1-Fe1"): -0.4, ("k1", "h2-O1"): 0.1, ("k1", "h2-Ti1"): 0.3})
    base = {("k0", "h1-O1"): -0.3, ("k0", "h1-Fe1"): 0.1, ("k1", "h2-O1"): 0.2, ("k1", "h2-Ti1"): -0.2}
    _scored_cv_run(runs / "base", base)
    (runs / "base" / "config.yaml").write_text("command: baseline\nadvisors: []\n")
    metrics = json.loads((runs / "base" / "metrics.json").read_text())
    (runs / "base" / "metrics.json").write_text(json.dumps({**metrics, "n_features": 248}))
    for half, fold in (("a", "k0"), ("b", "k1")):
        _scored_cv_run(runs / f"split_{half}", {(fold, i): 0.5 for i in ids[fold]})
    assert main(["experiment", "merge", str(runs / "split_a"), str(runs / "split_b"), "--out", str(runs / "split")]) == 0
    assert main(["experiment", "blend", str(runs / "gnn"), str(runs / "base"), "--out", str(runs / "blend")]) == 0
    _scored_cv_run(runs / "lc" / "1.00_scratch_seed0", {("k0", i): 1.0 for i in ids["k0"]})
    (runs / "lc" / "metrics.json").write_text(json.dumps({"experiment": "learning-curve", "summary": [
        {"fraction": "1.00", "n_train": 8, "variant": "scratch", "mae_mean": 1.0, "mae_std": 0.0, "n_seeds": 1}]}))
    out = tmp_path / "summaries"
    rc = main(["report", *(str(p) for p in sorted(runs.iterdir())), "--write-summaries", str(out)])
    assert rc == 0, capsys.readouterr().err
    return runs, out


def test_summaries_keep_every_experiment_in_a_few_files(summarized) -> None:
    """One row per experiment (the runs inside an experiment folder too), one per fold, the
    held-out predictions once (the merged run holds its halves'), the config of each."""
    import gzip

    from adex.studies.report import SUMMARY_FILES, Summaries

    runs, out = summarized
    assert sorted(p.name for p in out.iterdir()) == sorted(SUMMARY_FILES.values())
    rows = {r["experiment"]: r for r in csv.DictReader(open(out / "experiments.csv"))}
    assert set(rows) == {"base", "blend", "gnn", "lc", "lc/1.00_scratch_seed0", "split", "split_a", "split_b"}
    assert {n: rows[n]["kind"] for n in ("base", "blend", "gnn", "lc", "split")} == {
        "base": "baseline", "blend": "blend", "gnn": "cv", "lc": "learning-curve", "split": "merge"}
    assert float(rows["gnn"]["mae_mean"]) == json.loads((runs / "gnn" / "metrics.json").read_text())["mae_mean"]
    assert rows["blend"]["parts"] == "gnn;base" and rows["split"]["parts"] == "split_a;split_b"
    assert rows["split_a"]["predictions_in"] == "split" and rows["gnn"]["predictions_in"] == "gnn"
    with gzip.open(out / "heldout_predictions.csv.gz", "rt") as handle:
        predictions = list(csv.DictReader(handle))
    per_experiment = {n: sum(p["experiment"] == n for p in predictions) for n in rows}
    assert per_experiment == {"base": 4, "blend": 4, "gnn": 4, "lc": 0, "lc/1.00_scratch_seed0": 2, "split": 4,
                              "split_a": 0, "split_b": 0}
    assert {p["dH_std_eV"] != "" for p in predictions if p["experiment"] == "blend"} == {True}  # the blend's spread
    folds = list(csv.DictReader(open(out / "folds.csv")))
    assert [(r["fold"], r["mae"]) for r in folds if r["experiment"] == "gnn"] == [
        (r["fold"], r["mae"]) for r in csv.DictReader(open(runs / "gnn" / "folds.csv"))]  # copied as written
    details = json.loads((out / "experiments.json").read_text())
    assert details["gnn"]["config"] == {"training": {"seed": 0}} and "per_fold" not in details["gnn"]["metrics"]
    summaries = Summaries(out)
    half = summaries.predictions("split_a")  # a half's rows, read from the merged run
    assert sorted(half["id"]) == ["h1-Fe1", "h1-O1"] and set(half["experiment"]) == {"split_a"}
    assert len(summaries.predictions("gnn")) == 4


def test_report_from_summaries_fills_template_blocks(summarized, tmp_path, capsys) -> None:
    """Placeholders in <!-- adex:table --> blocks become the summaries' numbers; text outside
    the blocks stays, and rendering the result again changes nothing."""
    _, out = summarized
    template = tmp_path / "results.md"
    template.write_text(
        "# Results\n\nHand-written text; an inline `<!-- adex:table -->` is not a block.\n\n"
        "<!-- adex:table\n"
        "| model | MAE | O / metal | fold k1 | won vs base | pooled | n_test |\n"
        "| gnn | {{mae:gnn}} | {{o_metal:gnn}} | {{fold:gnn:k1}} | {{won_of:gnn:base}} | {{pooled:gnn}} | {{n_test:gnn}} |\n"
        "| blend | **{{mae_mean:blend:4}}** | – | – | {{won:blend:gnn}} | – | – |\n"
        "-->\nstale table\n<!-- /adex:table -->\n\nMore text.\n\n<!-- adex:experiments -->\n<!-- /adex:experiments -->\n")
    rc = main(["report", "--from-summaries", str(out), "--template", str(template), "-o", str(template)])
    assert rc == 0, capsys.readouterr().err
    text = template.read_text()
    # gnn: fold MAEs 0.3 (k0) and 0.2 (k1); base: 0.2 and 0.2
    assert "| gnn | 0.250 ± 0.071 | 0.100 / 0.200 | 0.200 | 0 / 2 | 0.250 | 2 |" in text
    assert "| blend | **" in text and "stale table" not in text
    assert text.startswith("# Results\n\nHand-written text; an inline `<!-- adex:table -->` is not a block.")
    assert "More text." in text and "#### `kfold`: 2 folds (k0, k1)" in text and "| `split` |" in text
    again = tmp_path / "again.md"
    assert main(["report", "--from-summaries", str(out), "--template", str(template), "-o", str(again)]) == 0
    assert again.read_text() == text
    # without a template: the comparison on shared folds and every experiment
    assert main(["report", "--from-summaries", str(out), "-o", str(tmp_path / "all.md")]) == 0
    report = (tmp_path / "all.md").read_text()
    assert "## Comparison on shared folds" in report and "#### `lc`: learning curve" in report


@pytest.mark.parametrize("block, message", [
    ("<!-- adex:table\n| a |\n| {{mae:nope}} |\n-->\n<!-- /adex:table -->\n", "unknown experiment 'nope'"),
    ("<!-- adex:table\n| a |\n| {{median:gnn}} |\n-->\n<!-- /adex:table -->\n", "unknown placeholder"),
    ("<!-- adex:table\n| a |\n| {{mae:gnn}} |\n-->\nno end marker\n", "without their end marker"),
])
def test_bad_templates_are_one_line_errors(summarized, tmp_path, capsys, block, message) -> None:
    _, out = summarized
    template = tmp_path / "t.md"
    template.write_text(block)
    capsys.readouterr()
    rc = main(["report", "--from-summaries", str(out), "--template", str(template), "-o", str(tmp_path / "o.md")])
    assert_one_line_error(rc, capsys.readouterr().err, message)


def test_report_options_that_do_not_go_together_are_errors(tmp_path, capsys) -> None:
    for argv, message in (([str(tmp_path), "--from-summaries", str(tmp_path), "-o", "x.md"], "no run folders"),
                          (["--from-summaries", str(tmp_path)], "-o/--output"),
                          ([str(tmp_path), "--template", "t.md", "-o", "x.md"], "--template goes with --from-summaries"),
                          ([str(tmp_path)], "--write-summaries"), (["-o", "x.md"], "give run folders"),
                          (["--from-summaries", str(tmp_path), "-o", str(tmp_path / "x.md")], "no experiments.csv")):
        rc = main(["report", *argv])
        assert_one_line_error(rc, capsys.readouterr().err, message)


def test_committed_results_are_generated_from_the_committed_summaries() -> None:
    """docs/results.md and the README's results table are what `adex report --from-summaries
    benchmarks/results/experiments --template FILE` makes of them: regenerating gives the same
    numbers. The summaries replace the run folders, under 100 files and 5 MB in all."""
    import subprocess

    from adex.studies.report import Summaries, render_template
    from conftest import REPO_ROOT

    summaries = Summaries(REPO_ROOT / "benchmarks" / "results" / "experiments")
    for name in ("docs/results.md", "README.md"):
        text = (REPO_ROOT / name).read_text()
        assert "<!-- adex:table" in text and render_template(text, summaries) == text, f"{name} is stale"
    listed = subprocess.run(["git", "ls-files", "-z", "benchmarks/results"], cwd=REPO_ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    files = [REPO_ROOT / f for f in listed.stdout.decode().split("\0") if f]
    assert len(files) < 100 and sum(f.stat().st_size for f in files if f.is_file()) < 5e6
