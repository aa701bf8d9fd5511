"""`leccr train RECIPE.yaml`: train LECCR with Accelerate."""

from __future__ import annotations

from pathlib import Path

import typer

from leccr_cli.cli.options import Overrides, Overwrite


def train_command(
    recipe: Path = typer.Argument(..., help="Recipe YAML file, e.g. recipes/demo.yaml."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Run folder (default: runs/<recipe name>, -2, -3, ... when taken)."),
    overrides: Overrides = [],
    resume: str | None = typer.Option(
        None, "--resume", help="Continue a run: 'latest' (its newest checkpoint), a checkpoint folder, or a run folder."
    ),
    overwrite: Overwrite = False,
) -> None:
    """Train the LECCR model as the recipe says; keep the best model on validation, then test it.

    --overwrite replaces the output folder if it already holds a run. Several GPUs: `accelerate launch --multi_gpu --num_processes K -m leccr_cli train RECIPE.yaml` (or `torchrun --nproc_per_node K -m leccr_cli train RECIPE.yaml`). The recipe's optim.batch_size is the global batch.
    """
    from leccr_cli.config import load_recipe
    from leccr_cli.utils.console import console, is_main_process
    from leccr_cli.training.trainer import train

    try:
        result = train(
            load_recipe(recipe, overrides), output, resume=resume, overwrite=overwrite, recipe_file=recipe, overrides=overrides
        )
    except KeyboardInterrupt:  # train() has said what is kept and how to go on
        raise typer.Exit(130) from None
    if is_main_process():
        console.print(
            f"[green]Done[/]: {result.run_dir} ({result.steps} steps; best validation mean SumR "
            f"{result.best_val_sumr:.1f} at step {result.best_step})"
        )
