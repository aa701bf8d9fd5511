"""`leccr evaluate`: Recall@K both ways and SumR, per query language."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import BatchSize, Device, RunOverrides, fusion_option
from leccr_cli.defaults import EVAL_MEMORY_BUDGET_MB

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
        [],
        "--lang",
        help="Query language, repeatable; 'all' = every language with captions in the split (default: the recipe's).",
    ),
    split: str | None = typer.Option(None, "--split", help="Split to evaluate (default: the recipe's test split)."),
    fusion: float | None = fusion_option(" (default: the run recipe's eval.fusion; none = global only)"),
    fusion_mode: str | None = typer.Option(
        None,
        "--fusion-mode",
        metavar="MODE",
        help="linear: mix the scores as they are; minmax: min-max scale each score matrix to [0, 1] first, "
        "the reference's video scoring (default: the run recipe's eval.fusion_mode, linear unless it says otherwise).",
    ),
    translate_test: bool = typer.Option(
        False,
        "--translate-test",
        help="Score the English machine translation of each query (origin mt, translated from it).",
    ),
    corpus: Path | None = typer.Option(None, "--corpus", help="Evaluate on this corpus instead of the run's."),
    gallery: str | None = typer.Option(
        None,
        "--gallery",
        metavar="language|all",
        help="language: rank each language against its own images (the corpus's gallery of the language, e.g. "
        "MSCOCO's ja and zh test sets); all: against every image of the split. Default: the recipe's eval.gallery "
        "(language).",
    ),
    batch_size: BatchSize = None,
    device: Device = None,
    scores: Path | None = typer.Option(None, "--scores", metavar="FILE.safetensors", help=SCORES_HELP),
    labels: Path | None = typer.Option(None, "--labels", metavar="FILE", help=LABELS_HELP),
    json_path: Path | None = typer.Option(
        None, "--json", metavar="PATH", help="Also write every metric to this JSON file."
    ),
    memory_budget: int | None = typer.Option(
        None,
        "--memory-budget",
        min=16,
        metavar="MB",
        help=f"Memory for one chunk of scores being ranked (default: the recipe's eval.memory_budget_mb, "
            f"{EVAL_MEMORY_BUDGET_MB}).",
    ),
    overrides: RunOverrides = [],
) -> None:
    """Recall@1/5/10 both ways and SumR of a trained run, per query language.

    The images are embedded once; queries are the human captions of each language, ranked against that language's
    gallery (--gallery). Results are printed as a table and written to eval/<lang>-<split>.json in the run (-fusion<A>
    or -minmax<A> with --fusion, -gallery-all with --gallery all). --batch-size defaults to the recipe's
    eval.batch_size.

    With --scores and --labels, score a saved similarity matrix instead (no model needed), so external systems can be
    compared on the same split. A tie with the ground truth counts as a miss. --set changes the run's recipe (its data
    and eval keys), e.g. --set eval.batch_size=64.
    """
    from leccr_cli.errors import LeccrError
    from leccr_cli.runs.logs import check_json_path

    if json_path is not None:
        check_json_path(json_path)  # before any work: a folder or an unwritable place is refused at once
    if scores is not None or labels is not None:
        used = [
            name
            for name, value in (
                ("RUN", run),
                ("--lang", langs),
                ("--split", split),
                ("--fusion", fusion),
                ("--fusion-mode", fusion_mode),
                ("--translate-test", translate_test or None),
                ("--corpus", corpus),
                ("--gallery", gallery),
                ("--set", overrides),
            )
            if value
        ]
        if scores is None or labels is None:
            raise LeccrError("--scores and --labels go together", "give both files, or neither to evaluate a run")
        if used:
            raise LeccrError(
                f"{', '.join(used)} cannot be combined with --scores", "--scores evaluates a saved matrix, not a run"
            )
        _evaluate_scores(scores, labels, json_path, memory_budget or EVAL_MEMORY_BUDGET_MB)
        return
    scoring = {
        "fusion": fusion,
        "fusion_mode": fusion_mode,
        "gallery": gallery,
        "batch_size": batch_size,
        "memory_budget_mb": memory_budget,
    }
    _evaluate_run(run, langs, split, translate_test, corpus, device, json_path, overrides, scoring)


def _evaluate_run(run, langs, split, translate_test, corpus_path, device, json_path, overrides, scoring) -> None:
    from leccr_cli.cli.report import console, err_console, print_metrics
    from leccr_cli.config import check_scoring, uses_slot_embeddings
    from leccr_cli.corpus.corpus import Corpus
    from leccr_cli.retrieval.evaluate import eval_languages, eval_options, evaluate_languages
    from leccr_cli.runs.layout import latest_run, load_run
    from leccr_cli.runs.logs import other_corpus_label, write_eval_json, write_json
    from leccr_cli.utils.devices import select_device

    run_dir = run if run is not None else latest_run()
    recipe, model = load_run(run_dir, overrides)
    options = {**eval_options(recipe), **{key: value for key, value in scoring.items() if value is not None}}
    fusion, fusion_mode, gallery = options["fusion"], options["fusion_mode"], options["gallery"]
    check_scoring(fusion, fusion_mode, gallery, slot_embeddings=uses_slot_embeddings(model.config))
    corpus = Corpus.open(corpus_path or recipe.data.corpus)
    split = split or recipe.data.test_split
    languages = eval_languages(corpus, split, langs, recipe.eval.langs or recipe.data.target_langs)
    model.to(select_device(device))
    results = evaluate_languages(
        model, corpus, split, languages, translate_test=translate_test, console=err_console, **options
    )
    label = other_corpus_label(recipe, corpus.name, corpus.path)
    written = [
        write_eval_json(
            run_dir,
            lang,
            split,
            metrics,
            fusion=fusion,
            translate_test=translate_test,
            fusion_mode=fusion_mode,
            gallery=gallery,
            corpus=corpus.path.resolve(),
            corpus_label=label,
        )
        for lang, metrics in results.items()
    ]
    mode = "".join(
        [
            f", fusion {fusion:g} ({fusion_mode})" if fusion is not None else "",
            ", translate-test" if translate_test else "",
        ]
    )
    on = f" on corpus {label} ({corpus.path})" if label is not None else ""
    sizes = ", ".join(f"{lang} {m['queries']} queries x {m['gallery_size']} images" for lang, m in results.items())
    print_metrics(
        results, title=f"{run_dir}: {split}{mode}{on}", row_header="lang", note=f"gallery: {gallery} ({sizes})"
    )
    console.print(f"[green]Wrote[/] {run_dir / 'eval'}/ ({', '.join(path.name for path in written)})")
    if json_path is not None:
        console.print(f"[green]Wrote[/] {write_json(results, json_path)}")


def _evaluate_scores(scores: Path, labels: Path, json_path: Path | None, memory_budget: int) -> None:
    from leccr_cli.cli.report import console, print_metrics
    from leccr_cli.retrieval.metrics import load_labels, load_score_matrix, recall_metrics
    from leccr_cli.runs.logs import write_json

    matrix = load_score_matrix(scores)
    text_to_image = load_labels(labels)
    metrics = recall_metrics(matrix, text_to_image, memory_budget_mb=memory_budget)
    n_texts, n_images = matrix.shape
    uncaptioned = n_images - len(set(text_to_image))
    print_metrics(
        {scores.stem: metrics},
        title=f"{scores.name}: {n_texts} texts x {n_images} images",
        row_header="scores",
        note=f"left out of image-to-text: {uncaptioned} image{'s' if uncaptioned > 1 else ''} without a caption"
        if uncaptioned
        else None,
    )
    if json_path is not None:
        console.print(f"[green]Wrote[/] {write_json(metrics, json_path)}")
