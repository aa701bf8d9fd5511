"""Evaluating a model on a corpus split: embed the gallery once, embed the queries of each
language, rank with the exact metrics of `leccr_cli.metrics`.

Model settings (token limits, whether and how descriptions are read) come from the model's
own config; the recipe gives the data settings (description source, caption cleaning,
frame features) and the evaluation batch size and memory budget.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader

from leccr_cli.config import Recipe
from leccr_cli.console import progress
from leccr_cli.data.corpus import Corpus
from leccr_cli.data.loading import (
    Collator,
    GallerySet,
    ImageTransform,
    TextCleaning,
    TextSet,
    VisualSource,
    check_descriptions,
)
from leccr_cli.data.slot_cache import open_slot_cache
from leccr_cli.errors import CorpusError, EvaluationError, ModelError
from leccr_cli.metrics import metrics_from_ranks, minmax_fused_rows, retrieval_ranks_from_rows
from leccr_cli.model.leccr import ImageEmbeddings, LeccrModel, image_inputs, uses_slot_embeddings
from leccr_cli.runs import run_of_model

FUSION_MODES = ("linear", "minmax")


def _loader(dataset, batch_size: int, collate, accelerator) -> DataLoader:
    """A sequential DataLoader, sharded over processes when `accelerator` has several."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    if accelerator is None:
        return loader
    # not accelerator.prepare: evaluation loaders must not join the training checkpoint state
    return prepare_data_loader(
        loader, accelerator.device, num_processes=accelerator.num_processes, process_index=accelerator.process_index
    )


@contextlib.contextmanager
def _progress(description: str, total: int):
    """A progress bar over `total` batches (silent off the main process); yields `advance()`."""
    bar = progress(transient=True)
    with bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


def _gather(tensor, accelerator, pad_dim: int | None = None):
    """All processes' rows of `tensor` (in order), padding dimension `pad_dim` to the longest first."""
    if accelerator is None:
        return tensor
    if pad_dim is not None:
        tensor = accelerator.pad_across_processes(tensor, dim=pad_dim)
    return accelerator.gather_for_metrics(tensor)


def _device(model, accelerator) -> torch.device:
    return accelerator.device if accelerator is not None else next(model.parameters()).device


def _rebuild_source(model: LeccrModel, rebuild_from: str | None) -> str:
    if rebuild_from is not None:
        return rebuild_from
    run = run_of_model(model)
    return str(run) if run is not None else "RECIPE_OR_RUN"


def encode_gallery(
    model: LeccrModel,
    corpus: Corpus,
    split: str,
    recipe: Recipe,
    *,
    accelerator=None,
    batch_size: int | None = None,
    rebuild_from: str | None = None,
) -> tuple[list[str], ImageEmbeddings]:
    """Embed every image (or video) of a split once: (image ids in gallery order, ImageEmbeddings).

    Descriptions are read when the model reads them (from the slot cache when its
    `description_features` setting says so; `rebuild_from` names the recipe or run in the
    rebuild hint of a missing cache, by default the run the model was loaded from).
    """
    image_ids = corpus.image_ids(corpus.check_split(split))
    descriptions = features = None
    if model.reads_descriptions:
        descriptions = check_descriptions(corpus, recipe.data.descriptions, image_ids)
        features = open_slot_cache(
            model,
            corpus,
            split,
            recipe.data.descriptions,
            rebuild_from=_rebuild_source(model, rebuild_from),
            descriptions=descriptions,
        )
    transform = ImageTransform(model.image_size, model.image_mean, model.image_std, train=False)
    visual = VisualSource(corpus, split, transform, recipe.data.video_features)
    gallery_set = GallerySet(image_ids, visual, descriptions if features is None else None, description_features=features)
    loader = _loader(gallery_set, batch_size or recipe.eval.batch_size, Collator.for_model(model, visual), accelerator)
    device = _device(model, accelerator)
    parts: list[ImageEmbeddings] = []
    model.eval()
    with torch.inference_mode(), _progress(f"encoding {split} gallery", len(loader)) as advance:
        for batch in loader:
            advance()
            batch = {k: v.to(device) for k, v in batch.items()}
            embeds = model.embed_images(**image_inputs(batch))
            slot_embeds = slot_mask = None
            if embeds.slot_embeds is not None:
                # padded description tokens (`slots: false`) differ in length between batches and processes
                padded = embeds.slot_mask is not None
                slot_embeds = _gather(embeds.slot_embeds.float(), accelerator, pad_dim=1 if padded else None)
                if padded:
                    slot_mask = _gather(embeds.slot_mask, accelerator, pad_dim=1)
            parts.append(ImageEmbeddings(_gather(embeds.global_embeds.float(), accelerator), slot_embeds, slot_mask))
    return image_ids, ImageEmbeddings.cat(parts)


def encode_texts(
    model: LeccrModel, texts: Sequence[str], recipe: Recipe, *, accelerator=None, batch_size: int | None = None
) -> torch.Tensor:
    """Embed query texts (cleaned as in training) in batches: [T, D]."""
    dataset = TextSet(list(texts), TextCleaning.from_recipe(recipe.data))
    loader = _loader(dataset, batch_size or recipe.eval.batch_size, Collator.for_model(model), accelerator)
    device = _device(model, accelerator)
    out = []
    model.eval()
    with torch.inference_mode(), _progress("encoding queries", len(loader)) as advance:
        for batch in loader:
            advance()
            embeds = model.embed_texts(batch["text_ids"].to(device), batch["text_mask"].to(device))
            out.append(_gather(embeds.float(), accelerator))
    return torch.cat(out)


def query_captions(corpus: Corpus, split: str, lang: str, translate_test: bool = False) -> tuple[list[str], list[str]]:
    """The human captions of (split, lang); with `translate_test`, their English machine translations instead.

    Returns (texts, image ids), aligned.
    """
    queries = corpus.captions(split, corpus.check_lang(lang), origin="human")
    if not queries:
        raise CorpusError(f"corpus {corpus.path} has no human {lang} captions in split {split!r}")
    if not translate_test:
        return [q.text for q in queries], [q.image_id for q in queries]
    english = {c.source: c.text for c in corpus.captions(split) if c.lang == "en" and c.origin == "mt" and c.source}
    missing = [q.cap_id for q in queries if q.cap_id not in english]
    if missing:
        raise CorpusError(
            f"translate-test: {len(missing)} {lang} queries of split {split!r} have no English machine translation "
            f"(first: {missing[0]})",
            f"make them with `leccr translate {corpus.path} --from {lang} --to en --split {split}`",
        )
    return [english[q.cap_id] for q in queries], [q.image_id for q in queries]


def evaluate_languages(
    model: LeccrModel,
    corpus: Corpus,
    split: str,
    langs: Sequence[str],
    recipe: Recipe,
    *,
    accelerator=None,
    fusion: float | None = None,
    fusion_mode: str = "linear",
    translate_test: bool = False,
    batch_size: int | None = None,
    rebuild_from: str | None = None,
) -> dict[str, dict[str, float]]:
    """Recall metrics of `model` on (split, lang) for every language; the gallery is embedded once.

    `fusion` α mixes the global and best-slot scores: `fusion_mode` 'linear' scores
    α·global + (1 − α)·slot, 'minmax' α·mm(global) + (1 − α)·mm(slot), each matrix min-max
    scaled over all of the language's queries and the gallery (the reference's video scoring).
    """
    for lang in langs:
        corpus.check_lang(lang)
    if fusion_mode not in FUSION_MODES:
        raise EvaluationError(f"fusion mode {fusion_mode!r}: expected one of {', '.join(FUSION_MODES)}")
    if fusion is not None and not uses_slot_embeddings(model.config):
        raise ModelError(
            "--fusion needs slot embeddings; this model has none",
            "it is a baseline, or multi_level_matching and english_guidance are both off",
        )
    image_ids, gallery = encode_gallery(
        model, corpus, split, recipe, accelerator=accelerator, batch_size=batch_size, rebuild_from=rebuild_from
    )
    column = {image_id: i for i, image_id in enumerate(image_ids)}
    results = {}
    for lang in langs:
        texts, owners = query_captions(corpus, split, lang, translate_test)
        text_embeds = encode_texts(model, texts, recipe, accelerator=accelerator, batch_size=batch_size)
        text_embeds = text_embeds.to(gallery.global_embeds.device)

        budget = recipe.eval.memory_budget_mb
        score_rows = _score_rows(model, text_embeds, gallery, fusion, fusion_mode, budget)
        labels = torch.tensor([column[i] for i in owners])
        ranks = retrieval_ranks_from_rows(score_rows, len(texts), len(image_ids), labels, memory_budget_mb=budget)
        results[lang] = metrics_from_ranks(ranks)
    return results


def _score_rows(model: LeccrModel, text_embeds, gallery: ImageEmbeddings, fusion, fusion_mode: str, memory_budget_mb: int):
    """The rows of the [queries, gallery] score matrix, block by block, as `fusion` and `fusion_mode` say."""

    def rows_of(score):
        def rows(start: int, stop: int) -> torch.Tensor:
            with torch.inference_mode():
                return score(text_embeds[start:stop])

        return rows

    if fusion is None or fusion_mode == "linear":
        return rows_of(lambda texts: model.score(texts, gallery, fusion=fusion))
    return minmax_fused_rows(
        rows_of(lambda texts: model.score(texts, gallery)),
        rows_of(lambda texts: model.slot_scores(texts, gallery)),
        len(text_embeds),
        len(gallery.global_embeds),
        fusion,
        memory_budget_mb,
    )


def eval_languages(corpus: Corpus, split: str, requested: Sequence[str], default: Sequence[str]) -> list[str]:
    """The languages to evaluate: `requested` (`all` = every language with human captions in the split), else `default`."""
    corpus.check_split(split)
    if list(requested) == ["all"]:
        langs = sorted({c.lang for c in corpus.captions(split, origin="human")})
        if not langs:
            raise CorpusError(f"corpus {corpus.path} has no human captions in split {split!r}")
        return langs
    if "all" in requested:
        raise EvaluationError("--lang all cannot be combined with other languages")
    langs = list(dict.fromkeys(requested or default))
    for lang in langs:
        corpus.check_lang(lang)
    return langs
