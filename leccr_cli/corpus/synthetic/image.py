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
import random
from pathlib import Path

from leccr_cli.corpus.synthetic.grammar import (
    COLORS,
    PLACES,
    SHAPES,
    SIZES,
    Mention,
    Shape,
    describe_scene,
    render_caption,
)
from leccr_cli.corpus.synthetic.splits import (
    CaptionCodes,
    SynthReport,
    assemble_splits,
    check_request,
    grow_held_out,
    split_sizes,
    write_synthetic,
)
from leccr_cli.defaults import SYNTH_IMAGE_SIZE, SYNTH_IMAGES, SYNTH_LANGS

BACKGROUND = (205, 205, 205)


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
            points = [
                (cx + radius * math.cos(a), cy + radius * math.sin(a))
                for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)
            ]
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


def build_synthetic(
    out: str | Path,
    images: int = SYNTH_IMAGES,
    langs: list[str] | tuple[str, ...] = SYNTH_LANGS,
    seed: int = 0,
    image_size: int = SYNTH_IMAGE_SIZE,
    captions_per_image: int = 3,
    mt_noise: float = 0.3,
    overwrite: bool = False,
) -> SynthReport:
    """Generate the synthetic corpus into `out` (atomically) and report its R@1 ceiling."""
    check_request(langs, images, "images")
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

    return write_synthetic(
        out, contents, sizes, name="synthetic", modality="image", fill=render_images, overwrite=overwrite
    )
