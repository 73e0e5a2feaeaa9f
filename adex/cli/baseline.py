"""``adex baseline``: the descriptor baseline (matminer-style descriptors + gradient
boosting) cross-validated on the same folds as the GNNs (:mod:`adex.studies.baseline`)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "baseline", help="descriptor + gradient-boosting baseline, cross-validated on the shared folds",
        description="e.g. `adex baseline --cv published` (10 published folds per vacancy), `--cv published_struct` "
                    "(per compound), `--cv published@0.10` (learning-curve fraction), `--cv loeo`, "
                    "or `--split 1.00k0` for one published split. Writes folds.csv, predictions.csv, metrics.json, "
                    "config.yaml and baseline.png into the run folder.")
    p.add_argument("--cv", help="published (default), published_struct, kfold, group, loeo, l2eo; "
                                "published@0.10 / published@0.40 for the learning-curve fractions")
    p.add_argument("--split", help="one published split instead of --cv, e.g. 1.00k0, 1.00k0_struct, CS_Ba")
    p.add_argument("--folds", type=int, help="number of folds (published, kfold, group; pairs for l2eo; default 10)")
    p.add_argument("--elements", help="comma-separated elements held out by loeo/l2eo (default: all but O)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds (kfold, group, l2eo) and the model (default 0)")
    p.add_argument("--loss", default="auto", help="absolute_error, squared_error, or auto (default: chosen per fold "
                                                  "on a validation set carved from its training set)")
    p.add_argument("--host-weight-power", type=float, default=0.0, metavar="P",
                   help="weigh each training vacancy by n_host^-P, n_host the training vacancies of its host "
                        "(as the expert's training.host_weight_power; default 0: all equal)")
    p.add_argument("--data", help="data directory (default: $ADEX_DATA, else $ADEX_HOME/data)")
    p.add_argument("--out", help="run folder (default: $ADEX_HOME/runs/baseline-<time>); an existing non-empty "
                                 "folder is refused unless --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier run in --out")
    p.add_argument("--workers", type=int, default=1, help="featurization processes (default 1)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads of the gradient boosting (default 1)")
    p.add_argument("--no-cache", action="store_true", help="featurize again and do not write the feature cache")
    p.add_argument("--advisors", help="comma-separated advisor refs (e.g. chgnet): their embeddings of the vacated site "
                                      "and of the host are added to the descriptors")
    p.add_argument("--potential-delta", action="store_true",
                   help="delta-learning: learn dH minus the unrelaxed vacancy energy of the potential among --advisors "
                        "(CHGNet), as the expert's model.potential_delta")
    p.add_argument("--potential-relaxation", action="store_true",
                   help="with --potential-delta: line-search relax the defected supercell on the potential's forces "
                        "first (as the expert's model.potential_relaxation; ~5x the potential's cost, cached)")
    p.add_argument("--relaxation-steps", type=int, default=0, metavar="N",
                   help="with --potential-relaxation: N FIRE steps instead of the line search (as the expert's "
                        "model.potential_relaxation_steps; ~N+1 force evaluations per vacancy, cached)")
    p.add_argument("--potential-min-image-distance", type=float, default=0.0, metavar="A",
                   help="with --potential-delta: take the vacancy energies in supercells of at least A Å between "
                        "images (as the expert's model.potential_min_image_distance; default 0: the expert's supercells)")
    p.add_argument("--registry", help="user registry root (default: $ADEX_HOME/registry)")
    p.set_defaults(func=cmd_baseline)


def cmd_baseline(args: argparse.Namespace) -> int:
    from adex.cli.common import check_out_folder
    from adex.datasets import dataset_root
    from adex.errors import ConfigError
    from adex.studies.baseline import GROUPED_SCHEMES, run_baseline
    from adex.studies.baseline_features import baseline_table
    from adex.studies.baseline_model import ModelSettings
    from adex.supercell.descriptors import BaselineSettings
    from adex.expert.witman import read_split
    from adex.studies.splits import Fold, make_folds, parse_scheme
    from adex.progress import console

    check_out_folder(args)  # before any featurization: a run never replaces another silently

    if args.cv and args.split:
        raise ConfigError("give either --cv SCHEME or --split NAME, not both")
    for flag in ("folds", "workers", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ConfigError(f"--{flag} must be >= 1, got {value}")
    if args.potential_delta and not (args.advisors or "").strip():
        raise ConfigError("--potential-delta needs a potential among --advisors (e.g. --advisors chgnet)")
    if args.potential_relaxation and not args.potential_delta:
        raise ConfigError("--potential-relaxation needs --potential-delta")
    if args.relaxation_steps and not args.potential_relaxation:
        raise ConfigError("--relaxation-steps needs --potential-relaxation")
    if args.relaxation_steps < 0:
        raise ConfigError(f"--relaxation-steps must be >= 0, got {args.relaxation_steps}")
    if args.potential_min_image_distance and not args.potential_delta:
        raise ConfigError("--potential-min-image-distance needs --potential-delta")
    if args.host_weight_power < 0:
        raise ConfigError(f"--host-weight-power must be >= 0, got {args.host_weight_power}")
    model = ModelSettings(loss=args.loss, host_weight_power=args.host_weight_power)
    root = dataset_root("witman2023_vacancies", args.data)
    if args.split:
        train, test = read_split(root, args.split)
        folds = [Fold(args.split, tuple(train), tuple(test))]
        scheme, grouped = f"split:{args.split}", args.split.endswith("_struct") or args.split.startswith("CS_")
    else:
        scheme = args.cv or "published"
        kwargs = parse_scheme(scheme)
        elements = [e.strip() for e in args.elements.split(",") if e.strip()] if args.elements else None
        folds = make_folds(root, n_folds=args.folds or 10, seed=args.seed, elements=elements, **kwargs)
        grouped = kwargs["scheme"] in GROUPED_SCHEMES or kwargs.get("per_compound", False)
    if not folds:
        raise ConfigError(f"--cv {scheme}: no folds (nothing to train on or to test)")
    con = console()
    settings = BaselineSettings()
    advisor_refs = [r.strip() for r in (args.advisors or "").split(",") if r.strip()]
    advisors = []
    if advisor_refs:
        from adex.cli.common import open_registry_from
        from adex.expert.train import load_advisors

        advisors = load_advisors(advisor_refs, open_registry_from(args))
        advisor_refs = [entry.ref for entry, _ in advisors]
    table = baseline_table(args.data, advisors, potential_delta=args.potential_delta,
                           relaxation=args.potential_relaxation, relaxation_steps=args.relaxation_steps,
                           potential_min_image_distance=args.potential_min_image_distance, settings=settings, workers=args.workers,
                           use_cache=not args.no_cache, log=lambda line: con.print(line, soft_wrap=True))
    config = {"command": "baseline", "cv": None if args.split else scheme, "split": args.split, "n_folds": args.folds,
              "elements": args.elements, "data": str(root), "features": settings.to_dict(), "workers": args.workers,
              "advisors": advisor_refs, "potential_delta": bool(args.potential_delta),
              "potential_relaxation": bool(args.potential_relaxation), "relaxation_steps": args.relaxation_steps,
              "potential_min_image_distance": args.potential_min_image_distance}

    def report(k, row, val_mae) -> None:
        chosen = row["loss"] + (f" (validation MAE {', '.join(f'{l} {v:.3f}' for l, v in val_mae.items())})"
                                if val_mae else "")
        con.print(f"fold {row['fold']}: MAE {row['mae']:.3f} eV, RMSE {row['rmse']:.3f} eV (n={row['n_test']}); "
                  f"loss {chosen}", soft_wrap=True)

    result = run_baseline(table, folds, model, seed=args.seed, grouped=grouped, scheme=scheme, out=args.out,
                          config=config, threads=args.threads, on_fold=report)
    m = result.metrics
    p = m["pooled"]

    def fmt(value) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    spread = f" ± {m['mae_std']:.3f}" if m["n_folds"] > 1 else ""
    con.print(f"[bold]descriptor baseline[/] ({len(table.names)} descriptors, HistGradientBoosting) on {scheme}: "
              f"{m['n_folds']} fold{'s' if m['n_folds'] > 1 else ''}, MAE {m['mae_mean']:.3f}{spread} eV"
              + (" (mean ± std over folds)" if spread else "")
              + f", RMSE {m['rmse_mean']:.3f} eV; O vacancies {fmt(m['mae_O']['mean'])} eV, metal vacancies "
              f"{fmt(m['mae_metal']['mean'])} eV; pooled MAE {fmt(p['mae'])} eV over {p['n']} held-out vacancies. "
              f"Featurization {m['featurize_seconds']:.0f} s{' (cached)' if table.from_cache else ''}, "
              f"training {m['train_seconds']:.0f} s. Run folder: {result.out}", soft_wrap=True)
    return 0
