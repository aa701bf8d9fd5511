import hashlib
import itertools
import random

import pytest
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.synthetic.grammar import (
    COLORS,
    Mention,
    MtNoise,
    Shape,
    consistent,
    describe_scene,
    render_caption,
)
from leccr_cli.corpus.synthetic.image import (
    IMAGE_CODES,
    _object_codes,
    _object_mentions,
    build_synthetic,
    draw_scene,
    held_out_scenes,
    random_scene,
)
from leccr_cli.errors import CorpusError, LeccrError
from leccr_cli.testing import raises_on_command_line


class _NoFronting(random.Random):
    def random(self):  # never put the place first
        return 0.99


@pytest.mark.parametrize(
    "lang, expected",
    [
        ("en", "A small green star on the left"),
        ("de", "Ein kleiner grüner Stern links"),
        ("fr", "Une petite étoile verte à gauche"),
        ("cs", "Malá zelená hvězda vlevo"),
    ],
)
def test_grammar_agreement_and_word_order(lang, expected):
    mention = (Mention("star", "green", "small", "left"),)
    assert render_caption(lang, mention, _NoFronting()) == expected


def test_grammar_two_mentions_and_neuter():
    mentions = (Mention("square", "red", None, "top"), Mention("circle", "orange", "large", None))
    assert render_caption("de", mentions, _NoFronting()) == "Ein rotes Quadrat oben und ein großer orangefarbener Kreis"
    assert render_caption("fr", mentions, _NoFronting()) == "Un carré rouge en haut et un grand cercle orange"
    assert render_caption("cs", mentions, _NoFronting()) == "Červený čtverec nahoře a velký oranžový kruh"


def test_mt_noise_is_machine_like():
    mention = (Mention("square", "red", "small", "left"),)
    always = random.Random(0)
    always.random = lambda: 0.1  # every optional error fires
    assert render_caption("de", mention, always, MtNoise(mistranslate=True)) == "Ein kleines rotes Platz übrig"
    assert render_caption("de", mention, always, MtNoise(untranslated=True)) == "Ein small red square left"
    assert render_caption("cs", mention, _NoFronting(), MtNoise(agreement=True)) == "Malá červená čtverec vlevo"
    dropped = render_caption("fr", mention, _NoFronting(), MtNoise(drop=True))
    assert len(dropped.split()) == len("Un petit carré rouge à gauche".split()) - 1 or "à gauche" not in dropped


def test_consistency_needs_distinct_objects():
    scene = (Shape("circle", "red", "small", 0, 0), Shape("square", "blue", "large", 2, 2))
    assert consistent((Mention("circle", "red", place="left"),), scene)
    assert consistent((Mention("circle", place="top"),), scene)
    assert not consistent((Mention("circle", place="right"),), scene)
    assert not consistent((Mention("circle"), Mention("circle")), scene)
    assert consistent((Mention("square", size="large"), Mention("circle")), scene)


def test_the_caption_index_agrees_with_consistent():
    rng = random.Random(0)
    for _ in range(30):
        scene = random_scene(rng)
        fitting = {m for obj in scene for m in _object_mentions(obj)}
        assert all(m.fits(o) == (m in _object_mentions(o)) for m in IMAGE_CODES.mentions for o in scene)
        # every consistent caption is made of mentions that fit some object
        captions = [(m,) for m in fitting] + list(itertools.product(fitting, repeat=2))
        expected = {IMAGE_CODES.encode(c) for c in captions if consistent(c, scene)}
        assert IMAGE_CODES.consistent([_object_codes(o) for o in scene]) == expected
        assert all(IMAGE_CODES.decode(IMAGE_CODES.encode(c)) == c for c in captions)


def test_held_out_captions_single_out_their_scene():
    scenes, captions, singled = held_out_scenes(120, random.Random(5))
    for i, (scene, caption) in enumerate(zip(scenes, captions)):
        assert consistent(caption, scene)
        fits = [j for j, other in enumerate(scenes) if consistent(caption, other)]
        assert singled[i] == (fits == [i])
    assert sum(singled) / len(singled) >= 0.9


def test_rendered_pixels_have_the_object_colour():
    scene = (Shape("square", "blue", "large", 1, 1),)
    image = draw_scene(scene, 48, random.Random(0))
    assert image.size == (48, 48)
    assert image.getpixel((24, 24)) == COLORS["blue"]
    assert image.getpixel((1, 1)) != COLORS["blue"]
    assert describe_scene(scene) == (
        "The image shows one shape on a plain gray background. There is a large blue square in the middle."
    )


def test_corpus_layout_and_provenance(synthetic_corpus):
    corpus = Corpus.open(synthetic_corpus)
    assert corpus.splits == ["train", "val", "test"]
    assert [len(corpus.image_ids(s)) for s in corpus.splits] == [90, 15, 15]
    assert corpus.languages == ["cs", "de", "en", "fr"]
    english = corpus.captions("train", "en")
    assert len(english) == 90 * 3
    for lang in ("de", "fr", "cs"):
        mt = corpus.captions("train", lang)
        assert {c.origin for c in mt} == {"mt"}
        assert sorted(c.source for c in mt) == sorted(c.cap_id for c in english)
        test = corpus.captions("test", lang)
        assert {c.origin for c in test} == {"human"} and len(test) == 15
    back = corpus.captions("test", "en", origin="mt")
    assert {c.source for c in back} == {c.cap_id for lang in ("de", "fr", "cs") for c in corpus.captions("test", lang)}
    text = " ".join(c.text for c in corpus.captions())
    for letter in "čéüßáý":
        assert letter in text
    descriptions = corpus.descriptions("synthetic")
    assert set(descriptions) == {row.image_id for row in corpus.images()}
    paths = corpus.image_paths("test")
    assert all(p.is_file() and p.suffix == ".png" for p in paths.values())


def test_same_seed_same_corpus(tmp_path):
    a = build_synthetic(tmp_path / "a", images=40, seed=7, image_size=24)
    b = build_synthetic(tmp_path / "b", images=40, seed=7, image_size=24)
    c = build_synthetic(tmp_path / "c", images=40, seed=8, image_size=24)
    ca, cb, cc = (Corpus.open(r.path) for r in (a, b, c))
    assert ca.captions() == cb.captions()
    assert ca.descriptions("synthetic") == cb.descriptions("synthetic")
    for row in ca.images():
        assert (ca.media_root / row.path).read_bytes() == (cb.media_root / row.path).read_bytes()
    assert a.ceiling == b.ceiling
    assert [x.text for x in ca.captions()] != [x.text for x in cc.captions()]
    # the text of a seed's corpus is pinned: change it only on purpose (and say so in CHANGELOG.md)
    text = "\n".join("|".join(x) for x in ca.captions()) + "\n".join(ca.descriptions("synthetic").values())
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert digest == "f2c779f4921bc9853ba7be777c2ee0ae72e52fac5653a3bdf98aee522867971b"


def test_bad_arguments(tmp_path):
    with pytest.raises(CorpusError, match="no grammar for ja"):
        build_synthetic(tmp_path / "x", images=40, langs=["ja"])
    with raises_on_command_line(LeccrError, "--images 5 is too small", "data synth"):
        build_synthetic(tmp_path / "x", images=5)
    assert not (tmp_path / "x").exists()


def test_cli_reports_the_ceiling(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["data", "synth", str(tmp_path / "s"), "--images", "40", "--langs", "de,cs"])
    assert result.exit_code == 0, result.output
    assert "R@1 ceiling on test:" in result.output
    assert Corpus.open(tmp_path / "s").languages == ["cs", "de", "en"]
    again = runner.invoke(app, ["data", "synth", str(tmp_path / "s"), "--images", "40"])
    assert again.exit_code == 2 and "--overwrite" in again.output
    bad = runner.invoke(app, ["data", "synth", str(tmp_path / "t"), "--langs", "de,xx"])
    assert bad.exit_code == 2 and "'xx'" in bad.output
