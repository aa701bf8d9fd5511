"""Embedding for retrieval: a corpus split's images (with their descriptions) and query texts.

Evaluation, the index and the app all embed through these functions, so an index holds what
evaluation scores against and a query is embedded as evaluation embeds its queries. What the
model needs besides its weights comes from the model itself: its token limits, whether and
how it reads descriptions (`model.config`), caption cleaning and the evaluation image
transform (`model.preprocessing`).
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from accelerate.data_loader import prepare_data_loader
from rich.console import Console
from torch.utils.data import DataLoader

from leccr_cli.corpus.corpus import Corpus, check_descriptions
from leccr_cli.data.collate import Collator
from leccr_cli.data.datasets import GallerySet, TextSet, VisualSource
from leccr_cli.data.transforms import ImageTransform
from leccr_cli.defaults import EVAL_BATCH_SIZE
from leccr_cli.model.leccr import ImageEmbeddings, LeccrModel, image_inputs
from leccr_cli.prep.features.cache import open_slot_cache
from leccr_cli.utils.console import progress


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
def _progress(console: Console | None, description: str, total: int):
    """A transient progress bar over `total` batches on `console`; yields `advance()`."""
    bar = progress(console, transient=True)
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


def gallery_batches(
    model: LeccrModel,
    corpus: Corpus,
    split: str,
    *,
    image_ids: Sequence[str] | None = None,
    descriptions: str | None = None,
    video_features: str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    accelerator=None,
    console: Console | None = None,
) -> Iterator[tuple[list[str], ImageEmbeddings]]:
    """Embed the images (or videos) of a split batch by batch: yields (image ids, ImageEmbeddings) per batch.

    `image_ids` (images of the split, in its order) limits the gallery; by default every
    image of the split. Images are fitted as the model's `preprocessing.eval_transform` says.
    Descriptions (`descriptions/<descriptions>/`, by default the source the model was trained
    with) are read when the model reads them, from the slot cache when its
    `description_features` setting says so. `video_features` names the frame-feature set of a
    video corpus (default: its only one). Embeddings are float32 on the model's device.
    """
    corpus.check_split(split)
    image_ids = list(corpus.image_ids(split) if image_ids is None else image_ids)
    source = descriptions or model.preprocessing.descriptions
    texts = features = None
    if model.reads_descriptions:
        texts = check_descriptions(corpus, source, image_ids)
        features = open_slot_cache(model, corpus, split, source, descriptions=texts, console=console)
    transform = ImageTransform(
        model.image_size, model.image_mean, model.image_std, train=False, fit=model.preprocessing.eval_transform
    )
    visual = VisualSource(corpus, split, transform, video_features)
    gallery_set = GallerySet(image_ids, visual, texts if features is None else None, description_features=features)
    loader = _loader(gallery_set, batch_size, Collator.for_model(model, visual), accelerator)
    device = _device(model, accelerator)
    model.eval()
    with _progress(console, f"encoding {split} gallery", len(loader)) as advance:
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
    *,
    image_ids: Sequence[str] | None = None,
    descriptions: str | None = None,
    video_features: str | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    accelerator=None,
    console: Console | None = None,
) -> tuple[list[str], ImageEmbeddings]:
    """Embed the images (or videos) of a split once: (image ids in gallery order, ImageEmbeddings).

    The options are those of `gallery_batches`.
    """
    corpus.check_split(split)
    image_ids = list(corpus.image_ids(split) if image_ids is None else image_ids)
    batches = gallery_batches(
        model, corpus, split, image_ids=image_ids, descriptions=descriptions, video_features=video_features,
        batch_size=batch_size, accelerator=accelerator, console=console,
    )  # fmt: skip
    return image_ids, ImageEmbeddings.cat([embeds for _, embeds in batches])


def encode_texts(
    model: LeccrModel,
    texts: Sequence[str],
    *,
    batch_size: int = EVAL_BATCH_SIZE,
    accelerator=None,
    console: Console | None = None,
) -> torch.Tensor:
    """Embed query texts in batches, cleaned as the model's captions were in training: [T, D], unit length."""
    dataset = TextSet(list(texts), model.preprocessing.text_cleaning)
    loader = _loader(dataset, batch_size, Collator.for_model(model), accelerator)
    device = _device(model, accelerator)
    out = []
    model.eval()
    with torch.inference_mode(), _progress(console, "encoding queries", len(loader)) as advance:
        for batch in loader:
            advance()
            embeds = model.embed_texts(batch["text_ids"].to(device), batch["text_mask"].to(device))
            out.append(_gather(embeds.float(), accelerator))
    return torch.cat(out)
