"""``adex evaluate``: models (expert recipes, descriptor baselines, finished runs) on the
same folds of several schemes, one table (:mod:`adex.studies.evaluate`)."""
from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="the new-materials table: models and baselines on the same folds, one table",
        description="e.g. `adex evaluate new-materials --workers 2` (configs/evaluate/new-materials.yaml: the shipped "
                    "recipes and the strongest baselines per compound, leaving elements out and structure families "
                    "out, and per vacancy), `adex evaluate SPEC.yaml --schemes published_struct,family --run "
                    "default=RUNS/cv-struct`. Each (model, scheme, fold) lands in OUT/runs/<model>/<scheme>/<fold>/; "
                    "--resume skips finished ones. Writes table.csv/json/md, families.csv, per_fold_mae.png, spec.yaml.")
    p.add_argument("spec", nargs="?", help="spec: shipped name (new-materials) or YAML path; optional with --run")
    p.add_argument("--out", help="evaluation folder (default: $ADEX_HOME/evaluations/<spec name>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the evaluation in --out: finished units are kept")
    p.add_argument("--workers", type=int, default=1, help="units run at once, one process each (default 1)")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenMP threads per unit (default 1)")
    p.add_argument("--schemes", help="comma-separated schemes, replacing the spec's (published_struct, loeo, family, "
                                     "published, group, kfold, l2eo, published@0.40 ...)")
    p.add_argument("--models", help="comma-separated names: evaluate only these models of the spec")
    p.add_argument("--run", action="append", default=[], metavar="NAME=FOLDER[#EXPERIMENT]",
                   help="add a finished run (an adex cv / baseline / blend folder, or a summaries folder and the "
                        "experiment in it, e.g. benchmarks/results/experiments#chgnet_augment_struct); repeatable")
    p.add_argument("--baseline-run", action="append", default=[], metavar="NAME=FOLDER[#EXPERIMENT]",
                   help="as --run, and the run competes as a baseline")
    p.add_argument("--folds", type=int, help="number of folds of the k-fold schemes (family, group, kfold; "
                                             "default: the spec's, 10)")
    p.add_argument("--fold-seed", type=int, help="seed of the k-fold schemes' folds (default: the spec's, 0)")
    p.add_argument("--elements", help="comma-separated elements held out by loeo / l2eo (default: all but O)")
    p.add_argument("--limit", type=int, metavar="K", help="only the first K folds of every scheme (a smoke run)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override added to every expert model, e.g. --set training.epochs=2 (repeatable)")
    p.add_argument("--data", help="data directory (default: $ADEX_DATA, else $ADEX_HOME/data)")
    p.add_argument("--registry", help="user registry root (default: $ADEX_HOME/registry)")
    p.set_defaults(func=cmd_evaluate)


def _csv_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def build_spec_from_args(args: argparse.Namespace):
    """The spec of ``args.spec`` with the command line's changes (schemes, models, runs,
    folds, seeds, overrides) applied, validated again."""
    from adex.config import parse_override
    from adex.errors import ConfigError
    from adex.studies.evaluate import (
        build_spec,
        load_spec,
        model_record,
        parse_run_option,
    )

    if not args.spec and not (args.run or args.baseline_run):
        raise ConfigError("give a spec (e.g. new-materials or SPEC.yaml) and/or --run NAME=FOLDER")
    spec = load_spec(args.spec) if args.spec else build_spec({"name": "runs"}, "spec")
    data = spec.to_dict()
    models = [model_record(m) for m in spec.models]
    if args.models:
        wanted = _csv_list(args.models)
        unknown = [w for w in wanted if w not in {m["name"] for m in models}]
        if unknown:
            raise ConfigError(f"--models: {unknown[0]!r} is not a model of the spec "
                              f"({', '.join(dict.fromkeys(m['name'] for m in models))})")
        models = [m for m in models if m["name"] in wanted]
    for text, baseline in [(t, None) for t in args.run] + [(t, True) for t in args.baseline_run]:
        run = model_record(parse_run_option(text))
        if baseline:
            run["baseline"] = True
        models.append(run)
    for text in args.overrides:
        key, value = parse_override(text)
        for m in models:
            if m["kind"] == "expert":
                m["set"] = {**m["set"], ".".join(key): value}
    data["models"] = models
    if args.schemes:
        data["schemes"] = _csv_list(args.schemes)
    if args.folds is not None:
        data["folds"] = args.folds
    if args.fold_seed is not None:
        data["fold_seed"] = args.fold_seed
    if args.elements:
        data["elements"] = _csv_list(args.elements)
    return build_spec(data, args.spec or "spec")


def cmd_evaluate(args: argparse.Namespace) -> int:
    import math

    from rich.table import Table

    from adex.errors import AdexError
    from adex.paths import adex_home, cache_dir, check_writable_folder
    from adex.progress import console
    from adex.studies.evaluate import evaluate

    spec = build_spec_from_args(args)
    check_writable_folder(cache_dir(), "the cache folder")
    if not args.out:
        check_writable_folder(adex_home() / "evaluations", "the evaluations folder")
    con = console()
    result = evaluate(spec, out=args.out, data=args.data, registry=args.registry, workers=args.workers,
                      threads=args.threads, resume=args.resume, limit=args.limit,
                      log=lambda line: con.print(line, soft_wrap=True, highlight=False))
    table = Table(title=f"{spec.name}: MAE in eV (mean ± std over folds; folds won against the best baseline)")
    for column in ("model", "scheme", "folds", "MAE", "pooled", "RMSE", "O", "metal", "host offset std", "won",
                   "best baseline"):
        table.add_column(column, justify="left" if column in ("model", "scheme", "best baseline") else "right")

    def fmt(value) -> str:
        return "–" if value is None or not math.isfinite(value) else f"{value:.3f}"

    for r in result.rows:
        table.add_row(r["model"], r["scheme"], str(r["n_folds"]), f"{fmt(r['mae_mean'])} ± {fmt(r['mae_std'])}",
                      fmt(r["mae_pooled"]), fmt(r["rmse_pooled"]), fmt(r["mae_O"]), fmt(r["mae_metal"]),
                      fmt(r["host_offset_std"]),
                      "–" if r["folds_won"] is None else f"{r['folds_won']}/{r['folds_compared']}",
                      r["best_baseline"] or "–")
    if not con.is_terminal:  # a log file: no wrapping of the table at 80 columns
        con.width = max(con.width, 150)
    con.print(table)
    if result.families:
        con.print(f"structure families: {result.families}", soft_wrap=True, highlight=False)
    con.print(f"units: {result.ran} run now, {result.reused} reused, {len(result.failed)} failed; "
              f"folder: {result.out}", soft_wrap=True, highlight=False)
    if result.failed:
        unit, message = result.failed[0]
        raise AdexError(f"{len(result.failed)} unit(s) failed (first: {unit}: {message}); see {result.out}/errors.log, "
                        "then --resume to retry them")
    return 0
