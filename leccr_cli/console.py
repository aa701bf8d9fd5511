"""The rich consoles and the progress-bar factory shared by every command."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def is_main_process() -> bool:
    """True unless this is a secondary process of a distributed launch."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


def progress(*extra_columns, disable: bool | None = None) -> Progress:
    """A progress bar on stderr with count, rate-friendly extra columns and ETA.

    Silent on non-main processes and when `disable` is true.
    """
    if disable is None:
        disable = not is_main_process()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=disable,
        transient=False,
    )
