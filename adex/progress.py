"""Rich progress bars shared by featurization, training and prediction."""
from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


def console() -> Console:
    """Console on stderr, so stdout stays clean for results (CSV, JSON, predictions)."""
    return Console(stderr=True)


def progress_bar(**kwargs) -> Progress:
    """A progress bar on stderr; disabled when ``ADEX_NO_PROGRESS`` is set (or ``disable=True``,
    e.g. on every process but rank 0 of a distributed run)."""
    disable = kwargs.pop("disable", False) or bool(os.environ.get("ADEX_NO_PROGRESS"))
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}" if kwargs.pop("info", False) else ""),
        console=console(),
        disable=disable or not sys.stderr,
        transient=kwargs.pop("transient", False),
        **kwargs,
    )
