"""Progress on a console the caller passes: the core draws bars there and prints nothing itself.

Every long job of the core takes `console` (a `rich.console.Console`, or None for silence);
the command line passes its stderr console. Bars are drawn by the main process only.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

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

from leccr_cli.utils.devices import is_main_process


class RateColumn(ProgressColumn):
    """Items per second of a task, e.g. `3.52 images/s` (blank until rich has a speed estimate)."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else "", style="progress.data.speed")


def progress(console: Console | None, *extra_columns, transient: bool = False) -> Progress:
    """A progress bar on `console` with count, extra columns and ETA; silent without a console and off the main process.

    A `transient` bar disappears when done (and is not drawn where the console is not a terminal).
    """
    disable = console is None or not is_main_process() or (transient and not console.is_terminal)
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *extra_columns,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
        transient=transient,
    )


@contextlib.contextmanager
def status(console: Console | None, message: str) -> Iterator[None]:
    """A spinner with `message` on `console` while the block runs (none without a console or off the main process)."""
    if console is None or not is_main_process():
        yield
        return
    with console.status(message):
        yield


def say(console: Console | None, message: str) -> None:
    """One line on `console` from the main process (nothing without a console)."""
    if console is not None and is_main_process():
        console.print(message, soft_wrap=True, highlight=False)
