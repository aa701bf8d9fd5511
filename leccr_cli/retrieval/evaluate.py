"""Evaluating a model on a corpus split: embed the gallery once (`retrieval/encode.py`), embed the queries of
each language, rank with the exact metrics of `retrieval/metrics.py`.

Model settings (token limits, whether and how descriptions are read, caption cleaning, the
evaluation transform) come from the model; the caller gives the scoring (`fusion`,
`fusion_mode`, `gallery`, the rules of `config.check_scoring`) and the batch size and memory
budget (`eval_options(recipe)` takes them from a recipe).
"""

from __future__ import annotations

from typing import Sequence

import torch
from rich.console import Console

from leccr_cli.config import Recipe, check_scoring, uses_slot_embeddings
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.defaults import EVAL_BATCH_SIZE, EVAL_MEMORY_BUDGET_MB, FusionMode, GalleryMode
from leccr_cli.errors import CorpusError, InvalidArgument, ModelError, Param, Step, parts
from leccr_cli.model.leccr import ImageEmbeddings, LeccrModel
from leccr_cli.retrieval.encode import encode_gallery, encode_texts
from leccr_cli.retrieval.metrics import metrics_from_ranks, minmax_fused_rows, retrieval_ranks_from_rows


def eval_options(recipe: Recipe) -> dict:
    """The keyword arguments of `evaluate_languages` that a recipe sets (its `eval` block and data sources)."""
    return {
        "fusion": recipe.eval.fusion,
        "fusion_mode": recipe.eval.fusion_mode,
        "gallery": recipe.eval.gallery,
        "descriptions": recipe.data.descriptions,
        "video_features": recipe.data.video_features,
        "batch_size": recipe.eval.batch_size,
        "memory_budget_mb": recipe.eval.memory_budget_mb,
    }


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
        translate = Step(
            "translate", corpus.path, source_lang=lang, targets="en", splits=split,
            python=f"translate_corpus(corpus, ['en'], engine, source_lang={lang!r}, splits=[{split!r}])",
        )  # fmt: skip
        raise CorpusError(
            f"translate-test: {len(missing)} {lang} queries of split {split!r} have no English machine translation "
            f"(first: {missing[0]})",
            parts("make them with ", translate),
        )
    return [english[q.cap_id] for q in queries], [q.image_id for q in queries]


def _query_languages(corpus: Corpus, split: str) -> list[str]:
    return sorted({c.lang for c in corpus.captions(split, origin="human")})


def _no_queries(corpus: Corpus, split: str, lang: str) -> CorpusError:
    present = _query_languages(corpus, split)
    return CorpusError(
        f"corpus {corpus.path} has no human {lang} captions in split {split!r}, so no {lang} queries and no {lang} "
        f"gallery "
        f"(languages with captions there: {', '.join(present) or 'none'})",
        parts("evaluate one of those (", Param("langs"), ", eval.langs), or a corpus with captions in this language"),
    )


def check_eval_languages(corpus: Corpus, split: str, langs: Sequence[str]) -> None:
    """Refuse, before any encoding, a language without human captions (queries) in the split."""
    corpus.check_split(split)
    present = set(_query_languages(corpus, split))
    for lang in langs:
        corpus.check_lang(lang)
        if lang not in present:
            raise _no_queries(corpus, split, lang)


def language_galleries(corpus: Corpus, split: str, langs: Sequence[str], gallery: GalleryMode) -> dict[str, list[str]]:
    """The image ids each language is ranked against, in the split's order.

    `language`: the language's own gallery (`Corpus.gallery`: its own image list where the
    corpus has one, else every image of the split); `all`: every image of the split.
    """
    check_scoring(None, gallery=gallery)
    if gallery == "all":
        images = corpus.image_ids(split)
        return {lang: images for lang in langs}
    return {lang: corpus.gallery(split, lang) for lang in langs}


def evaluate_languages(
    model: LeccrModel,
    corpus: Corpus,
    split: str,
    langs: Sequence[str],
    *,
    fusion: float | None = None,
    fusion_mode: FusionMode = "linear",
    gallery: GalleryMode = "language",
    translate_test: bool = False,
    descriptions: str | None = None,
    video_features: str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    memory_budget_mb: int = EVAL_MEMORY_BUDGET_MB,
    accelerator=None,
    console: Console | None = None,
) -> dict[str, dict]:
    """Recall metrics of `model` on (split, lang) for every language: {lang: metrics}.

    Each language's queries (its human captions in the split; with `translate_test`, their
    English machine translations) are ranked against its gallery (`language_galleries`): the
    union of the galleries is embedded once, and a language's score matrix is restricted to
    the columns of its own images. Every result holds the metrics of `metrics_from_ranks` plus
    `gallery` (the mode), `gallery_size` (images ranked) and `queries` (texts ranked).

    `fusion` α mixes the global and best-slot scores: `fusion_mode` 'linear' scores
    α·global + (1 − α)·slot, 'minmax' α·mm(global) + (1 − α)·mm(slot), each matrix min-max
    scaled over all of the language's queries and its gallery (the reference's video scoring).
    `descriptions` and `video_features` choose the gallery's inputs as in `encode_gallery`;
    `memory_budget_mb` bounds the temporaries of ranking. Progress goes to `console`.
    """
    check_eval_languages(corpus, split, langs)
    check_scoring(fusion, fusion_mode, gallery, slot_embeddings=uses_slot_embeddings(model.config))
    galleries = language_galleries(corpus, split, langs, gallery)
    wanted = set().union(*galleries.values())
    union = [image_id for image_id in corpus.image_ids(split) if image_id in wanted]
    image_ids, embeddings = encode_gallery(
        model, corpus, split, image_ids=union, descriptions=descriptions, video_features=video_features,
        batch_size=batch_size, accelerator=accelerator, console=console,
    )  # fmt: skip
    _check_finite(model, "image", embeddings.global_embeds, embeddings.slot_embeds)
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    results = {}
    for lang in langs:
        own = galleries[lang]
        columns = {image_id: i for i, image_id in enumerate(own)}
        images = embeddings if own == image_ids else embeddings.select(torch.tensor([row[i] for i in own]))
        texts, owners = query_captions(corpus, split, lang, translate_test)
        text_embeds = encode_texts(model, texts, batch_size=batch_size, accelerator=accelerator, console=console)
        text_embeds = text_embeds.to(images.global_embeds.device)
        _check_finite(model, "text", text_embeds)

        score_rows = _score_rows(model, text_embeds, images, fusion, fusion_mode, memory_budget_mb)
        labels = torch.tensor([columns[i] for i in owners])
        ranks = retrieval_ranks_from_rows(score_rows, len(texts), len(own), labels, memory_budget_mb=memory_budget_mb)
        results[lang] = {
            **metrics_from_ranks(ranks),
            "gallery": gallery,
            "gallery_size": len(own),
            "queries": len(texts),
        }
    return results


def _score_rows(
    model: LeccrModel, text_embeds, gallery: ImageEmbeddings, fusion, fusion_mode: str, memory_budget_mb: int
):
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
        raise InvalidArgument(
            "langs",
            list(requested),
            "'all' alone",
            message=parts(Param("langs", "all"), " cannot be combined with other languages"),
        )
    langs = list(dict.fromkeys(requested or default))
    check_eval_languages(corpus, split, langs)
    return langs
