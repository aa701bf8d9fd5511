"""`leccr data import-images`: a corpus from any folder of images; descriptions copied between corpora."""

import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.importers.descriptions import import_descriptions
from leccr_cli.corpus.importers.image_folder import find_images, image_ids, import_images
from leccr_cli.errors import CorpusError
from leccr_cli.testing import single_error_line, writer_lock_holder

runner = CliRunner()


def _image(path, color="red", kind="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), color).save(path, kind)
    return path


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    _image(root / "beach" / "dog.jpg", kind="JPEG")
    _image(root / "beach" / "sun.webp", kind="WEBP")
    _image(root / "cat.png")
    _image(root / "cat.JPEG", kind="JPEG")  # shares its stem with cat.png: both keep the suffix
    _image(root / ".hidden.png")
    _image(root / ".cache" / "thumb.png")
    (root / "notes.txt").write_text("not an image")
    return root


def test_a_folder_tree_becomes_a_gallery(photos, tmp_path):
    assert find_images(photos) == ["beach/dog.jpg", "beach/sun.webp", "cat.JPEG", "cat.png"]
    assert image_ids(find_images(photos)) == {
        "beach/dog": "beach/dog.jpg", "beach/sun": "beach/sun.webp", "cat.JPEG": "cat.JPEG", "cat.png": "cat.png",
    }  # fmt: skip
    out = tmp_path / "corpus"
    result = runner.invoke(app, ["data", "import-images", str(photos), str(out)])
    assert result.exit_code == 0, result.output
    assert "4 images in split gallery (4 new, 0 already listed)" in result.output.replace("\n", " ")
    corpus = Corpus.open(out)
    assert corpus.splits == ["gallery"] and corpus.modality == "image" and corpus.captions() == []
    assert corpus.media_root == photos.resolve()
    assert corpus.image_paths("gallery")["beach/dog"] == photos.resolve() / "beach" / "dog.jpg"
    assert runner.invoke(app, ["data", "info", str(out)]).exit_code == 0


def test_unreadable_files_stop_the_import_or_are_skipped(photos, tmp_path):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    line = single_error_line(runner.invoke(app, ["data", "import-images", str(photos), str(tmp_path / "a")]))
    assert f"image {photos / 'broken.jpg'} cannot be read" in line and "--on-error skip" in line
    assert not (tmp_path / "a").exists()

    result = runner.invoke(app, ["data", "import-images", str(photos), str(tmp_path / "b"), "--on-error", "skip"])
    assert result.exit_code == 0, result.output
    assert "skipped 1 unreadable file" in result.output and "broken.jpg" in result.output
    assert len(Corpus.open(tmp_path / "b").image_ids("gallery")) == 4


def test_a_rerun_adds_new_images_and_keeps_descriptions(photos, tmp_path):
    out = tmp_path / "corpus"
    corpus = import_images(photos, out).corpus
    import_descriptions(corpus, _jsonl(tmp_path, {"cat.png": "a red square"}), "notes")
    _image(photos / "zebra.png", "white")
    report = import_images(photos, out)
    assert (report.added, report.already) == (1, 4)
    corpus = Corpus.open(out)
    assert corpus.image_ids("gallery")[-1] == "zebra"  # appended: earlier rows keep their order
    assert corpus.descriptions("notes") == {"cat.png": "a red square"}
    (photos / "cat.png").unlink()
    assert import_images(photos, out).vanished == ["cat.png"]
    assert import_images(photos, out, split="extra").corpus.splits == ["extra", "gallery"]


@pytest.mark.slow
def test_a_rerun_holds_the_corpus_writer_lock(photos, tmp_path):
    out = tmp_path / "corpus"
    import_images(photos, out)
    holder = writer_lock_holder(out, ["caption", str(out)])
    try:
        assert holder.stdout.readline().strip() == "locked"
        _image(photos / "zebra.png", "white")
        line = single_error_line(runner.invoke(app, ["data", "import-images", str(photos), str(out)]))
        assert f"is being written by `leccr caption {out}` (pid {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()
    assert import_images(photos, out).added == 1 and Corpus.open(out).image_ids("gallery")[-1] == "zebra"


def _jsonl(tmp_path, rows):
    import json

    path = tmp_path / "descriptions.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in rows.items()))
    return path


def test_bad_places_are_refused(photos, tmp_path):
    cases = [
        ([str(tmp_path / "nowhere"), str(tmp_path / "out")], "no such folder"),
        ([str(photos), str(photos / "corpus")], "is inside the image folder"),
        ([str(photos), str(photos)], "is inside the image folder"),
        ([str(photos), str(tmp_path)], "exists and is not a corpus"),
        ([str(photos), str(tmp_path / "out"), "--on-error", "ignore"], "--on-error 'ignore' is not supported"),
    ]
    for args, message in cases:
        assert message in single_error_line(runner.invoke(app, ["data", "import-images", *args]))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no images" in single_error_line(
        runner.invoke(app, ["data", "import-images", str(empty), str(tmp_path / "e")])
    )
    other = tmp_path / "other"
    _image(other / "x.png")
    import_images(other, tmp_path / "theirs")
    line = single_error_line(runner.invoke(app, ["data", "import-images", str(photos), str(tmp_path / "theirs")]))
    assert f"is a corpus of {other.resolve()}" in line and "--overwrite" in line
    assert import_images(photos, tmp_path / "theirs", overwrite=True).added == 4


def test_descriptions_are_copied_from_another_corpus(synthetic_corpus, tmp_path):
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    test_ids = Corpus.open(synthetic_corpus).image_ids("test")
    for image_id in test_ids[:5]:
        shutil.copy(synthetic_corpus / "images" / f"{image_id}.png", pngs)
    corpus = import_images(pngs, tmp_path / "gallery").corpus
    report = import_descriptions(corpus, synthetic_corpus / "descriptions" / "synthetic", "synthetic")
    assert report.written == 5 and report.missing == [] and len(report.unknown) == 115
    source = Corpus.open(synthetic_corpus).descriptions("synthetic")
    assert corpus.descriptions("synthetic") == {i: source[i] for i in test_ids[:5]}


def test_images_cannot_be_added_where_media_live_beside_the_table(synthetic_corpus, tmp_path):
    copy = tmp_path / "synthetic"
    shutil.copytree(synthetic_corpus, copy)
    with pytest.raises(CorpusError, match="keeps media files in images/"):
        Corpus.open(copy).add_images([("new", "test", "images/new.png")])
