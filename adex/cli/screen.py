"""``adex screen``: every symmetry-distinct vacancy of many crystals, on Dask.

    adex screen INPUT... --out DIR [--expert REF] [--scheduler tcp://HOST:8786]
                [--workers N] [--hosts-per-task K] [--input TABLE.csv]

INPUT: structure files (CIF, POSCAR, extxyz), folders of them, or tar archives
(``.tar``, ``.tar.gz``, ...; read member by member, never extracted). ``--input`` adds a
CSV table with a ``structure`` column (paths relative to the table) and an optional
``site`` column (0-based atom index; without it every distinct site).

For each host: the symmetry-distinct sites (Wyckoff letter, multiplicity, defect name
``v_O``), predicted with the expert. Output: Parquet partitions under DIR (``vacancies/``,
one row per distinct vacancy; ``hosts/``, one row per host with the lowest dH overall
and per element; ``errors/``, hosts that could not be read or featurized, with the
reason), ``screen.json`` and ``summary.json``. Rerunning the same command resumes:
finished partitions are skipped. Read with ``pandas.read_parquet("DIR/vacancies")``.

Runs on a Dask ``LocalCluster`` (``--workers`` processes, default the cores, one
thread each) or on a running cluster (``--scheduler``; docs/screening.md shows how to
start one). Needs ``pip install 'adex[screen]'`` (dask[distributed], pyarrow).
"""
from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("screen", help="predict every distinct vacancy of many crystals (Dask, Parquet)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="structure files, folders or tar archives")
    p.add_argument("--input", dest="table", help="CSV table with columns structure[,site]")
    p.add_argument("--out", required=True, help="output folder (a rerun into it resumes)")
    p.add_argument("--expert", help="expert reference (default: the shipped builtin::expert/vacancy)")
    p.add_argument("--scheduler", help="address of a running Dask scheduler, e.g. tcp://HOST:8786 "
                                       "(default: a LocalCluster on this machine)")
    p.add_argument("--workers", type=int, help="LocalCluster worker processes (default: the cores)")
    p.add_argument("--hosts-per-task", type=int, default=None,
                   help="hosts per Dask task and per partition file (default 32)")
    p.add_argument("--batch-size", type=int, default=32, help="vacancies per forward pass (default 32)")
    p.add_argument("--overwrite", action="store_true", help="replace another screen found in --out")
    p.add_argument("--registry", help="user registry root (default: $ADEX_HOME/registry)")
    p.set_defaults(func=cmd_screen)


def cmd_screen(args: argparse.Namespace) -> int:
    import warnings

    from adex.errors import AdexError
    from adex.expert.screen_inputs import ScreenInputs
    from adex.expert.screening import DEFAULT_HOSTS_PER_TASK, screen
    from adex.progress import console

    con = console()
    if args.batch_size < 1:
        raise AdexError(f"--batch-size must be >= 1, not {args.batch_size}")
    if args.scheduler and args.workers:
        print("note: --workers is for the LocalCluster; the cluster at --scheduler has its own workers", file=sys.stderr)
    inputs = ScreenInputs(tuple(args.inputs), args.table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # third-party deprecation noise (spglib, pymatgen)
        summary = screen(inputs, args.out, expert=args.expert, scheduler=args.scheduler, workers=args.workers,
                         hosts_per_task=args.hosts_per_task or DEFAULT_HOSTS_PER_TASK, batch_size=args.batch_size,
                         registry=args.registry, overwrite=args.overwrite)
    resumed = f", {summary.tasks_skipped} of {summary.tasks} partitions resumed" if summary.tasks_skipped else ""
    con.print(f"{summary.hosts} hosts, {summary.vacancies} vacancies, {summary.hosts_with_errors} hosts with errors"
              f"{resumed} -> {summary.out}", soft_wrap=True, highlight=False)
    con.print(f"this run: {summary.run_hosts} hosts, {summary.run_vacancies} vacancies in {summary.wall_time_s:.1f} s "
              f"({summary.vacancies_per_s:.1f} vacancies/s, {summary.workers} workers)", soft_wrap=True, highlight=False)
    for reason, count in summary.errors_by_reason.items():
        con.print(f"  error: {reason}: {count}", soft_wrap=True, highlight=False)
    return 0
