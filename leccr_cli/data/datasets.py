"""From a corpus to model batches: caption cleaning, CLIP image transforms, datasets, collation.

Every random choice (which translation pairs with an English caption, where a training
crop falls, whether an image is flipped) is a pure function of (seed, epoch, example index), so a resumed run sees
exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import random
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from leccr_cli.corpus.corpus import Caption, Corpus
from leccr_cli.corpus.video import FrameFeatures
from leccr_cli.errors import CorpusError

# ------------------------------------------------------------------------------ text


# the marks the reference's caption cleaning replaces by spaces (all ASCII; CJK punctuation stays)
ASCII_PUNCTUATION = frozenset(",.'!?\"()*#:;~-/")


def clean_caption(text: str, lowercase: bool = True, strip_punctuation: str = "unicode", max_words: int = 30) -> str:
    """Caption cleaning as in the reference: lower-case, punctuation removed, cut to `max_words`.

    `strip_punctuation`: `unicode` replaces every Unicode punctuation mark by a space, `ascii`
    only the reference's ASCII marks (, . ' ! ? " ( ) * # : ; ~ - /), `none` keeps everything.
    """
    if lowercase:
        text = text.lower()
    if strip_punctuation == "unicode":
        text = "".join(" " if unicodedata.category(ch).startswith("P") else ch for ch in text)
    elif strip_punctuation == "ascii":
        text = "".join(" " if ch in ASCII_PUNCTUATION else ch for ch in text)
    return " ".join(text.split()[:max_words])


@dataclass(frozen=True)
class TextCleaning:
    """The recipe's caption-cleaning settings."""

    lowercase: bool = True
    strip_punctuation: str = "unicode"
    max_words: int = 30

    def __call__(self, text: str) -> str:
        return clean_caption(text, self.lowercase, self.strip_punctuation, self.max_words)

    @classmethod
    def from_recipe(cls, data) -> "TextCleaning":
        return cls(data.lowercase, data.strip_punctuation, data.max_words)


# ---------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageTransform:
    """CLIP preprocessing without torchvision: fit the image to `size` x `size`, normalise.

    `fit`: `center_crop` resizes the short side to `size` and crops the middle; `resize`
    squeezes the whole image to `size` x `size` (the reference's test transform). With
    `train=True` and a random stream, a random resized crop (area fraction in
    [crop_scale_min, 1], aspect ratio in [3/4, 4/3]) replaces the fit. With `flip=True` and
    a random stream, half the images are flipped left to right (drawn after the crop, so a
    flip never changes which crop an example gets).
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    train: bool = False
    crop_scale_min: float = 0.5
    fit: str = "center_crop"
    flip: bool = False

    def __call__(self, image, rng: random.Random | None = None):
        image = image.convert("RGB")
        if self.train and rng is not None:
            image = self._random_crop(image, rng)
            image = image.resize((self.size, self.size), Image.BICUBIC)
        elif self.fit == "resize":
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), Image.BICUBIC)
        else:
            width, height = image.size
            scale = self.size / min(width, height)
            new_size = (max(self.size, round(width * scale)), max(self.size, round(height * scale)))
            if new_size != image.size:
                image = image.resize(new_size, Image.BICUBIC)
            left = (new_size[0] - self.size) // 2
            top = (new_size[1] - self.size) // 2
            image = image.crop((left, top, left + self.size, top + self.size))
        if self.flip and rng is not None and rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array).permute(2, 0, 1)
        mean = torch.tensor(self.mean).view(3, 1, 1)
        std = torch.tensor(self.std).view(3, 1, 1)
        return (tensor - mean) / std

    def _random_crop(self, image, rng: random.Random):
        width, height = image.size
        area = width * height
        for _ in range(10):
            target = area * rng.uniform(self.crop_scale_min, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = round(math.sqrt(target * ratio))
            h = round(math.sqrt(target / ratio))
            if 0 < w <= width and 0 < h <= height:
                left = rng.randint(0, width - w)
                top = rng.randint(0, height - h)
                return image.crop((left, top, left + w, top + h))
        side = min(width, height)
        return image.crop(((width - side) // 2, (height - side) // 2, (width + side) // 2, (height + side) // 2))


def load_image(path: Path, image_id: str):
    """Open an image file; a missing or corrupt file is a `CorpusError` naming the id and path."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (FileNotFoundError, UnidentifiedImageError, OSError) as error:
        raise CorpusError(f"image {image_id!r} at {path} cannot be read ({error.__class__.__name__})") from None


def example_rng(seed: int, epoch: int, index: int) -> random.Random:
    """The random stream of one example in one epoch (independent of global RNG state)."""
    return random.Random(f"{seed}:{epoch}:{index}")


# ------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingExample:
    """One English caption, its translations and its image."""

    image_id: str
    image_index: int
    english: str
    translations: tuple[str, ...]


def training_examples(corpus: Corpus, split: str, source_lang: str, target_langs: Sequence[str]) -> list[TrainingExample]:
    """Pair every human caption in `source_lang` with its machine translations (origin mt) into the targets.

    Refuses target languages without any translation of the split (run `leccr translate`);
    English captions that have no translation at all are left out.
    """
    corpus.check_split(split)
    english = corpus.captions(split, corpus.check_lang(source_lang), origin="human")
    if not english:
        raise CorpusError(f"corpus {corpus.path} has no human {source_lang} captions in split {split!r}")
    by_source: dict[str, list[Caption]] = {}
    for lang in target_langs:
        rows = [c for c in corpus.captions(split) if c.lang == lang and c.origin == "mt"] if lang in corpus.languages else []
        if not rows:
            raise CorpusError(
                f"corpus {corpus.path} has no machine-translated {lang} captions in split {split!r}",
                f"make them with `leccr translate {corpus.path} --to {lang} --split {split}`",
            )
        for row in rows:
            by_source.setdefault(row.source, []).append(row)
    gallery = {image_id: i for i, image_id in enumerate(corpus.image_ids(split))}
    examples = []
    for caption in english:
        translations = by_source.get(caption.cap_id)
        if translations:
            examples.append(
                TrainingExample(caption.image_id, gallery[caption.image_id], caption.text, tuple(t.text for t in translations))
            )
    if not examples:
        raise CorpusError(
            f"no {source_lang} caption of split {split!r} in {corpus.path} has a translation (the mt rows' source ids match none)",
            "re-run `leccr translate`",
        )
    return examples


class VisualSource:
    """Reads the visual input of a gallery item: an image tensor, or frame features (video)."""

    def __init__(self, corpus: Corpus, split: str, transform: ImageTransform | None, video_features: str | None):
        self.modality = corpus.modality
        if self.modality == "video":
            names = corpus.video_feature_sets()
            name = video_features or (names[0] if len(names) == 1 else None)
            if name is None:
                raise CorpusError(
                    f"video corpus {corpus.path} has frame features {names or 'none'}",
                    "set data.video_features to one of them" if names else "import them with `leccr data import-nrccr --video-feature`",
                )
            self.frames = FrameFeatures(corpus.path / "video" / f"{name}.safetensors")
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


def check_descriptions(corpus: Corpus, source: str, image_ids: Sequence[str]) -> dict[str, str]:
    """The description of every image in `image_ids`, or a `CorpusError` naming the first missing one."""
    descriptions = corpus.descriptions(source)
    missing = [i for i in image_ids if not descriptions.get(i, "").strip()]
    if missing:
        raise CorpusError(
            f"{len(missing)} {corpus.modality}{'s have' if len(missing) > 1 else ' has'} no description in "
            f"descriptions/{source} of {corpus.path} (first: {missing[0]})",
            f"write them with `leccr caption {corpus.path}`, or bring them with "
            f"`leccr data import-descriptions {corpus.path} SOURCE --name {source} --overwrite`",
        )
    return descriptions


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


class Collator:
    """Turns dataset items into the model's batch dict (tokenizing texts, stacking visuals, padding
    cached description features to the batch's longest row)."""

    def __init__(self, tokenizer, caption_max_tokens: int, description_max_tokens: int, frames=None, max_frames: int = 64):
        self.tokenizer = tokenizer
        self.caption_max_tokens = caption_max_tokens
        self.description_max_tokens = description_max_tokens
        self.frames = frames
        self.max_frames = max_frames

    @classmethod
    def for_model(cls, model, visual: "VisualSource | None" = None) -> "Collator":
        """The collator of `model`, with the model's own token limits (and frame features for video)."""
        config = model.config
        return cls(
            model.tokenizer,
            config.text.max_tokens,
            config.text.description_max_tokens,
            frames=visual.frames if visual is not None and visual.modality == "video" else None,
            max_frames=config.video.max_frames,
        )

    def _tokenize(self, texts: list[str], max_length: int):
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        return encoded["input_ids"], encoded["attention_mask"]

    def __call__(self, items: list[dict]) -> dict:
        batch: dict = {}
        if "visual" in items[0]:
            if self.frames is not None:
                batch["frames"], batch["frame_mask"] = self.frames.batch([i["visual"] for i in items], self.max_frames)
            else:
                batch["pixel_values"] = torch.stack([i["visual"] for i in items])
            batch["image_index"] = torch.tensor([i["image_index"] for i in items], dtype=torch.long)
        for key, prefix in (("source", "source"), ("target", "target"), ("text", "text")):
            if key in items[0]:
                batch[f"{prefix}_ids"], batch[f"{prefix}_mask"] = self._tokenize([i[key] for i in items], self.caption_max_tokens)
        if "description" in items[0]:
            batch["description_ids"], batch["description_mask"] = self._tokenize(
                [i["description"] for i in items], self.description_max_tokens
            )
        if "description_features" in items[0]:
            batch["description_features"], batch["description_features_mask"] = pad_features(
                [i["description_features"] for i in items]
            )
        if "index" in items[0]:
            batch["index"] = torch.tensor([i["index"] for i in items], dtype=torch.long)
        return batch


def pad_features(rows: list) -> tuple:
    """Stack [length_i, D] feature rows into [B, max length, D] (zero padding) and a [B, max length] bool mask."""
    longest = max(r.shape[0] for r in rows)
    features = rows[0].new_zeros(len(rows), longest, rows[0].shape[1])
    mask = torch.zeros(len(rows), longest, dtype=torch.bool)
    for i, r in enumerate(rows):
        features[i, : r.shape[0]] = r
        mask[i, : r.shape[0]] = True
    return features, mask
