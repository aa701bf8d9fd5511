import gzip
import shutil

import pytest
from typer.testing import CliRunner

from leccr_cli.cli import app
from leccr_cli.data.corpus import Corpus
from leccr_cli.data.multi30k import import_multi30k
from leccr_cli.errors import CorpusError


@pytest.fixture(scope="module")
def flickr_placeholders(multi30k_text, tmp_path_factory):
    folder = tmp_path_factory.mktemp("flickr")
    for split_file in list((multi30k_text / "task1" / "image_splits").glob("*.txt")) + list(
        (multi30k_text / "task2" / "image_splits").glob("*.txt")
    ):
        for name in split_file.read_text().split():
            (folder / name).touch()
    return folder


@pytest.fixture(scope="module")
def imported(multi30k_text, flickr_placeholders, tmp_path_factory):
    out = tmp_path_factory.mktemp("m30k") / "corpus"
    corpus, missing = import_multi30k(multi30k_text, flickr_placeholders, out)
    assert missing == 0
    return corpus


def test_sizes_and_languages(imported):
    corpus = Corpus.open(imported.path)
    assert [len(corpus.image_ids(s)) for s in ("train", "val", "test")] == [29000, 1014, 1000]
    assert corpus.languages == ["cs", "de", "en", "fr"]
    for split, n in (("train", 29000), ("val", 1014), ("test", 1000)):
        for lang in ("en", "de", "fr", "cs"):
            assert len(corpus.captions(split, lang)) == n
    assert len(corpus.captions("task2-val", "de")) == 5 * 1014
    assert len(corpus.captions("task2-test", "en")) == 5 * 1000


def test_captions_are_aligned_and_byte_exact(imported, multi30k_text):
    corpus = Corpus.open(imported.path)
    names = (multi30k_text / "task1" / "image_splits" / "test_2016_flickr.txt").read_text().split()
    for lang in ("en", "de", "fr", "cs"):
        with gzip.open(multi30k_text / "task1" / "raw" / f"test_2016_flickr.{lang}.gz", "rb") as handle:
            raw = handle.read().decode("utf-8").split("\n")[: len(names)]
        rows = corpus.captions("test", lang)
        assert [r.image_id for r in rows] == [n.rsplit(".", 1)[0] for n in names]
        assert [r.text for r in rows] == raw
        assert all(r.cap_id == f"{r.image_id}#{lang}#0" and r.origin == "human" for r in rows)
    cs = {r.image_id: r.text for r in corpus.captions("val", "cs")}
    assert cs["1018148011"] == "Skupina mužů nakládá bavlnu na náklaďák."
    assert str(corpus.image_path("1018148011")).endswith("1018148011.jpg")


def test_missing_images_are_named(multi30k_text, flickr_placeholders, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(flickr_placeholders, images)
    (images / "1018148011.jpg").unlink()
    (images / "1029450589.jpg").unlink()
    with pytest.raises(CorpusError, match=r"2 of \d+ listed images are missing .*1018148011.jpg.*--allow-missing-images"):
        import_multi30k(multi30k_text, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    corpus, missing = import_multi30k(multi30k_text, images, tmp_path / "out", allow_missing_images=True, task2=False)
    assert missing == 2 and "task2-val" not in corpus.splits


def _tiny_layout(root, en_lines, de_lines, names):
    (root / "task1" / "raw").mkdir(parents=True)
    (root / "task1" / "image_splits").mkdir()
    (root / "task1" / "image_splits" / "val.txt").write_text("\n".join(names) + "\n")
    for lang, lines in (("en", en_lines), ("de", de_lines)):
        with gzip.open(root / "task1" / "raw" / f"val.{lang}.gz", "wt", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


def test_bad_text_inputs(tmp_path):
    images = tmp_path / "img"
    images.mkdir()
    for name in ("1.jpg", "2.jpg"):
        (images / name).touch()
    with pytest.raises(CorpusError, match="no task1/image_splits"):
        import_multi30k(tmp_path / "nothing", images, tmp_path / "out")
    root = tmp_path / "short"
    _tiny_layout(root, ["A dog."], ["Ein Hund.", "Eine Katze."], ["1.jpg", "2.jpg"])
    with pytest.raises(CorpusError, match=r"val.en.gz: 1 lines but .* 2 images"):
        import_multi30k(root, images, tmp_path / "out")
    root = tmp_path / "empty"
    _tiny_layout(root, ["A dog.", "  "], ["Ein Hund.", "Eine Katze."], ["1.jpg", "2.jpg"])
    with pytest.raises(CorpusError, match=r"val.en.gz:2: empty caption for image 2.jpg"):
        import_multi30k(root, images, tmp_path / "out")
    with pytest.raises(CorpusError, match="--images .*no such folder"):
        import_multi30k(root, tmp_path / "noimages", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli(multi30k_text, flickr_placeholders, tmp_path):
    runner = CliRunner()
    out = tmp_path / "m"
    result = runner.invoke(
        app, ["data", "import-multi30k", str(out), "--text", str(multi30k_text), "--images", str(flickr_placeholders), "--no-task2"]
    )
    assert result.exit_code == 0, result.output
    assert "train 29000, val 1014, test 1000 images" in result.output
    info = runner.invoke(app, ["data", "info", str(out)])
    assert info.exit_code == 0 and "29000" in info.output and "Descriptions: none yet" in info.output
