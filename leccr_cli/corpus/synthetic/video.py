"""The synthetic video benchmark: the shapes of the image benchmark, over time, as frame features.

A video is a short sequence of frame feature vectors (no pixels) showing 1-3 coloured shapes
on the 3x3 grid of `synth`. Each shape stays where it is, appears, disappears, moves one cell
(left, right, up or down) or turns another colour. A frame's feature is the sum, over the
shapes visible in it, of fixed random embeddings of their shape, colour, size, column and row
(a moving shape's column or row slides between two cells), plus Gaussian noise of norm about
`noise`: everything is there, spread over all dimensions, but the sum does not say which
colour belongs to which shape, and the noise blurs the rest. The exact descriptions say it.

Captions follow `synth`:

- train: several partial English captions per video (origin human), each mentioning one or
  two shapes, some of their attributes and often what happens to them, and a
  machine-translation-like copy of each per target language (origin mt).
- val/test: one caption per video, chosen so that it singles out its video within the split
  whenever a caption of at most two shapes can, written in English and in every target
  language (the grammars of `synth` with relative clauses for what happens: "ein roter Kreis,
  der verschwindet", "une étoile qui devient bleue", "hvězda, která se posune doleva"), plus
  a noisy English translation of each target caption (origin mt).

A shape's colour in a caption is its first colour; a place word must hold all the time the
shape is visible. Videos have between half of `frames` and `frames` frames, stored unpadded.
"""

from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from leccr_cli.corpus.synthetic.grammar import (
    CELL_PHRASES,
    COLORS,
    GRAMMARS,
    PLACES,
    SHAPE_COUNTS,
    SHAPES,
    SIZES,
    Mention,
    MtNoise,
    Shape,
    english_phrase,
    target_phrase,
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
from leccr_cli.defaults import SYNTH_FRAME_DIM, SYNTH_FRAMES, SYNTH_IMAGES, SYNTH_LANGS, SYNTH_NOISE
from leccr_cli.errors import InvalidArgument, Param, parts

FEATURE_SET = "synthetic"  # the corpus's video/synthetic.safetensors
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
# what may happen to a shape (None: it stays as it is), drawn uniformly from this tuple
EVENT_CHOICES = (None, None, "appears", "disappears", "moves", "turns")
# every (event, target) a mention can name
EVENT_VALUES = (
    (None, None),
    ("appears", None),
    ("disappears", None),
    *(("moves", direction) for direction in DIRECTIONS),
    *(("turns", color) for color in COLORS),
)
_CELLS = [(column, row) for column in range(3) for row in range(3)]
_KINDS = [(shape, color) for shape in SHAPES for color in COLORS]


@dataclass(frozen=True)
class Track:
    """One shape of a video: where and how it starts, and what happens to it.

    `target` is the direction of `moves` and the new colour of `turns` (else None).
    """

    shape: str
    color: str
    size: str
    column: int
    row: int
    event: str | None = None
    target: str | None = None

    @property
    def end(self) -> tuple[int, int]:
        """The (column, row) cell where the shape ends."""
        dx, dy = DIRECTIONS[self.target] if self.event == "moves" else (0, 0)
        return self.column + dx, self.row + dy

    @property
    def places(self) -> tuple[str, ...]:
        """The place words true of the shape all the time it is visible."""
        start = Shape(self.shape, self.color, self.size, self.column, self.row).places
        end = Shape(self.shape, self.color, self.size, *self.end).places
        return tuple(place for place in start if place in end)


@dataclass(frozen=True)
class VideoMention:
    """A partial reference to one shape of a video: the noun always, other attributes optional."""

    shape: str
    color: str | None = None
    size: str | None = None
    place: str | None = None
    event: str | None = None
    target: str | None = None

    def fits(self, track: Track) -> bool:
        still = self.noun_phrase.fits(track)  # a track has a shape's attributes and the places true all along
        return still and (self.event is None or (self.event, self.target) == (track.event, track.target))

    @property
    def weight(self) -> int:
        return self.noun_phrase.weight + (self.event is not None)

    @property
    def noun_phrase(self) -> Mention:
        """The still part of the mention, written as the image benchmark writes it."""
        return Mention(self.shape, self.color, self.size, self.place)


# ------------------------------------------------------------------------- grammars

# Per language: relative pronoun by gender, whether commas enclose the relative clause, the
# verb phrase of each event ({} is the direction or the new colour), the new colour's forms
# (None: the grammar's adjective, agreeing with the noun), and what careless MT writes.
VIDEO_GRAMMARS = {
    "en": {
        "events": {"appears": "appears", "disappears": "disappears", "moves": "moves {}", "turns": "turns {}"},
        "directions": {"left": "to the left", "right": "to the right", "up": "up", "down": "down"},
    },
    "de": {
        "relative": {"m": "der", "n": "das"},
        "commas": True,
        "events": {
            "appears": "erscheint",
            "disappears": "verschwindet",
            "moves": "sich nach {} bewegt",
            "turns": "{} wird",
        },
        "directions": {"left": "links", "right": "rechts", "up": "oben", "down": "unten"},
        "colors": {
            "red": "rot",
            "green": "grün",
            "blue": "blau",
            "yellow": "gelb",
            "purple": "violett",
            "orange": "orange",
        },
        "mistranslations": {"appears": "scheint", "moves": "sich nach {} umzieht", "turns": "sich {} dreht"},
    },
    "fr": {
        "relative": {"m": "qui", "f": "qui"},
        "commas": False,
        "events": {"appears": "apparaît", "disappears": "disparaît", "moves": "se déplace {}", "turns": "devient {}"},
        "directions": {
            "left": "vers la gauche",
            "right": "vers la droite",
            "up": "vers le haut",
            "down": "vers le bas",
        },
        "colors": None,
        "mistranslations": {"appears": "paraît", "moves": "déménage {}", "turns": "tourne {}"},
    },
    "cs": {
        "relative": {"m": "který", "f": "která"},
        "commas": True,
        "events": {
            "appears": "se objeví",
            "disappears": "zmizí",
            "moves": "se posune {}",
            "turns": "změní barvu na {}",
        },
        "directions": {"left": "doleva", "right": "doprava", "up": "nahoru", "down": "dolů"},
        # accusative of "barva" (colour, feminine): the same whatever the shape's gender
        "colors": {
            "red": "červenou",
            "green": "zelenou",
            "blue": "modrou",
            "yellow": "žlutou",
            "purple": "fialovou",
            "orange": "oranžovou",
        },
        "mistranslations": {"appears": "se zdá", "moves": "se stěhuje {}", "turns": "se otočí na {}"},
    },
}


def _english_event(m: VideoMention) -> str:
    g = VIDEO_GRAMMARS["en"]
    argument = g["directions"][m.target] if m.event == "moves" else m.target
    return g["events"][m.event].format(argument)


def _target_clause(lang: str, m: VideoMention, rng: random.Random, noise: MtNoise | None) -> str:
    """The relative clause saying what happens to the shape, agreeing with its noun."""
    g = VIDEO_GRAMMARS[lang]
    gender = GRAMMARS[lang]["nouns"][m.shape][1]
    if noise and noise.agreement:
        others = sorted({gen for _, gen in GRAMMARS[lang]["nouns"].values()} - {gender})
        gender = others[0] if others else gender
    pronoun = g["relative"][gender]
    if noise and noise.untranslated and rng.random() < 0.5:
        return f"{pronoun} {_english_event(m)}"
    template = g["events"][m.event]
    if noise and noise.mistranslate and m.event in g["mistranslations"] and rng.random() < 0.7:
        template = g["mistranslations"][m.event]
    if m.event == "moves":
        argument = g["directions"][m.target]
    elif m.event == "turns":
        forms = g["colors"] or {color: GRAMMARS[lang]["adjectives"][color][gender] for color in COLORS}
        argument = forms[m.target]
    else:
        argument = ""
    return f"{pronoun} {template.format(argument)}"


def render_video_caption(
    lang: str, mentions: tuple[VideoMention, ...], rng: random.Random, noise: MtNoise | None = None
) -> str:
    """Write the mentions as one caption in `lang` ('en' or a grammar language)."""
    if lang == "en":
        text = " and ".join(
            english_phrase(m.noun_phrase) + (f" that {_english_event(m)}" if m.event else "") for m in mentions
        )
        if noise and noise.drop:
            words = text.split()
            if len(words) > 3:
                del words[rng.randrange(1, len(words))]
            text = " ".join(words)
        return text[0].upper() + text[1:]
    g = VIDEO_GRAMMARS[lang]
    # a human writer sometimes puts the place first; MT keeps the English order
    front = noise is None and rng.random() < 0.25
    dropper = rng.randrange(len(mentions))  # MT drops at most one word per caption
    parts = []
    for i, m in enumerate(mentions):
        phrase_noise = noise if noise is None or i == dropper else replace(noise, drop=False)
        phrase = " ".join(target_phrase(lang, m.noun_phrase, rng, phrase_noise, front))
        if m.event:
            clause = _target_clause(lang, m, rng, noise)
            if g["commas"]:  # the clause is enclosed by commas, also before "und" / "a"
                phrase = f"{phrase}, {clause}" + ("," if i < len(mentions) - 1 else "")
            else:
                phrase = f"{phrase} {clause}"
        parts.append(phrase)
    text = f" {GRAMMARS[lang]['and']} ".join(parts)
    return text[0].upper() + text[1:]


def describe_video(video: tuple[Track, ...]) -> str:
    """The detailed English description of a whole video (what a video MLLM would write)."""
    sentences = [f"The video shows {SHAPE_COUNTS[len(video)]} on a plain gray background."]
    for track in sorted(video, key=lambda t: (t.row, t.column)):
        thing = f"A {track.size} {track.color} {track.shape}"
        where = CELL_PHRASES[(track.column, track.row)]
        if track.event is None:
            sentences.append(f"{thing} stays {where}.")
        elif track.event == "appears":
            sentences.append(f"{thing} appears {where}.")
        elif track.event == "disappears":
            sentences.append(f"{thing} {where} disappears.")
        elif track.event == "moves":
            start, end = (CELL_PHRASES[cell].split(" ", 1)[1] for cell in ((track.column, track.row), track.end))
            direction = VIDEO_GRAMMARS["en"]["directions"][track.target]
            sentences.append(f"{thing} moves {direction} from {start} to {end}.")
        else:
            sentences.append(f"{thing} {where} turns {track.target}.")
    return " ".join(sentences)


# --------------------------------------------------------------------------- videos


def random_video(rng: random.Random) -> tuple[Track, ...]:
    """1-3 shapes in distinct cells, no two with the same shape and colour, each with an event.

    A moving shape moves into a cell no other shape ever occupies.
    """
    count = rng.choice((1, 2, 2, 3, 3))
    cells = rng.sample(_CELLS, count)
    kinds = rng.sample(_KINDS, count)
    occupied = set(cells)
    tracks = []
    for (shape, color), (column, row) in zip(kinds, cells):
        size = rng.choice(SIZES)
        event = rng.choice(EVENT_CHOICES)
        target = None
        if event == "moves":
            free = [
                direction
                for direction, (dx, dy) in DIRECTIONS.items()
                if 0 <= column + dx < 3 and 0 <= row + dy < 3 and (column + dx, row + dy) not in occupied
            ]
            if free:
                target = rng.choice(free)
                occupied.add((column + DIRECTIONS[target][0], row + DIRECTIONS[target][1]))
            else:
                event = None
        elif event == "turns":
            target = rng.choice([other for other in COLORS if other != color])
        tracks.append(Track(shape, color, size, column, row, event, target))
    return tuple(tracks)


def _random_video_mentions(video: tuple[Track, ...], rng: random.Random) -> tuple[VideoMention, ...]:
    count = 2 if len(video) > 1 and rng.random() < 0.4 else 1
    chances = {"color": 0.7, "size": 0.45, "place": 0.45, "event": 0.7}
    mentions = []
    for track in rng.sample(video, count):
        attrs = [a for a, chance in chances.items() if rng.random() < chance]
        event = "event" in attrs and track.event is not None
        mentions.append(
            VideoMention(
                track.shape,
                track.color if "color" in attrs else None,
                track.size if "size" in attrs else None,
                rng.choice(track.places) if "place" in attrs and track.places else None,
                track.event if event else None,
                track.target if event else None,
            )
        )
    return tuple(mentions)


def _track_mentions(track: Track) -> list[VideoMention]:
    """Every mention that fits `track`."""
    events = [(None, None)] + ([(track.event, track.target)] if track.event else [])
    return [
        VideoMention(track.shape, color, size, place, event, target)
        for color in (None, track.color)
        for size in (None, track.size)
        for place in (None, *track.places)
        for event, target in events
    ]


VIDEO_CODES = CaptionCodes(
    VideoMention(shape, color, size, place, event, target)
    for shape in SHAPES
    for color in (None, *COLORS)
    for size in (None, *SIZES)
    for place in (None, *PLACES)
    for event, target in EVENT_VALUES
)


@functools.lru_cache(maxsize=None)
def _track_codes(track: Track) -> tuple[int, ...]:
    return tuple(VIDEO_CODES.code[m] for m in _track_mentions(track))


def _fullest_video_caption(video: tuple[Track, ...]) -> tuple[VideoMention, ...]:
    tracks = sorted(video, key=lambda t: t.size)[:2]
    return tuple(
        VideoMention(t.shape, t.color, t.size, t.places[0] if t.places else None, t.event, t.target) for t in tracks
    )


def held_out_videos(count: int, rng: random.Random, tries: int = 30):
    """Videos and captions for val/test, grown so that each caption singles out its video.

    Returns (videos, captions, singled) where singled[i] says caption i fits video i only.
    """
    return grow_held_out(count, rng, random_video, _track_codes, VIDEO_CODES, _fullest_video_caption, tries)


# -------------------------------------------------------------------------- features


class FrameEncoder:
    """Fixed random embeddings of shapes, colours, sizes, columns and rows, each of norm about 1."""

    def __init__(self, dim: int, generator: np.random.Generator):
        def table(keys) -> dict:
            return {key: generator.standard_normal(dim) / math.sqrt(dim) for key in keys}

        self.dim = dim
        self.shapes, self.colors, self.sizes = table(SHAPES), table(COLORS), table(SIZES)
        self.columns, self.rows = table(range(3)), table(range(3))

    @staticmethod
    def _between(table: dict, position: float) -> np.ndarray:
        low = min(int(position), 1)
        share = position - low
        return (1 - share) * table[low] + share * table[low + 1]

    def frames(self, video: tuple[Track, ...], length: int, switches: list[int]) -> np.ndarray:
        """[length, dim] noise-free features; track i's event happens at frame switches[i]."""
        out = np.zeros((length, self.dim))
        for track, switch in zip(video, switches):
            (column, row), (end_column, end_row) = (track.column, track.row), track.end
            for frame in range(length):
                if (track.event == "appears" and frame < switch) or (track.event == "disappears" and frame >= switch):
                    continue
                color = track.target if track.event == "turns" and frame >= switch else track.color
                progress = frame / (length - 1)
                out[frame] += (
                    self.shapes[track.shape]
                    + self.sizes[track.size]
                    + self.colors[color]
                    + self._between(self.columns, column + (end_column - column) * progress)
                    + self._between(self.rows, row + (end_row - row) * progress)
                )
        return out


# -------------------------------------------------------------------------- building


def build_synthetic_video(
    out: str | Path,
    *,
    videos: int = SYNTH_IMAGES,
    frames: int = SYNTH_FRAMES,
    frame_dim: int = SYNTH_FRAME_DIM,
    langs: list[str] | tuple[str, ...] = SYNTH_LANGS,
    seed: int = 0,
    noise: float = SYNTH_NOISE,
    captions_per_video: int = 3,
    mt_noise: float = 0.3,
    overwrite: bool = False,
) -> SynthReport:
    """Generate the synthetic video corpus into `out` (atomically) and report its R@1 ceiling.

    The report's `images` counts the videos of each split. Frame features go to
    `video/synthetic.safetensors`.
    """
    check_request(langs, videos, "videos")
    if frames < 2:
        raise InvalidArgument(
            "frames",
            frames,
            "is too few",
            "use at least 2: a change needs a before and an after",
            message=parts(Param("frames", frames), " is too few"),
        )
    if frame_dim < 8:
        raise InvalidArgument(
            "frame_dim",
            frame_dim,
            "is too small",
            "use at least 8",
            message=parts(Param("frame_dim", frame_dim), " is too small"),
        )
    if not noise >= 0:
        raise InvalidArgument(
            "noise", noise, "the noise norm must be 0 or more", f"0 means no noise; the default is {SYNTH_NOISE}"
        )
    rng = random.Random(seed)
    sizes = split_sizes(videos)
    contents = assemble_splits(
        sizes, rng, prefix="vid", media_path=lambda video_id: video_id, random_item=random_video,
        held_out=held_out_videos, describe=describe_video, random_mentions=_random_video_mentions,
        render=render_video_caption, langs=langs, captions_per_item=captions_per_video, mt_noise=mt_noise,
    )  # fmt: skip

    def write_features(folder: Path) -> None:
        import torch

        from leccr_cli.corpus.video import write_frame_features

        generator = np.random.default_rng(seed)
        encoder = FrameEncoder(frame_dim, generator)
        timing = random.Random(seed + 1)
        tensors = []
        for row in contents.rows:
            video = contents.items[row.image_id]
            length = timing.randint(max(2, (frames + 1) // 2), frames)
            switches = [timing.randint(1, length - 1) for _ in video]
            clean = encoder.frames(video, length, switches)
            noisy = clean + noise / math.sqrt(frame_dim) * generator.standard_normal(clean.shape)
            tensors.append(torch.from_numpy(noisy.astype(np.float32)))
        write_frame_features(
            folder / "video" / f"{FEATURE_SET}.safetensors", [row.image_id for row in contents.rows], tensors
        )

    return write_synthetic(
        out, contents, sizes, name="synthetic-video", modality="video", fill=write_features, overwrite=overwrite
    )
