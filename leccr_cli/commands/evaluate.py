"""`leccr evaluate`: Recall@K both ways and SumR (DESIGN section 5)."""

from __future__ import annotations

from pathlib import Path

import typer

SCORES_HELP = (
    "A .safetensors file holding one texts x images similarity matrix (higher = more similar), "
    "under the key 'scores' or as its only tensor."
)
LABELS_HELP = (
    "The image column of every text (row), 0-based: a text file with one integer per line, "
    "or a .json list of integers."
)


def evaluate_command(
    scores: Path = typer.Option(..., "--scores", metavar="FILE.safetensors", help=SCORES_HELP),
    labels: Path = typer.Option(..., "--labels", metavar="FILE", help=LABELS_HELP),
    json_path: Path | None = typer.Option(None, "--json", metavar="PATH", help="Also write every metric to this JSON file."),
    memory_budget: int = typer.Option(
        1024, "--memory-budget", min=16, metavar="MB", help="Memory for one chunk of scores being ranked."
    ),
) -> None:
    """Score a saved similarity matrix: Recall@1/5/10 both ways, SumR, median and mean ranks.

    No model is needed, so external systems can be compared on the same split.
    A tie with the ground truth counts as a miss.
    """
    from leccr_cli.evaluate import load_labels, load_score_matrix, recall_metrics

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
        from leccr_cli.console import console
        from leccr_cli.evaluate import write_metrics_json

        console.print(f"[green]Wrote[/] {write_metrics_json(metrics, json_path)}")


def _report(rows: dict[str, dict[str, float]], title: str, row_header: str, note: str | None = None) -> None:
    """Print the metrics table, then the median and mean ranks of every row."""
    from leccr_cli.console import console
    from leccr_cli.evaluate import metrics_table

    console.print(metrics_table(rows, title, row_header=row_header))
    for name, metrics in rows.items():
        console.print(
            f"{name}: median rank i2t {metrics['i2t_medr']:g}, t2i {metrics['t2i_medr']:g}; "
            f"mean rank i2t {metrics['i2t_meanr']:.1f}, t2i {metrics['t2i_meanr']:.1f}"
        )
    if note:
        console.print(note)
