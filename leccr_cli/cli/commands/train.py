"""`leccr train RECIPE.yaml`: train LECCR with Accelerate."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import Overrides, Overwrite


def train_command(
    ctx: typer.Context,
    recipe: Path = typer.Argument(..., help="Recipe YAML file, e.g. recipes/demo.yaml."),
    output_dir: Path | None = typer.Option(
        None, "--output", "-o", help="Run folder (default: runs/<recipe name>, -2, -3, ... when taken)."
    ),
    overrides: Overrides = [],
    resume: str | None = typer.Option(
        None, "--resume", help="Continue a run: 'latest' (its newest checkpoint), a checkpoint folder, or a run folder."
    ),
    overwrite: Overwrite = False,
) -> None:
    """Train the LECCR model as the recipe says; keep the best model on validation, then test it.

    --overwrite replaces the output folder if it already holds a run. Several GPUs: `accelerate launch --multi_gpu
    --num_processes K -m leccr_cli train RECIPE.yaml` (or `torchrun --nproc_per_node K -m leccr_cli train
    RECIPE.yaml`). The recipe's optim.batch_size is the global batch.
    """
    from leccr_cli.cli.errors import CommandLine
    from leccr_cli.cli.report import console, err_console, is_main_process, metrics_table
    from leccr_cli.config import load_recipe
    from leccr_cli.errors import TrainingInterrupted, spell
    from leccr_cli.training.trainer import train

    try:
        result = train(
            load_recipe(recipe, overrides), output_dir, resume=resume, overwrite=overwrite, console=err_console
        )
    except TrainingInterrupted as interrupted:
        if is_main_process():
            message = spell(interrupted.what_to_do(), CommandLine(ctx))
            err_console.print(f"[yellow]interrupted:[/] {message}", soft_wrap=True, highlight=False)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:  # before the run folder existed: nothing is kept
        raise typer.Exit(130) from None
    if is_main_process():
        title = f"{result.run_dir.name}: best model (step {result.best_step}) on {result.test_split}"
        console.print(metrics_table(result.test, title=title))
        console.print(
            f"[green]Done[/]: {result.run_dir} ({result.steps} steps; best validation mean SumR "
            f"{result.best_val_sumr:.1f} at step {result.best_step})"
        )
