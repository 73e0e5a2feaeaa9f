"""``adex predict``: vacancy formation enthalpies from the command line.

* one site: ``adex predict --structure host.cif --site 12`` (or ``--site-label O2``,
  ``--frac 0.5 0.5 0``);
* every symmetry-distinct vacancy: ``--all-sites``;
* a table: ``--input table.csv`` (columns ``structure``, ``site``; paths relative to the
  table's folder; other columns carried through) -> ``--output`` CSV with ``dH_pred_eV``
  and ``warnings`` (or ``--format json``). Each host is read and featurized once; hosts
  are processed in chunks (bounded memory). ``--workers N`` (N > 1) predicts the chunks
  on a Dask ``LocalCluster`` of N processes, the engine of ``adex screen`` (``--scheduler
  tcp://HOST:8786``: on a running cluster's workers); needs ``pip install 'adex[screen]'``.
  The numbers and the rows' order do not depend on it.
  A table that already has an output column (``dH_pred_eV``, ``dH_std_eV``,
  ``warnings``: an earlier run's output?), repeats a column name, or is the ``--output``
  file is refused: adex never overwrites a column or file of yours.

With an ensemble expert (``adex expert train --ensemble N``) the prediction is the
members' mean and a ``dH_std_eV`` column gives their standard deviation.

Without ``--expert`` the shipped default expert is used (its reference is printed); if it
needs an optional package that is missing (CHGNet), the best shipped expert without one
(``builtin::expert/vacancy-core``) is used instead, with a note.
Hosts with elements absent from the expert's training data, or whose oxidation states
cannot be guessed (for an expert that reads them), are predicted with a warning on stderr
(with ``--input``, also in the row's ``warnings`` column). docs/bad-input.md lists what is
refused and what is warned.

An expert registered with a trust record (docs/trust.md) adds a calibrated 90 % interval
(``dH_lo_eV``, ``dH_hi_eV``), an applicability-domain score and flag (``domain``,
``in_domain``) and prints one ``warning:`` line per host outside its domain. ``--known
known.csv`` (columns ``structure``, ``site``, ``dH_eV``: DFT values of your own) corrects
the other vacancies of those hosts (shrunk host offset per O / metal class; the model's
own value stays in ``dH_model_eV``); ``--dataset-offset`` also learns one offset for all
hosts, for DFT settings that differ from the training data's.
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
                   help="--input: processes, each reading, featurizing and predicting whole chunks of hosts; above 1 "
                        "on a Dask LocalCluster (pip install 'adex[screen]'); default 1: this process, no Dask")
    p.add_argument("--scheduler", help="--input: address of a running Dask scheduler, e.g. tcp://HOST:8786 "
                                       "(default: a LocalCluster on this machine when --workers > 1)")
    p.add_argument("--cache", action="store_true",
                   help="--input: keep featurized vacancies in $ADEX_HOME/cache/predict (content-addressed: file bytes, "
                        "sites, featurizer and supercell settings); a rerun over the same files skips featurization")
    p.add_argument("--known", metavar="CSV",
                   help="DFT dH of some vacancies (columns structure, site, dH_eV; your own settings): the others of "
                        "those hosts are corrected (needs an expert with a trust record)")
    p.add_argument("--dataset-offset", nargs="?", const=1.0, type=float, metavar="SD",
                   help="with --known: also learn one offset shared by all hosts (your DFT settings vs the training "
                        "data's), prior standard deviation SD eV (default 1.0)")
    p.add_argument("--registry", help="user registry root (default: $ADEX_HOME/registry)")
    p.set_defaults(func=cmd_predict)


#: columns of an expert with a trust record (expert/trust.py); the last three with --known only
TRUST_COLUMNS = ("dH_lo_eV", "dH_hi_eV", "domain", "in_domain", "dH_model_eV", "offset_eV", "n_known")
NUMBER_COLUMNS = ("dH_pred_eV", "dH_std_eV", "dH_lo_eV", "dH_hi_eV", "domain", "dH_model_eV", "offset_eV")
#: the column of ``--input`` mode holding each row's caveats (unseen elements, oxidation states)
WARNINGS_COLUMN = "warnings"
#: columns ``--input`` mode adds to the table (an input table must not have them)
OUTPUT_COLUMNS = ("dH_pred_eV", "dH_std_eV", *TRUST_COLUMNS, WARNINGS_COLUMN)


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
            import io

            from adex.fileio import atomic_write_text

            buffer = io.StringIO()
            Console(file=buffer, width=120).print(table)
            atomic_write_text(Path(args.output), buffer.getvalue())
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
    _check_options(args)
    con = console()
    from adex.expert.predict import InputWarning
    from adex.registry import ShadowWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # third-party deprecation noise (spglib, pymatgen)
        warnings.simplefilter("always", InputWarning)
        warnings.simplefilter("always", ShadowWarning)
        warnings.showwarning = lambda message, category, *a, **k: print(f"warning: {message}", file=sys.stderr)
        # a warm cache may not need the advisors at all, nor the driver of Dask workers (which load their own)
        lazy = bool(args.input and (args.cache or args.workers > 1 or args.scheduler))
        if args.expert:
            expert = load_expert(args.expert, open_registry_from(args), lazy_advisors=lazy)
        else:
            expert, note = load_default_expert(open_registry_from(args), lazy_advisors=lazy)
            if note:
                print(f"note: {note}", file=sys.stderr)
        legacy = [e.ref for e in [expert.entry, *(a for a, _ in expert.advisors)] if getattr(e, "legacy", False)]
        if legacy:
            print(f"warning: {', '.join(legacy)}: legacy card (no card_sha256, written by an older adex): the model files "
                  "are verified, the card's content is not", file=sys.stderr)
        from adex.expert.ensemble import as_members

        n_members = len(as_members(expert.model))
        con.print(f"expert: {expert.entry.ref}" + (f" ({n_members}-member ensemble)" if n_members > 1 else "")
                  + (f" (advisors: {', '.join(e.ref for e, _ in expert.advisors)})" if expert.advisors else ""), soft_wrap=True)
        from adex.expert.trust import expert_trust

        trust = expert_trust(expert)
        if trust is None and args.known:
            raise AdexError(f"--known needs an expert with a trust record (docs/trust.md); {expert.entry.ref} has none")
        if args.structure:
            return _predict_structure(args, expert, con, trust)
        return _predict_table(args, expert, con, trust)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse, before the expert is loaded, options that cannot work (one-line errors)."""
    from adex.errors import AdexError, StructureError

    if args.dataset_offset is not None and not args.known:
        raise AdexError("--dataset-offset needs --known (the DFT values it is learned from)")
    if args.dataset_offset is not None and not args.dataset_offset > 0:
        raise AdexError(f"--dataset-offset SD must be > 0 eV, not {args.dataset_offset}")
    if args.known and not Path(args.known).is_file():
        raise AdexError(f"--known {args.known}: no such file")
    if args.batch_size < 1:
        raise AdexError(f"--batch-size must be >= 1, not {args.batch_size}")
    if args.workers < 1:
        raise AdexError(f"--workers must be >= 1, not {args.workers}")
    if args.scheduler and not args.input:
        raise AdexError("--scheduler is for --input tables (one --structure is predicted in this process)")
    if args.input and (args.workers > 1 or args.scheduler):
        from adex.expert.screening import require_screen_extras

        require_screen_extras("--scheduler" if args.scheduler else f"--workers {args.workers}", parquet=False)
        if args.scheduler and args.workers > 1:
            print("note: --workers is for the LocalCluster; the cluster at --scheduler has its own workers", file=sys.stderr)
    if args.structure and Path(args.structure).is_dir():
        raise StructureError(f"{args.structure}: is a folder, not a structure file")
    if args.input:
        table = Path(args.input)
        if table.is_dir():
            raise AdexError(f"{table}: is a folder, not a table (CSV file)")
        if not table.is_file():
            raise AdexError(f"{table}: no such file")
    if args.output:
        output = Path(args.output)
        if output.is_dir():
            raise AdexError(f"--output {output}: is a folder; give a file name")
        if args.input and _same_file(output, Path(args.input)):
            raise AdexError(f"--output {output} is the --input table: it would be replaced; write to another file")
    if args.cache and args.input:
        from adex.paths import cache_dir, check_writable_folder

        check_writable_folder(cache_dir(), "the cache folder (--cache)")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return a.samefile(b)
        return a.resolve() == b.resolve()
    except OSError:
        return False


def _trust_columns(args, expert, trust, predictions: dict, domains: dict | None = None) -> tuple[list[str], dict]:
    """The trust columns of ``predictions`` (``{(path, site): members [M]}``) and their
    values per key; prints one ``warning:`` line per out-of-domain host. Nothing without
    a trust record."""
    if trust is None:
        return [], {}
    from adex.expert.trust import read_known, table_trust

    # the few --known vacancies absent from the table are predicted in this process (as the trust
    # inputs of every host are computed): a second Dask cluster would cost more than they do
    values, lines = table_trust(expert, trust, predictions, read_known(args.known) if args.known else None,
                                args.dataset_offset or False, cache=args.cache, batch_size=args.batch_size,
                                domains=domains)
    for line in lines:
        print(f"warning: {line}", file=sys.stderr)
    present = {column for row in values.values() for column in row}
    columns = [c for c in TRUST_COLUMNS if c in present]
    return columns, {key: {c: _rounded(row[c]) for c in ("dH_pred_eV", *columns) if c in row} for key, row in values.items()}


def _rounded(value):
    """Table values as the CLI writes them: floats to 4 decimals, numpy scalars as Python ones."""
    import numpy as np

    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    return round(float(value), 4)


def _predict_structure(args, expert, con, trust=None) -> int:
    from adex.errors import AdexError
    from adex.expert.predict import check_host_cell, featurize_host_sites
    from adex.io import read_hosts
    from adex.supercell import distinct_sites, site_from_frac, site_from_label

    host = read_hosts([args.structure])[0][0]  # site i is the file's i-th atom
    check_host_cell(host, args.structure)  # before any symmetry analysis
    symprec = expert.model.supercell.get("symprec", 0.01)
    if args.all_sites:
        infos = distinct_sites(host, symprec)
        sites = [info.index for info in infos]
    elif args.site_label:  # a label shared by inequivalent atoms is refused, naming them
        sites = [site_from_label(args.structure, args.site_label, host, symprec)]
    elif args.frac:
        sites = [site_from_frac(host, args.frac)]
    elif args.site:
        sites = list(args.site)
    else:
        raise AdexError("which vacancy? give --site N, --site-label L, --frac X Y Z or --all-sites")
    from adex.expert.predict import predict_packed_members

    packed = featurize_host_sites(expert, host, sites, Path(args.structure).name)
    members = predict_packed_members(expert, packed, args.batch_size)
    value_columns, values = _value_columns(members)
    path = str(Path(args.structure).resolve())
    trust_columns, trusted = _trust_columns(args, expert, trust, {(path, s): members[:, k] for k, s in enumerate(sites)})
    rows = [
        {"site": s, "element": packed.info[k, 0], "wyckoff": packed.info[k, 1], **values[k], **trusted.get((path, s), {})}
        for k, s in enumerate(sites)
    ]
    _emit(rows, ["site", "element", "wyckoff", *value_columns, *trust_columns], args, expert.entry.ref)
    return 0


def read_table(table_path: Path) -> tuple[list[str], list[dict], list[int]]:
    """(columns, rows as dicts, the line number of each row) of a CSV table, checked:
    UTF-8 text (a BOM is fine), no NUL bytes, a header without repeated or output column
    names (:data:`OUTPUT_COLUMNS`), and no row longer than the header (a shorter row is
    padded with empty fields). Empty lines are skipped. AdexError (one line) otherwise."""
    import io

    from adex.errors import AdexError

    try:
        raw = table_path.read_bytes()
    except OSError as exc:
        raise AdexError(f"{table_path}: cannot read ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise AdexError(f"{table_path}: not a UTF-8 text table (byte {exc.start}); save it as CSV in UTF-8") from None
    if "\x00" in text:
        raise AdexError(f"{table_path}: not a text table (NUL bytes); save it as CSV")
    reader = csv.reader(io.StringIO(text, newline=""))
    columns, rows, lines = None, [], []
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # an empty line
            if columns is None:
                columns = record
                continue
            if len(record) > len(columns):
                raise AdexError(f"{table_path}:{reader.line_num}: {len(record)} fields, but the header has "
                                f"{len(columns)} ({', '.join(columns)})")
            rows.append(dict(zip(columns, record + [""] * (len(columns) - len(record)))))
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise AdexError(f"{table_path}:{reader.line_num}: not a valid CSV table ({exc})") from None
    columns = columns or []
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        raise AdexError(f"{table_path}: column {repeated[0]!r} appears {columns.count(repeated[0])} times in the header; "
                        "column names must be unique")
    taken = [c for c in OUTPUT_COLUMNS if c in columns]
    if taken:
        raise AdexError(f"{table_path}: already has a column {taken[0]!r} (an earlier run's output?); adex writes "
                        f"{', '.join(OUTPUT_COLUMNS)} and never overwrites a column: "
                        "rename or drop it")
    return columns, rows, lines


def _predict_table(args, expert, con, trust=None) -> int:
    import numpy as np

    from adex.errors import AdexError, StructureError
    from adex.progress import progress_bar

    table_path = Path(args.input)
    columns, rows, lines = read_table(table_path)
    missing = [c for c in ("structure", "site") if c not in columns]
    if missing:
        raise AdexError(f"{table_path}: missing column {missing[0]!r} (need 'structure' and 'site')")
    by_host: dict[str, list[int]] = {}
    if not rows:
        raise AdexError(f"{table_path}: no rows (need one row per vacancy: structure, site)")
    keys = []
    for line, row in zip(lines, rows):
        if not row["structure"].strip():
            raise AdexError(f"{table_path}:{line}: empty 'structure' field")
        try:
            site = int(row["site"])
        except (TypeError, ValueError):
            raise AdexError(f"{table_path}:{line}: site {row.get('site')!r} is not an integer atom index") from None
        path = Path(row["structure"]).expanduser()
        path = (path if path.is_absolute() else table_path.parent / path).resolve()
        if path.is_dir():
            raise StructureError(f"{table_path}:{line}: structure {row['structure']!r} is a folder, not a structure file")
        keys.append((str(path), site))
        by_host.setdefault(str(path), []).append(site)
    jobs = [(path, sorted(set(sites))) for path, sites in by_host.items()]
    caveats: dict[str, str] = {}
    engine = (f"Dask at {args.scheduler}" if args.scheduler
              else f"{args.workers} workers" if args.workers > 1 else "1 process")
    with progress_bar() as progress:
        task = progress.add_task(f"vacancies ({engine})", total=sum(len(s) for _, s in jobs))
        domains: dict | None = {} if trust is not None else None  # the trust columns' inputs, from the prediction
        options = {"on_progress": lambda n: progress.advance(task, n), "cache": args.cache, "caveats": caveats,
                   "domains": domains}
        if args.workers > 1 or args.scheduler:  # the Dask engine of adex screen; workers load the expert themselves
            from adex.expert.screening import predict_sites_dask

            registry = str(Path(args.registry).expanduser().resolve()) if args.registry else None
            predictions = predict_sites_dask(expert, jobs, args.batch_size, workers=args.workers, scheduler=args.scheduler,
                                             registry=registry, **options)
        else:  # this process, no Dask
            from adex.expert.predict import predict_sites

            predictions = predict_sites(expert, jobs, args.batch_size, **options)
    order = list(predictions)
    value_columns, values = _value_columns(np.stack([predictions[k] for k in order], axis=1))
    lookup = dict(zip(order, values))
    trust_columns, trusted = _trust_columns(args, expert, trust, predictions, domains)
    out_rows = [{**row, **lookup[key], **trusted.get(key, {}), WARNINGS_COLUMN: caveats.get(key[0], "")}
                for row, key in zip(rows, keys)]
    _emit(out_rows, columns + value_columns + trust_columns + [WARNINGS_COLUMN], args, expert.entry.ref)
    con.print(f"{len(out_rows)} vacancies in {len(by_host)} hosts" + (f" -> {args.output}" if args.output else ""))
    return 0
