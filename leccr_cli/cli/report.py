"""What the command line prints: its two consoles and the tables several commands share."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from leccr_cli.defaults import RECALL_KS
from leccr_cli.utils.devices import is_main_process

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

__all__ = ["console", "err_console", "is_main_process", "metrics_table", "print_metrics"]


def metrics_table(rows: dict[str, dict[str, float]], title: str, row_header: str = "lang") -> Table:
    """A rich table: one row per name (language, system), R@1/5/10 both ways and SumR."""
    table = Table(title=title)
    table.add_column(row_header)
    columns = [f"{name}_r{k}" for name in ("i2t", "t2i") for k in RECALL_KS] + ["sumr"]
    for key in columns:
        direction, _, k = key.partition("_r")
        header = "SumR" if key == "sumr" else f"{direction.upper()} R@{k}"
        table.add_column(header, justify="right")
    for name, metrics in rows.items():
        table.add_row(name, *(f"{metrics[key]:.1f}" if key in metrics else "-" for key in columns))
    return table


def print_metrics(
    rows: dict[str, dict[str, float]], title: str, row_header: str = "lang", note: str | None = None
) -> None:
    """Print the metrics table, then the median and mean ranks of every row (and a note)."""
    console.print(metrics_table(rows, title, row_header=row_header))
    for name, metrics in rows.items():
        console.print(
            f"{name}: median rank i2t {metrics['i2t_medr']:g}, t2i {metrics['t2i_medr']:g}; "
            f"mean rank i2t {metrics['i2t_meanr']:.1f}, t2i {metrics['t2i_meanr']:.1f}"
        )
    if note:
        console.print(note)
