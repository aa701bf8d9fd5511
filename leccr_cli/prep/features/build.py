"""`build_slots` (`leccr build-slots`): encode every description once with the frozen description encoder and
cache the token features in `CORPUS/slots/<encoder>/<split>.safetensors` (the file format is
`prep/features/cache.py`).

In `frozen` description-encoder mode F_c never changes during training, so its features can
be computed once; training and evaluation then read the cache instead of running F_c.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from rich.console import Console

from leccr_cli.config import Recipe, load_recipe, resolve_paths
from leccr_cli.corpus.corpus import check_descriptions
from leccr_cli.corpus.synthetic import ensure_corpus
from leccr_cli.defaults import SLOT_CACHE_DTYPE
from leccr_cli.errors import RecipeError, SlotCacheStale
from leccr_cli.model.factory import build_model_for
from leccr_cli.model.leccr import LeccrModel
from leccr_cli.prep.features.cache import SlotCache, cache_path, encoder_slug, slot_identity, write_slot_file
from leccr_cli.runs.layout import load_run
from leccr_cli.utils.console import progress
from leccr_cli.utils.devices import parse_dtype, process_state, select_device
from leccr_cli.utils.fs import disk_full_reported


@dataclass
class SplitReport:
    """One split of a `build_slots` run."""

    split: str
    path: Path
    status: str  # "built", or "up to date" (skipped: a matching cache exists, in `dtype`)
    rows: int
    longest: int
    dtype: str
    bytes: int


def _load_source(source: Path, overrides: Sequence[str]) -> tuple[Recipe, LeccrModel | None]:
    """(recipe, model or None) of a recipe file or a run folder (`overrides` apply to either)."""
    if source.is_dir():
        return load_run(source, list(overrides))
    return load_recipe(source, list(overrides)), None


def _check_frozen(recipe: Recipe, model: LeccrModel | None, source: Path) -> None:
    """Refuse a recipe (and, once built, a model) without a frozen description encoder: nothing to cache."""
    config = model.config if model is not None else recipe.model
    if config.description_encoder != "frozen":
        raise RecipeError(
            f"{source}: model.description_encoder is 'shared': description features follow the text encoder "
            "as it trains, so there is nothing to cache",
            "to train from a cache, set model.description_encoder: frozen and "
            "model.description_features: cache or auto",
        )
    if model is not None and (model.description_encoder is None or not model.reads_descriptions):
        raise RecipeError(
            f"{source}: this model reads no descriptions (model.variant: {config.variant}, or every description "
            "component switched off), so there is nothing to cache"
        )


def storage_dtype(name: str) -> str:
    """The cache's storage dtype for a dtype name: bf16, fp16 or fp32 (`auto` stores fp16)."""
    canonical = parse_dtype(name)
    return SLOT_CACHE_DTYPE if canonical == "auto" else canonical


def build_slots(
    source: str | Path,
    *,
    splits: str = "all",
    overrides: Sequence[str] = (),
    batch_size: int | None = None,
    dtype: str = SLOT_CACHE_DTYPE,
    device: str | None = None,
    overwrite: bool = False,
    console: Console | None = None,
) -> list[SplitReport]:
    """Cache the frozen description features of a recipe's (or a run's) corpus, split by split.

    `source` is a recipe file (the model is built exactly as `train` builds it) or a run folder
    (its `model/`); `overrides` (`a.b=value`) change its recipe. `splits` is `all` or a
    comma-separated list. A split whose cache exists and matches is skipped; one that exists
    but does not match is a `SlotCacheStale` unless `overwrite`. Encodes on `device` (default:
    the GPU when there is one), with progress on `console`. Returns one report per split.
    """
    dtype = storage_dtype(dtype)
    source = Path(source)
    recipe, model = _load_source(source, overrides)
    recipe = resolve_paths(recipe)
    _check_frozen(recipe, model, source)
    target = select_device(device)
    corpus = ensure_corpus(recipe, process_state(target), console)
    if model is None:
        model = build_model_for(recipe, corpus)
    _check_frozen(recipe, model, source)
    chosen = corpus.resolve_splits(splits)
    model.description_encoder.to(target)
    batch_size = batch_size or recipe.eval.batch_size
    description_source = recipe.data.descriptions

    reports = []
    on_full = f"finished splits are kept in {corpus.path / 'slots'}; rerun the same command to build the rest"
    with corpus.writing(), disk_full_reported(corpus.path, on_full):
        for split in chosen:
            image_ids = corpus.image_ids(split)
            descriptions = check_descriptions(corpus, description_source, image_ids)
            identity = slot_identity(model, description_source, image_ids, descriptions)
            path = cache_path(corpus, encoder_slug(model.config, identity.encoder_weights), split)
            if path.is_file() and not overwrite:
                existing = SlotCache.open(path)
                differences = existing.identity.differences(identity)
                if differences:
                    raise SlotCacheStale(split, path, differences, source, rebuilding=True)
                reports.append(
                    SplitReport(
                        split,
                        path,
                        "up to date",
                        len(existing),
                        max(existing.lengths),
                        existing.dtype,
                        path.stat().st_size,
                    )
                )
                continue
            texts = [descriptions[i] for i in image_ids]
            bar = progress(console)
            with bar:
                task = bar.add_task(f"encoding {split} descriptions", total=len(texts))
                write_slot_file(
                    path,
                    model,
                    texts,
                    image_ids,
                    identity,
                    batch_size=batch_size,
                    dtype=dtype,
                    device=target,
                    on_batch=lambda rows: bar.advance(task, rows),
                )
            built = SlotCache.open(path)
            reports.append(
                SplitReport(split, path, "built", len(built), max(built.lengths), dtype, path.stat().st_size)
            )
    return reports
