"""What both synthetic benchmarks share: the held-out selection that makes each caption single out its scene, the
split sizes, and the assembly of every split's captions and descriptions.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from leccr_cli.corpus.corpus import Caption, ImageRow, write_corpus
from leccr_cli.corpus.synthetic.grammar import DESCRIPTION_SOURCE, GRAMMARS, draw_mt_noise
from leccr_cli.errors import CorpusError, InvalidArgument, Param, parts

# -------------------------------------------------------------- held-out selection


class CaptionCodes:
    """Integer codes for the captions of one or two mentions over a finite mention vocabulary.

    A caption (m,) has code(m) and a caption (a, b) has (1 + code(a)) * N + code(b), N the
    vocabulary size, so distinct captions have distinct codes. With the mentions that fit
    each object numbered, the captions consistent with a scene are a set of integers and
    "does this caption fit any of these scenes" is a lookup instead of a scan.
    """

    def __init__(self, mentions):
        self.mentions = list(mentions)
        self.code = {m: i for i, m in enumerate(self.mentions)}
        self.weights = [m.weight for m in self.mentions]
        self.base = len(self.mentions)

    def encode(self, caption: tuple) -> int:
        if len(caption) == 1:
            return self.code[caption[0]]
        first, second = caption
        return (1 + self.code[first]) * self.base + self.code[second]

    def decode(self, code: int) -> tuple:
        if code < self.base:
            return (self.mentions[code],)
        first, second = divmod(code, self.base)
        return (self.mentions[first - 1], self.mentions[second])

    def consistent(self, objects: list[tuple[int, ...]]) -> set[int]:
        """Codes of every caption consistent with a scene whose objects fit these mention codes.

        A pair needs two distinct objects, in either order: at most 36 one-mention and 864
        two-mention captions for three image objects.
        """
        codes = {code for fitting in objects for code in fitting}
        for first, second in itertools.permutations(objects, 2):
            for a in first:
                head = (1 + a) * self.base
                codes.update([head + b for b in second])
        return codes

    def candidates(self, objects: list[tuple[int, ...]]) -> list[tuple[int, int]]:
        """(code, weight) of every one-mention caption, then of every pair of distinct objects."""
        weights = self.weights
        out = [(code, weights[code]) for fitting in objects for code in fitting]
        for first, second in itertools.combinations(objects, 2):
            for a in first:
                head, weight = (1 + a) * self.base, weights[a]
                out.extend([(head + b, weight + weights[b]) for b in second])
        return out


def _distinctive_caption(
    candidates: list[tuple[int, int]], taken: set[int], codes: CaptionCodes, rng: random.Random
) -> int | None:
    """The code of a short candidate caption outside `taken`, or None."""
    # a natural caption says a little more than the bare minimum: skip the sparsest forms
    candidates = [(code, w) for code, w in candidates if w >= (3 if code < codes.base else 4)]
    # lightest first; ties (and one extra attribute now and then) in random order
    keys = {code: w + (rng.random() < 0.3) + rng.random() for code, w in candidates}
    for code, _ in sorted(candidates, key=lambda candidate: keys[candidate[0]]):
        if code not in taken:
            return code
    return None


def grow_held_out(count: int, rng: random.Random, draw, object_codes, codes: CaptionCodes, fullest, tries: int = 30):
    """Scenes and captions for a held-out split, grown so that each caption singles out its scene.

    `draw(rng)` makes a random scene (a tuple of objects), `object_codes(obj)` numbers the
    mentions that fit an object (in `codes`), and `fullest(scene)` is the caption kept when
    nothing shorter is distinctive. A new scene is kept only if it fits no earlier caption and
    has a caption that fits no earlier scene; after `tries` misses the last candidate is kept
    with its fullest caption. Returns (scenes, captions, singled) where singled[i] says caption
    i fits scene i only. Each scene's consistent captions are indexed once, so the work grows
    linearly with `count`.
    """

    def consistent_codes(scene) -> set[int]:
        return codes.consistent([object_codes(obj) for obj in scene])

    scenes: list = []
    captions: list = []
    # captions must also be unique against a typical population, else early (sparse)
    # captions would fit most later scenes
    population = [draw(rng) for _ in range(count)]
    taken: set[int] = set()  # codes of the captions that fit a kept or population scene
    for other in population:
        taken |= consistent_codes(other)
    used: set[int] = set()  # codes of the captions kept so far
    for _ in range(count):
        for _attempt in range(tries):
            scene = draw(rng)
            fitting = consistent_codes(scene)
            if not used.isdisjoint(fitting):
                continue
            code = _distinctive_caption(codes.candidates([object_codes(obj) for obj in scene]), taken, codes, rng)
            if code is not None:
                break
        else:
            code = codes.encode(fullest(scene))
        scenes.append(scene)
        captions.append(codes.decode(code))
        taken |= fitting
        used.add(code)
    fits: Counter = Counter()
    for scene in scenes:
        fits.update(consistent_codes(scene) & used)
    # caption i always fits scene i, so it singles it out when no other scene adds to its count
    singled = [fits[codes.encode(caption)] == 1 for caption in captions]
    return scenes, captions, singled


# -------------------------------------------------------------------------- building


@dataclass
class SynthReport:
    """What `synth` built."""

    path: Path
    images: dict[str, int]
    captions: int
    languages: list[str]
    ceiling: dict[str, float] = field(default_factory=dict)


def check_request(langs, count: int, name: str) -> None:
    """Refuse languages without a grammar and corpora too small for two held-out splits (`count`: parameter `name`)."""
    unknown = [lang for lang in langs if lang not in GRAMMARS]
    if unknown:
        raise CorpusError(
            f"the synthetic benchmark has no grammar for {', '.join(unknown)}",
            f"choose among {', '.join(GRAMMARS)}",
        )
    if count < 30:
        raise InvalidArgument(
            name,
            count,
            "is too small",
            "use at least 30 (10 per held-out split)",
            message=parts(Param(name, count), " is too small"),
        )


def split_sizes(images: int) -> dict[str, int]:
    """train/val/test image counts: 12.5% each for val and test."""
    held_out = max(10, round(images * 0.125))
    return {"train": images - 2 * held_out, "val": held_out, "test": held_out}


@dataclass
class SplitContents:
    """The rows, items (scene or video by id), captions, descriptions and R@1 ceilings of a synthetic corpus."""

    rows: list[ImageRow] = field(default_factory=list)
    items: dict = field(default_factory=dict)
    captions: list[Caption] = field(default_factory=list)
    descriptions: list[dict] = field(default_factory=list)
    ceiling: dict[str, float] = field(default_factory=dict)


def assemble_splits(
    sizes: dict[str, int],
    rng: random.Random,
    *,
    prefix: str,
    media_path,
    random_item,
    held_out,
    describe,
    random_mentions,
    render,
    langs,
    captions_per_item: int,
    mt_noise: float,
) -> SplitContents:
    """Draw every split's items and write their captions and descriptions (the images and videos alike).

    Train items get `captions_per_item` English captions, each machine-translated (noisy) into
    every language; held-out items get their distinctive caption in English and every language,
    each translated back to English. `rng` is drawn from in one fixed order, so a seed gives one corpus.
    """
    out = SplitContents()
    number = 0
    for split, count in sizes.items():
        if split == "train":
            split_items = [random_item(rng) for _ in range(count)]
        else:
            split_items, split_captions, singled = held_out(count, rng)
            out.ceiling[split] = 100.0 * sum(singled) / count
        for index, item in enumerate(split_items):
            number += 1
            item_id = f"{prefix}{number:05d}"
            out.items[item_id] = item
            out.rows.append(ImageRow(item_id, split, media_path(item_id)))
            out.descriptions.append(
                {"image_id": item_id, "text": describe(item), "model": "leccr-synth", "prompt": "scene graph"}
            )
            captions = out.captions
            if split == "train":
                for n in range(captions_per_item):
                    mentions = random_mentions(item, rng)
                    en_id = f"{item_id}#en#{n}"
                    captions.append(Caption(en_id, item_id, split, "en", "human", render("en", mentions, rng)))
                    for lang in langs:
                        text = render(lang, mentions, rng, draw_mt_noise(rng, mt_noise))
                        captions.append(
                            Caption(f"{item_id}#en2{lang}#{n}", item_id, split, lang, "mt", text, en_id, "synthetic-mt")
                        )
                continue
            mentions = split_captions[index]
            captions.append(Caption(f"{item_id}#en#0", item_id, split, "en", "human", render("en", mentions, rng)))
            for lang in langs:
                cap_id = f"{item_id}#{lang}#0"
                captions.append(Caption(cap_id, item_id, split, lang, "human", render(lang, mentions, rng)))
                back = render("en", mentions, rng, draw_mt_noise(rng, mt_noise))
                captions.append(
                    Caption(f"{item_id}#{lang}2en#0", item_id, split, "en", "mt", back, cap_id, "synthetic-mt")
                )
    return out


def write_synthetic(
    out: str | Path, contents: SplitContents, sizes: dict[str, int], *, name: str, modality: str, fill, overwrite: bool
) -> SynthReport:
    """Write a synthetic corpus (`fill(folder)` adds its media) atomically and report what it holds."""
    corpus = write_corpus(
        out,
        name=name,
        modality=modality,
        media_root=".",
        images=contents.rows,
        captions=contents.captions,
        descriptions={DESCRIPTION_SOURCE: contents.descriptions},
        overwrite=overwrite,
        fill=fill,
    )
    return SynthReport(corpus.path, sizes, len(contents.captions), corpus.languages, contents.ceiling)
