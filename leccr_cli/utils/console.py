"""The rich consoles and the progress-bar factory shared by every command."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def is_main_process() -> bool:
    """True unless this is a secondary process of a distributed launch."""
    return os.environ.get("RANK", "0") == "0" and os.environ.get("LOCAL_RANK", "0") == "0"


class RateColumn(ProgressColumn):
    """Items per second of a task, e.g. `3.52 images/s` (blank until rich has a speed estimate)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else "", style="progress.data.speed")


def progress(*extra_columns, disable: bool | None = None, transient: bool = False) -> Progress:
    """A progress bar on stderr with count, rate-friendly extra columns and ETA.

    Silent on non-main processes and when `disable` is true; a `transient` bar disappears when done.
    """
    if disable is None:
        disable = not is_main_process()
    # a transient bar shows nothing worth keeping in a log (and leaves an empty line there)
    disable = disable or (transient and not err_console.is_terminal)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=disable,
        transient=transient,
    )
