"""``adex advisor train|embed|predict|import``."""
from __future__ import annotations

import argparse
import json
import sys

from adex.cli.common import add_training_options, open_registry_from, training_overrides
from adex.errors import AdexError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("advisor", help="train advisors, export their embeddings and predictions")
    parser.set_defaults(func=lambda args: (parser.print_help(), 1)[1])
    sub = parser.add_subparsers(dest="advisor_command", metavar="SUBCOMMAND")

    p = sub.add_parser("train", help="train an advisor (configs/advisors/NAME.yaml) and register it",
                       description="Train an advisor, e.g. `adex advisor train eform --epochs 2 --limit 200`.")
    p.add_argument("name", help="shipped config name (bandgap, eform) or a YAML path")
    add_training_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("embed", help="write per-crystal and per-atom embeddings (npz)")
    p.add_argument("ref", help="advisor reference, e.g. eform, eform:3, eform@best")
    p.add_argument("structures", nargs="+", help="structure files (CIF, POSCAR, extxyz, ...)")
    p.add_argument("-o", "--output", required=True, help="output .npz file")
    p.add_argument("--registry", help="user registry root")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("import", help="register an advisor made elsewhere: original CGCNN checkpoints (cgcnn), a "
                                      "foundation model (chgnet) or the hand-made descriptors (descriptors)",
                       description="e.g. `adex advisor import cgcnn formation-energy-per-atom.pth.tar --trust-pickle` "
                                   "(registers advisor/cgcnn-formation-energy; `--all DIR` imports every regression "
                                   "checkpoint of DIR); `adex advisor import chgnet` (needs pip install 'adex[chgnet]'), "
                                   "then `adex expert train --advisors bandgap,eform,chgnet`; `adex advisor import "
                                   "descriptors` registers the descriptor baseline's features (standardised on "
                                   "--n-structures Materials Project crystals from --data) as an advisor.")
    p.add_argument("kind", choices=("cgcnn", "chgnet", "descriptors"), help="which advisor")
    p.add_argument("path", nargs="?", metavar="PATH", help="cgcnn: one CGCNN checkpoint (*.pth.tar)")
    p.add_argument("--all", metavar="DIR", help="cgcnn: import every regression checkpoint in DIR (classifiers are skipped)")
    p.add_argument("--trust-pickle", action="store_true",
                   help="cgcnn: allow reading the pickled checkpoint (unpickling can run code: only for trusted files)")
    p.add_argument("--model", default="0.3.0", help="CHGNet pretrained model name (default 0.3.0)")
    p.add_argument("--crystal-pooling", choices=("mean", "sum"), default="mean",
                   help="chgnet: crystal embedding as the mean over atoms (default; intensive: a supercell of the "
                        "same crystal gets the same vector) or CHGNet's sum readout (extensive; advisor/chgnet:1)")
    p.add_argument("--name", help="registry name (default: the kind; cgcnn: cgcnn-<property>)")
    p.add_argument("--data", help="data directory (descriptors: the MP crystals; default $ADEX_DATA)")
    p.add_argument("--n-structures", type=int, default=200,
                   help="descriptors: MP crystals the standardisation is fitted on (default 200)")
    p.add_argument("--tag", action="append", default=[], help="extra registry alias")
    p.add_argument("--registry", help="user registry root")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser("predict", help="predict the advisor's property for structures")
    p.add_argument("ref")
    p.add_argument("structures", nargs="+")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.add_argument("--registry", help="user registry root")
    p.set_defaults(func=cmd_predict)


def cmd_train(args: argparse.Namespace) -> int:
    from adex.advisors.model import AdvisorConfig
    from adex.advisors.train import train_advisor
    from adex.config import load_config
    from adex.progress import console

    config = load_config(AdvisorConfig, "advisors", args.config or args.name, training_overrides(args))
    registry = None if args.no_register else open_registry_from(args)
    run = train_advisor(config, data=args.data, out=args.out, registry=registry, register=not args.no_register,
                        aliases=tuple(args.tag))
    m = run.metrics
    if run.run_dir is None:  # a non-zero rank of a distributed run: rank 0 reports
        return 0
    con = console()
    from adex.training import primary_scores

    split, test = primary_scores(m)
    con.print(f"[bold]advisor {config.name}[/]: {split} MAE {test['mae']:.4f} {m['unit']} (RMSE {test['rmse']:.4f}, n={test['n']}); "
              f"best epoch {m['best_epoch']} of {m['epochs_run']} ({m['stopped_because']}); "
              f"train {m['train_seconds']:.0f} s, featurize {m['featurize_seconds']:.1f} s")
    if m.get("world_size", 1) > 1:
        con.print(f"distributed: {m['world_size']} processes, replicas in sync: {m['replicas_in_sync']}")
    con.print(f"run folder: {run.run_dir}")
    if run.entry is not None:
        con.print(f"registered: {run.entry.ref}")
    return 0


def _load(args: argparse.Namespace):
    from adex.checkpoint import load_model

    entry = open_registry_from(args).resolve(args.ref, kind="advisor")
    model = load_model(entry)
    return entry, model


def _read_all(paths: list[str]):
    from adex.io import read_structure

    return [read_structure(p) for p in paths]


def cmd_embed(args: argparse.Namespace) -> int:
    from adex.advisors.embed import embed_structures
    from adex.progress import console

    entry, model = _load(args)
    emb = embed_structures(model, _read_all(args.structures), list(args.structures))
    emb.save(args.output)
    console().print(f"{entry.ref}: embeddings of {len(emb.ids)} structures -> {args.output} "
                    f"(crystal {emb.crystal.shape}, atom {emb.atom.shape})")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from adex.advisors.embed import embed_structures

    entry, model = _load(args)
    emb = embed_structures(model, _read_all(args.structures), list(args.structures))
    target = model.target
    rows = [{"structure": i, target: float(p), "unit": emb.unit} for i, p in zip(emb.ids, emb.prediction)]
    if args.format == "json":
        json.dump({"model": entry.ref, "predictions": rows}, sys.stdout, indent=2)
        print()
    elif args.format == "csv":
        print(f"structure,{target}_{emb.unit.replace('/', '_per_')}")
        for row in rows:
            print(f"{row['structure']},{row[target]:.6g}")
    else:
        from rich.table import Table


        table = Table(title=f"{entry.ref}: {target} ({emb.unit})")
        table.add_column("structure")
        table.add_column(f"{target} ({emb.unit})", justify="right")
        for row in rows:
            table.add_row(row["structure"], f"{row[target]:.4f}")
        from rich.console import Console

        Console().print(table)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from adex.progress import console

    if args.kind == "cgcnn":
        return cmd_import_cgcnn(args)
    if args.path or args.all or args.trust_pickle:
        raise AdexError(f"PATH, --all and --trust-pickle are for `adex advisor import cgcnn`, not {args.kind}")
    if args.kind == "descriptors":
        from adex.advisors.descriptors import import_descriptors

        if args.n_structures < 2:
            raise AdexError(f"--n-structures must be >= 2, not {args.n_structures}")
        entry = import_descriptors(open_registry_from(args), args.data, args.n_structures, name=args.name or "descriptors",
                                   aliases=tuple(args.tag))
        std = entry.card["standardization"]
        console().print(f"registered: {entry.ref} ({entry.card['embedding_width']} descriptors, standardised on "
                        f"{std['n_sites']} sites of {std['n_structures']} MP crystals)")
        return 0
    from adex.advisors.chgnet import import_chgnet

    entry = import_chgnet(open_registry_from(args), args.model, args.name or "chgnet", tuple(args.tag),
                          crystal_pooling=args.crystal_pooling)
    console().print(f"registered: {entry.ref} (CHGNet {args.model}, embedding width {entry.card['embedding_width']})")
    return 0


def cmd_import_cgcnn(args: argparse.Namespace) -> int:
    """``adex advisor import cgcnn PATH|--all DIR [--name NAME] [--trust-pickle]``."""
    from adex.advisors.cgcnn import ImportResult, import_cgcnn, import_cgcnn_dir

    if bool(args.path) == bool(args.all):
        raise AdexError("give one CGCNN checkpoint PATH or --all DIR")
    registry = open_registry_from(args)
    if args.all:
        if args.name:
            raise AdexError("--name names one checkpoint; it cannot be used with --all")
        results = import_cgcnn_dir(args.all, registry=registry, trust_pickle=args.trust_pickle)
    else:
        results = [ImportResult(args.path, import_cgcnn(args.path, args.name, registry, args.trust_pickle))]
    for result in results:
        if result.entry is None:
            print(f"skipped: {result.skipped}")
        else:
            target = result.entry.card["target"]
            print(f"imported {result.path} -> {result.entry.ref} ({target['name']}, {target['unit']})")
    return 0
