"""The embedded synthetic benchmark (docs/architecture.md, "The synthetic benchmark").

Each image is a rendered scene of 1-3 coloured shapes, each with a size and a place on a
3x3 grid. Captions are *partial*: each mentions one or two of the shapes and some of their
attributes. The detailed description mentions everything (the stand-in for the MLLM).

- train: several English captions per image (origin human) and, for every target
  language, a machine-translation-like copy of each (origin mt): wrong synonyms, words
  left in English, dropped words, wrong agreement.
- val/test: one caption per image, chosen so that it singles out its image within the
  split whenever a caption of at most two shapes can; written in English and in every
  target language by a small grammar with real word order, gender and diacritics
  (origin human), plus a noisy English translation of each target caption (origin mt,
  the translate-test input).

`ceiling` is the share of test captions consistent with their own scene only: no system
can beat it at R@1, since the other consistent scenes are indistinguishable.

The vocabulary is finite, so every caption has an integer code (`CaptionCodes`) and the
val/test selection looks captions up in sets of codes: it takes time linear in the number
of images (20,000 images build in well under a minute). `synth_video` builds the video
benchmark from the same vocabulary and machinery.
"""

from __future__ import annotations

import functools
import itertools
import random
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from leccr_cli.corpus.corpus import Caption, ImageRow, write_corpus
from leccr_cli.errors import CorpusError

SHAPES = ("circle", "square", "triangle", "star")
COLORS = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 90, 220),
    "yellow": (240, 210, 30),
    "purple": (148, 60, 189),
    "orange": (250, 135, 20),
}
SIZES = ("small", "large")
PLACES = ("left", "right", "top", "bottom", "middle")
SYNTH_LANGS = ("de", "fr", "cs")
DESCRIPTION_SOURCE = "synthetic"
BACKGROUND = (205, 205, 205)


@dataclass(frozen=True)
class Shape:
    """One object of a scene: its cell is (column, row) on a 3x3 grid."""

    shape: str
    color: str
    size: str
    column: int
    row: int

    @property
    def places(self) -> tuple[str, ...]:
        """The place words that are true of this object."""
        horizontal = {0: ("left",), 2: ("right",)}.get(self.column, ())
        vertical = {0: ("top",), 2: ("bottom",)}.get(self.row, ())
        return horizontal + vertical or ("middle",)


@dataclass(frozen=True)
class Mention:
    """A partial reference to one shape: the noun always, other attributes optional."""

    shape: str
    color: str | None = None
    size: str | None = None
    place: str | None = None

    def fits(self, obj: Shape) -> bool:
        return (
            self.shape == obj.shape
            and (self.color is None or self.color == obj.color)
            and (self.size is None or self.size == obj.size)
            and (self.place is None or self.place in obj.places)
        )

    @property
    def weight(self) -> int:
        return 1 + sum(v is not None for v in (self.color, self.size, self.place))


def consistent(mentions: tuple[Mention, ...], scene: tuple[Shape, ...]) -> bool:
    """True when distinct objects of the scene fit every mention."""
    if len(mentions) == 1:
        return any(mentions[0].fits(o) for o in scene)
    if len(mentions) > len(scene):
        return False
    return any(all(m.fits(o) for m, o in zip(mentions, objs)) for objs in itertools.permutations(scene, len(mentions)))


# ------------------------------------------------------------------------- grammars

_EN_PLACE = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "middle": "in the middle",
}


def english_phrase(m: Mention) -> str:
    words = [w for w in (m.size, m.color, m.shape) if w]
    article = "an" if words[0][0] in "aeiou" else "a"
    phrase = " ".join([article, *words])
    return f"{phrase} {_EN_PLACE[m.place]}" if m.place else phrase


# Per language: noun -> (form, gender); adjective -> {gender: form}; place -> phrase.
GRAMMARS = {
    "de": {
        "nouns": {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"), "star": ("Stern", "m")},
        "adjectives": {
            "small": {"m": "kleiner", "n": "kleines"},
            "large": {"m": "großer", "n": "großes"},
            "red": {"m": "roter", "n": "rotes"},
            "green": {"m": "grüner", "n": "grünes"},
            "blue": {"m": "blauer", "n": "blaues"},
            "yellow": {"m": "gelber", "n": "gelbes"},
            "purple": {"m": "violetter", "n": "violettes"},
            "orange": {"m": "orangefarbener", "n": "orangefarbenes"},
        },
        "articles": {"m": "ein", "n": "ein"},
        "places": {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "middle": "in der Mitte"},
        "and": "und",
        "color_after_noun": False,
        "size_after_noun": False,
        # what a careless MT system produces instead (wrong sense, wrong register)
        "mistranslations": {"square": "Platz", "left": "übrig", "orange": "Orange", "circle": "Zirkel", "large": "weit"},
    },
    "fr": {
        "nouns": {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"), "star": ("étoile", "f")},
        "adjectives": {
            "small": {"m": "petit", "f": "petite"},
            "large": {"m": "grand", "f": "grande"},
            "red": {"m": "rouge", "f": "rouge"},
            "green": {"m": "vert", "f": "verte"},
            "blue": {"m": "bleu", "f": "bleue"},
            "yellow": {"m": "jaune", "f": "jaune"},
            "purple": {"m": "violet", "f": "violette"},
            "orange": {"m": "orange", "f": "orange"},
        },
        "articles": {"m": "un", "f": "une"},
        "places": {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas", "middle": "au milieu"},
        "and": "et",
        "color_after_noun": True,
        "size_after_noun": False,
        "mistranslations": {"square": "place", "left": "restant", "circle": "cercle vicieux", "star": "vedette"},
    },
    "cs": {
        "nouns": {"circle": ("kruh", "m"), "square": ("čtverec", "m"), "triangle": ("trojúhelník", "m"), "star": ("hvězda", "f")},
        "adjectives": {
            "small": {"m": "malý", "f": "malá"},
            "large": {"m": "velký", "f": "velká"},
            "red": {"m": "červený", "f": "červená"},
            "green": {"m": "zelený", "f": "zelená"},
            "blue": {"m": "modrý", "f": "modrá"},
            "yellow": {"m": "žlutý", "f": "žlutá"},
            "purple": {"m": "fialový", "f": "fialová"},
            "orange": {"m": "oranžový", "f": "oranžová"},
        },
        "articles": {},
        "places": {"left": "vlevo", "right": "vpravo", "top": "nahoře", "bottom": "dole", "middle": "uprostřed"},
        "and": "a",
        "color_after_noun": False,
        "size_after_noun": False,
        "mistranslations": {"square": "náměstí", "left": "zbývající", "orange": "pomeranč", "star": "hvězdička"},
    },
}


@dataclass
class MtNoise:
    """Which MT-like errors to apply to one caption."""

    mistranslate: bool = False
    untranslated: bool = False
    drop: bool = False
    agreement: bool = False


def target_phrase(lang: str, m: Mention, rng: random.Random, noise: MtNoise | None, front_place: bool) -> list[str]:
    g = GRAMMARS[lang]
    noun, gender = g["nouns"][m.shape]
    adjective_gender = gender
    if noise and noise.agreement:
        others = [x for x in {gen for _, gen in g["nouns"].values()} if x != gender]
        adjective_gender = others[0] if others else gender

    def word(concept: str, form: str) -> str:
        if noise and noise.untranslated and rng.random() < 0.5:
            return concept
        if noise and noise.mistranslate and concept in g["mistranslations"] and rng.random() < 0.7:
            return g["mistranslations"][concept]
        return form

    def adjective(concept: str) -> str:
        forms = g["adjectives"][concept]
        return word(concept, forms.get(adjective_gender, forms[gender]))

    size = adjective(m.size) if m.size else None
    color = adjective(m.color) if m.color else None
    place = word(m.place, g["places"][m.place]) if m.place else None
    if noise and noise.drop:
        droppable = [name for name, v in (("size", size), ("color", color), ("place", place)) if v]
        if droppable:
            victim = rng.choice(droppable)
            size, color, place = (None if victim == n else v for n, v in (("size", size), ("color", color), ("place", place)))
    before = [w for w, after in ((size, g["size_after_noun"]), (color, g["color_after_noun"])) if w and not after]
    after = [w for w, late in ((size, g["size_after_noun"]), (color, g["color_after_noun"])) if w and late]
    article = g["articles"].get(gender)
    words = ([article] if article else []) + before + [word(m.shape, noun)] + after
    if place:
        words = [place, *words] if front_place else [*words, place]
    return words


def render_caption(lang: str, mentions: tuple[Mention, ...], rng: random.Random, noise: MtNoise | None = None) -> str:
    """Write the mentions as one caption in `lang` ('en' or a grammar language)."""
    if lang == "en":
        text = " and ".join(english_phrase(m) for m in mentions)
        if noise and noise.drop:
            words = text.split()
            if len(words) > 3:
                del words[rng.randrange(1, len(words))]
            text = " ".join(words)
        return text[0].upper() + text[1:]
    # a human writer sometimes puts the place first; MT keeps the English order
    front = noise is None and rng.random() < 0.25
    dropper = rng.randrange(len(mentions))  # MT drops at most one word per caption
    parts = [
        " ".join(target_phrase(lang, m, rng, noise if noise is None or i == dropper else replace(noise, drop=False), front))
        for i, m in enumerate(mentions)
    ]
    text = f" {GRAMMARS[lang]['and']} ".join(parts)
    return text[0].upper() + text[1:]


def draw_mt_noise(rng: random.Random, rate: float) -> MtNoise:
    """The MT errors of one caption: each kind with a chance that grows with `rate`."""
    return MtNoise(
        mistranslate=rng.random() < rate,
        untranslated=rng.random() < rate * 0.6,
        drop=rng.random() < rate * 0.6,
        agreement=rng.random() < rate * 0.6,
    )


# where a shape is, by its (column, row) cell, as the descriptions say it
CELL_PHRASES = {
    (0, 0): "in the top left corner",
    (1, 0): "at the top",
    (2, 0): "in the top right corner",
    (0, 1): "on the left",
    (1, 1): "in the middle",
    (2, 1): "on the right",
    (0, 2): "in the bottom left corner",
    (1, 2): "at the bottom",
    (2, 2): "in the bottom right corner",
}
SHAPE_COUNTS = {1: "one shape", 2: "two shapes", 3: "three shapes"}


def describe_scene(scene: tuple[Shape, ...]) -> str:
    """The detailed English description of a whole scene (what the MLLM would write)."""
    sentences = [f"The image shows {SHAPE_COUNTS[len(scene)]} on a plain gray background."]
    for obj in sorted(scene, key=lambda o: (o.row, o.column)):
        sentences.append(f"There is a {obj.size} {obj.color} {obj.shape} {CELL_PHRASES[(obj.column, obj.row)]}.")
    return " ".join(sentences)


# -------------------------------------------------------------------------- scenes


def random_scene(rng: random.Random) -> tuple[Shape, ...]:
    """1-3 shapes in distinct cells, no two with the same shape and colour."""
    count = rng.choice((1, 2, 2, 3, 3))
    cells = rng.sample([(c, r) for c in range(3) for r in range(3)], count)
    kinds = rng.sample([(s, c) for s in SHAPES for c in COLORS], count)
    return tuple(Shape(s, c, rng.choice(SIZES), col, row) for (s, c), (col, row) in zip(kinds, cells))


def draw_scene(scene: tuple[Shape, ...], size: int, rng: random.Random):
    """Render a scene as a PIL image of `size` x `size` pixels."""
    import math

    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    cell = size / 3
    for obj in scene:
        radius = cell * (0.45 if obj.size == "large" else 0.26)
        jitter = cell * 0.5 - radius - 1
        cx = (obj.column + 0.5) * cell + rng.uniform(-jitter, jitter)
        cy = (obj.row + 0.5) * cell + rng.uniform(-jitter, jitter)
        color = COLORS[obj.color]
        if obj.shape == "circle":
            draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=color)
        elif obj.shape == "square":
            half = radius * 0.85
            draw.rectangle([cx - half, cy - half, cx + half, cy + half], fill=color)
        elif obj.shape == "triangle":
            points = [(cx + radius * math.cos(a), cy + radius * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
            draw.polygon(points, fill=color)
        else:
            points = []
            for k in range(10):
                r = radius if k % 2 == 0 else radius * 0.45
                a = -math.pi / 2 + k * math.pi / 5
                points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
            draw.polygon(points, fill=color)
    return image


def _random_mentions(scene: tuple[Shape, ...], rng: random.Random) -> tuple[Mention, ...]:
    count = 2 if len(scene) > 1 and rng.random() < 0.4 else 1
    mentions = []
    for obj in rng.sample(scene, count):
        attrs = [a for a in ("color", "size", "place") if rng.random() < (0.7 if a == "color" else 0.45)]
        mentions.append(
            Mention(
                obj.shape,
                obj.color if "color" in attrs else None,
                obj.size if "size" in attrs else None,
                rng.choice(obj.places) if "place" in attrs else None,
            )
        )
    return tuple(mentions)


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


def _distinctive_caption(candidates: list[tuple[int, int]], taken: set[int], codes: CaptionCodes, rng: random.Random) -> int | None:
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


def _object_mentions(obj: Shape) -> list[Mention]:
    """Every mention that fits `obj` (the noun, with or without each attribute)."""
    out = []
    for color in (None, obj.color):
        for size in (None, obj.size):
            for place in (None, *obj.places):
                out.append(Mention(obj.shape, color, size, place))
    return out


IMAGE_CODES = CaptionCodes(
    Mention(shape, color, size, place)
    for shape in SHAPES
    for color in (None, *COLORS)
    for size in (None, *SIZES)
    for place in (None, *PLACES)
)


@functools.lru_cache(maxsize=None)
def _object_codes(obj: Shape) -> tuple[int, ...]:
    return tuple(IMAGE_CODES.code[m] for m in _object_mentions(obj))


def _fullest_caption(scene: tuple[Shape, ...]) -> tuple[Mention, ...]:
    objects = sorted(scene, key=lambda o: o.size)[:2]
    return tuple(Mention(o.shape, o.color, o.size, o.places[0]) for o in objects)


def held_out_scenes(count: int, rng: random.Random, tries: int = 30):
    """Scenes and captions for val/test, grown so that each caption singles out its scene.

    Returns (scenes, captions, singled) where singled[i] says caption i fits scene i only
    (see `grow_held_out`).
    """
    return grow_held_out(count, rng, random_scene, _object_codes, IMAGE_CODES, _fullest_caption, tries)


# -------------------------------------------------------------------------- building


@dataclass
class SynthReport:
    """What `synth` built."""

    path: Path
    images: dict[str, int]
    captions: int
    languages: list[str]
    ceiling: dict[str, float] = field(default_factory=dict)


def check_request(langs, count: int, option: str) -> None:
    """Refuse languages without a grammar and corpora too small for two held-out splits."""
    unknown = [lang for lang in langs if lang not in GRAMMARS]
    if unknown:
        raise CorpusError(
            f"the synthetic benchmark has no grammar for {', '.join(unknown)}",
            f"choose among {', '.join(GRAMMARS)}",
        )
    if count < 30:
        raise CorpusError(f"{option} {count} is too small", "use at least 30 (10 per held-out split)")


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
            out.descriptions.append({"image_id": item_id, "text": describe(item), "model": "leccr-synth", "prompt": "scene graph"})
            captions = out.captions
            if split == "train":
                for n in range(captions_per_item):
                    mentions = random_mentions(item, rng)
                    en_id = f"{item_id}#en#{n}"
                    captions.append(Caption(en_id, item_id, split, "en", "human", render("en", mentions, rng)))
                    for lang in langs:
                        text = render(lang, mentions, rng, draw_mt_noise(rng, mt_noise))
                        captions.append(Caption(f"{item_id}#en2{lang}#{n}", item_id, split, lang, "mt", text, en_id, "synthetic-mt"))
                continue
            mentions = split_captions[index]
            captions.append(Caption(f"{item_id}#en#0", item_id, split, "en", "human", render("en", mentions, rng)))
            for lang in langs:
                cap_id = f"{item_id}#{lang}#0"
                captions.append(Caption(cap_id, item_id, split, lang, "human", render(lang, mentions, rng)))
                back = render("en", mentions, rng, draw_mt_noise(rng, mt_noise))
                captions.append(Caption(f"{item_id}#{lang}2en#0", item_id, split, "en", "mt", back, cap_id, "synthetic-mt"))
    return out


def build_synthetic(
    out: str | Path,
    images: int = 2000,
    langs: list[str] | tuple[str, ...] = SYNTH_LANGS,
    seed: int = 0,
    image_size: int = 64,
    captions_per_image: int = 3,
    mt_noise: float = 0.3,
    overwrite: bool = False,
) -> SynthReport:
    """Generate the synthetic corpus into `out` (atomically) and report its R@1 ceiling."""
    check_request(langs, images, "--images")
    rng = random.Random(seed)
    sizes = split_sizes(images)
    contents = assemble_splits(
        sizes, rng, prefix="img", media_path=lambda image_id: f"images/{image_id}.png", random_item=random_scene,
        held_out=held_out_scenes, describe=describe_scene, random_mentions=_random_mentions, render=render_caption,
        langs=langs, captions_per_item=captions_per_image, mt_noise=mt_noise,
    )  # fmt: skip

    def render_images(folder: Path) -> None:
        (folder / "images").mkdir()
        draw_rng = random.Random(seed + 1)
        for row in contents.rows:
            draw_scene(contents.items[row.image_id], image_size, draw_rng).save(folder / row.path, optimize=False)

    corpus = write_corpus(
        out,
        name="synthetic",
        modality="image",
        media_root=".",
        images=contents.rows,
        captions=contents.captions,
        descriptions={DESCRIPTION_SOURCE: contents.descriptions},
        overwrite=overwrite,
        fill=render_images,
    )
    return SynthReport(corpus.path, sizes, len(contents.captions), corpus.languages, contents.ceiling)
