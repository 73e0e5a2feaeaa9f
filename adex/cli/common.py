"""Argument helpers shared by the training and prediction subcommands."""
from __future__ import annotations

import argparse


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """``--config``, ``--set``, ``--epochs``, ``--limit``, ``--seed``, ``--threads``,
    ``--data``, ``--out``, ``--registry``, ``--no-register``, ``--tag``."""
    parser.add_argument("--config", help="YAML config file (default: the shipped config of that name)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config field, e.g. --set model.n_conv=4 (repeatable)")
    parser.add_argument("--epochs", type=int, help="= --set training.epochs=N")
    parser.add_argument("--limit", type=int, help="use only N samples (drawn with the seed)")
    parser.add_argument("--seed", type=int, help="= --set training.seed=N")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--device", help="cpu, cuda or auto")
    parser.add_argument("--data", help="data directory (default: $ADEX_DATA, else $ADEX_HOME/data)")
    parser.add_argument("--out", help="run folder (default: $ADEX_HOME/runs/<kind>-<name>-<time>)")
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
