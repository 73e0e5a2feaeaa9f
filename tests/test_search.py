"""Hyperparameter search (``adex search``, :mod:`adex.studies.search` and its job modules
``search_space``, ``search_samplers``, ``search_objectives``, ``search_storage``,
``search_report``, ``search_extras``): the YAML space and
its validation, the three samplers (valid points, improvement on a cheap synthetic
objective), the annealing acceptance rule, resuming a study from its SQLite storage,
best.yaml as an ExpertConfig, one real end-to-end search on the 13-vacancy tiny data,
and two workers sharing one PostgreSQL study (``ADEX_TEST_POSTGRES_URL``, set by .ci/run).
"""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
import uuid
from importlib import resources
from pathlib import Path

import numpy as np
import optuna
import pytest
import yaml

from adex.cli import main
from adex.config import load_config
from adex.errors import ConfigError
from adex.errors import MissingExtraError
from adex.studies.search import run_search
from adex.studies.search_objectives import SyntheticObjective
from adex.studies.search_samplers import (
    AnnealingSampler,
    acceptance_probability,
    make_pruner,
    make_sampler,
    neighbour,
    temperature_at,
)
from adex.studies.search_space import (
    AnnealingSettings,
    CategoricalParam,
    FloatParam,
    IntParam,
    load_space,
    parse_space,
)
from adex.studies.search_storage import driver_url, open_storage
from adex.expert.train import ExpertConfig
from conftest import assert_one_line_error
from test_expert import TINY, reg, tiny  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("shared_cache")
optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO_ROOT = Path(__file__).resolve().parents[1]

#: A small space with every kind of parameter: log float, stepped float, stepped int,
#: plain int, log int, categorical. Synthetic-objective tests only (no training).
SPACE = {
    "base": "default",
    "folds": ["f0", "f1"],
    "overrides": {"training.epochs": 3},
    "parameters": {
        "training.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.05},
        "model.atom_fea_len": {"type": "int", "low": 8, "high": 64, "step": 8},
        "model.n_conv": {"type": "int", "low": 1, "high": 4},
        "model.head_hidden": {"type": "int", "low": 8, "high": 128, "log": True},
        "model.pooling": {"type": "categorical", "choices": ["attention", "mean", "vacancy"]},
        "featurizer.cutoff": {"type": "float", "low": 4.0, "high": 6.0},
    },
    "ga": {"population_size": 8},
    "annealing": {"initial_temperature": 0.05, "cooling": 0.9, "step": 0.15},
    "pruner": {"type": "none"},
}


def space_with(**changes):
    data = yaml.safe_load(yaml.safe_dump(SPACE))
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def space():
    return parse_space(space_with(), "small", "small.yaml")


def write_space(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def in_memory_study(space, sampler: str, seed: int, n: int) -> optuna.Study:
    """``n`` trials of the synthetic objective, no storage, no files."""
    objective = SyntheticObjective(space)
    base = space.base_data()
    study = optuna.create_study(sampler=make_sampler(sampler, space, seed), pruner=make_pruner(space.pruner))
    study.optimize(lambda t: objective.value(space.config(space.suggest(t), base)), n_trials=n)
    return study


# --------------------------------------------------------------------------- the space
def test_shipped_default_space_is_valid_package_data() -> None:
    assert resources.files("adex.configs").joinpath("search", "default.yaml").is_file()
    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"search/*.yaml"' in pyproject and '"optuna' in pyproject and '"psycopg2-binary' in pyproject
    space = load_space("default")
    assert space.base == "default" and space.folds == ["1.00k0", "1.00k1", "1.00k2"]
    p = space.parameters
    assert isinstance(p["training.lr"], FloatParam) and p["training.lr"].log
    assert isinstance(p["model.n_conv"], IntParam) and isinstance(p["model.pooling"], CategoricalParam)
    for key in ("model.atom_fea_len", "featurizer.cutoff", "model.dropout", "model.adapter_width"):
        assert key in p
    config = space.config({k: q.candidates()[0] for k, q in p.items()})
    assert isinstance(config, ExpertConfig) and config.training.epochs == 60


@pytest.mark.parametrize("change,needle", [
    ({"paramters": {}}, "'paramters'"),
    ({"parameters": {"model.n_convs": {"type": "int", "low": 1, "high": 3}}}, "model.n_convs"),
    ({"parameters": {"modle.n_conv": {"type": "int", "low": 1, "high": 3}}}, "modle.n_conv"),
    ({"parameters": {"model": {"type": "int", "low": 1, "high": 3}}}, "'model' is a config section"),
    ({"parameters": {"model.n_conv": {"type": "int", "low": 1.5, "high": 3}}}, "model.n_conv: low must be an int"),
    ({"parameters": {"model.n_conv": {"type": "integer", "low": 1, "high": 3}}}, "model.n_conv: type must be"),
    ({"parameters": {"model.n_conv": {"type": "int", "low": 1, "high": 3, "choices": [1]}}}, "model.n_conv: unknown key 'choices'"),
    ({"parameters": {"training.lr": {"type": "float", "low": "small", "high": 0.1}}}, "training.lr: low must be a number"),
    ({"parameters": {"training.lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}}, "training.lr: log: true needs low > 0"),
    ({"parameters": {"training.lr": {"type": "float", "low": 0.1, "high": 0.01}}}, "training.lr: low (0.1) > high"),
    ({"parameters": {"model.n_conv": {"type": "int", "low": 1, "high": 4, "step": 2}}}, "model.n_conv: high - low"),
    ({"parameters": {"model.pooling": {"type": "categorical", "choices": ["mean", "sum"]}}}, "model.pooling: value 'sum'"),
    ({"parameters": {"model.n_conv": {"type": "float", "low": 1.0, "high": 3.0}}}, "model.n_conv: value 1.0"),
    ({"parameters": {"model.pooling": {"type": "categorical", "choices": []}}}, "model.pooling: choices"),
    ({"overrides": {"training.epoch": 3}}, "training.epoch"),
    ({"folds": "1.00k0"}, "folds"),
    ({"ga": {"population": 4}}, "population"),
    ({"annealing": {"cooling": "fast"}}, "annealing.cooling"),
])
def test_space_validation_errors_name_the_bad_key(change: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_space(space_with(**change), "bad", "bad.yaml")
    assert needle in str(info.value)
    assert "\n" not in str(info.value)


def test_bad_space_file_is_a_one_line_cli_error(tmp_path, capsys) -> None:
    path = write_space(tmp_path / "bad.yaml", space_with(parameters={"model.widht": {"type": "int", "low": 1, "high": 2}}))
    rc = main(["search", "--space", str(path), "--objective", "synthetic", "--n-trials", "1"])
    assert_one_line_error(rc, capsys.readouterr().err, "model.widht", "not an ExpertConfig field")
    rc = main(["search", "--space", "no-such-space", "--objective", "synthetic", "--n-trials", "1"])
    assert_one_line_error(rc, capsys.readouterr().err, "no-such-space")


# --------------------------------------------------------------------------- samplers
def assert_valid_point(space, params: dict) -> None:
    assert set(params) == set(space.parameters)
    for name, p in space.parameters.items():
        v = params[name]
        if isinstance(p, CategoricalParam):
            assert v in p.choices, (name, v)
            continue
        assert p.low - 1e-12 <= v <= p.high + 1e-12, (name, v)
        if isinstance(p, IntParam):
            assert isinstance(v, int) and not isinstance(v, bool), (name, v)
            assert (v - p.low) % p.step == 0, (name, v)
        else:
            assert isinstance(v, float), (name, v)
            if p.step:
                k = (v - p.low) / p.step
                assert abs(k - round(k)) < 1e-6, (name, v)


@pytest.mark.parametrize("sampler", ["random", "ga", "annealing"])
def test_each_sampler_proposes_valid_points_and_improves(space, sampler: str) -> None:
    """Seeded, deterministic: 40 trials of the synthetic objective (0 at the optimum, about
    1 for a random point). Every proposal lies in the space; the best is far below the
    first trial and below 0.6 x the median of 40 random points; GA and annealing also
    concentrate on good points (their last 10 trials beat the random median)."""
    study = in_memory_study(space, sampler, seed=0, n=40)
    values = [t.value for t in study.trials]
    assert len(values) == 40
    for t in study.trials:
        assert_valid_point(space, t.params)
        config = space.config(t.params)
        assert config.model.n_conv == t.params["model.n_conv"] and config.training.lr == t.params["training.lr"]
    random_median = float(np.median([t.value for t in in_memory_study(space, "random", seed=0, n=40).trials]))
    assert min(values) < 0.6 * random_median
    assert min(values) < 0.6 * values[0]
    if sampler != "random":
        assert float(np.median(values[-10:])) < random_median


def test_random_sampler_draws_log_parameters_uniformly_in_log_space(space) -> None:
    study = in_memory_study(space, "random", seed=1, n=300)
    lr = np.array([t.params["training.lr"] for t in study.trials])
    hidden = np.array([t.params["model.head_hidden"] for t in study.trials])
    # log-uniform on [1e-4, 1e-2]: half below the geometric mean 1e-3 (linear: 9 %)
    assert 0.4 < np.mean(lr < 1e-3) < 0.6
    assert 0.4 < np.mean(hidden < 32) < 0.6  # geometric mean of 8 and 128
    assert set(np.unique([t.params["model.pooling"] for t in study.trials])) == {"attention", "mean", "vacancy"}


def test_ga_mutates_about_half_the_parameters(space) -> None:
    sampler = make_sampler("ga", space, seed=0)
    assert isinstance(sampler, optuna.samplers.NSGAIISampler)
    strategy = sampler._child_generation_strategy
    assert strategy._mutation_prob == 0.5 and strategy._mutation is None  # mutated = redrawn uniformly


# --------------------------------------------------------------------------- annealing
def test_acceptance_probability_is_metropolis() -> None:
    assert acceptance_probability(-0.3, 0.1) == 1.0 and acceptance_probability(0.0, 0.1) == 1.0
    assert acceptance_probability(0.1, 0.1) == pytest.approx(math.exp(-1))
    assert acceptance_probability(0.05, 0.02) == pytest.approx(math.exp(-2.5))
    assert acceptance_probability(0.1, 0.0) == 0.0
    settings = AnnealingSettings(initial_temperature=0.02, cooling=0.95)
    assert temperature_at(0, settings) == 0.02
    assert temperature_at(20, settings) == pytest.approx(0.02 * 0.95 ** 20)


@pytest.mark.parametrize("delta,temperature", [(0.01, 0.02), (0.05, 0.02), (0.2, 0.1)])
def test_annealing_accepts_worse_points_with_the_metropolis_frequency(delta: float, temperature: float) -> None:
    sampler = AnnealingSampler(seed=3)
    n = 20000
    rate = np.mean([sampler.accept(1.0 + delta, 1.0, temperature) for _ in range(n)])
    expected = math.exp(-delta / temperature)
    assert abs(rate - expected) < 4 * math.sqrt(expected * (1 - expected) / n) + 1e-3
    assert all(sampler.accept(0.9, 1.0, temperature) for _ in range(100))  # better: always


def test_annealing_chain_state_and_schedule_in_the_study(space) -> None:
    """T_k = T0 * cooling**k is recorded on each trial; at T = 0 a worse point is never
    accepted (the chain stays at the best point: greedy); at a huge constant T every
    completed trial is accepted; moves are neighbours of the current state."""
    greedy = parse_space(space_with(annealing={"initial_temperature": 0.0, "cooling": 0.9}), "g", "g.yaml")
    study = in_memory_study(greedy, "annealing", seed=0, n=25)
    best_so_far = math.inf
    for t in study.trials:
        assert t.system_attrs[AnnealingSampler.TEMPERATURE] == 0.0
        assert t.system_attrs[AnnealingSampler.ACCEPTED] == (t.value <= best_so_far)
        best_so_far = min(best_so_far, t.value)
    hot = parse_space(space_with(annealing={"initial_temperature": 1e6, "cooling": 0.5, "step": 0.05}), "h", "h.yaml")
    study = in_memory_study(hot, "annealing", seed=0, n=12)
    assert all(t.system_attrs[AnnealingSampler.ACCEPTED] for t in study.trials)
    for k, t in enumerate(study.trials):
        assert t.system_attrs[AnnealingSampler.TEMPERATURE] == pytest.approx(1e6 * 0.5 ** k)
    # each trial moved a little from the previous (accepted) one: lr within a few steps in log space
    lr = np.log([t.params["training.lr"] for t in study.trials])
    assert np.max(np.abs(np.diff(lr))) < 5 * 0.05 * math.log(100)


def test_neighbour_moves_are_small_and_stay_in_bounds() -> None:
    rng = np.random.RandomState(0)
    dist = optuna.distributions.FloatDistribution(0.0, 1.0)
    moves = np.array([neighbour(dist, 0.5, rng, 0.1, 0.2) for _ in range(4000)]) - 0.5
    assert abs(moves.std() - 0.1) < 0.01 and abs(moves.mean()) < 0.01
    edge = np.array([neighbour(dist, 0.99, rng, 0.1, 0.2) for _ in range(500)])
    assert edge.min() >= 0.0 and edge.max() <= 1.0
    grid = optuna.distributions.IntDistribution(8, 64, step=8)
    assert {neighbour(grid, 64, rng, 0.2, 0.2) for _ in range(200)} <= set(range(8, 65, 8))
    cat = optuna.distributions.CategoricalDistribution(["a", "b", "c"])
    switched = np.mean([neighbour(cat, "a", rng, 0.1, 0.3) != "a" for _ in range(4000)])
    assert abs(switched - 0.3) < 0.03


# --------------------------------------------------------------------------- storage, resume, outputs
def test_resumed_study_keeps_its_trials_and_writes_best_yaml(space, adex_home) -> None:
    """3 trials, then 2 more on the same (default SQLite) storage: 5 finished trials;
    best.yaml is a full ExpertConfig; a plain ``config -> float`` objective is accepted."""
    synthetic = SyntheticObjective(space)
    first = run_search(space, sampler="annealing", study_name="resume", seed=0, n_trials=3, objective=synthetic.value)
    assert (first.n_before, first.n_run, first.n_finished) == (0, 3, 3)
    assert (adex_home / "search" / "resume.db").is_file()
    lines = []
    second = run_search(space, sampler="annealing", study_name="resume", seed=1, n_trials=2, objective=synthetic.value,
                        log=lines.append)
    assert (second.n_before, second.n_run, second.n_finished) == (3, 2, 5)
    assert "resuming, 3 finished trials" in lines[0]
    out = adex_home / "search" / "resume"
    assert second.out == out
    config = load_config(ExpertConfig, "expert", str(out / "best.yaml"))
    assert isinstance(config, ExpertConfig) and config.training.epochs == 3  # the space's override
    best_params = second.best.params
    assert config.model.n_conv == best_params["model.n_conv"] and config.model.pooling == best_params["model.pooling"]
    assert synthetic.value(config) == pytest.approx(second.best.value)
    assert min(t.value for t in optuna.load_study(study_name="resume", storage=f"sqlite:///{adex_home}/search/resume.db")
               .trials) == pytest.approx(second.best.value)
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert [int(r["number"]) for r in rows] == [0, 1, 2, 3, 4]
    assert {"number", "state", "value", "seconds", "training.lr", "model.pooling"} <= set(rows[0])
    assert all(r["state"] == "COMPLETE" for r in rows)
    assert (out / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ctrl_c_keeps_finished_trials_and_writes_the_outputs(space, tmp_path) -> None:
    calls = []

    def objective(config, trial):
        calls.append(trial.number)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return SyntheticObjective(space).value(config)

    storage = f"sqlite:///{tmp_path / 's.db'}"
    with pytest.raises(KeyboardInterrupt):
        run_search(space, study_name="stop", storage=storage, seed=0, n_trials=10, objective=objective, out=tmp_path / "o")
    study = optuna.load_study(study_name="stop", storage=storage)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE", "FAIL"]
    assert load_config(ExpertConfig, "expert", str(tmp_path / "o" / "best.yaml"))
    assert len(list(csv.DictReader(open(tmp_path / "o" / "trials.csv")))) == 3
    resumed = run_search(space, study_name="stop", storage=storage, seed=1, n_trials=1,
                         objective=SyntheticObjective(space), out=tmp_path / "o")
    assert resumed.n_before == 3 and resumed.n_finished == 4


def test_median_pruner_stops_bad_trials_after_a_fold(tmp_path) -> None:
    space = parse_space(space_with(pruner={"type": "median", "n_startup_trials": 3}, folds=["a", "b", "c"]), "p", "p.yaml")
    result = run_search(space, sampler="random", study_name="prune", storage=f"sqlite:///{tmp_path / 'p.db'}", seed=0,
                        n_trials=15, objective=SyntheticObjective(space), out=tmp_path / "o")
    trials = optuna.load_study(study_name="prune", storage=f"sqlite:///{tmp_path / 'p.db'}").trials
    pruned = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned and len(complete) >= 3 and result.n_run == 15
    for t in pruned:
        assert max(t.intermediate_values) < 2  # stopped before the last fold
        assert "mae_a" in t.user_attrs and "mae_c" not in t.user_attrs
    for t in complete:
        assert t.user_attrs["mae_a"] < t.value < t.user_attrs["mae_c"] or t.value == 0
        assert t.value == pytest.approx(np.mean([t.user_attrs[f"mae_{f}"] for f in "abc"]))


def test_cli_synthetic_search_and_storage_error(tmp_path, capsys, adex_home) -> None:
    path = write_space(tmp_path / "small.yaml", space_with())
    rc = main(["search", "--space", str(path), "--objective", "synthetic", "--sampler", "ga", "--n-trials", "4",
               "--seed", "0", "--study", "cli", "--set", "training.epochs=7"])
    assert rc == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert "trial 3 complete" in err and "best" in err and "4 finished in total" in err
    config = load_config(ExpertConfig, "expert", str(adex_home / "search" / "cli" / "best.yaml"))
    assert config.training.epochs == 7  # --set wins over the space's override
    rc = main(["search", "--space", str(path), "--objective", "synthetic", "--n-trials", "1", "--storage",
               "nosuchdb://user:secret@host/x"])
    line = assert_one_line_error(rc, capsys.readouterr().err, "--storage", "cannot open")
    assert "secret" not in line
    rc = main(["search", "--space", str(path), "--objective", "synthetic", "--n-trials", "1", "--set", "model.nconv=2"])
    assert_one_line_error(rc, capsys.readouterr().err, "model.nconv")


# --------------------------------------------------------------------------- end to end, real training
def test_without_optuna_the_space_loads_and_the_search_names_the_extra(tmp_path) -> None:
    """optuna is the adex[search] extra: a space is read and validated without it; the
    search module and `adex search` fail with a one-line MissingExtraError naming it."""
    code = """
import sys
sys.modules["optuna"] = None  # as if not installed
from adex.errors import MissingExtraError
from adex.studies.search_space import load_space
from adex.studies.search_objectives import SyntheticObjective
from adex.studies.search_storage import default_storage, driver_url
space = load_space("default")
assert space.parameters  # read and validated: no optuna needed
try:
    import adex.studies.search
except MissingExtraError as exc:
    print("ERR", exc)
from adex.cli import main
sys.exit(main(["search", "--objective", "synthetic", "--n-trials", "1"]))
"""
    env = {**os.environ, "ADEX_HOME": str(tmp_path), "ADEX_NO_PROGRESS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "ERR hyperparameter search needs the optuna package: pip install 'adex[search]'" in proc.stdout
    assert proc.stderr.strip() == "error: hyperparameter search needs the optuna package: pip install 'adex[search]'"


def test_postgres_storage_without_psycopg2_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg2", None)  # as if not installed
    with pytest.raises(MissingExtraError, match=r"pip install 'adex\[postgres\]'"):
        open_storage("postgresql://user:secret@localhost/adex")


def test_end_to_end_search_with_real_tiny_trainings(tiny, reg, tmp_path, capsys) -> None:  # noqa: F811
    """Two trials of the CV objective on the tiny data (one fold, one epoch, width-8
    experts with the width-8 advisor); best.yaml then trains with ``adex expert train``."""
    space = {
        "base": "default",
        "folds": ["tiny"],
        "overrides": {"training.epochs": 1, "advisors": ["adv8"]},
        "parameters": {
            "training.lr": {"type": "float", "low": 1.0e-3, "high": 1.0e-2, "log": True},
            "model.adapter_width": {"type": "int", "low": 2, "high": 6, "step": 2},
            "model.pooling": {"type": "categorical", "choices": ["attention", "vacancy"]},
        },
    }
    path = write_space(tmp_path / "tiny.yaml", space)
    out = tmp_path / "search"
    rc = main(["search", "--space", str(path), "--n-trials", "2", "--seed", "0", "--data", str(tiny.root),
               "--registry", str(reg.root), "--out", str(out), *TINY])
    err = capsys.readouterr().err
    assert rc == 0, err
    for n in (0, 1):
        metrics = json.loads((out / f"trial_{n}" / "tiny" / "metrics.json").read_text())
        assert metrics["test"]["n"] == len(tiny.hold) and metrics["split"] == "tiny"
    rows = list(csv.DictReader(open(out / "trials.csv")))
    assert len(rows) == 2 and all(r["state"] == "COMPLETE" for r in rows)
    for r in rows:
        mae = json.loads((out / f"trial_{r['number']}" / "tiny" / "metrics.json").read_text())["test"]["mae"]
        assert float(r["value"]) == pytest.approx(mae, rel=1e-5) and float(r["mae_tiny"]) == pytest.approx(mae, rel=1e-5)
    config = load_config(ExpertConfig, "expert", str(out / "best.yaml"))
    assert config.advisors == ["adv8"] and config.model.atom_fea_len == 8 and config.training.epochs == 1
    assert config.split is None  # the folds are the search's; pick the split when training
    assert not (reg.root / "expert" / "vacancy").exists()  # trials are not registered
    rc = main(["expert", "train", "--config", str(out / "best.yaml"), "--split", "tiny", "--data", str(tiny.root),
               "--registry", str(reg.root), "--no-register", "--out", str(tmp_path / "retrain")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "retrain" / "metrics.json").is_file()


# --------------------------------------------------------------------------- PostgreSQL, two workers
def postgres_url() -> str:
    url = os.environ.get("ADEX_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("ADEX_TEST_POSTGRES_URL is not set (.ci/run starts a local PostgreSQL server and sets it)")
    try:
        import psycopg2

        psycopg2.connect(url, connect_timeout=5).close()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"no PostgreSQL server reachable at ADEX_TEST_POSTGRES_URL ({type(exc).__name__}: "
                    f"{' '.join(str(exc).split())[:120]})")
    return url


def test_two_workers_share_one_postgresql_study(tmp_path) -> None:
    url = postgres_url()
    study = f"test-{uuid.uuid4().hex[:10]}"
    path = write_space(tmp_path / "small.yaml", space_with())
    n_each = 6
    workers = [
        subprocess.Popen([sys.executable, "-m", "adex", "search", "--space", str(path), "--objective", "synthetic",
                          "--synthetic-seconds", "0.1", "--sampler", sampler, "--seed", str(seed), "--study", study,
                          "--storage", url, "--n-trials", str(n_each), "--out", str(tmp_path / f"out{seed}")],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed, sampler in ((1, "annealing"), (2, "random"))
    ]
    try:
        results = [w.communicate(timeout=240) for w in workers]
        for w, (_, err) in zip(workers, results):
            assert w.returncode == 0, err
        trials = optuna.load_study(study_name=study, storage=driver_url(url)).trials
        assert len(trials) == 2 * n_each
        assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
        assert sorted(t.number for t in trials) == list(range(2 * n_each))
        by_worker: dict[str, int] = {}
        for t in trials:
            by_worker[t.user_attrs["worker"]] = by_worker.get(t.user_attrs["worker"], 0) + 1
        assert sorted(by_worker.values()) == [n_each, n_each]  # both contributed
        # each worker's outputs cover the whole study (the second to finish saw all trials)
        totals = [len(list(csv.DictReader(open(tmp_path / f"out{s}" / "trials.csv")))) for s in (1, 2)]
        assert max(totals) == 2 * n_each and min(totals) >= n_each
        for s in (1, 2):
            assert load_config(ExpertConfig, "expert", str(tmp_path / f"out{s}" / "best.yaml"))
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
        try:
            optuna.delete_study(study_name=study, storage=driver_url(url))
        except Exception:  # noqa: BLE001 - cleanup only
            pass
