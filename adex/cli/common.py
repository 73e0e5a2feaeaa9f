"""Argument helpers shared by the training and prediction subcommands."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--set``, ``--epochs``, ``--limit``, ``--seed``, ``--threads``,
    ``--data``, ``--out``, ``--overwrite``, ``--registry``, ``--no-register``, ``--tag``.

    Commands with these options are checked by :func:`check_training_args` before their
    handler runs (``adex.cli.app.main``)."""
    parser.add_argument("--config", help="YAML config file (default: the shipped config of that name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set model.n_conv=4 (repeatable)")
    parser.add_argument("--epochs", type=int, help="= --set training.epochs=N")
    parser.add_argument("--limit", type=int, help="use only N samples (drawn with the seed)")
    parser.add_argument("--seed", type=int, help="= --set training.seed=N")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", help="cpu, cuda or auto")
    parser.add_argument("--data", help="data directory (default: $ADEX_DATA, else $ADEX_HOME/data)")
    parser.add_argument("--out", help="run folder (default: $ADEX_HOME/runs/<kind>-<name>-<time>); an existing "
                                      "non-empty folder is refused unless --overwrite (or --resume, where offered)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into an existing non-empty --out folder (files of the same name are replaced)")
    parser.set_defaults(training_command=True)
    parser.add_argument("--registry", help="user registry root (default: $ADEX_HOME/registry)")
    parser.add_argument("--no-register", action="store_true", help="do not store the model in the registry")
    parser.add_argument("--tag", action="append", default=[], help="extra registry alias for the new version")


def training_overrides(args: argparse.Namespace) -> list[str]:
    """``--set`` overrides plus the shortcut flags, as KEY=VALUE strings (flags last, so they win)."""
    overrides = list(args.overrides)
    for flag, key in (("epochs", "training.epochs"), ("limit", "training.limit"), ("seed", "training.seed"),
                      ("threads", "training.threads"), ("device", "training.device")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides.append(f"{key}={value}")
    return overrides


def open_registry_from(args: argparse.Namespace):
    from adex.registry import Registry

    return Registry(root=getattr(args, "registry", None))


def check_out_folder(args: argparse.Namespace) -> None:
    """``--out`` must be a new or empty folder, unless ``--overwrite`` or ``--resume``
    say otherwise (a run never silently replaces another run's files)."""
    from adex.errors import ConfigError

    out = getattr(args, "out", None)
    if not out:
        return
    path = Path(out).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a folder")
    if getattr(args, "overwrite", False) or getattr(args, "resume", False):
        return
    if path.is_dir() and any(path.iterdir()):
        resume = ", or --resume to continue it" if hasattr(args, "resume") else ""
        raise ConfigError(f"--out {out} exists and is not empty (an earlier run?): give a new folder, "
                          f"--overwrite to replace its files{resume}")


def check_training_args(args: argparse.Namespace) -> None:
    """Checks before any training starts: ``--out`` (:func:`check_out_folder`), ``--limit``
    (a number of samples >= 1), and the folders under ``$ADEX_HOME`` it will write (the
    featurization cache, and the runs folder when there is no ``--out``)."""
    from adex.errors import ConfigError
    from adex.paths import cache_dir, check_writable_folder, runs_dir

    limit = getattr(args, "limit", None)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be a number of samples >= 1, not {limit}")
    check_out_folder(args)
    check_writable_folder(cache_dir(), "the cache folder")
    if not getattr(args, "out", None):
        check_writable_folder(runs_dir(), "the runs folder")
