"""Options shared by several commands, spelled and explained the same way everywhere."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

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
        help="auto, bf16, fp16 or fp32 (bfloat16, float16 and float32 also accepted); "
        "auto is bf16 (or fp16) on a GPU and fp32 on the CPU.",
    ),
]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace what an earlier run wrote instead of keeping it.")]
BatchSize = Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Items per batch (per process).")]
