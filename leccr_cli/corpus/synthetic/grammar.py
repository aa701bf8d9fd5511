"""The vocabulary and grammars of the synthetic benchmarks: scenes of coloured shapes, the captions that mention
them in English, German, French and Czech (and their machine-translation-like noise), and the descriptions that say
everything.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace

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
DESCRIPTION_SOURCE = "synthetic"


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
        "nouns": {
            "circle": ("Kreis", "m"),
            "square": ("Quadrat", "n"),
            "triangle": ("Dreieck", "n"),
            "star": ("Stern", "m"),
        },
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
        "mistranslations": {
            "square": "Platz",
            "left": "übrig",
            "orange": "Orange",
            "circle": "Zirkel",
            "large": "weit",
        },
    },
    "fr": {
        "nouns": {
            "circle": ("cercle", "m"),
            "square": ("carré", "m"),
            "triangle": ("triangle", "m"),
            "star": ("étoile", "f"),
        },
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
        "places": {
            "left": "à gauche",
            "right": "à droite",
            "top": "en haut",
            "bottom": "en bas",
            "middle": "au milieu",
        },
        "and": "et",
        "color_after_noun": True,
        "size_after_noun": False,
        "mistranslations": {"square": "place", "left": "restant", "circle": "cercle vicieux", "star": "vedette"},
    },
    "cs": {
        "nouns": {
            "circle": ("kruh", "m"),
            "square": ("čtverec", "m"),
            "triangle": ("trojúhelník", "m"),
            "star": ("hvězda", "f"),
        },
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
            size, color, place = (
                None if victim == n else v for n, v in (("size", size), ("color", color), ("place", place))
            )
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
        " ".join(
            target_phrase(lang, m, rng, noise if noise is None or i == dropper else replace(noise, drop=False), front)
        )
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
