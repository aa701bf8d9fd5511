import json

import pytest

from leccr_cli.data.corpus import Caption, Corpus, ImageRow, translated_cap_id, write_corpus
from leccr_cli.errors import CorpusError, LeccrError

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
    corpus = _write(tmp_path / "c", descriptions={"llava": [{"image_id": "a", "text": "d", "model": "m", "prompt": "p"}]})
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
    with pytest.raises(CorpusError, match="no descriptions from 'llava'.*leccr caption"):
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
    with pytest.raises(LeccrError, match="exists and is not empty.*--overwrite"):
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
    with pytest.raises(CorpusError, match="corpus.json is corrupt"):
        Corpus.open(corpus.path)


def test_translated_cap_id():
    assert translated_cap_id("123#enc#4", "de") == "123#enc2de#4"
    assert translated_cap_id("a#b#en#0", "cs") == "a#b#en2cs#0"
    with pytest.raises(CorpusError, match="not of the form"):
        translated_cap_id("nohash", "de")
