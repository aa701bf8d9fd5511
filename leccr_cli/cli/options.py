"""Options shared by several commands, spelled and explained the same way everywhere.

Each option's Python name is the name of the core parameter it feeds, so an error that names
that parameter is spelled with this option's flag (`cli/errors.py`).
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from leccr_cli.defaults import DTYPES

Overrides = Annotated[
    list[str],
    typer.Option("--set", help="Override a recipe key, e.g. --set optim.lr=2e-5 (repeatable; values are YAML)."),
]
Splits = Annotated[
    Optional[str],
    typer.Option("--split", help="Splits, comma-separated, or 'all'."),
]
Device = Annotated[
    Optional[str],
    typer.Option("--device", help="cpu, cuda or cuda:N (default: this process's GPU when there is one, else the CPU)."),
]
Dtype = Annotated[
    str,
    typer.Option(
        "--dtype",
        help=f"{', '.join(DTYPES[:-1])} or {DTYPES[-1]} (bfloat16, float16 and float32 also accepted); "
        "auto is bf16 (or fp16) on a GPU and fp32 on the CPU.",
    ),
]
Overwrite = Annotated[
    bool, typer.Option("--overwrite", help="Replace what an earlier run wrote instead of keeping it.")
]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Items per batch (per process).")]
RunOverrides = Annotated[
    list[str],
    typer.Option(
        "--set",
        help="Override a key of the run's recipe, e.g. --set eval.batch_size=64 (repeatable; values are YAML; "
        "the model keys of a trained run cannot change).",
    ),
]


def fusion_option(default: str = ""):
    """`--fusion ALPHA`, the weight of the global scores in fused scores (`default` says what leaving it out means)."""
    return typer.Option(
        None,
        "--fusion",
        min=0.0,
        max=1.0,
        metavar="ALPHA",
        help=f"Score alpha * global + (1 - alpha) * best slot score{default}.",
    )
