"""Trust on new hosts (issue 26): conformal intervals, the applicability domain, the
host-offset correction from a few DFT numbers, and the trust record travelling with a
registered expert. Seconds: no training (the expert used is the shipped
``builtin::expert/vacancy:4``, whose advisors need no optional package)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from pymatgen.core import Lattice, Structure

from adex.errors import ConfigError
from adex.expert.calibration import (ErrorScale, IntervalCalibration, conformal_quantile, coverage_report,
                                     cross_conformal, fit_intervals)
from adex.expert.correction import OffsetPrior, correct, vacancy_class
from adex.expert.domain import DomainInputs, DomainModel, calibrate, held_out_domain, species_name
from conftest import REPO_ROOT, SHIPPED_STORE

EXPERT = "builtin::expert/vacancy:4"  # bandgap + eform advisors, no optional package
HELDOUT = REPO_ROOT / "benchmarks" / "results" / "experiments" / "heldout_predictions.csv.gz"


@pytest.fixture(autouse=True)
def _shipped_store(monkeypatch) -> None:
    monkeypatch.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))


def perovskite(a: str = "Sr", b: str = "Ti", lattice: float = 3.905) -> Structure:
    return Structure(Lattice.cubic(lattice), [a, b, "O", "O", "O"],
                     [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def heteroscedastic(n: int = 3000, seed: int = 0):
    """Residuals whose scale grows with the class and the domain distance, in 10 folds."""
    rng = np.random.default_rng(seed)
    metal = rng.random(n) < 0.45
    domain = rng.lognormal(0.0, 0.5, n)
    scale = 0.3 * np.where(metal, 2.0, 1.0) * domain ** 0.8
    return np.abs(rng.normal(0.0, scale)), metal, domain, np.repeat(np.arange(10), n // 10)


# ---------------------------------------------------------------------- intervals
def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    scores = np.arange(1, 20, dtype=float)  # 19 scores: rank ceil(20 * 0.9) = 18
    assert conformal_quantile(scores, 0.9) == 18.0
    assert conformal_quantile(scores[:8], 0.9) == math.inf  # 8 scores cannot promise 90 %
    with pytest.raises(ConfigError):
        conformal_quantile(scores, 1.0)


def test_cross_conformal_covers_and_widens_where_errors_are_larger() -> None:
    err, metal, domain, folds = heteroscedastic()
    half = cross_conformal(err, metal, domain, folds, nominal=0.9)
    report = coverage_report(err, half, folds)
    assert 0.88 <= report["pooled"] <= 0.92 and report["min_fold"] >= 0.84
    assert report["spearman_abs_error_width"] > 0.3
    assert np.median(half[metal]) > 1.5 * np.median(half[~metal])
    far = domain > np.quantile(domain, 0.9)
    assert np.median(half[far]) > 1.5 * np.median(half)
    for nominal in (0.5, 0.8):
        assert abs((err <= cross_conformal(err, metal, domain, folds, nominal=nominal)).mean() - nominal) < 0.03


def test_interval_record_round_trips_through_json() -> None:
    err, metal, domain, _ = heteroscedastic(600)
    novel = np.zeros(len(err), bool)
    novel[:30] = True
    model = fit_intervals(err * np.where(novel, 3.0, 1.0), metal, domain, novel)
    record = json.loads(json.dumps(model.to_dict(), allow_nan=False))
    again = IntervalCalibration.from_dict(record)
    probe = (np.array([0, 1, 1]), np.array([0.5, 1.0, 4.0]), np.array([False, False, True]))
    np.testing.assert_allclose(again.half_width(*probe), model.half_width(*probe))
    assert model.novel_quantile >= model.quantiles[-1]  # novel hosts: at least the farthest bin
    assert record["nominal_coverage"] == 0.9 and len(record["domain_bins"]["quantiles"]) == 3
    with pytest.raises(ConfigError, match="too few calibration residuals"):
        fit_intervals(err[:20], metal[:20], domain[:20], n_bins=3)
    assert isinstance(ErrorScale.fit(err, metal, domain)(np.array([1]), np.array([1.0]))[0], float)


# ---------------------------------------------------------------------- domain
def _inputs(embedding, elements, hosts, species) -> DomainInputs:
    return DomainInputs(np.asarray(embedding, np.float32), np.asarray(elements), np.asarray(hosts), species)


def test_domain_distance_novelty_and_storage() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(60, 8))
    hosts = np.repeat([f"h{k}" for k in range(20)], 3)
    species = {f"h{k}": ("O-2", "Sr+2", "Ti+4") for k in range(20)}
    training = _inputs(emb, ["O", "Sr", "Ti"] * 20, hosts, species)
    model = DomainModel.fit(training, k=3)
    raw, novel = held_out_domain(training, np.repeat(np.arange(5), 12), k=3)
    assert not novel.any()
    calibrate(model, raw, 0.8)
    assert model.unit == pytest.approx(np.median(raw)) and model.threshold > 1.0
    query = _inputs(np.vstack([emb[:1], emb[:1] + 25.0, emb[:1], emb[:1]]), ["O", "O", "O", "O"], ["a", "b", "c", "d"],
                    {"a": ("O-2", "Sr+2", "Ti+4"), "b": ("O-2", "Sr+2", "Ti+4"), "c": ("O-2", "Pu+4", "Sr+2"),
                     "d": ("O-2", "Sr+2", "Ti+3")})
    result = model.assess(query)
    assert result.domain[1] > 5 * result.domain[0]
    assert result.in_domain.tolist() == [True, False, False, False]
    assert result.novel.tolist() == [False, False, True, True]
    assert "element Pu absent from training" in result.reasons[2] and "oxidation state Ti+3" in result.reasons[3]
    assert "far from the training sites" in result.reasons[1]
    again = DomainModel.from_record(json.loads(json.dumps(model.record())), model.arrays())
    np.testing.assert_allclose(again.distance(query.embedding), model.distance(query.embedding))
    assert species_name("Fe", float("nan")) == "Fe?" and species_name("Mn", 7.0) == "Mn+7"


# ---------------------------------------------------------------------- correction
PRIOR = OffsetPrior(np.array([[0.36, 0.2], [0.2, 0.57]]), np.array([0.44, 1.35]))


def test_no_labels_no_correction_and_the_one_class_shrinkage_formula() -> None:
    none = correct(PRIOR, [], [], [], ["h", "h", "g"], [0, 1, 0])
    assert np.all(none.offset == 0.0) and np.all(none.n_known == 0)
    for k in (1, 2, 3):
        r = np.array([0.9, 0.3, 0.6][:k])
        fix = correct(PRIOR, ["h"] * k, [0] * k, r, ["h", "g"], [0, 0])
        tau2, sigma2 = 0.36, 0.44 - 0.36
        assert fix.offset[0] == pytest.approx(tau2 / (tau2 + sigma2 / k) * r.mean())
        assert fix.offset[1] == 0.0  # another host is not corrected without a per-dataset offset
        assert fix.offset[0] == pytest.approx(PRIOR.shrinkage(k, 0) * r.mean())
    metal = correct(PRIOR, ["h"], [0], [1.0], ["h"], [1])
    assert metal.offset[0] == pytest.approx(0.2 / 0.44)  # an O label moves the metal vacancies by the covariance
    assert vacancy_class(["O", "Mn", "O"]).tolist() == [0, 1, 0]


def test_prior_estimated_from_residuals_recovers_the_generating_model() -> None:
    rng = np.random.default_rng(1)
    cov, var = np.array([[0.3, 0.15], [0.15, 0.5]]), np.array([0.4, 0.9])
    residuals, hosts, classes = [], [], []
    for h in range(3000):
        offset = rng.multivariate_normal([0, 0], cov)
        c = rng.integers(0, 2, 4)
        residuals += list(offset[c] + rng.normal(0, np.sqrt(var[c] - np.diag(cov)[c])))
        hosts += [h] * 4
        classes += list(c)
    prior = OffsetPrior.fit(np.array(residuals), np.array(hosts), np.array(classes))
    np.testing.assert_allclose(prior.cov, cov, atol=0.04)
    np.testing.assert_allclose(prior.var, var, atol=0.04)


def test_shift_of_a_few_held_out_hosts_is_recovered_from_two_labels_each(data_dir: Path) -> None:
    """+0.7 eV on every dH of five held-out hosts (per-compound fold 0 of the shipped
    recipe's CV), two labels each: the corrected predictions move by 0.7 +- 0.15 eV."""
    import pandas as pd

    from adex.expert.trust import heldout_residuals

    table = heldout_residuals(HELDOUT, "chgnet_augment_struct", data_dir)
    fold = "1.00k0_struct"
    train, test = table[table["fold"] != fold], table[table["fold"] == fold]
    prior = OffsetPrior.fit(train["residual"].to_numpy(), train["host"].to_numpy(), vacancy_class(train["element"]))
    hosts = [h for h, rows in test.groupby("host") if len(rows) >= 4][:5]
    assert len(hosts) == 5
    rng = np.random.default_rng(0)
    for _ in range(5):
        labels, targets = [], []
        for host in hosts:
            rows = test[test["host"] == host].iloc[rng.permutation((test["host"] == host).sum())]
            labels.append(rows.iloc[:2])
            targets.append(rows.iloc[2:])
        L, T = pd.concat(labels), pd.concat(targets)
        args = (L["host"].to_numpy(), vacancy_class(L["element"]))
        shifted = correct(prior, *args, L["residual"].to_numpy() + 0.7, T["host"].to_numpy(), vacancy_class(T["element"]),
                          dataset_offset=True)
        plain = correct(prior, *args, L["residual"].to_numpy(), T["host"].to_numpy(), vacancy_class(T["element"]),
                        dataset_offset=True)
        moved = shifted.offset - plain.offset  # what the +0.7 eV did to the corrected predictions
        assert abs(moved.mean() - 0.7) <= 0.15
        for host in hosts:
            assert abs(moved[T["host"].to_numpy() == host].mean() - 0.7) <= 0.15
        # the corrected predictions of the shifted hosts are not worse than the uncorrected ones of the unshifted
        assert np.abs(T["residual"].to_numpy() + 0.7 - shifted.offset).mean() <= np.abs(T["residual"]).mean() + 0.15


# ---------------------------------------------------------------------- with an expert
@pytest.fixture(scope="module")
def trusted(tmp_path_factory):
    """builtin::expert/vacancy:4 registered again with a small trust model (reference: 6
    perovskite hosts; synthetic calibration residuals), loaded through the public API."""
    import adex
    from adex.expert.domain import domain_inputs
    from adex.expert.loading import load_expert
    from adex.expert.predict import featurize_host_sites
    from adex.expert.trust import TrustModel, register_trusted
    from adex.registry import Registry

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ADEX_BUILTIN_REGISTRY", str(SHIPPED_STORE))
        patch.setenv("ADEX_HOME", str(tmp_path_factory.mktemp("trust_home")))
        registry = Registry()
        loaded = load_expert(EXPERT, registry)
        parts, folds = [], []
        for k, (a, b, lattice) in enumerate([("Sr", "Ti", 3.905), ("Ba", "Ti", 4.0), ("Ca", "Ti", 3.84), ("Sr", "Mn", 3.80),
                                             ("Ba", "Mn", 3.9), ("Ca", "Mn", 3.73)]):
            packed = featurize_host_sites(loaded, perovskite(a, b, lattice), [0, 1, 2], f"{a}{b}O3")
            parts.append(domain_inputs(loaded, packed))
            folds += [k] * 3
        reference = DomainInputs.concatenate(parts)
        advisors = [{"ref": e.ref, "weights_sha256": s.weights_sha256} for (e, _), s in zip(loaded.advisors, loaded.model.advisors)]
        domain = calibrate(DomainModel.fit(reference, k=3, advisors=advisors), held_out_domain(reference, np.array(folds), k=3)[0], 0.8)
        err, metal, dom, _ = heteroscedastic(400)
        trust = TrustModel(fit_intervals(err, metal, dom), domain, PRIOR, EXPERT)
        entry = register_trusted(EXPERT, registry, trust, name="trusted")
        expert = adex.load_expert(entry.ref)
        yield expert, entry, trust, registry, patch


def test_the_trust_record_travels_with_the_registered_version(trusted) -> None:
    from adex.expert.trust import ARRAYS_FILE, load_trust

    expert, entry, trust, registry, _ = trusted
    assert entry.parents[0] == EXPERT and "trust" in entry.card and ARRAYS_FILE in entry.files
    record = entry.card["trust"]
    assert record["intervals"]["nominal_coverage"] == 0.9 and record["domain"]["threshold_quantile"] == 0.8
    assert record["expert"] == EXPERT and entry.card["metrics"] == registry.resolve(EXPERT).card["metrics"]
    loaded_back = load_trust(entry)
    np.testing.assert_allclose(loaded_back.domain.reference, trust.domain.reference)
    assert expert.trust is not None and load_trust(registry.resolve(EXPERT)) is None


def test_predict_adds_interval_and_domain_and_keeps_the_prediction(trusted, tmp_path) -> None:
    import adex

    expert, *_ = trusted
    rows = expert.predict(perovskite(), sites=[0, 1, 2])
    assert list(rows.columns)[-4:] == ["dH_lo_eV", "dH_hi_eV", "domain", "in_domain"]
    assert (rows["dH_lo_eV"] < rows["dH_pred_eV"]).all() and (rows["dH_pred_eV"] < rows["dH_hi_eV"]).all()
    assert rows["in_domain"].all()
    plain = adex.load_expert(EXPERT).predict(perovskite(), sites=[0, 1, 2])
    np.testing.assert_allclose(rows["dH_pred_eV"], plain["dH_pred_eV"], atol=1e-6)
    np.testing.assert_allclose(expert.predict(perovskite(), sites=[0, 1, 2], known={})["dH_pred_eV"], plain["dH_pred_eV"],
                               atol=1e-6)  # no labels: unchanged
    trust_dir = expert.trust.save(tmp_path / "trust")
    again = adex.load_expert(EXPERT, trust=trust_dir).predict(perovskite(), sites=[0, 1, 2])
    np.testing.assert_allclose(again["dH_hi_eV"], rows["dH_hi_eV"], atol=1e-6)


def test_known_labels_shift_the_host(trusted, tmp_path) -> None:
    expert, *_ = trusted
    base = expert.predict(perovskite(), sites=[0, 1, 2])
    o_site = base.loc[base["element"] == "O", "dH_pred_eV"].iloc[0]
    fixed = expert.predict(perovskite(), sites=[0, 1], known=[{"site": 2, "dH_eV": o_site + 1.0}])
    assert fixed["n_known"].tolist() == [1, 1]
    np.testing.assert_allclose(fixed["dH_model_eV"], base["dH_pred_eV"].iloc[:2], atol=1e-6)
    np.testing.assert_allclose(fixed["offset_eV"], [0.2 / 0.44] * 2, atol=1e-6)  # metal sites, an O label
    np.testing.assert_allclose(fixed["dH_hi_eV"] - fixed["dH_lo_eV"], base["dH_hi_eV"].iloc[:2] - base["dH_lo_eV"].iloc[:2],
                               atol=1e-6)
    table = tmp_path / "known.csv"
    table.write_text(f"structure,site,dH_eV\nSrTiO3,2,{o_site + 1.0}\nother.cif,0,3.0\n")
    with pytest.warns(UserWarning, match="1 known value"):
        from_csv = expert.predict(perovskite(), sites=[0, 1], known=table)
    np.testing.assert_allclose(from_csv["dH_pred_eV"], fixed["dH_pred_eV"], atol=1e-6)
    from adex.errors import AdexError

    with pytest.raises(AdexError, match="not a number"):
        expert.predict(perovskite(), sites=[0], known=[{"site": 2, "dH_eV": "x"}])


def test_an_unseen_element_is_out_of_domain_with_one_warning_per_host(trusted) -> None:
    from adex.expert.trust import OutOfDomainWarning

    expert, *_ = trusted
    with pytest.warns(OutOfDomainWarning) as caught:
        rows = expert.predict(perovskite("Sr", "Hf", 4.09), sites="all")
    lines = [str(w.message) for w in caught if issubclass(w.category, OutOfDomainWarning)]
    assert len(lines) == 1 and "element Hf absent from training" in lines[0] and "3 of 3 vacancies" in lines[0]
    assert not rows["in_domain"].any()
    inside = expert.predict(perovskite(), sites="all")
    assert (rows["dH_hi_eV"] - rows["dH_lo_eV"]).mean() > (inside["dH_hi_eV"] - inside["dH_lo_eV"]).mean()


def test_table_trust_gives_the_cli_columns_and_one_warning_per_crystal(trusted, tmp_path) -> None:
    """What ``adex predict --input t.csv --known known.csv`` will print: the columns per
    (file, site), files of one crystal corrected together, one warning per crystal."""
    from adex.expert.predict import predict_sites
    from adex.expert.trust import read_known, table_trust

    expert, *_ = trusted
    loaded, trust = expert._loaded, expert.trust
    paths = []
    for name, structure in (("a.cif", perovskite()), ("b.cif", perovskite()), ("hf.cif", perovskite("Sr", "Hf", 4.09))):
        structure.to(filename=str(tmp_path / name))
        paths.append(str((tmp_path / name).resolve()))
    predictions = predict_sites(loaded, [(paths[0], [0, 1]), (paths[2], [0, 2])])
    plain, lines = table_trust(loaded, trust, predictions)
    assert len(lines) == 1 and lines[0].startswith("hf.cif: out of the applicability domain")
    assert [plain[(paths[2], s)]["in_domain"] for s in (0, 2)] == [False, False]
    for key, members in predictions.items():
        assert plain[key]["dH_pred_eV"] == pytest.approx(float(np.mean(members)))
        assert plain[key]["dH_lo_eV"] < plain[key]["dH_pred_eV"] < plain[key]["dH_hi_eV"]
    known = tmp_path / "known.csv"
    o_value = float(np.mean(predict_sites(loaded, [(paths[1], [2])])[(paths[1], 2)])) + 1.0
    known.write_text(f"structure,site,dH_eV\nb.cif,2,{o_value}\n")  # another file of the same crystal as a.cif
    fixed, _ = table_trust(loaded, trust, predictions, read_known(known))
    assert fixed[(paths[0], 0)]["n_known"] == 1 and fixed[(paths[2], 0)]["n_known"] == 0
    assert fixed[(paths[0], 0)]["offset_eV"] == pytest.approx(0.2 / 0.44, abs=1e-5)
    assert fixed[(paths[2], 0)]["dH_pred_eV"] == pytest.approx(plain[(paths[2], 0)]["dH_pred_eV"])
    from adex.errors import DataError

    known.write_text("structure,site,dH_eV\nb.cif,2,high\n")
    with pytest.raises(DataError, match="known.csv:2: dH_eV 'high' is not a number"):
        read_known(known)


def test_structure_families_and_family_folds(data_dir: Path) -> None:
    from adex.studies.splits import make_folds, structure_families, vacancy_table

    root = data_dir / "witman2023_vacancies"
    families = structure_families(root)
    assert len(families) == 199 and len(set(families.values())) == 118
    assert max(list(families.values()).count(f) for f in set(families.values())) == 11
    host_of = dict(zip(vacancy_table(root).ids, vacancy_table(root).hosts))
    folds = make_folds(root, "family", n_folds=10)
    assert len(folds) == 10 and sum(len(f.test) for f in folds) == 1481
    for fold in folds:
        train = {families[host_of[i]] for i in fold.train}
        assert not train & {families[host_of[i]] for i in fold.test}


def test_cli_predict_adds_the_trust_columns_corrects_from_known_and_warns_once(trusted, tmp_path, capsys) -> None:
    """``adex predict --input t.csv --known known.csv``: intervals, domain, the corrected
    value beside the model's, one warning line for the out-of-domain crystal."""
    import csv
    import io

    from adex.cli import main

    expert, entry, _, registry, _ = trusted
    store = ["--registry", str(registry.root)]
    for name, structure in (("a.cif", perovskite()), ("hf.cif", perovskite("Sr", "Hf", 4.09))):
        structure.to(filename=str(tmp_path / name))
    (tmp_path / "t.csv").write_text("structure,site\na.cif,0\na.cif,1\nhf.cif,0\n")
    assert main(["predict", "--expert", entry.ref, "--input", str(tmp_path / "t.csv"), "--format", "csv", *store]) == 0
    captured = capsys.readouterr()
    plain = list(csv.DictReader(io.StringIO(captured.out)))
    assert list(plain[0]) == ["structure", "site", "dH_pred_eV", "dH_std_eV", "dH_lo_eV", "dH_hi_eV", "domain",
                              "in_domain", "warnings"]
    assert [r["in_domain"] for r in plain] == ["True", "True", "False"]
    warned = [line for line in captured.err.splitlines() if line.startswith("warning:") and "applicability domain" in line]
    assert len(warned) == 1 and "hf.cif" in warned[0]
    o_value = float(expert.predict(perovskite(), sites=[2])["dH_pred_eV"].iloc[0]) + 1.0
    (tmp_path / "known.csv").write_text(f"structure,site,dH_eV\na.cif,2,{o_value}\n")
    assert main(["predict", "--expert", entry.ref, "--input", str(tmp_path / "t.csv"), "--known",
                 str(tmp_path / "known.csv"), "--format", "csv", *store]) == 0
    fixed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["n_known"] for r in fixed] == ["1", "1", "0"]
    for before, after in zip(plain, fixed):
        assert float(after["dH_model_eV"]) == pytest.approx(float(before["dH_pred_eV"]), abs=1e-4)
    assert float(fixed[0]["dH_pred_eV"]) - float(plain[0]["dH_pred_eV"]) == pytest.approx(0.2 / 0.44, abs=2e-4)
    assert fixed[2]["dH_pred_eV"] == plain[2]["dH_pred_eV"]  # another host: unchanged
    assert main(["predict", "--expert", entry.ref, "--structure", str(tmp_path / "a.cif"), "--all-sites",
                 "--format", "json", *store]) == 0
    rows = __import__("json").loads(capsys.readouterr().out)["predictions"]
    assert all(r["dH_lo_eV"] < r["dH_pred_eV"] < r["dH_hi_eV"] and r["in_domain"] is True for r in rows)


def test_cli_known_needs_a_trust_record_and_dataset_offset_needs_known(trusted, tmp_path, capsys) -> None:
    from adex.cli import main
    from conftest import assert_one_line_error

    perovskite().to(filename=str(tmp_path / "a.cif"))
    (tmp_path / "known.csv").write_text("structure,site,dH_eV\na.cif,2,5.0\n")
    rc = main(["predict", "--expert", EXPERT, "--structure", str(tmp_path / "a.cif"), "--site", "0",
               "--known", str(tmp_path / "known.csv")])
    assert_one_line_error(rc, capsys.readouterr().err, "--known needs an expert with a trust record")
    rc = main(["predict", "--expert", EXPERT, "--structure", str(tmp_path / "a.cif"), "--site", "0", "--dataset-offset"])
    assert_one_line_error(rc, capsys.readouterr().err, "--dataset-offset needs --known")


def test_screen_tables_carry_the_trust_columns_of_predict(trusted) -> None:
    """``adex screen`` rows (vacancies and hosts) have the interval and domain ``predict``
    gives for the same vacancies; an expert without a trust record leaves them null."""
    pytest.importorskip("pyarrow")
    from adex.expert.loading import load_expert
    from adex.expert.screen_inputs import HostInput
    from adex.expert.screen_worker import screen_hosts

    expert, entry, _, registry, _ = trusted
    hosts = [HostInput(name, name, "cif", structure.to(fmt="cif"))
             for name, structure in (("SrTiO3", perovskite()), ("BaMnO3", perovskite("Ba", "Mn", 3.9)),
                                     ("SrTiN3", Structure(Lattice.cubic(3.9), ["Sr", "Ti", "N", "N", "N"],
                                                          perovskite().frac_coords)))]
    result = screen_hosts(load_expert(entry.ref, registry), hosts)
    vacancies, summary = result.vacancies.to_pandas(), result.hosts.to_pandas().set_index("host_id")
    assert len(vacancies) == 9 and vacancies["dH_lo_eV"].notna().all()
    for name, structure in (("SrTiO3", perovskite()), ("BaMnO3", perovskite("Ba", "Mn", 3.9))):
        rows = vacancies[vacancies["host_id"] == name]
        direct = expert.predict(structure, sites=rows["site"].tolist())
        for column in ("dH_pred_eV", "dH_lo_eV", "dH_hi_eV", "domain"):
            np.testing.assert_allclose(rows[column].to_numpy(), direct[column].to_numpy(), atol=1e-5)
        assert rows["in_domain"].tolist() == direct["in_domain"].tolist()
        lowest = rows.loc[rows["dH_pred_eV"].idxmin()]
        assert summary.loc[name, "min_dH_lo_eV"] == pytest.approx(lowest["dH_lo_eV"])
        assert summary.loc[name, "in_domain"] == bool(rows["in_domain"].all())
    assert not summary.loc["SrTiN3", "in_domain"]
    assert "N absent from training" in summary.loc["SrTiN3", "domain_reasons"]
    plain = screen_hosts(load_expert(EXPERT, registry), hosts[:1])
    assert plain.vacancies.to_pandas()["dH_lo_eV"].isna().all() and plain.hosts.to_pandas()["in_domain"].isna().all()


@pytest.mark.parametrize("engine", ["process", "dask"])
def test_trust_columns_reuse_the_predictions_domain_inputs(trusted, tmp_path, monkeypatch, engine) -> None:
    """``adex predict --input`` (1 process or Dask workers) hands the trust columns the
    domain inputs its prediction computed: no file is read or featurized a second time, and
    the columns equal those computed from the files."""
    from adex.expert import trust as trust_module
    from adex.expert.predict import predict_sites
    from adex.expert.trust import table_trust

    expert, _, _, registry, _ = trusted
    loaded, trust = expert._loaded, expert.trust
    jobs = []
    for name, structure in (("a.cif", perovskite()), ("mn.cif", perovskite("Ba", "Mn", 3.9)),
                            ("hf.cif", perovskite("Sr", "Hf", 4.09))):
        structure.to(filename=str(tmp_path / name))
        jobs.append((str((tmp_path / name).resolve()), [0, 1, 2]))
    domains: dict = {}
    if engine == "dask":
        pytest.importorskip("distributed")
        from adex.expert.screening import predict_sites_dask

        predictions = predict_sites_dask(loaded, jobs, workers=2, chunk_vacancies=3, domains=domains,
                                         registry=str(registry.root))
    else:
        predictions = predict_sites(loaded, jobs, chunk_vacancies=3, domains=domains)
    assert sorted(domains) == sorted(path for path, _ in jobs)
    from_files, _ = table_trust(loaded, trust, predictions)

    def no_second_featurization(loaded, jobs, cache=False):
        assert not jobs, f"featurized again: {jobs}"
        return []

    monkeypatch.setattr(trust_module, "file_domain_inputs", no_second_featurization)
    handed_over, lines = table_trust(loaded, trust, predictions, domains=domains)
    assert len(lines) == 1 and lines[0].startswith("hf.cif")
    for key in predictions:
        for column in ("dH_pred_eV", "dH_lo_eV", "dH_hi_eV", "domain"):
            assert handed_over[key][column] == pytest.approx(from_files[key][column], abs=1e-6)
        assert handed_over[key]["in_domain"] == from_files[key]["in_domain"]
