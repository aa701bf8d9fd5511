"""`leccr index`: embed a corpus split once with a run's best model, for `leccr search` and `leccr app`."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import BatchSize, Device, Dtype, Overwrite, RunOverrides
from leccr_cli.defaults import INDEX_DTYPE, INDEX_SPLIT


def index_command(
    ctx: typer.Context,
    run: Path = typer.Argument(..., metavar="RUN", help="Run folder (its model/ embeds the images)."),
    corpus: Path = typer.Argument(
        ..., metavar="CORPUS", help="Corpus folder, e.g. made by `leccr data import-images`."
    ),
    out: Path = typer.Option(..., "--out", metavar="INDEX", help="Index folder to write (or to update)."),
    split: str | None = typer.Option(
        None, "--split", help=f"Split to index (default: the corpus's only split, or '{INDEX_SPLIT}')."
    ),
    descriptions: str | None = typer.Option(
        None,
        "--descriptions",
        metavar="NAME",
        help="Description source, descriptions/NAME (default: the run's data.descriptions).",
    ),
    dtype: Dtype = INDEX_DTYPE,
    batch_size: BatchSize = None,
    device: Device = None,
    overrides: RunOverrides = [],
    overwrite: Overwrite = False,
) -> None:
    """Embed every image of a corpus split once with a run's best model into an index folder.

    INDEX holds index.json (the model: run and a hash of its weights; corpus, split, count, dims, dtype),
    embeddings.safetensors (global and slot embeddings; --dtype is the storage dtype, auto stores fp16),
    codes.safetensors (the same rows as int8 codes, for the first pass of `leccr search`) and items/ (image id, path,
    description). A LECCR model needs a description of every image (`leccr caption CORPUS`); the baseline needs none.
    Resumable: rerun after an interruption and only the missing images are embedded (finished batches wait in
    INDEX/.parts); rerun after adding images to the corpus (or describing them anew) and only those are. An index
    built by another model, corpus or setting is refused unless --overwrite; a second `leccr index` into the same
    INDEX stops at once, naming the first. --batch-size defaults to the run's eval.batch_size; --set changes the run's
    recipe (its data and eval keys).
    """
    from rich.markup import escape

    from leccr_cli.cli.errors import rerun_command, says_when_interrupted
    from leccr_cli.cli.report import console, err_console
    from leccr_cli.retrieval.index.builder import build_index
    from leccr_cli.retrieval.index.format import PARTS_DIR

    kept = (
        f"finished batches are kept in {escape(str(out / PARTS_DIR))}; `{escape(rerun_command(ctx))}` embeds the rest"
    )
    with says_when_interrupted(kept):
        report = build_index(
            run, corpus, out, split=split, descriptions=descriptions, dtype=dtype, batch_size=batch_size, device=device,
            overwrite=overwrite, overrides=overrides, console=err_console,
        )  # fmt: skip
    if report.status == "up to date":
        console.print(f"{escape(str(report.folder))} is up to date: {report.count} images ({report.dtype})")
        return
    details = [f"{report.embedded} embedded"]
    if report.resumed:
        details.append(f"{report.resumed} from the interrupted run")
    if report.reused:
        details.append(f"{report.reused} kept")
    if report.dropped:
        details.append(f"{report.dropped} dropped (no longer in the split)")
    console.print(
        f"[green]Wrote[/] {escape(str(report.folder))}: {report.count} images ({', '.join(details)}; {report.dtype})"
    )
    console.print(f'Search it: leccr search {escape(str(report.folder))} "a query in any language"', highlight=False)
