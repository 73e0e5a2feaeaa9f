"""``adex search``: hyperparameter search for the expert (Optuna; see :mod:`adex.studies.search`).

Registering the command imports nothing of the search: optuna (the ``adex[search]``
extra) loads when ``adex search`` runs, and a missing one is a one-line error.
"""
from __future__ import annotations

import argparse

SAMPLER_CHOICES = ("random", "ga", "annealing")  # adex.studies.search_samplers.SAMPLERS (not imported: optuna)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "search", help="hyperparameter search for the expert (random, genetic, simulated annealing)",
        description="Search the expert's hyperparameters (Optuna). The objective is the mean test MAE over the "
                    "space's published folds (one training per fold); the best configuration is written as "
                    "best.yaml for `adex expert train --config best.yaml`. Stop with Ctrl-C and run the same "
                    "command again to resume: finished trials are kept in the storage. e.g. "
                    "`adex search --sampler annealing --n-trials 30 --study s1`")
    p.add_argument("--space", default="default", metavar="FILE_OR_NAME",
                   help="search space YAML file or shipped name (default: default = configs/search/default.yaml)")
    p.add_argument("--sampler", choices=SAMPLER_CHOICES, default="random",
                   help="random, ga (genetic: NSGA-II, about half the parameters mutate) or annealing "
                        "(simulated annealing, geometric cooling) (default: random)")
    p.add_argument("--n-trials", type=int, metavar="N",
                   help="trials to run in this invocation (default: 20, or unlimited with --timeout-minutes)")
    p.add_argument("--timeout-minutes", type=float, metavar="M",
                   help="start no new trial after M minutes (a running trial finishes)")
    p.add_argument("--study", metavar="NAME", help="study name (default: the space's name)")
    p.add_argument("--storage", metavar="URL",
                   help="Optuna storage URL (default: sqlite:///$ADEX_HOME/search/<study>.db); a shared "
                        "postgresql://user:password@host/db lets several workers run one study")
    p.add_argument("--seed", type=int, help="sampler seed (give each worker its own)")
    p.add_argument("--folds", metavar="SPLITS", help="comma-separated published splits, instead of the space's folds")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="fix an ExpertConfig field for every trial, e.g. --set training.epochs=30 (repeatable)")
    p.add_argument("--data", help="data directory (default: $ADEX_DATA, else $ADEX_HOME/data)")
    p.add_argument("--registry", help="user registry root holding the advisors (default: $ADEX_HOME/registry)")
    p.add_argument("--out", help="trial run folders, best.yaml, trials.csv, search.png "
                                 "(default: $ADEX_HOME/search/<study>/)")
    p.add_argument("--objective", choices=("cv", "synthetic"), default="cv",
                   help="cv: mean test MAE over the folds (real trainings, default); synthetic: a cheap analytic "
                        "test function of the parameters, no training (for tests and storage benchmarks)")
    p.add_argument("--synthetic-seconds", type=float, default=0.0, metavar="S",
                   help="with --objective synthetic: sleep S seconds per fold to mimic training")
    p.set_defaults(func=cmd_search)


def cmd_search(args: argparse.Namespace) -> int:
    from adex.errors import ConfigError
    from adex.progress import console
    from adex.studies.search import run_search  # MissingExtraError (adex[search]) without optuna
    from adex.studies.search_objectives import SyntheticObjective
    from adex.studies.search_space import load_space

    if args.n_trials is not None and args.n_trials < 0:
        raise ConfigError("--n-trials must be >= 0")
    if args.timeout_minutes is not None and args.timeout_minutes <= 0:
        raise ConfigError("--timeout-minutes must be > 0")
    space = load_space(args.space, check=False)
    if args.folds:
        folds = [f.strip() for f in args.folds.split(",") if f.strip()]
        if not folds:
            raise ConfigError("--folds: no split given")
        space.folds = folds
    n_trials = args.n_trials if args.n_trials is not None or args.timeout_minutes is not None else 20
    objective = None
    if args.objective == "synthetic":
        objective = SyntheticObjective(space, seconds=args.synthetic_seconds)
    registry = None
    if args.objective == "cv":
        from adex.registry import Registry

        registry = Registry(root=args.registry)
    con = console()

    def say(line: str) -> None:
        con.print(line, soft_wrap=True, highlight=False)

    result = run_search(space, sampler=args.sampler, study_name=args.study, storage=args.storage, seed=args.seed,
                        n_trials=n_trials, timeout_minutes=args.timeout_minutes, objective=objective, data=args.data,
                        registry=registry, out=args.out, overrides=args.overrides, log=say,
                        label="synthetic objective" if args.objective == "synthetic" else "CV MAE (eV)")
    say(f"study {result.study_name!r}: {result.n_run} trials in this run, {result.n_finished} finished in total")
    if result.best is not None:
        b = result.best
        say(f"[bold]best[/]: trial {b.number}, objective {b.value:.4f}"
                  + (" eV (mean test MAE over " + ", ".join(space.folds) + ")" if args.objective == "cv" else ""))
        for name, value in b.params.items():
            say(f"  {name} = {value:.4g}" if isinstance(value, float) else f"  {name} = {value}")
    if result.outputs is not None:
        o = result.outputs
        if o.best_yaml is not None:
            say(f"best config: {o.best_yaml}  (adex expert train --config {o.best_yaml} --split SPLIT)")
        say(f"trials: {o.trials_csv}; plot: {o.plot}")
    return 0
