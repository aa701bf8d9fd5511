import itertools
import math
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.synthetic.grammar import COLORS, GRAMMARS, MtNoise, consistent
from leccr_cli.corpus.synthetic.video import (
    DIRECTIONS,
    VIDEO_CODES,
    VIDEO_GRAMMARS,
    FrameEncoder,
    Track,
    VideoMention,
    _track_codes,
    _track_mentions,
    build_synthetic_video,
    describe_video,
    held_out_videos,
    random_video,
    render_video_caption,
)
from leccr_cli.corpus.video import FrameFeatures
from leccr_cli.errors import LeccrError
from leccr_cli.testing import raises_on_command_line


class _NoFronting(random.Random):
    def random(self):  # never put the place first
        return 0.99


@pytest.fixture(scope="module")
def video_corpus(tmp_path_factory):
    """80 synthetic videos (60 train, 10 val, 10 test), up to 6 frames of width 16."""
    out = tmp_path_factory.mktemp("synthetic-video") / "corpus"
    report = build_synthetic_video(out, videos=80, frames=6, frame_dim=16, seed=4)
    return report


@pytest.mark.parametrize(
    "lang, expected",
    [
        ("en", "A small green star on the left that turns blue"),
        ("de", "Ein kleiner grüner Stern links, der blau wird"),
        ("fr", "Une petite étoile verte à gauche qui devient bleue"),
        ("cs", "Malá zelená hvězda vlevo, která změní barvu na modrou"),
    ],
)
def test_what_happens_is_a_relative_clause_that_agrees(lang, expected):
    mention = (VideoMention("star", "green", "small", "left", "turns", "blue"),)
    assert render_video_caption(lang, mention, _NoFronting()) == expected


def test_two_mentions_close_the_relative_clause_with_a_comma():
    mentions = (
        VideoMention("square", "red", None, "top", "disappears"),
        VideoMention("circle", "orange", "large", None, "moves", "up"),
    )
    rendered = {lang: render_video_caption(lang, mentions, _NoFronting()) for lang in ("en", "de", "fr", "cs")}
    assert rendered == {
        "en": "A red square at the top that disappears and a large orange circle that moves up",
        "de": (
            "Ein rotes Quadrat oben, das verschwindet, und ein großer orangefarbener Kreis, der sich nach oben bewegt"
        ),
        "fr": "Un carré rouge en haut qui disparaît et un grand cercle orange qui se déplace vers le haut",
        "cs": "Červený čtverec nahoře, který zmizí, a velký oranžový kruh, který se posune nahoru",
    }
    still = (VideoMention("triangle", event="appears"), VideoMention("star", "purple"))
    assert render_video_caption("de", still, _NoFronting()) == "Ein Dreieck, das erscheint, und ein violetter Stern"
    assert render_video_caption("cs", still, _NoFronting()) == "Trojúhelník, který se objeví, a fialová hvězda"


def test_every_noun_gender_has_a_relative_pronoun_and_every_event_a_phrase():
    for lang, grammar in VIDEO_GRAMMARS.items():
        assert set(grammar["events"]) == {"appears", "disappears", "moves", "turns"}
        assert set(grammar["directions"]) == set(DIRECTIONS)
        if lang != "en":
            assert {gender for _, gender in GRAMMARS[lang]["nouns"].values()} <= set(grammar["relative"])
            assert grammar["colors"] is None or set(grammar["colors"]) == set(COLORS)
    assert set(VIDEO_GRAMMARS) == {"en", *GRAMMARS}


def test_mt_noise_reaches_the_clause():
    mention = (VideoMention("star", "green", event="appears"),)
    always = random.Random(0)
    always.random = lambda: 0.1  # every optional error fires
    assert render_video_caption("de", mention, always, MtNoise(mistranslate=True)) == "Ein grüner Stern, der scheint"
    assert render_video_caption("fr", mention, always, MtNoise(untranslated=True)) == "Une star green qui appears"
    turning = (VideoMention("star", event="turns", target="blue"),)
    assert render_video_caption("fr", turning, _NoFronting(), MtNoise(agreement=True)) == "Une étoile qui devient bleu"
    assert (
        render_video_caption("cs", turning, _NoFronting(), MtNoise(agreement=True))
        == "Hvězda, který změní barvu na modrou"
    )


def test_descriptions_say_what_happens():
    video = (
        Track("circle", "red", "large", 0, 0, "moves", "right"),
        Track("star", "blue", "small", 2, 2, "turns", "green"),
        Track("square", "yellow", "small", 1, 1, "appears"),
    )
    assert describe_video(video) == (
        "The video shows three shapes on a plain gray background. "
        "A large red circle moves to the right from the top left corner to the top. "
        "A small yellow square appears in the middle. "
        "A small blue star in the bottom right corner turns green."
    )
    assert describe_video(
        (Track("triangle", "orange", "large", 2, 1, "disappears"), Track("circle", "green", "small", 0, 2))
    ) == (
        "The video shows two shapes on a plain gray background. "
        "A large orange triangle on the right disappears. A small green circle stays in the bottom left corner."
    )


def test_places_hold_while_a_shape_moves():
    assert Track("circle", "red", "small", 0, 0, "moves", "right").places == ("top",)
    assert Track("circle", "red", "small", 0, 0, "moves", "down").places == ("left",)
    assert Track("circle", "red", "small", 1, 0, "moves", "down").places == ()
    assert Track("circle", "red", "small", 2, 2, "turns", "blue").places == ("right", "bottom")


def test_random_videos_keep_shapes_apart():
    rng = random.Random(2)
    for _ in range(300):
        video = random_video(rng)
        starts = [(t.column, t.row) for t in video]
        ends = [t.end for t in video if t.event == "moves"]
        assert 1 <= len(video) <= 3 and len(set(starts + ends)) == len(starts) + len(ends)
        assert len({(t.shape, t.color) for t in video}) == len(video)
        for track in video:
            assert all(0 <= x < 3 for x in track.end)
            assert (track.target is None) == (track.event in (None, "appears", "disappears"))
            assert track.event != "turns" or track.target != track.color


def test_the_caption_index_agrees_with_consistent():
    rng = random.Random(0)
    for _ in range(15):
        video = random_video(rng)
        fitting = {m for track in video for m in _track_mentions(track)}
        assert all(m.fits(t) == (m in _track_mentions(t)) for m in VIDEO_CODES.mentions[::13] for t in video)
        # every consistent caption is made of mentions that fit some shape
        captions = [(m,) for m in fitting] + list(itertools.product(fitting, repeat=2))
        expected = {VIDEO_CODES.encode(c) for c in captions if consistent(c, video)}
        assert VIDEO_CODES.consistent([_track_codes(t) for t in video]) == expected
        assert all(VIDEO_CODES.decode(VIDEO_CODES.encode(c)) == c for c in captions)


def test_held_out_captions_single_out_their_video():
    videos, captions, singled = held_out_videos(80, random.Random(5))
    for i, (video, caption) in enumerate(zip(videos, captions)):
        assert consistent(caption, video)
        fits = [j for j, other in enumerate(videos) if consistent(caption, other)]
        assert singled[i] == (fits == [i])
    assert sum(singled) / len(singled) >= 0.9
    assert any(m.event for caption in captions for m in caption)


def test_frame_features_are_sums_of_attribute_embeddings():
    encoder = FrameEncoder(16, np.random.default_rng(0))

    def still(shape, color, size, column, row):
        return (
            encoder.shapes[shape]
            + encoder.colors[color]
            + encoder.sizes[size]
            + encoder.columns[column]
            + encoder.rows[row]
        )

    appearing = Track("star", "red", "small", 2, 0, "appears")
    turning = Track("circle", "blue", "large", 0, 1, "turns", "green")
    frames = encoder.frames((appearing, turning), 4, [2, 3])
    np.testing.assert_allclose(frames[0], still("circle", "blue", "large", 0, 1))
    np.testing.assert_allclose(frames[2], still("star", "red", "small", 2, 0) + still("circle", "blue", "large", 0, 1))
    np.testing.assert_allclose(frames[3], still("star", "red", "small", 2, 0) + still("circle", "green", "large", 0, 1))
    moving = encoder.frames((Track("square", "red", "small", 0, 2, "moves", "right"),), 3, [1])
    np.testing.assert_allclose(moving[0], still("square", "red", "small", 0, 2))
    np.testing.assert_allclose(moving[1] - moving[0], (encoder.columns[1] - encoder.columns[0]) / 2)
    np.testing.assert_allclose(moving[2], still("square", "red", "small", 1, 2))
    assert not encoder.frames((Track("star", "red", "small", 1, 1, "disappears"),), 3, [1])[1:].any()
    norms = [np.linalg.norm(v) for table in (encoder.shapes, encoder.colors) for v in table.values()]
    assert all(0.4 < n < 1.8 for n in norms)


def test_corpus_layout_features_and_ceiling(video_corpus):
    corpus = Corpus.open(video_corpus.path)
    assert corpus.modality == "video" and corpus.splits == ["train", "val", "test"]
    assert video_corpus.images == {"train": 60, "val": 10, "test": 10}
    assert set(video_corpus.ceiling) == {"val", "test"} and all(0 < v <= 100 for v in video_corpus.ceiling.values())
    assert corpus.languages == ["cs", "de", "en", "fr"]
    english = corpus.captions("train", "en")
    assert len(english) == 60 * 3 and {c.origin for c in english} == {"human"}
    for lang in ("de", "fr", "cs"):
        mt = corpus.captions("train", lang)
        assert {c.origin for c in mt} == {"mt"}
        assert sorted(c.source for c in mt) == sorted(c.cap_id for c in english)
        for split in ("val", "test"):
            human = corpus.captions(split, lang)
            assert {c.origin for c in human} == {"human"} and sorted(c.image_id for c in human) == sorted(
                corpus.image_ids(split)
            )
    back = corpus.captions("test", "en", origin="mt")
    assert {c.source for c in back} == {c.cap_id for lang in ("de", "fr", "cs") for c in corpus.captions("test", lang)}
    assert len(corpus.captions()) == video_corpus.captions
    ids = [row.image_id for row in corpus.images()]
    assert set(corpus.descriptions("synthetic")) == set(ids)

    assert corpus.video_feature_sets() == ["synthetic"]
    raw = load_file(str(corpus.path / "video" / "synthetic.safetensors"))
    lengths = (raw["offsets"][1:] - raw["offsets"][:-1]).tolist()
    assert raw["features"].dtype == torch.float32 and raw["features"].shape == (sum(lengths), 16)
    assert min(lengths) >= 3 and max(lengths) <= 6 and len(set(lengths)) > 1  # unpadded, own lengths
    features = FrameFeatures(corpus.path / "video" / "synthetic.safetensors")
    assert features.ids == ids and features.dim == 16
    clips, mask = features.batch(ids[:5], max_frames=6)
    assert mask.sum(1).tolist() == lengths[:5] and clips[~mask].abs().sum() == 0


def test_same_seed_same_corpus(video_corpus, tmp_path):
    again = build_synthetic_video(tmp_path / "again", videos=80, frames=6, frame_dim=16, seed=4)
    other = build_synthetic_video(tmp_path / "other", videos=80, frames=6, frame_dim=16, seed=5)
    a, b, c = (Corpus.open(r.path) for r in (video_corpus, again, other))
    assert a.captions() == b.captions() and a.description_rows("synthetic") == b.description_rows("synthetic")
    assert a.images() == b.images() and video_corpus.ceiling == again.ceiling
    files = [r.path / "video" / "synthetic.safetensors" for r in (video_corpus, again, other)]
    assert files[0].read_bytes() == files[1].read_bytes()
    assert not torch.equal(load_file(str(files[0]))["features"][:10], load_file(str(files[2]))["features"][:10])
    assert [x.text for x in a.captions()] != [x.text for x in c.captions()]


def test_noise_has_the_asked_norm(tmp_path):
    clean = build_synthetic_video(tmp_path / "clean", videos=30, frames=4, frame_dim=256, langs=["de"], noise=0.0)
    noisy = build_synthetic_video(tmp_path / "noisy", videos=30, frames=4, frame_dim=256, langs=["de"], noise=0.5)
    difference = (
        load_file(str(noisy.path / "video/synthetic.safetensors"))["features"]
        - load_file(str(clean.path / "video/synthetic.safetensors"))["features"]
    )
    assert difference.norm(dim=1).mean().item() == pytest.approx(0.5, rel=0.1)
    assert Corpus.open(clean.path).captions() == Corpus.open(noisy.path).captions()


def test_bad_arguments(tmp_path):
    for kwargs, message in [
        ({"langs": ["ja"]}, "no grammar for ja"),
        ({"videos": 5}, "--videos 5 is too small"),
        ({"frames": 1}, "--frames 1 is too few"),
        ({"frame_dim": 4}, "--frame-dim 4 is too small"),
        ({"noise": -1.0}, "--noise -1.0: the noise norm must be 0 or more"),
        ({"noise": math.nan}, "--noise nan: the noise norm must be 0 or more"),
    ]:
        with raises_on_command_line(LeccrError, message, "data synth"):
            build_synthetic_video(tmp_path / "x", **{"videos": 40, **kwargs})
    assert not (tmp_path / "x").exists()


def test_cli_builds_the_video_benchmark(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "data",
            "synth",
            str(tmp_path / "v"),
            "--video",
            "--videos",
            "40",
            "--frames",
            "4",
            "--frame-dim",
            "16",
            "--langs",
            "fr",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "train 20, val 10, test 10 videos" in result.output and "R@1 ceiling on test:" in result.output
    corpus = Corpus.open(tmp_path / "v")
    assert corpus.modality == "video" and corpus.languages == ["en", "fr"]
    assert FrameFeatures(tmp_path / "v" / "video" / "synthetic.safetensors").dim == 16
    mixed = runner.invoke(app, ["data", "synth", str(tmp_path / "w"), "--frames", "4", "--noise", "1"])
    assert mixed.exit_code == 2 and "--frames, --noise are for the video benchmark" in mixed.output
    sized = runner.invoke(app, ["data", "synth", str(tmp_path / "w"), "--video", "--image-size", "32"])
    assert sized.exit_code == 2 and "--image-size is for the image benchmark" in sized.output
    assert not (tmp_path / "w").exists()
