"""`leccr translate`: machine-translated pseudo-parallel captions (and descriptions)."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import Dtype, Overwrite, Splits
from leccr_cli.defaults import (
    ENGINES,
    NUM_BEAMS,
    SOURCE_LANG,
    TRANSLATE_BATCH_SIZE,
    TRANSLATE_MAX_TOKENS,
    TRANSLATE_SPLIT,
)


def translate_command(
    ctx: typer.Context,
    corpus_path: Path = typer.Argument(..., metavar="CORPUS", help="Corpus folder."),
    targets: str = typer.Option(..., "--to", help="Target languages, comma-separated ISO codes (e.g. de,fr,cs)."),
    engine: str = typer.Option(ENGINES[0], "--engine", help="marian, nllb, m2m100 or auto (any seq2seq model)."),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Hub id or local folder; {src} and {tgt} are replaced by the language pair "
        "(default: marian Helsinki-NLP/opus-mt-{src}-{tgt}, nllb facebook/nllb-200-distilled-600M, "
        "m2m100 facebook/m2m100_418M).",
    ),
    source_lang: str = typer.Option(SOURCE_LANG, "--from", help="Language of the captions to translate."),
    splits: Splits = None,
    descriptions: str | None = typer.Option(
        None,
        "--descriptions",
        help="Translate descriptions/NAME/ into descriptions/NAME-<lang>/ instead of captions.",
    ),
    back: bool = typer.Option(False, "--back", help="Also translate the translations back (origin: back)."),
    batch_size: int = typer.Option(TRANSLATE_BATCH_SIZE, "--batch-size", min=1, help="Texts per batch (per process)."),
    max_tokens: int = typer.Option(
        TRANSLATE_MAX_TOKENS,
        "--max-tokens",
        min=4,
        help="Source tokens kept per text (longer ones are truncated) and most tokens generated.",
    ),
    num_beams: int = typer.Option(NUM_BEAMS, "--num-beams", min=1, help="Beam width (1: greedy)."),
    dtype: Dtype = "auto",
    overwrite: Overwrite = False,
) -> None:
    """Translate English captions into pseudo-parallel target-language captions (origin: mt).

    --split defaults to train (with --descriptions: every split). --overwrite replaces earlier translations of the
    same split, target and origin (and discards unfinished work made with other settings). Resumable: a rerun skips
    what is done and finishes the rest. Several GPUs: `accelerate launch -m leccr_cli translate ...`.
    """
    from leccr_cli.cli.errors import rerun_command, says_when_interrupted
    from leccr_cli.cli.report import err_console, is_main_process
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.prep.translate.engines import TranslationOptions, make_engine
    from leccr_cli.prep.translate.jobs import PARTIAL_FOLDER, translate_corpus
    from leccr_cli.utils.languages import check_language, parse_language_list

    languages = parse_language_list(targets)
    check_language(source_lang)
    chosen = Corpus.open(corpus_path).resolve_splits(
        splits, default=[TRANSLATE_SPLIT] if descriptions is None else None
    )
    options = TranslationOptions(batch_size=batch_size, max_tokens=max_tokens, num_beams=num_beams, dtype=dtype)
    kept = (f"finished shards are kept in {corpus_path / PARTIAL_FOLDER} (finished jobs are in the corpus); "
        f"`{rerun_command(ctx)}` translates the rest")
    with says_when_interrupted(kept):
        reports = translate_corpus(
            corpus_path,
            languages,
            make_engine(engine, model, options),
            source_lang=source_lang,
            splits=chosen,
            back=back,
            descriptions=descriptions,
            overwrite=overwrite,
            console=err_console,
        )
    if is_main_process():
        _print_summary(corpus_path, reports)


def _print_summary(corpus_path: Path, reports) -> None:
    from rich.table import Table

    from leccr_cli.cli.report import console

    table = Table(title=f"Translations in {corpus_path}")
    columns = ("job", "sources", "done before", "translated", "resumed", "duplicates", "written", "sent/s")
    for column in columns:
        table.add_column(column, justify="left" if column == "job" else "right")
    for r in reports:
        table.add_row(
            _job_name(r),
            str(r.sources),
            str(r.already_done),
            str(r.translated),
            str(r.resumed),
            str(r.duplicates),
            str(r.written),
            f"{r.sentences_per_second:.1f}",
        )
    console.print(table)
    console.print("Models: " + ", ".join(dict.fromkeys(r.model for r in reports)))
    for r in reports:
        if r.empty_sources:
            console.print(f"[yellow]{_job_name(r)}: skipped {r.empty_sources} empty or whitespace-only sources[/]")
        if r.truncated:
            console.print(f"[yellow]{_job_name(r)}: truncated {r.truncated} texts longer than --max-tokens[/]")
        if r.empty_outputs:
            console.print(f"[yellow]{_job_name(r)}: {r.empty_outputs} translations came out empty (not written)[/]")
        if r.removed:
            console.print(f"{_job_name(r)}: --overwrite replaced {r.removed} earlier rows")


def _job_name(report) -> str:
    written = report.output if report.kind == "descriptions" else report.kind
    return f"{report.split} {report.src}->{report.tgt} {written}"
