import json

import pytest

from leccr_cli.corpus.corpus import Caption, Corpus, GalleryRow, ImageRow, translated_cap_id, write_corpus
from leccr_cli.errors import CorpusError, LeccrError
from leccr_cli.testing import raises_on_command_line

IMAGES = [ImageRow("a", "train", "a.jpg"), ImageRow("b", "test", "b.jpg")]
CAPTIONS = [
    Caption("a#en#0", "a", "train", "en", "human", "A dog."),
    Caption("a#en2de#0", "a", "train", "de", "mt", "Ein Hund.", "a#en#0", "opus-mt"),
    Caption("b#en#0", "b", "test", "en", "human", "A cat."),
    Caption("b#de#0", "b", "test", "de", "human", "Eine Katze."),
]


def _write(out, **kwargs):
    args = dict(name="toy", modality="image", media_root="/media", images=IMAGES, captions=CAPTIONS)
    args.update(kwargs)
    return write_corpus(out, **args)


def test_round_trip(tmp_path):
    corpus = _write(
        tmp_path / "c", descriptions={"llava": [{"image_id": "a", "text": "d", "model": "m", "prompt": "p"}]}
    )
    again = Corpus.open(tmp_path / "c")
    assert again.languages == ["de", "en"] and again.splits == ["train", "test"]
    assert again.captions() == CAPTIONS
    assert again.captions("train", "de") == [CAPTIONS[1]]
    assert again.captions(origin="human", lang="de") == [CAPTIONS[3]]
    assert again.image_ids("test") == ["b"]
    assert str(again.image_path("b")) == "/media/b.jpg"
    assert again.descriptions("llava") == {"a": "d"}
    assert again.description_sources() == ["llava"]
    assert corpus.caption_counts()[("train", "de", "mt")] == 1


def test_lookup_errors_list_what_exists(tmp_path):
    corpus = _write(tmp_path / "c")
    with pytest.raises(CorpusError, match="no split 'val'.*available: train, test"):
        corpus.captions("val")
    with pytest.raises(CorpusError, match="no captions in language 'cs'.*available: de, en"):
        corpus.captions(lang="cs")
    with raises_on_command_line(CorpusError, "no descriptions from 'llava'.*leccr caption", "caption"):
        corpus.descriptions("llava")


def test_add_captions_is_validated_and_persisted(tmp_path):
    corpus = _write(tmp_path / "c")
    corpus.add_captions([Caption("a#en2fr#0", "a", "train", "fr", "mt", "Un chien.", "a#en#0", "m")])
    assert Corpus.open(tmp_path / "c").languages == ["de", "en", "fr"]
    with pytest.raises(CorpusError, match="appears twice"):
        corpus.add_captions([Caption("a#en2fr#0", "a", "train", "fr", "mt", "Un chien.", "a#en#0", "m")])
    assert len(Corpus.open(tmp_path / "c").captions()) == 5
    corpus.add_captions([Caption("a#en2fr#0", "a", "train", "fr", "mt", "Le chien.", "a#en#0", "m")], replace=True)
    assert Corpus.open(tmp_path / "c").captions(lang="fr")[0].text == "Le chien."
    corpus.add_captions([], remove=["a#en2fr#0", "a#en2de#0"])
    again = Corpus.open(tmp_path / "c")
    assert [c.cap_id for c in again.captions()] == ["a#en#0", "b#en#0", "b#de#0"] and again.languages == ["de", "en"]


@pytest.mark.parametrize(
    "bad, message",
    [
        (Caption("x#en#0", "a", "train", "en", "human", "   "), "is empty"),
        (Caption("x#en#0", "a", "train", "xx", "human", "t"), "unknown language code 'xx'"),
        (Caption("x#en#0", "a", "train", "en", "robot", "t"), "origin 'robot'"),
        (Caption("x#en#0", "zz", "train", "en", "human", "t"), "image 'zz'"),
        (Caption("a#en#0", "a", "train", "en", "human", "t"), "appears twice"),
    ],
)
def test_bad_rows_are_refused_and_nothing_is_left(tmp_path, bad, message):
    with pytest.raises(CorpusError, match=message):
        _write(tmp_path / "c", captions=CAPTIONS + [bad])
    assert list(tmp_path.iterdir()) == []


def test_failure_while_filling_leaves_nothing(tmp_path):
    def explode(folder):
        (folder / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        _write(tmp_path / "c", fill=explode)
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_needs_overwrite(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with raises_on_command_line(LeccrError, "exists and is not empty.*--overwrite", "data synth"):
        _write(out)
    assert (out / "keep.txt").read_text() == "mine"
    _write(out, overwrite=True)
    assert not (out / "keep.txt").exists()
    assert Corpus.open(out).name == "toy"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_open_errors(tmp_path):
    with pytest.raises(CorpusError, match="no such folder"):
        Corpus.open(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match="corpus.json is missing"):
        Corpus.open(tmp_path / "empty")
    corpus = _write(tmp_path / "c")
    (corpus.path / "corpus.json").write_text("{not json")
    with pytest.raises(CorpusError, match="corpus.json is corrupt"):
        Corpus.open(corpus.path)
    (corpus.path / "corpus.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(CorpusError, match=r"c/corpus.json: key 'modality' is missing"):
        Corpus.open(corpus.path)


GOOD_META = {
    "name": "toy",
    "modality": "image",
    "languages": ["de", "en"],
    "splits": ["train", "test"],
    "media_root": "/m",
    "version": 1,
}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"splits": "train"}, r"key 'splits' is a string \(\"train\"\); expected a list of strings such as \["),
        ({"splits": ["train", 3]}, r"key 'splits' is a list \(\["),
        ({"splits": ["train", "train"]}, r"key 'splits' names 'train' twice"),
        ({"languages": "de"}, r"key 'languages' is a string \(\"de\"\); expected a list of strings"),
        ({"languages": ["de", "german"]}, r"key 'languages' holds 'german'; expected ISO 639-1 codes"),
        ({"version": "1"}, r"key 'version' is a string \(\"1\"\); expected the integer 1"),
        ({"version": True}, r"key 'version' is true; expected the integer 1"),
        ({"version": 2}, r"version 2 is not supported"),
        ({"name": 5}, r"key 'name' is a number \(5\); expected a string"),
        ({"modality": ["image"]}, r"key 'modality' is a list \(\[\"image\"\]\); expected a string"),
        ({"modality": "audio"}, r"key 'modality' is 'audio'; expected one of image, video"),
        ({"media_root": None}, r"key 'media_root' is null; expected a string"),
        ({"colour": "red"}, r"unknown key 'colour'"),
    ],
)
def test_corpus_json_types_are_checked(tmp_path, change, message):
    corpus = _write(tmp_path / "c")
    (corpus.path / "corpus.json").write_text(json.dumps({**GOOD_META, **change}))
    with pytest.raises(CorpusError, match=rf"^{tmp_path}/c/corpus.json: {message}") as caught:
        Corpus.open(corpus.path)
    assert "\n" not in str(caught.value)


def test_corpus_json_must_be_an_object(tmp_path):
    corpus = _write(tmp_path / "c")
    (corpus.path / "corpus.json").write_text("[1, 2]")
    with pytest.raises(CorpusError, match=r"corpus.json: expected a JSON object, found a list"):
        Corpus.open(corpus.path)
    meta = dict(GOOD_META)
    del meta["version"]  # an absent version reads as 1
    (corpus.path / "corpus.json").write_text(json.dumps(meta))
    assert Corpus.open(corpus.path).splits == ["train", "test"]


GALLERY_IMAGES = [ImageRow(i, "test", f"{i}.jpg") for i in ("j1", "b1", "z1", "j2", "z2")] + [
    ImageRow("a", "train", "a.jpg")
]
GALLERY_CAPTIONS = [
    Caption("j1#ja#0", "j1", "test", "ja", "human", "犬"),
    Caption("j2#ja#0", "j2", "test", "ja", "human", "猫"),
    Caption("z1#zh#0", "z1", "test", "zh", "human", "狗"),
    Caption("z2#zh#0", "z2", "test", "zh", "human", "猫"),
    Caption("b1#zh#0", "b1", "test", "zh", "human", "鸟"),
    Caption("j1#ja2en#0", "j1", "test", "en", "mt", "A dog.", "j1#ja#0", "m"),
    Caption("a#en#0", "a", "train", "en", "human", "A dog."),
]


def _write_galleries(out, galleries, captions=GALLERY_CAPTIONS):
    return _write(out, images=GALLERY_IMAGES, captions=captions, galleries=galleries)


def test_language_galleries_round_trip(tmp_path):
    # rows given out of order come back in the split's image order
    galleries = [GalleryRow("j2", "test", "ja"), GalleryRow("j1", "test", "ja")]
    galleries += [GalleryRow(i, "test", "zh") for i in ("z2", "b1", "z1")]
    _write_galleries(tmp_path / "c", galleries)
    corpus = Corpus.open(tmp_path / "c")
    assert corpus.gallery("test", "ja") == ["j1", "j2"]
    assert corpus.gallery("test", "zh") == ["b1", "z1", "z2"]
    assert corpus.gallery("test", "en") == ["j1", "b1", "z1", "j2", "z2"] == corpus.image_ids("test")
    assert corpus.gallery("train", "en") == ["a"]
    assert corpus.gallery_languages("test") == ["ja", "zh"] and corpus.has_language_galleries("test")
    assert corpus.gallery_languages("train") == [] and not corpus.has_language_galleries("train")
    with pytest.raises(CorpusError, match="no split 'val'"):
        corpus.gallery("val", "ja")
    with pytest.raises(CorpusError, match="no captions in language 'de'"):
        corpus.gallery("test", "de")
    # rewriting the captions keeps the galleries, and still checks them
    corpus.add_captions([Caption("j2#ja2en#0", "j2", "test", "en", "mt", "A cat.", "j2#ja#0", "m")])
    assert Corpus.open(tmp_path / "c").gallery("test", "ja") == ["j1", "j2"]
    with pytest.raises(
        CorpusError, match="'z1#ja#0' is of image 'z1', which the gallery of split 'test', language 'ja' lacks"
    ):
        corpus.add_captions([Caption("z1#ja#0", "z1", "test", "ja", "human", "犬")])


def test_corpus_without_galleries_reads_as_before(tmp_path):
    corpus = _write(tmp_path / "c")
    assert not (corpus.path / "galleries").exists()
    assert corpus.gallery("test", "de") == ["b"] and corpus.gallery_languages("test") == []


@pytest.mark.parametrize(
    "galleries, message",
    [
        (
            [GalleryRow("a", "test", "ja")],
            r"gallery of split 'test', language 'ja': image 'a' is not listed in split 'test'",
        ),
        (
            [GalleryRow("j1", "val", "ja")],
            r"gallery of split 'val', language 'ja': image 'j1' is not listed in split 'val'",
        ),
        ([GalleryRow("j1", "test", "ja")] * 2 + [GalleryRow("j2", "test", "ja")], r"image 'j1' is listed twice"),
        ([GalleryRow("j1", "test", "de")], r"language 'de': the corpus has no captions in 'de'"),
        (
            [GalleryRow("j1", "test", "ja")],
            r"caption 'j2#ja#0' is of image 'j2', which the gallery of split 'test', language 'ja' lacks",
        ),
    ],
)
def test_bad_galleries_are_refused(tmp_path, galleries, message):
    with pytest.raises(CorpusError, match=message):
        _write_galleries(tmp_path / "c", galleries)
    assert list(tmp_path.iterdir()) == []


def test_translated_cap_id():
    assert translated_cap_id("123#enc#4", "de") == "123#enc2de#4"
    assert translated_cap_id("a#b#en#0", "cs") == "a#b#en2cs#0"
    with pytest.raises(CorpusError, match="not of the form"):
        translated_cap_id("nohash", "de")
