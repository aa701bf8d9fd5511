"""`leccr build-slots`: cache the frozen description encoder's features once."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import BatchSize, Device, Dtype, Overrides, Overwrite, Splits
from leccr_cli.defaults import SLOT_CACHE_DTYPE


def build_slots_command(
    ctx: typer.Context,
    source: Path = typer.Argument(
        ...,
        metavar="RECIPE_OR_RUN",
        help="A recipe file (the encoder is built as `leccr train` builds it) or a run folder (its model/).",
    ),
    splits: Splits = "all",
    batch_size: BatchSize = None,
    dtype: Dtype = SLOT_CACHE_DTYPE,
    device: Device = None,
    overrides: Overrides = [],
    overwrite: Overwrite = False,
) -> None:
    """Cache the frozen description encoder's features of every description, once.

    Writes CORPUS/slots/<encoder>/<split>.safetensors; training and evaluation read it instead of running the encoder
    (model.description_features: cache or auto). Only for model.description_encoder: frozen. --dtype is the storage
    dtype (auto stores fp16); --batch-size defaults to the recipe's eval.batch_size; --set changes the recipe (of a
    run: its data and eval keys). Resumable per split: a split whose cache is complete and matches is skipped;
    --overwrite rebuilds caches that exist.
    """
    from rich.table import Table

    from leccr_cli.cli.errors import rerun_command, says_when_interrupted
    from leccr_cli.cli.report import console, err_console
    from leccr_cli.prep.features.build import build_slots

    kept = (
        f"the caches of finished splits are kept (the split in progress is not); `{rerun_command(ctx)}` builds the rest"
    )
    with says_when_interrupted(kept):
        reports = build_slots(
            source,
            splits=splits,
            overrides=overrides,
            batch_size=batch_size,
            dtype=dtype,
            device=device,
            overwrite=overwrite,
            console=err_console,
        )
    table = Table(title="Slot caches")
    for column in ("split", "status", "rows", "longest", "dtype", "MB", "file"):
        table.add_column(column, justify="right" if column in ("rows", "longest", "MB") else "left")
    for r in reports:
        table.add_row(r.split, r.status, str(r.rows), str(r.longest), r.dtype, f"{r.bytes / 2**20:.1f}", str(r.path))
    console.print(table)
