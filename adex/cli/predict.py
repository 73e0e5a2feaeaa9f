"""``adex predict``: vacancy formation enthalpies from the command line.

* one site: ``adex predict --structure host.cif --site 12`` (or ``--site-label O2``,
  ``--frac 0.5 0.5 0``);
* every symmetry-distinct vacancy: ``--all-sites``;
* a table: ``--input table.csv`` (columns ``structure``, ``site``; paths relative to the
  table's folder; other columns carried through) -> ``--output`` CSV with ``dH_pred_eV``
  (or ``--format json``). Each host is read and featurized once; hosts are processed in
  chunks (bounded memory), by ``--workers N`` processes in parallel.

With an ensemble expert (``adex expert train --ensemble N``) the prediction is the
members' mean and a ``dH_std_eV`` column gives their standard deviation.

Without ``--expert`` the shipped default expert is used (its reference is printed); if it
needs an optional package that is missing (CHGNet), the best shipped expert without one
(``builtin::expert/vacancy-core``) is used instead, with a note.
Hosts with elements absent from the expert's training data, or whose oxidation states
cannot be guessed (for an expert that reads them), are predicted with a warning on stderr.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("predict", help="predict vacancy formation enthalpies (eV)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--expert", help="expert reference (default: the shipped builtin::expert/vacancy)")
    p.add_argument("--structure", help="host structure file (CIF, POSCAR, extxyz, ...)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--site", type=int, action="append", help="0-based atom index in the file (repeatable)")
    where.add_argument("--site-label", help="CIF _atom_site_label of the atom, e.g. O2")
    where.add_argument("--frac", type=float, nargs=3, metavar=("X", "Y", "Z"), help="fractional coordinates of the atom")
    where.add_argument("--all-sites", action="store_true", help="every symmetry-distinct vacancy of the host")
    p.add_argument("--input", help="CSV table with columns structure, site")
    p.add_argument("--output", help="output file (default: stdout)")
    p.add_argument("--format", choices=("table", "csv", "json"), help="output format (default: table on a terminal, else csv)")
    p.add_argument("--batch-size", type=int, default=32, help="vacancies per forward pass (default 32)")
    p.add_argument("--workers", type=int, default=1,
                   help="--input: worker processes, each reading, featurizing and predicting whole chunks of hosts "
                        "(default 1)")
    p.add_argument("--cache", action="store_true",
                   help="--input: keep featurized vacancies in $ADEX_HOME/cache/predict (content-addressed: file bytes, "
                        "sites, featurizer and supercell settings); a rerun over the same files skips featurization")
    p.add_argument("--registry", help="user registry root (default: $ADEX_HOME/registry)")
    p.set_defaults(func=cmd_predict)


NUMBER_COLUMNS = ("dH_pred_eV", "dH_std_eV")


def _prediction_columns(expert, packed, batch_size: int) -> tuple[list[str], list[dict]]:
    """Output columns and one dict per vacancy: ``dH_pred_eV`` (the member mean for an
    ensemble) and, for an ensemble, ``dH_std_eV`` (population std over its members)."""
    from adex.expert.predict import predict_packed_members

    return _value_columns(predict_packed_members(expert, packed, batch_size))


def _value_columns(members) -> tuple[list[str], list[dict]]:
    """Columns and rows from member predictions [M, B] (eV)."""
    from adex.expert.ensemble import ensemble_statistics

    mean, std = ensemble_statistics(members)
    if len(members) == 1:
        return ["dH_pred_eV"], [{"dH_pred_eV": round(float(m), 4)} for m in mean]
    return ["dH_pred_eV", "dH_std_eV"], [{"dH_pred_eV": round(float(m), 4), "dH_std_eV": round(float(s), 4)}
                                         for m, s in zip(mean, std)]


def _emit(rows: list[dict], columns: list[str], args: argparse.Namespace, title: str) -> None:
    fmt = args.format or ("table" if (args.output is None and sys.stdout.isatty()) else "csv")
    if fmt == "json":
        text = json.dumps({"expert": title, "predictions": rows}, indent=2) + "\n"
    elif fmt == "csv":
        import io

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"vacancy formation enthalpy, expert {title}")
        for column in columns:
            table.add_column(column, justify="right" if column in NUMBER_COLUMNS else "left")
        for row in rows:
            table.add_row(*(f"{row[c]:.3f}" if c in NUMBER_COLUMNS else str(row.get(c, "")) for c in columns))
        if args.output:
            with open(args.output, "w") as handle:
                Console(file=handle, width=120).print(table)
        else:
            Console().print(table)
        return
    if args.output:
        from adex.fileio import atomic_write_text

        atomic_write_text(Path(args.output), text)
    else:
        sys.stdout.write(text)


def cmd_predict(args: argparse.Namespace) -> int:
    from adex.cli.common import open_registry_from
    from adex.errors import AdexError
    from adex.expert.loading import load_default_expert, load_expert
    from adex.progress import console

    if bool(args.structure) == bool(args.input):
        raise AdexError("give either --structure FILE (with --site, --site-label, --frac or --all-sites) or --input TABLE.csv")
    con = console()
    from adex.expert.predict import InputWarning
    from adex.registry import ShadowWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # third-party deprecation noise (spglib, pymatgen)
        warnings.simplefilter("always", InputWarning)
        warnings.simplefilter("always", ShadowWarning)
        warnings.showwarning = lambda message, category, *a, **k: print(f"warning: {message}", file=sys.stderr)
        lazy = bool(args.input and args.cache)  # a warm cache may not need the advisors at all
        if args.expert:
            expert = load_expert(args.expert, open_registry_from(args), lazy_advisors=lazy)
        else:
            expert, note = load_default_expert(open_registry_from(args), lazy_advisors=lazy)
            if note:
                print(f"note: {note}", file=sys.stderr)
        from adex.expert.ensemble import as_members

        n_members = len(as_members(expert.model))
        con.print(f"expert: {expert.entry.ref}" + (f" ({n_members}-member ensemble)" if n_members > 1 else "")
                  + (f" (advisors: {', '.join(e.ref for e, _ in expert.advisors)})" if expert.advisors else ""), soft_wrap=True)
        if args.structure:
            return _predict_structure(args, expert, con)
        return _predict_table(args, expert, con)


def _predict_structure(args, expert, con) -> int:
    from adex.errors import AdexError
    from adex.expert.predict import featurize_host_sites
    from adex.io import read_hosts
    from adex.supercell import distinct_sites, site_from_frac, site_from_label

    host = read_hosts([args.structure])[0][0]  # site i is the file's i-th atom
    if args.all_sites:
        infos = distinct_sites(host, expert.model.supercell.get("symprec", 0.01))
        sites = [info.index for info in infos]
    elif args.site_label:
        sites = [site_from_label(args.structure, args.site_label)]
    elif args.frac:
        sites = [site_from_frac(host, args.frac)]
    elif args.site:
        sites = list(args.site)
    else:
        raise AdexError("which vacancy? give --site N, --site-label L, --frac X Y Z or --all-sites")
    packed = featurize_host_sites(expert, host, sites, Path(args.structure).name)
    value_columns, values = _prediction_columns(expert, packed, args.batch_size)
    rows = [
        {"site": s, "element": packed.info[k, 0], "wyckoff": packed.info[k, 1], **values[k]}
        for k, s in enumerate(sites)
    ]
    _emit(rows, ["site", "element", "wyckoff", *value_columns], args, expert.entry.ref)
    return 0


def _predict_table(args, expert, con) -> int:
    import numpy as np

    from adex.errors import AdexError
    from adex.expert.predict import predict_sites
    from adex.progress import progress_bar

    table_path = Path(args.input)
    if not table_path.is_file():
        raise AdexError(f"{table_path}: no such file")
    with open(table_path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    missing = [c for c in ("structure", "site") if c not in columns]
    if missing:
        raise AdexError(f"{table_path}: missing column {missing[0]!r} (need 'structure' and 'site')")
    by_host: dict[str, list[int]] = {}
    if not rows:
        raise AdexError(f"{table_path}: no rows (need one row per vacancy: structure, site)")
    for line, row in enumerate(rows, start=2):
        if not row.get("structure"):
            raise AdexError(f"{table_path}:{line}: empty 'structure' field")
        try:
            row["_site"] = int(row["site"])
        except (TypeError, ValueError):
            raise AdexError(f"{table_path}:{line}: site {row.get('site')!r} is not an integer atom index") from None
        path = Path(row["structure"]).expanduser()
        row["_path"] = str((path if path.is_absolute() else table_path.parent / path).resolve())
        by_host.setdefault(row["_path"], []).append(row["_site"])
    if args.workers < 1:
        raise AdexError(f"--workers must be >= 1, not {args.workers}")
    jobs = [(path, sorted(set(sites))) for path, sites in by_host.items()]
    with progress_bar() as progress:
        task = progress.add_task(f"vacancies ({args.workers} worker{'s' if args.workers > 1 else ''})",
                                 total=sum(len(s) for _, s in jobs))
        predictions = predict_sites(expert, jobs, args.batch_size, args.workers,
                                    on_progress=lambda n: progress.advance(task, n), cache=args.cache)
    keys = list(predictions)
    value_columns, values = _value_columns(np.stack([predictions[k] for k in keys], axis=1))
    lookup = dict(zip(keys, values))
    out_rows = []
    for row in rows:
        key = (row.pop("_path"), row.pop("_site"))
        out_rows.append({**row, **lookup[key]})
    _emit(out_rows, columns + value_columns, args, expert.entry.ref)
    con.print(f"{len(out_rows)} vacancies in {len(by_host)} hosts" + (f" -> {args.output}" if args.output else ""))
    return 0
