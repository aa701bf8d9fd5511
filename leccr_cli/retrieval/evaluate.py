"""Evaluating a model on a corpus split: embed the gallery once, embed the queries of each
language, rank with the exact metrics of `leccr_cli.retrieval.metrics`.

Model settings (token limits, whether and how descriptions are read) come from the model's
own config; the recipe gives the data settings (description source, caption cleaning,
frame features) and the evaluation batch size and memory budget.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader

from leccr_cli.config import Recipe
from leccr_cli.utils.console import progress
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.data.datasets import (
    Collator,
    GallerySet,
    ImageTransform,
    TextCleaning,
    TextSet,
    VisualSource,
    check_descriptions,
)
from leccr_cli.prep.features.cache import open_slot_cache
from leccr_cli.errors import CorpusError, EvaluationError, ModelError
from leccr_cli.retrieval.metrics import metrics_from_ranks, minmax_fused_rows, retrieval_ranks_from_rows
from leccr_cli.model.leccr import ImageEmbeddings, LeccrModel, image_inputs, uses_slot_embeddings
from leccr_cli.runs.layout import run_of_model

FUSION_MODES = ("linear", "minmax")
GALLERY_MODES = ("language", "all")


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
    # the text encoder's: a query model (`load_query_model`) keeps its image side on the meta device
    return accelerator.device if accelerator is not None else next(model.text_encoder.parameters()).device


def _rebuild_source(model: LeccrModel, rebuild_from: str | None) -> str:
    if rebuild_from is not None:
        return rebuild_from
    run = run_of_model(model)
    return str(run) if run is not None else "RECIPE_OR_RUN"


def gallery_batches(
    model: LeccrModel,
    corpus: Corpus,
    split: str,
    recipe: Recipe,
    *,
    image_ids: Sequence[str] | None = None,
    accelerator=None,
    batch_size: int | None = None,
    rebuild_from: str | None = None,
) -> Iterator[tuple[list[str], ImageEmbeddings]]:
    """Embed the images (or videos) of a split batch by batch: yields (image ids, ImageEmbeddings) per batch.

    `image_ids` (images of the split, in its order) limits the gallery; by default every
    image of the split. Images are fitted as `data.eval_transform` says. Descriptions are
    read when the model reads them (from the slot cache when its `description_features`
    setting says so; `rebuild_from` names the recipe or run in the rebuild hint of a missing
    cache, by default the run the model was loaded from). Embeddings are float32 on the model's device.
    """
    corpus.check_split(split)
    image_ids = list(corpus.image_ids(split) if image_ids is None else image_ids)
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
    transform = ImageTransform(
        model.image_size, model.image_mean, model.image_std, train=False, fit=recipe.data.eval_transform
    )
    visual = VisualSource(corpus, split, transform, recipe.data.video_features)
    gallery_set = GallerySet(image_ids, visual, descriptions if features is None else None, description_features=features)
    loader = _loader(gallery_set, batch_size or recipe.eval.batch_size, Collator.for_model(model, visual), accelerator)
    device = _device(model, accelerator)
    model.eval()
    with _progress(f"encoding {split} gallery", len(loader)) as advance:
        for batch in loader:
            advance()
            with torch.inference_mode():  # per batch: the caller runs between batches
                batch = {k: v.to(device) for k, v in batch.items()}
                embeds = model.embed_images(**image_inputs(batch))
                slot_embeds = slot_mask = None
                if embeds.slot_embeds is not None:
                    # padded description tokens (`slots: false`) differ in length between batches and processes
                    padded = embeds.slot_mask is not None
                    slot_embeds = _gather(embeds.slot_embeds.float(), accelerator, pad_dim=1 if padded else None)
                    if padded:
                        slot_mask = _gather(embeds.slot_mask, accelerator, pad_dim=1)
                global_embeds = _gather(embeds.global_embeds.float(), accelerator)
                rows = _gather(batch["image_index"], accelerator).tolist()
            yield [image_ids[i] for i in rows], ImageEmbeddings(global_embeds, slot_embeds, slot_mask)


def encode_gallery(
    model: LeccrModel,
    corpus: Corpus,
    split: str,
    recipe: Recipe,
    *,
    accelerator=None,
    batch_size: int | None = None,
    rebuild_from: str | None = None,
    image_ids: Sequence[str] | None = None,
) -> tuple[list[str], ImageEmbeddings]:
    """Embed the images (or videos) of a split once: (image ids in gallery order, ImageEmbeddings).

    `image_ids` limits the gallery as in `gallery_batches`, which says how descriptions are read.
    """
    corpus.check_split(split)
    image_ids = list(corpus.image_ids(split) if image_ids is None else image_ids)
    parts = [
        embeds
        for _, embeds in gallery_batches(
            model,
            corpus,
            split,
            recipe,
            image_ids=image_ids,
            accelerator=accelerator,
            batch_size=batch_size,
            rebuild_from=rebuild_from,
        )
    ]
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
        raise _no_queries(corpus, split, lang)
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


def _query_languages(corpus: Corpus, split: str) -> list[str]:
    return sorted({c.lang for c in corpus.captions(split, origin="human")})


def _no_queries(corpus: Corpus, split: str, lang: str) -> CorpusError:
    present = _query_languages(corpus, split)
    return CorpusError(
        f"corpus {corpus.path} has no human {lang} captions in split {split!r}, so no {lang} queries and no {lang} gallery "
        f"(languages with captions there: {', '.join(present) or 'none'})",
        "evaluate one of those (--lang, eval.langs), or a corpus with captions in this language",
    )


def check_eval_languages(corpus: Corpus, split: str, langs: Sequence[str]) -> None:
    """Refuse, before any encoding, a language without human captions (queries) in the split."""
    corpus.check_split(split)
    present = set(_query_languages(corpus, split))
    for lang in langs:
        corpus.check_lang(lang)
        if lang not in present:
            raise _no_queries(corpus, split, lang)


def language_galleries(corpus: Corpus, split: str, langs: Sequence[str], gallery: str) -> dict[str, list[str]]:
    """The image ids each language is ranked against, in the split's order.

    `language`: the language's own gallery (`Corpus.gallery`: its own image list where the
    corpus has one, else every image of the split); `all`: every image of the split.
    """
    if gallery not in GALLERY_MODES:
        raise EvaluationError(f"gallery {gallery!r}: expected one of {', '.join(GALLERY_MODES)}")
    if gallery == "all":
        images = corpus.image_ids(split)
        return {lang: images for lang in langs}
    return {lang: corpus.gallery(split, lang) for lang in langs}


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
    gallery: str | None = None,
) -> dict[str, dict]:
    """Recall metrics of `model` on (split, lang) for every language.

    Each language's queries are ranked against its gallery (`language_galleries`; `gallery`
    defaults to the recipe's `eval.gallery`): the union of the galleries is embedded once,
    and a language's score matrix is restricted to the columns of its own images. Every
    result holds the metrics of `metrics_from_ranks` plus `gallery` (the mode), `gallery_size`
    (images ranked) and `queries` (texts ranked).

    `fusion` α mixes the global and best-slot scores: `fusion_mode` 'linear' scores
    α·global + (1 − α)·slot, 'minmax' α·mm(global) + (1 − α)·mm(slot), each matrix min-max
    scaled over all of the language's queries and its gallery (the reference's video scoring).
    """
    gallery = gallery or recipe.eval.gallery
    check_eval_languages(corpus, split, langs)
    if fusion_mode not in FUSION_MODES:
        raise EvaluationError(f"fusion mode {fusion_mode!r}: expected one of {', '.join(FUSION_MODES)}")
    if fusion is not None and not uses_slot_embeddings(model.config):
        raise ModelError(
            "--fusion needs slot embeddings; this model has none",
            "it is a baseline, or multi_level_matching and english_guidance are both off",
        )
    galleries = language_galleries(corpus, split, langs, gallery)
    wanted = set().union(*galleries.values())
    union = [image_id for image_id in corpus.image_ids(split) if image_id in wanted]
    image_ids, embeddings = encode_gallery(
        model,
        corpus,
        split,
        recipe,
        accelerator=accelerator,
        batch_size=batch_size,
        rebuild_from=rebuild_from,
        image_ids=union,
    )
    _check_finite(model, "image", embeddings.global_embeds, embeddings.slot_embeds)
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    results = {}
    for lang in langs:
        own = galleries[lang]
        columns = {image_id: i for i, image_id in enumerate(own)}
        images = embeddings if own == image_ids else embeddings.select(torch.tensor([row[i] for i in own]))
        texts, owners = query_captions(corpus, split, lang, translate_test)
        text_embeds = encode_texts(model, texts, recipe, accelerator=accelerator, batch_size=batch_size)
        text_embeds = text_embeds.to(images.global_embeds.device)
        _check_finite(model, "text", text_embeds)

        budget = recipe.eval.memory_budget_mb
        score_rows = _score_rows(model, text_embeds, images, fusion, fusion_mode, budget)
        labels = torch.tensor([columns[i] for i in owners])
        ranks = retrieval_ranks_from_rows(score_rows, len(texts), len(own), labels, memory_budget_mb=budget)
        results[lang] = {**metrics_from_ranks(ranks), "gallery": gallery, "gallery_size": len(own), "queries": len(texts)}
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


def _check_finite(model: LeccrModel, what: str, *embeddings) -> None:
    """Refuse NaN or infinite embeddings: the model's weights are broken, not the scoring."""
    if all(e is None or bool(torch.isfinite(e).all()) for e in embeddings):
        return
    where = f" ({model.source_folder})" if model.source_folder is not None else ""
    raise ModelError(
        f"the model{where} gives NaN or infinite {what} embeddings: its weights are not finite",
        "its training diverged: train again with a lower optim.lr or with optim.max_grad_norm set",
    )


def eval_languages(corpus: Corpus, split: str, requested: Sequence[str], default: Sequence[str]) -> list[str]:
    """The languages to evaluate: `requested` (`all` = every language with human captions in the split), else `default`.

    A language without human captions in the split is refused with one line.
    """
    corpus.check_split(split)
    if list(requested) == ["all"]:
        langs = _query_languages(corpus, split)
        if not langs:
            raise CorpusError(f"corpus {corpus.path} has no human captions in split {split!r}")
        return langs
    if "all" in requested:
        raise EvaluationError("--lang all cannot be combined with other languages")
    langs = list(dict.fromkeys(requested or default))
    check_eval_languages(corpus, split, langs)
    return langs
