"""Datasets over a corpus: training examples (an English caption, its translations, its image), gallery items, query
texts.

Every random choice (which translation pairs with an English caption, where a training crop
falls, whether an image is flipped) is a pure function of (seed, epoch, example index), so a
resumed run sees exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

from leccr_cli.corpus.corpus import Caption, Corpus
from leccr_cli.corpus.video import frame_features
from leccr_cli.data.transforms import ImageTransform, example_rng, load_image
from leccr_cli.errors import CorpusError, MissingTranslations, Step, parts
from leccr_cli.utils.text import TextCleaning

# ------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingExample:
    """One English caption, its translations and its image."""

    image_id: str
    image_index: int
    english: str
    translations: tuple[str, ...]


def training_examples(
    corpus: Corpus, split: str, source_lang: str, target_langs: Sequence[str]
) -> list[TrainingExample]:
    """Pair every human caption in `source_lang` with its machine translations (origin mt) into the targets.

    Refuses target languages without any translation of the split (`MissingTranslations`);
    English captions that have no translation at all are left out.
    """
    corpus.check_split(split)
    english = corpus.captions(split, corpus.check_lang(source_lang), origin="human")
    if not english:
        raise CorpusError(f"corpus {corpus.path} has no human {source_lang} captions in split {split!r}")
    by_source: dict[str, list[Caption]] = {}
    for lang in target_langs:
        rows = (
            [c for c in corpus.captions(split) if c.lang == lang and c.origin == "mt"]
            if lang in corpus.languages
            else []
        )
        if not rows:
            raise MissingTranslations(corpus.path, lang, split)
        for row in rows:
            by_source.setdefault(row.source, []).append(row)
    gallery = {image_id: i for i, image_id in enumerate(corpus.image_ids(split))}
    examples = []
    for caption in english:
        translations = by_source.get(caption.cap_id)
        if translations:
            examples.append(
                TrainingExample(
                    caption.image_id, gallery[caption.image_id], caption.text, tuple(t.text for t in translations)
                )
            )
    if not examples:
        raise CorpusError(
            f"no {source_lang} caption of split {split!r} in {corpus.path} has a translation (the mt rows' source ids "
            f"match none)",
            parts("re-run ", Step("translate", python="translate_corpus")),
        )
    return examples


class VisualSource:
    """Reads the visual input of a gallery item: an image tensor, or frame features (video)."""

    def __init__(self, corpus: Corpus, split: str, transform: ImageTransform | None, video_features: str | None):
        self.modality = corpus.modality
        if self.modality == "video":
            self.frames = frame_features(corpus, video_features)
        else:
            self.paths = corpus.image_paths(split)
            self.transform = transform

    @property
    def frame_dim(self) -> int | None:
        return self.frames.dim if self.modality == "video" else None

    def load(self, image_id: str, rng: random.Random | None = None):
        if self.modality == "video":
            return image_id
        return self.transform(load_image(self.paths[image_id], image_id), rng)


class TrainingSet:
    """Map-style dataset of training examples; call `set_epoch` before each epoch.

    Descriptions come as texts (`descriptions`) or, from a slot cache, as token features
    (`description_features`, a `leccr_cli.prep.features.cache.SlotCache`).
    """

    def __init__(
        self,
        examples: list[TrainingExample],
        visual: VisualSource,
        descriptions: dict[str, str] | None,
        cleaning: TextCleaning,
        seed: int,
        description_features=None,
    ):
        self.examples = examples
        self.visual = visual
        self.descriptions = descriptions
        self.cleaning = cleaning
        self.seed = seed
        self.epoch = 0
        self.description_features = description_features

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        example = self.examples[index]
        rng = example_rng(self.seed, self.epoch, index)
        item = {
            "visual": self.visual.load(example.image_id, rng),
            "image_index": example.image_index,
            "source": self.cleaning(example.english),
            "target": self.cleaning(rng.choice(example.translations)),
        }
        if self.description_features is not None:
            item["description_features"] = self.description_features.row(example.image_id)
        elif self.descriptions is not None:
            item["description"] = self.descriptions[example.image_id]
        return item


class GallerySet:
    """Map-style dataset over the images (or videos) of a split, in gallery order (descriptions as in `TrainingSet`)."""

    def __init__(
        self, image_ids: list[str], visual: VisualSource, descriptions: dict[str, str] | None, description_features=None
    ):
        self.image_ids = image_ids
        self.visual = visual
        self.descriptions = descriptions
        self.description_features = description_features

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict:
        image_id = self.image_ids[index]
        item = {"visual": self.visual.load(image_id), "image_index": index}
        if self.description_features is not None:
            item["description_features"] = self.description_features.row(image_id)
        elif self.descriptions is not None:
            item["description"] = self.descriptions[image_id]
        return item


class TextSet:
    """Map-style dataset over cleaned query texts."""

    def __init__(self, texts: list[str], cleaning: TextCleaning):
        self.texts = texts
        self.cleaning = cleaning

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int) -> dict:
        return {"text": self.cleaning(self.texts[index]), "index": index}
