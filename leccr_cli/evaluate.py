"""Retrieval evaluation: encode galleries and queries with a model, score, recall metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from leccr_cli.errors import CorpusError


def _loader(dataset, batch_size: int, collate, accelerator):
    """A sequential DataLoader, sharded over processes when `accelerator` has several."""
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate)
    if accelerator is None:
        return loader
    from accelerate.data_loader import prepare_data_loader

    # not accelerator.prepare: evaluation loaders must not join the training checkpoint state
    return prepare_data_loader(
        loader, accelerator.device, num_processes=accelerator.num_processes, process_index=accelerator.process_index
    )


def _gather(tensor, accelerator):
    return tensor if accelerator is None else accelerator.gather_for_metrics(tensor)


def _device(model, accelerator):
    return accelerator.device if accelerator is not None else next(model.parameters()).device


def encode_gallery(model, corpus, split: str, recipe, *, accelerator=None, batch_size: int | None = None):
    """Embed every image (or video) of a split once: (image ids in gallery order, ImageEmbeddings)."""
    import torch

    from leccr_cli.data.loading import Collator, GallerySet, ImageTransform, VisualSource, check_descriptions
    from leccr_cli.model.leccr import ImageEmbeddings

    image_ids = corpus.image_ids(corpus.check_split(split))
    descriptions = None
    if recipe.model.variant == "leccr":
        descriptions = check_descriptions(corpus, recipe.data.descriptions, image_ids)
    transform = ImageTransform(model.image_size, model.image_mean, model.image_std, train=False)
    visual = VisualSource(corpus, split, transform, recipe.data.video_features)
    collate = Collator(
        model.tokenizer,
        recipe.model.text.max_tokens,
        recipe.model.text.description_max_tokens,
        frames=visual.frames if corpus.modality == "video" else None,
        max_frames=recipe.model.video.max_frames,
    )
    loader = _loader(GallerySet(image_ids, visual, descriptions), batch_size or recipe.eval.batch_size, collate, accelerator)
    device = _device(model, accelerator)
    globals_, slots = [], []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            embeds = model.embed_images(
                pixel_values=batch.get("pixel_values"),
                frames=batch.get("frames"),
                frame_mask=batch.get("frame_mask"),
                description_ids=batch.get("description_ids"),
                description_mask=batch.get("description_mask"),
            )
            globals_.append(_gather(embeds.global_embeds.float(), accelerator))
            if embeds.slot_embeds is not None:
                slots.append(_gather(embeds.slot_embeds.float(), accelerator))
    gallery = ImageEmbeddings(torch.cat(globals_), torch.cat(slots) if slots else None)
    return image_ids, gallery


def encode_texts(model, texts: Sequence[str], recipe, *, accelerator=None, batch_size: int | None = None):
    """Embed query texts (cleaned as in training) in batches: [T, D]."""
    import torch

    from leccr_cli.data.loading import Collator, TextCleaning, TextSet

    collate = Collator(model.tokenizer, recipe.model.text.max_tokens, recipe.model.text.description_max_tokens)
    dataset = TextSet(list(texts), TextCleaning.from_recipe(recipe.data))
    loader = _loader(dataset, batch_size or recipe.eval.batch_size, collate, accelerator)
    device = _device(model, accelerator)
    out = []
    model.eval()
    with torch.inference_mode():
        for batch in loader:
            embeds = model.embed_texts(batch["text_ids"].to(device), batch["text_mask"].to(device))
            out.append(_gather(embeds.float(), accelerator))
    return torch.cat(out)


def query_captions(corpus, split: str, lang: str, translate_test: bool = False):
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
    model,
    corpus,
    split: str,
    langs: Sequence[str],
    recipe,
    *,
    accelerator=None,
    fusion: float | None = None,
    translate_test: bool = False,
    batch_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Recall metrics of `model` on (split, lang) for every language; the gallery is embedded once."""
    import torch

    for lang in langs:
        corpus.check_lang(lang)
    image_ids, gallery = encode_gallery(model, corpus, split, recipe, accelerator=accelerator, batch_size=batch_size)
    column = {image_id: i for i, image_id in enumerate(image_ids)}
    results = {}
    for lang in langs:
        texts, owners = query_captions(corpus, split, lang, translate_test)
        text_embeds = encode_texts(model, texts, recipe, accelerator=accelerator, batch_size=batch_size)
        with torch.inference_mode():
            scores = model.score(text_embeds.to(gallery.global_embeds.device), gallery, fusion=fusion)
        labels = torch.tensor([column[i] for i in owners])
        results[lang] = recall_metrics(scores, labels, memory_budget_mb=recipe.eval.memory_budget_mb)
    return results


def write_eval_json(run_dir: Path, lang: str, split: str, metrics: dict, **extra) -> Path:
    """Write eval/<lang>-<split>.json in a run folder."""
    folder = Path(run_dir) / "eval"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{lang}-{split}.json"
    path.write_text(json.dumps({"lang": lang, "split": split, **extra, **metrics}, indent=2) + "\n", encoding="utf-8")
    return path


def recall_metrics(scores, text_to_image, ks=(1, 5, 10), memory_budget_mb=1024):  # TEMPORARY until merge
    import torch
    scores = scores.float()
    labels = torch.as_tensor(text_to_image)
    gt = scores[torch.arange(len(labels)), labels]
    t2i = (scores >= gt[:, None]).sum(1)
    n_images = scores.shape[1]
    i2t = torch.full((n_images,), 10**9)
    for j in range(len(labels)):
        col = scores[:, labels[j]]
        rank = (col >= col[j]).sum()
        i2t[labels[j]] = min(i2t[labels[j]], rank)
    out = {}
    for k in ks:
        out[f"i2t_r{k}"] = 100 * (i2t <= k).float().mean().item()
    for k in ks:
        out[f"t2i_r{k}"] = 100 * (t2i <= k).float().mean().item()
    out["sumr"] = sum(out.values())
    return out


def metrics_table(rows, title):  # TEMPORARY until merge
    from rich.table import Table
    t = Table(title=title)
    t.add_column("lang")
    keys = ["i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "sumr"]
    for k in keys:
        t.add_column(k)
    for lang, m in rows.items():
        t.add_row(lang, *(f"{m[k]:.1f}" for k in keys))
    return t
