"""`leccr build-slots`: cache the frozen description encoder's features once (DESIGN sections 3, 4)."""

from __future__ import annotations

from pathlib import Path

import typer


def build_slots_command(
    source: Path = typer.Argument(
        ..., metavar="RECIPE_OR_RUN", help="A recipe file (the encoder is built as `leccr train` builds it) or a run folder (its model/)."
    ),
    split: str = typer.Option("all", "--split", help="Splits to cache, comma-separated, or 'all'."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Descriptions per batch (default: the recipe's eval.batch_size)."),
    dtype: str = typer.Option("fp16", "--dtype", help="Storage dtype of the features: fp16, bf16 or fp32."),
    overrides: list[str] = typer.Option([], "--set", help="Override a recipe key, as for `leccr train` (recipe files only)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild caches that exist (even when they are up to date)."),
) -> None:
    """Cache the frozen description encoder's features of every description, once.

    Writes CORPUS/slots/<encoder>/<split>.safetensors; training and evaluation read it instead of running the encoder (model.description_features: cache or auto). Only for model.description_encoder: frozen. Resumable per split: a split whose cache is complete and matches is skipped.
    """
    from rich.table import Table

    from leccr_cli.console import console
    from leccr_cli.slots import build_slots

    reports = build_slots(source, splits=split, overrides=overrides, batch_size=batch_size, dtype=dtype, overwrite=overwrite)
    table = Table(title="Slot caches")
    for column in ("split", "status", "rows", "longest", "dtype", "MB", "file"):
        table.add_column(column, justify="right" if column in ("rows", "longest", "MB") else "left")
    for r in reports:
        table.add_row(r.split, r.status, str(r.rows), str(r.longest), r.dtype, f"{r.bytes / 2**20:.1f}", str(r.path))
    console.print(table)
