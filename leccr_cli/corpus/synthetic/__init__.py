"""The embedded synthetic benchmarks (images and videos), and the corpus a recipe names (built when it says how)."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from leccr_cli.config import Recipe
from leccr_cli.corpus.corpus import Corpus, corpus_builders
from leccr_cli.errors import CorpusError, parts
from leccr_cli.utils.console import status
from leccr_cli.utils.devices import is_main_process


def ensure_corpus(recipe: Recipe, state, console: Console | None = None) -> Corpus:
    """Open the recipe's corpus, building the synthetic one first when the recipe says how (`data.synth`).

    `state` is accelerate's `Accelerator` or `PartialState`: the main process builds (saying so
    on `console`), the others wait.
    """
    path = Path(recipe.data.corpus)
    if not path.exists():
        synth = recipe.data.synth
        if synth is None:
            raise CorpusError(
                f"data.corpus {path}: no such folder",
                parts("build it with ", corpus_builders()),
            )
        if is_main_process():
            from leccr_cli.corpus.synthetic.image import build_synthetic
            from leccr_cli.corpus.synthetic.video import build_synthetic_video

            build = build_synthetic_video if synth.modality == "video" else build_synthetic
            with status(console, f"Building the synthetic {synth.modality} corpus in {path} ..."):
                build(path, **synth.generator_options())
        state.wait_for_everyone()
    return Corpus.open(path)
