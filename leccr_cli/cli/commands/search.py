"""`leccr search`: the top-k images of an index for a query in any language."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import fusion_option
from leccr_cli.defaults import SEARCH_MEMORY_BUDGET_MB, TOP_K


def search_command(
    index: Path = typer.Argument(..., metavar="INDEX", help="Index folder written by `leccr index`."),
    query: str | None = typer.Argument(None, metavar="QUERY", help="What the images should show, in any language."),
    k: int = typer.Option(TOP_K, "-k", "--top-k", min=1, help="Results per query (at most the index size)."),
    fusion: float | None = fusion_option(),
    json_output: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    queries: Path | None = typer.Option(
        None,
        "--queries",
        metavar="FILE",
        help="Answer every line of FILE (one query per line; blank lines skipped) as JSON lines.",
    ),
    device: str = typer.Option(
        "cpu",
        "--device",
        help="Where queries are embedded: cpu, cuda or cuda:N (scoring runs on the CPU over the memory-mapped index).",
    ),
    memory_budget: int = typer.Option(
        SEARCH_MEMORY_BUDGET_MB,
        "--memory-budget",
        min=16,
        metavar="MB",
        help="Memory for the first-pass scores of one block of rows.",
    ),
) -> None:
    """The exact top-k images of an index for a query, in any language the model was trained for.

    Loads the run's text encoder and tokenizer only, and memory-maps the index. Exact in two passes: every row's int8
    codes, then float32 scores for the rows that can still be among the best k. Prints a table (rank, score, image id,
    path), or JSON with --json. --queries FILE answers many queries at once, one JSON object per line on stdout (line,
    query, results). An index whose model changed since it was built is refused with the command that rebuilds it.
    """
    import json

    from rich.markup import escape
    from rich.table import Table

    from leccr_cli.cli.report import console, err_console
    from leccr_cli.utils.devices import check_device
    from leccr_cli.errors import LeccrError
    from leccr_cli.retrieval.search import Searcher

    if (query is None) == (queries is None):
        raise LeccrError("give either a QUERY or --queries FILE", 'e.g. leccr search INDEX "ein Hund im Schnee"')
    texts, names, lines = [query], None, []
    if queries is not None:
        texts, lines = _read_queries(queries)
        names = [f"{queries}:{line}" for line in lines]
    searcher = Searcher.open(index, device=str(check_device(device)))
    results, notes = searcher.search(texts, k, fusion=fusion, names=names, memory_budget_mb=memory_budget)

    limit = searcher.model.config.text.max_tokens
    if notes.truncated:
        where = f" ({names[notes.truncated[0]]} first)" if names else ""
        count = len(notes.truncated)
        what = "query is" if count == 1 and names is None else f"{count} queries are"
        err_console.print(
            f"[yellow]note:[/] the {what} longer than the text encoder's limit ({limit} tokens, "
            f"{searcher.cleaning.max_words} words) and was cut to it{where}",
            soft_wrap=True,
        )
    if notes.clamped_from is not None:
        err_console.print(
            f"[yellow]note:[/] -k {notes.clamped_from} is more than the {len(searcher.index)} images of the index; all "
            f"are shown"
        )

    def record(hits) -> list[dict]:
        return [{"rank": h.rank, "score": round(h.score, 6), "image_id": h.image_id, "path": h.path} for h in hits]

    if queries is not None:
        for line, text, hits in zip(lines, texts, results):
            typer.echo(json.dumps({"line": line, "query": text, "results": record(hits)}, ensure_ascii=False))
        return
    if json_output:
        typer.echo(
            json.dumps(
                {"query": query, "index": str(index), "results": record(results[0])}, ensure_ascii=False, indent=2
            )
        )
        return
    mode = f", fusion {fusion:g}" if fusion is not None else ""
    table = Table(title=f"{escape(query)!r}: top {notes.k} of {len(searcher.index)} ({escape(str(index))}{mode})")
    for column in ("rank", "score", "image id", "path"):
        table.add_column(column, justify="right" if column in ("rank", "score") else "left", overflow="fold")
    for hit in results[0]:
        table.add_row(str(hit.rank), f"{hit.score:.4f}", escape(hit.image_id), escape(hit.path))
    console.print(table)


def _read_queries(path: Path) -> tuple[list[str], list[int]]:
    """The non-blank lines of a UTF-8 file and their line numbers."""
    from leccr_cli.utils.text import numbered_lines
    from leccr_cli.errors import LeccrError

    rows = numbered_lines(path)
    if not rows:
        raise LeccrError(f"--queries {path}: no queries", "write one query per line")
    return [line for _, line in rows], [number for number, _ in rows]
