"""`leccr evaluate`: Recall@K both ways and SumR, per query language."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import BatchSize, Device

SCORES_HELP = (
    "A .safetensors file holding one texts x images similarity matrix (higher = more similar), "
    "under the key 'scores' or as its only tensor."
)
LABELS_HELP = (
    "The image column of every text (row), 0-based: a text file with one integer per line, "
    "or a .json list of integers."
)


def evaluate_command(
    run: Path | None = typer.Argument(None, help="Run folder (default: the most recent run under runs/)."),
    langs: list[str] = typer.Option(
        [], "--lang", help="Query language, repeatable; 'all' = every language with captions in the split (default: the recipe's)."
    ),
    split: str | None = typer.Option(None, "--split", help="Split to evaluate (default: the recipe's test split)."),
    fusion: float | None = typer.Option(
        None,
        "--fusion",
        min=0.0,
        max=1.0,
        metavar="ALPHA",
        help="Score alpha * global + (1 - alpha) * best slot score (default: the run recipe's eval.fusion; none = global only).",
    ),
    fusion_mode: str | None = typer.Option(
        None,
        "--fusion-mode",
        metavar="MODE",
        help="linear: mix the scores as they are; minmax: min-max scale each score matrix to [0, 1] first, "
        "the reference's video scoring (default: the run recipe's eval.fusion_mode, linear unless it says otherwise).",
    ),
    translate_test: bool = typer.Option(
        False, "--translate-test", help="Score the English machine translation of each query (origin mt, translated from it)."
    ),
    corpus: Path | None = typer.Option(None, "--corpus", help="Evaluate on this corpus instead of the run's."),
    gallery: str | None = typer.Option(
        None,
        "--gallery",
        metavar="language|all",
        help="language: rank each language against its own images (the corpus's gallery of the language, e.g. "
        "MSCOCO's ja and zh test sets); all: against every image of the split. Default: the recipe's eval.gallery (language).",
    ),
    batch_size: BatchSize = None,
    device: Device = None,
    scores: Path | None = typer.Option(None, "--scores", metavar="FILE.safetensors", help=SCORES_HELP),
    labels: Path | None = typer.Option(None, "--labels", metavar="FILE", help=LABELS_HELP),
    json_path: Path | None = typer.Option(None, "--json", metavar="PATH", help="Also write every metric to this JSON file."),
    memory_budget: int | None = typer.Option(
        None, "--memory-budget", min=16, metavar="MB", help="Memory for one chunk of scores being ranked (default 1024)."
    ),
) -> None:
    """Recall@1/5/10 both ways and SumR of a trained run, per query language.

    The images are embedded once; queries are the human captions of each language, ranked against that language's gallery (--gallery). Results are printed as a table and written to eval/<lang>-<split>.json in the run (-fusion<A> or -minmax<A> with --fusion, -gallery-all with --gallery all). --batch-size defaults to the recipe's eval.batch_size.

    With --scores and --labels, score a saved similarity matrix instead (no model needed), so external systems can be compared on the same split. A tie with the ground truth counts as a miss.
    """
    from leccr_cli.errors import LeccrError
    from leccr_cli.retrieval.metrics import check_json_path

    if json_path is not None:
        check_json_path(json_path)  # before any work: a folder or an unwritable place is refused at once
    if scores is not None or labels is not None:
        used = [name for name, value in (("RUN", run), ("--lang", langs), ("--split", split), ("--fusion", fusion),
                                         ("--fusion-mode", fusion_mode), ("--translate-test", translate_test or None),
                                         ("--corpus", corpus), ("--gallery", gallery)) if value]
        if scores is None or labels is None:
            raise LeccrError("--scores and --labels go together", "give both files, or neither to evaluate a run")
        if used:
            raise LeccrError(f"{', '.join(used)} cannot be combined with --scores", "--scores evaluates a saved matrix, not a run")
        _evaluate_scores(scores, labels, json_path, memory_budget or 1024)
        return
    if fusion_mode is not None and fusion_mode not in ("linear", "minmax"):
        raise LeccrError(f"--fusion-mode {fusion_mode!r}: expected linear or minmax")
    _evaluate_run(
        run, langs, split, fusion, fusion_mode, translate_test, corpus, batch_size, device, json_path, memory_budget, gallery
    )


def _evaluate_run(
    run, langs, split, fusion, fusion_mode, translate_test, corpus_path, batch_size, device, json_path, memory_budget, gallery
) -> None:
    import dataclasses

    from leccr_cli.utils.console import console
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.utils.devices import select_device
    from leccr_cli.errors import EvaluationError, LeccrError
    from leccr_cli.retrieval.evaluate import GALLERY_MODES, eval_languages, evaluate_languages
    from leccr_cli.retrieval.metrics import write_metrics_json
    from leccr_cli.runs.layout import latest_run, load_run, other_corpus_label, write_eval_json

    if gallery is not None and gallery not in GALLERY_MODES:
        raise EvaluationError(f"--gallery {gallery}: expected one of {', '.join(GALLERY_MODES)}")
    run_dir = run if run is not None else latest_run()
    recipe, model = load_run(run_dir)
    if memory_budget is not None:
        recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, memory_budget_mb=memory_budget))
    fusion = fusion if fusion is not None else recipe.eval.fusion
    fusion_mode = fusion_mode or recipe.eval.fusion_mode
    if fusion is None and fusion_mode == "minmax":
        raise LeccrError("--fusion-mode minmax needs --fusion ALPHA, the weight of the global scores", "e.g. --fusion 0.9 (the reference's video setting)")
    corpus = Corpus.open(corpus_path or recipe.data.corpus)
    split = split or recipe.data.test_split
    languages = eval_languages(corpus, split, langs, recipe.eval.langs or recipe.data.target_langs)
    gallery = gallery or recipe.eval.gallery
    model.to(select_device(device))
    results = evaluate_languages(
        model,
        corpus,
        split,
        languages,
        recipe,
        fusion=fusion,
        fusion_mode=fusion_mode,
        translate_test=translate_test,
        batch_size=batch_size,
        gallery=gallery,
    )
    label = other_corpus_label(recipe, corpus.name, corpus.path)
    written = [
        write_eval_json(
            run_dir, lang, split, metrics, fusion=fusion, translate_test=translate_test, fusion_mode=fusion_mode,
            gallery=gallery, corpus=corpus.path.resolve(), corpus_label=label,
        )
        for lang, metrics in results.items()
    ]
    mode = "".join([f", fusion {fusion:g} ({fusion_mode})" if fusion is not None else "", ", translate-test" if translate_test else ""])
    on = f" on corpus {label} ({corpus.path})" if label is not None else ""
    sizes = ", ".join(f"{lang} {m['queries']} queries x {m['gallery_size']} images" for lang, m in results.items())
    _report(results, title=f"{run_dir}: {split}{mode}{on}", row_header="lang", note=f"gallery: {gallery} ({sizes})")
    console.print(f"[green]Wrote[/] {run_dir / 'eval'}/ ({', '.join(path.name for path in written)})")
    if json_path is not None:
        console.print(f"[green]Wrote[/] {write_metrics_json(results, json_path)}")


def _evaluate_scores(scores: Path, labels: Path, json_path: Path | None, memory_budget: int) -> None:
    from leccr_cli.retrieval.metrics import load_labels, load_score_matrix, recall_metrics

    matrix = load_score_matrix(scores)
    text_to_image = load_labels(labels)
    metrics = recall_metrics(matrix, text_to_image, memory_budget_mb=memory_budget)
    n_texts, n_images = matrix.shape
    uncaptioned = n_images - len(set(text_to_image))
    _report(
        {scores.stem: metrics},
        title=f"{scores.name}: {n_texts} texts x {n_images} images",
        row_header="scores",
        note=f"left out of image-to-text: {uncaptioned} image{'s' if uncaptioned > 1 else ''} without a caption"
        if uncaptioned
        else None,
    )
    if json_path is not None:
        from leccr_cli.utils.console import console
        from leccr_cli.retrieval.metrics import write_metrics_json

        console.print(f"[green]Wrote[/] {write_metrics_json(metrics, json_path)}")


def _report(rows: dict[str, dict[str, float]], title: str, row_header: str, note: str | None = None) -> None:
    """Print the metrics table, then the median and mean ranks of every row."""
    from leccr_cli.utils.console import console
    from leccr_cli.retrieval.metrics import metrics_table

    console.print(metrics_table(rows, title, row_header=row_header))
    for name, metrics in rows.items():
        console.print(
            f"{name}: median rank i2t {metrics['i2t_medr']:g}, t2i {metrics['t2i_medr']:g}; "
            f"mean rank i2t {metrics['i2t_meanr']:.1f}, t2i {metrics['t2i_meanr']:.1f}"
        )
    if note:
        console.print(note)
