"""``adex expert train``, ``adex expert ensemble``, ``adex expert adapt`` and ``adex cv``."""
from __future__ import annotations

import argparse

from adex.cli.common import add_training_options, open_registry_from, training_overrides


def register(subparsers: argparse._SubParsersAction) -> None:
    register_cv(subparsers)
    register_experiments(subparsers)
    parser = subparsers.add_parser("expert", help="train the vacancy expert")
    parser.set_defaults(func=lambda args: (parser.print_help(), 1)[1])
    sub = parser.add_subparsers(dest="expert_command", metavar="SUBCOMMAND")
    p = sub.add_parser("train", help="train an expert on the Witman vacancies and register it",
                       description="e.g. `adex expert train --advisors bandgap,eform --split 1.00k0`")
    add_expert_options(p)
    p.add_argument("--split", help="published split, e.g. 1.00k0, 1.00k0_struct, CS_Ba (default: random split)")
    add_training_options(p)
    p.set_defaults(func=cmd_train)

    c = sub.add_parser("ensemble", help="register several trained experts as one ensemble (mean and std)",
                       description="e.g. `adex expert ensemble vacancy:3 vacancy:4 vacancy:5 --name vacancy-ens`; "
                                   "members must share featurizer, supercell settings and advisors")
    c.add_argument("refs", nargs="+", help="expert references (ensembles are flattened into their members)")
    c.add_argument("--name", default="vacancy", help="registry name of the new ensemble (default: vacancy)")
    c.add_argument("--tag", action="append", default=[], help="extra registry alias for the new version")
    c.add_argument("--registry", help="user registry root (default: $ADEX_HOME/registry)")
    c.set_defaults(func=cmd_ensemble)

    a = sub.add_parser("adapt", help="fine-tune an expert's output head on a few DFT labels; register a new version",
                       description="e.g. `adex expert adapt builtin::expert/vacancy:4 --data labelled.csv`: "
                                   "labelled.csv has the columns structure, site, dH_eV (paths relative to its folder, "
                                   "the format of `adex predict --known`); only the output head of each member is "
                                   "trained (full-batch Adam, the rest frozen, no dropout); the new version's card "
                                   "names the parent, the data's sha256, the settings and the MAE on the labels "
                                   "before / after")
    a.add_argument("ref", help="expert reference to adapt (resolved to its exact version)")
    a.add_argument("--data", required=True, help="labelled vacancies: CSV with structure, site, dH_eV")
    a.add_argument("--epochs", type=int, default=50, help="full-batch optimisation steps (default 50; 0 = the parent)")
    a.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the head (default 1e-3)")
    a.add_argument("--seed", type=int, default=0, help="torch seed (member k gets SEED+k; default 0)")
    a.add_argument("--name", help="registry name of the new version (default: <parent name>-adapted)")
    a.add_argument("--out", help="folder for metrics.json, labels.csv, registered.json (default: $ADEX_HOME/runs/adapt-<name>-<time>)")
    a.add_argument("--overwrite", action="store_true", help="write into an existing non-empty --out folder")
    a.add_argument("--tag", action="append", default=[], help="extra registry alias for the new version")
    a.add_argument("--registry", help="user registry root (default: $ADEX_HOME/registry)")
    a.set_defaults(func=cmd_adapt)


def add_expert_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", default="default", help="shipped config name or YAML path (default: default)")
    p.add_argument("--advisors", help="comma-separated advisor refs, or 'none' for the scratch baseline")
    p.add_argument("--init-from", help="advisor ref whose backbone initialises the expert's convolutions")
    p.add_argument("--freeze", action="store_true", help="freeze the transferred modules")
    p.add_argument("--unfreeze-every", type=int, help="unfreeze one more transferred module every N epochs")
    p.add_argument("--pooling", help="vacancy, neighborhood, attention, mean, max or random")
    p.add_argument("--ensemble", type=int, metavar="N",
                   help="train N members (seeds SEED..SEED+N-1) stored as one ensemble; predictions give mean and std")


def register_cv(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "cv", help="cross-validate the expert (published folds, k-fold, grouped by host, leave elements out)",
        description="e.g. `adex cv --advisors bandgap,eform --cv published` (the 10 published folds 1.00k0..k9), "
                    "`--cv published_struct` (per compound), `--cv group` (GroupKFold by host), `--cv loeo` "
                    "(leave one element out), `--cv published@0.10` (10 %% training data)")
    add_expert_options(p)
    p.add_argument("--cv", default="published", help="published, published_struct, kfold, group, loeo, l2eo, "
                                                      "published@0.40 ... (default: published)")
    p.add_argument("--folds", type=int, default=10, help="number of folds (k-fold schemes, published folds used, "
                                                          "l2eo pairs drawn; default 10)")
    p.add_argument("--fold", action="append", default=[], metavar="NAME", help="run only this fold (repeatable)")
    p.add_argument("--elements", help="comma-separated elements for loeo / l2eo (default: every element but O)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out: folds whose folder holds finished results are read "
                        "back, the others trained (the config must be the one the folder was started with)")
    add_training_options(p)
    p.set_defaults(func=cmd_cv)


def _csv_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _csv_numbers(text: str, kind: type, option: str) -> list:
    """Comma-separated numbers of ``kind`` (int or float); a bad item is a ConfigError naming ``option``."""
    from adex.errors import ConfigError

    values = []
    for item in _csv_list(text):
        try:
            values.append(kind(item))
        except ValueError:
            raise ConfigError(f"{option}: {item!r} is not {'an integer' if kind is int else 'a number'}") from None
    return values


def register_experiments(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("experiment", help="learning curves and pooling comparisons (cross-validated)")
    parser.set_defaults(func=lambda args: (parser.print_help(), 1)[1])
    sub = parser.add_subparsers(dest="experiment_command", metavar="EXPERIMENT")
    lc = sub.add_parser("learning-curve", help="CV MAE vs training size for scratch / advised / transfer variants",
                        description="e.g. `adex experiment learning-curve --fractions 0.10,0.40,1.00 "
                                    "--variants scratch,advised,transfer-gradual --seeds 0,1,2 --folds 10`")
    add_expert_options(lc)
    lc.add_argument("--fractions", default="0.10,0.40,1.00", help="published training fractions (default 0.10,0.40,1.00)")
    lc.add_argument("--variants", default="scratch,advised,transfer,transfer-frozen,transfer-gradual",
                    help="comma-separated: scratch, advised, transfer, transfer-frozen, transfer-gradual, advised-transfer")
    lc.add_argument("--seeds", default="0,1,2", help="comma-separated seeds per point (default 0,1,2)")
    lc.add_argument("--folds", type=int, default=10, help="published folds k0..k(N-1) per fraction (default 10)")
    lc.add_argument("--per-compound", action="store_true", help="the per-compound (_struct) folds")
    add_training_options(lc)
    lc.set_defaults(func=cmd_learning_curve)

    po = sub.add_parser("pooling", help="every pooling option on the same folds and seeds (expert or advisor)",
                        description="expert: `adex experiment pooling --cv published --folds 3`; advisor: "
                                    "`adex experiment pooling --advisor eform --limit 5000`")
    add_expert_options(po)
    po.add_argument("--advisor", help="compare the poolings of this advisor config (e.g. eform) instead of the expert")
    po.add_argument("--poolings", help="comma-separated (default: all of the model kind)")
    po.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    po.add_argument("--cv", default="published", help="expert folds scheme (as adex cv; default published)")
    po.add_argument("--folds", type=int, default=10, help="number of folds (default 10)")
    add_training_options(po)
    po.set_defaults(func=cmd_pooling)

    mg = sub.add_parser("merge", help="one learning curve from several learning-curve runs, or one CV from adex cv "
                                      "runs of disjoint folds",
                        description="e.g. `adex experiment merge RUNS/lc-variants RUNS/lc-seeds --out RUNS/lc-all`, or "
                                    "`adex experiment merge RUNS/cv-k0-k4 RUNS/cv-k5-k9 --out RUNS/cv` (adex cv --fold "
                                    "subsets of one config run in parallel)")
    mg.add_argument("runs", nargs="+", help="learning-curve run folders, or adex cv run folders of disjoint folds")
    mg.add_argument("--out", required=True, help="folder for the merged table, metrics.json and figure")
    mg.add_argument("--baseline", action="append", default=[],
                    help="an `adex baseline --cv published[@fraction]` folder to draw as one more line (repeatable)")
    mg.set_defaults(func=cmd_merge)

    bl = sub.add_parser("blend", help="blend (weighted mean) the held-out predictions of CV runs on the same folds",
                        description="e.g. `adex experiment blend RUNS/cv-seed0 RUNS/cv-seed1 RUNS/baseline --out "
                                    "RUNS/blend`: a seed ensemble or a GNN + descriptor blend, cross-validated like its "
                                    "parts (weights are fixed in advance, never fitted on the held-out folds)")
    bl.add_argument("runs", nargs="+", help="adex cv / adex baseline folders tested on the same folds")
    bl.add_argument("--weights", help="comma-separated weights, one per run (default: equal)")
    bl.add_argument("--out", required=True, help="folder for the blended CV files (as adex cv writes them)")
    bl.set_defaults(func=cmd_blend)

    rep = subparsers.add_parser(
        "report", help="Markdown reports and compact summaries of run folders",
        description="`adex report RUNS/cv-* RUNS/learning-curve-* -o report.md`: one Markdown report (tables + "
                    "figures) from run folders. `adex report RUNS/*/ --write-summaries DIR`: their results as a few "
                    "small files (experiments.csv, folds.csv, experiments.json, heldout_predictions.csv.gz). "
                    "`adex report --from-summaries DIR -o results.md [--template results.md]`: Markdown from those "
                    "files; a template's <!-- adex:table --> blocks are refreshed, its text kept "
                    "(e.g. `adex report --from-summaries benchmarks/results/experiments --template docs/results.md "
                    "-o docs/results.md`).")
    rep.add_argument("runs", nargs="*", help="run folders (adex cv, experiment, baseline, expert train)")
    rep.add_argument("-o", "--output", help="Markdown file to write (figures are linked relative to it)")
    rep.add_argument("--write-summaries", metavar="DIR", help="write the summary files of the run folders to DIR")
    rep.add_argument("--from-summaries", metavar="DIR", help="report from the summary files in DIR, not run folders")
    rep.add_argument("--template", help="with --from-summaries: Markdown whose adex blocks are filled in")
    rep.set_defaults(func=cmd_report)


def expert_overrides(args: argparse.Namespace) -> list[str]:
    overrides = training_overrides(args)
    if args.advisors is not None:
        refs = [] if args.advisors.strip().lower() in ("none", "") else [r.strip() for r in args.advisors.split(",") if r.strip()]
        overrides.append(f"advisors=[{', '.join(refs)}]")
    if getattr(args, "split", None) is not None:
        overrides.append(f"split='{args.split}'")
    if args.init_from is not None:
        overrides.append(f"transfer.init_from={args.init_from}")
    if args.freeze:
        overrides.append("transfer.freeze=true")
    if args.unfreeze_every is not None:
        overrides.append(f"transfer.unfreeze_every={args.unfreeze_every}")
    if args.pooling is not None:
        overrides.append(f"model.pooling={args.pooling}")
    if args.ensemble is not None:
        overrides.append(f"ensemble={args.ensemble}")
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    from adex.training import primary_scores
    from adex.config import load_config
    from adex.expert.train import ExpertConfig, train_expert
    from adex.progress import console

    config = load_config(ExpertConfig, "expert", args.config or args.name, expert_overrides(args))
    registry = open_registry_from(args)
    run = train_expert(config, data=args.data, out=args.out, registry=registry, register=not args.no_register,
                       aliases=tuple(args.tag))
    m = run.metrics
    con = console()
    for k, member in enumerate(m.get("members", [])):
        split, t = primary_scores(member)  # test, else val, else train
        con.print(f"member {k} (seed {member['seed']}): {split} MAE {t['mae']:.3f} eV; "
                  f"best epoch {member['best_epoch']} of {member['epochs_run']}, {member['train_seconds']:.0f} s")
    label = f"expert {config.name}" + (f" ({m['ensemble_size']}-member ensemble)" if "members" in m else "")
    if m.get("test"):
        s = m["test"]
        con.print(f"[bold]{label}[/] test ({m['split']}): MAE {s['mae']:.3f} eV, RMSE {s['rmse']:.3f} eV, n={s['n']}"
                  + (f" (O {s['mae_O']:.3f}, metal {s['mae_metal']:.3f})" if "mae_O" in s and "mae_metal" in s else ""))
    if m.get("val"):
        con.print(f"[bold]{label}[/] validation MAE {m['val']['mae']:.3f} eV"
                  + (" (mean over members)" if "members" in m else f", n={m['val']['n']}"))
    if m.get("calibration"):
        c = m["calibration"]
        con.print(f"ensemble spread on the test set: mean std {c['mean_std']:.3f} eV; |error| <= 1 std for "
                  f"{c['frac_within_1std']:.0%}, <= 2 std for {c['frac_within_2std']:.0%}; "
                  f"Spearman(|error|, std) {c['spearman_abs_error_std']:.2f}")
    if "members" not in m:
        con.print(f"best epoch {m['best_epoch']} of {m['epochs_run']} ({m['stopped_because']}); "
                  f"{m['seconds_per_epoch']:.2f} s/epoch")
    con.print(f"train {m['train_seconds']:.0f} s, graphs {m['featurize_seconds']:.1f} s, advisors {m['advisor_seconds']:.1f} s")
    con.print(f"run folder: {run.run_dir}")
    if run.entry is not None:
        con.print(f"registered: {run.entry.ref}  (parents: {', '.join(run.entry.parents) or 'none'})")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from adex.expert.ensemble import compose_ensemble
    from adex.progress import console

    entry = compose_ensemble(args.refs, open_registry_from(args), args.name, tuple(args.tag))
    console().print(f"registered: {entry.ref}  ({entry.card['metrics']['ensemble_size']} members; "
                    f"parents: {', '.join(entry.parents)})")
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from adex.cli.common import check_out_folder
    from adex.expert.adapt import adapt_expert, register_adapted
    from adex.expert.loading import load_expert
    from adex.expert.trust import read_known
    from adex.fileio import atomic_write_json, atomic_write_text
    from adex.paths import check_writable_folder, new_run_dir, runs_dir
    from adex.progress import console

    check_out_folder(args)
    if not args.out:
        check_writable_folder(runs_dir(), "the runs folder")
    rows = read_known(args.data)
    registry = open_registry_from(args)
    loaded = load_expert(args.ref, registry)
    name = args.name or f"{loaded.entry.name}-adapted"  # never shadows the built-in parent's name
    registry.check_writable("expert", name)
    model, metrics = adapt_expert(loaded, rows, args.epochs, args.lr, args.seed)
    run_dir = new_run_dir(f"adapt-{name}", args.out)
    settings = {"epochs": args.epochs, "lr": args.lr, "seed": args.seed, "trained": "output head of each member",
                "optimizer": "Adam, full batch", "loss": "mse on the normalised target", "dropout": "off (eval mode)"}
    entry = register_adapted(loaded, model, metrics, registry, args.data, settings, name, tuple(args.tag), run_dir)
    atomic_write_json(run_dir / "metrics.json", {"ref": entry.ref, "parent": loaded.entry.ref, **entry.card["adapted"]})
    atomic_write_json(run_dir / "registered.json", {"ref": entry.ref})
    atomic_write_text(run_dir / "labels.csv", "structure,site,dH_eV\n" + "".join(f"{p},{s},{v!r}\n" for p, s, v in rows))
    con = console()
    b, a = metrics["before"], metrics["after"]
    con.print(f"{loaded.entry.ref} adapted on {metrics['n_labels']} label(s): MAE on the labels {b['mae_eV']:.3f} eV before, "
              f"{a['mae_eV']:.3f} eV after (fitted labels: a training error)")
    if "trust" in entry.card:
        con.print("trust record carried over unchanged (its intervals were calibrated for the parent)")
    con.print(f"run folder: {run_dir}")
    con.print(f"registered: {entry.ref}  (parents: {', '.join(entry.parents)}; data sha256 "
              f"{entry.card['adapted']['data']['sha256'][:12]}...)")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from adex.config import load_config
    from adex.datasets import dataset_root
    from adex.errors import ConfigError
    from adex.studies.cv import GROUPED_SCHEMES, cross_validate
    from adex.studies.splits import make_folds, parse_scheme
    from adex.expert.train import ExpertConfig
    from adex.progress import console

    config = load_config(ExpertConfig, "expert", args.config or args.name, expert_overrides(args))
    kwargs = parse_scheme(args.cv)
    elements = [e.strip() for e in args.elements.split(",")] if args.elements else None
    folds = make_folds(dataset_root("witman2023_vacancies", args.data), n_folds=args.folds, seed=config.training.seed,
                       elements=elements, **kwargs)
    if args.fold:
        unknown = sorted(set(args.fold) - {f.name for f in folds})
        if unknown:
            raise ConfigError(f"--fold {unknown[0]!r} is not a fold of --cv {args.cv} ({', '.join(f.name for f in folds)})")
        folds = [f for f in folds if f.name in args.fold]
    grouped = kwargs["scheme"] in GROUPED_SCHEMES or kwargs.get("per_compound", False)
    con = console()
    con.print(f"cross-validation {args.cv}: {len(folds)} folds ({', '.join(f.name for f in folds)})", soft_wrap=True)
    result = cross_validate(config, folds, data=args.data, registry=open_registry_from(args), out=args.out,
                            grouped=grouped, scheme=args.cv, resume=args.resume,
                            on_fold=lambda k, row: con.print(f"fold {row['fold']}: MAE {row['mae']:.3f} eV, "
                                                             f"RMSE {row['rmse']:.3f} eV (n={row['n_test']})"))
    m = result.metrics
    con.print(f"[bold]{args.cv}[/] {m['n_folds']} folds: MAE {m['mae_mean']:.3f} ± {m['mae_std']:.3f} eV, "
              f"RMSE {m['rmse_mean']:.3f} ± {m['rmse_std']:.3f} eV (mean ± std over folds); pooled O "
              f"{m['pooled']['mae_O'] if m['pooled']['mae_O'] is not None else float('nan'):.3f}, metal "
              f"{m['pooled']['mae_metal'] if m['pooled']['mae_metal'] is not None else float('nan'):.3f} eV")
    con.print(f"cv folder: {result.out}")
    return 0


def cmd_learning_curve(args: argparse.Namespace) -> int:
    from adex.studies.experiments import learning_curve
    from adex.progress import console

    con = console()
    result = learning_curve(args.config or args.name, expert_overrides(args), _csv_list(args.fractions),
                            _csv_list(args.variants), _csv_numbers(args.seeds, int, "--seeds"), args.folds,
                            per_compound=args.per_compound, data=args.data, registry=open_registry_from(args),
                            out=args.out,
                            on_run=lambda r: con.print(f"{r['fraction']} {r['variant']} seed {r['seed']}: "
                                                       f"CV MAE {r['mae']:.3f} eV ({r['n_folds']} folds)"))
    for r in result["summary"]:
        con.print(f"[bold]{r['fraction']}[/] (n_train {r['n_train']}) {r['variant']}: "
                  f"{r['mae_mean']:.3f} ± {r['mae_std']:.3f} eV over {r['n_seeds']} seeds")
    con.print(f"folder: {result['out']}")
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adex.studies.experiments import merge_learning_curves
    from adex.progress import console

    if all((Path(r) / "folds.csv").is_file() for r in args.runs):  # adex cv runs: one CV
        from adex.studies.cv import merge_cv_runs

        if args.baseline:
            from adex.errors import ConfigError

            raise ConfigError("--baseline applies to learning curves, not to merging adex cv runs")
        m = merge_cv_runs([Path(r) for r in args.runs], args.out).metrics
        console().print(f"[bold]{m['scheme']}[/] {m['n_folds']} folds: MAE {m['mae_mean']:.3f} ± {m['mae_std']:.3f} eV, "
                        f"RMSE {m['rmse_mean']:.3f} eV (mean ± std over folds)\nfolder: {args.out}")
        return 0
    result = merge_learning_curves([Path(r) for r in args.runs], args.out, [Path(b) for b in args.baseline])
    con = console()
    for r in result["summary"]:
        con.print(f"[bold]{r['fraction']}[/] (n_train {r['n_train']}) {r['variant']}: "
                  f"{r['mae_mean']:.3f} ± {r['mae_std']:.3f} eV (± over {r['spread_over']}; {r['n_seeds']} seed(s))")
    con.print(f"folder: {result['out']}")
    return 0


def cmd_blend(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adex.studies.experiments import blend_runs
    from adex.progress import console

    weights = _csv_numbers(args.weights, float, "--weights") if args.weights else None
    result = blend_runs([Path(r) for r in args.runs], args.out, weights)
    m = result["metrics"]
    con = console()
    for name, mae in m["parts_mae_mean"].items():
        con.print(f"{name}: MAE {mae:.3f} eV")
    con.print(f"[bold]blend[/] ({', '.join(f'{w:.2f}' for w in m['blend']['weights'])}), {m['n_folds']} folds: "
              f"MAE {m['mae_mean']:.3f} ± {m['mae_std']:.3f} eV, RMSE {m['rmse_mean']:.3f} eV (mean ± std over folds)")
    con.print(f"folder: {result['out']}")
    return 0


def cmd_pooling(args: argparse.Namespace) -> int:
    from adex.progress import console

    con = console()
    seeds = _csv_numbers(args.seeds, int, "--seeds")
    report = lambda r: con.print(f"{r['pooling']} seed {r['seed']}: MAE {r['mae']:.4f}")  # noqa: E731
    if args.advisor:
        from adex.cli.common import training_overrides
        from adex.studies.experiments import advisor_pooling_comparison

        poolings = _csv_list(args.poolings) if args.poolings else ["mean", "sum", "max", "attention"]
        result = advisor_pooling_comparison(args.advisor, training_overrides(args), poolings, seeds, data=args.data,
                                            out=args.out, on_run=report)
    else:
        from adex.datasets import dataset_root
        from adex.studies.cv import GROUPED_SCHEMES
        from adex.studies.experiments import pooling_comparison
        from adex.expert.model import POOLINGS
        from adex.studies.splits import make_folds, parse_scheme

        kwargs = parse_scheme(args.cv)
        folds = make_folds(dataset_root("witman2023_vacancies", args.data), n_folds=args.folds, **kwargs)
        grouped = kwargs["scheme"] in GROUPED_SCHEMES or kwargs.get("per_compound", False)
        poolings = _csv_list(args.poolings) if args.poolings else list(POOLINGS)
        result = pooling_comparison(args.config or args.name, expert_overrides(args), poolings, seeds, folds, grouped,
                                    args.cv, data=args.data, registry=open_registry_from(args), out=args.out,
                                    on_run=report)
    for r in result["summary"]:
        con.print(f"[bold]{r['pooling']}[/]: {r['mae_mean']:.4f} ± {r['mae_std']:.4f} over {r['n_seeds']} seeds")
    con.print(f"folder: {result['out']}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adex.errors import AdexError
    from adex.progress import console
    from adex.studies import report

    if args.from_summaries:
        if args.runs or args.write_summaries:
            raise AdexError("--from-summaries reads summary files: give no run folders and no --write-summaries")
        if not args.output:
            raise AdexError("--from-summaries needs -o/--output")
        console().print(f"report: {report.write_results(args.from_summaries, args.output, args.template)}")
        return 0
    if args.template:
        raise AdexError("--template goes with --from-summaries")
    if not args.runs:
        raise AdexError("give run folders (or --from-summaries DIR)")
    if not args.output and not args.write_summaries:
        raise AdexError("give -o/--output (a Markdown report) and/or --write-summaries DIR")
    runs = [Path(r) for r in args.runs]
    if args.write_summaries:
        paths = report.write_summaries(runs, args.write_summaries)
        console().print(f"summaries: {', '.join(str(p) for p in paths.values())}")
    if args.output:
        console().print(f"report: {report.write_report(runs, args.output)}")
    return 0
