import gzip
import shutil

import pytest
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.importers.multi30k import import_multi30k
from leccr_cli.errors import CorpusError
from leccr_cli.testing import raises_on_command_line


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
    report = import_multi30k(multi30k_text, flickr_placeholders, out)
    assert report.missing_images == 0 and report.notes == report.warnings == []
    return report.corpus


def test_sizes_and_languages(imported):
    corpus = Corpus.open(imported.path)
    assert [len(corpus.image_ids(s)) for s in ("train", "val", "test")] == [29000, 1014, 1000]
    assert corpus.languages == ["cs", "de", "en", "fr"]
    for split, n in (("train", 29000), ("val", 1014), ("test", 1000)):
        for lang in ("en", "de", "fr", "cs"):
            assert len(corpus.captions(split, lang)) == n
    assert len(corpus.captions("task2-val", "de")) == 5 * 1014
    # every language of Multi30K is ranked against the whole split: no galleries/ is written
    assert not (corpus.path / "galleries").exists() and corpus.gallery_languages("test") == []
    assert corpus.gallery("test", "cs") == corpus.image_ids("test")
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
    with raises_on_command_line(
        CorpusError,
        r"2 of \d+ listed images are missing .*1018148011.jpg.*--allow-missing-images",
        "data import-multi30k",
    ):
        import_multi30k(multi30k_text, images, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    report = import_multi30k(multi30k_text, images, tmp_path / "out", allow_missing_images=True, task2=False)
    assert report.missing_images == 2 and "task2-val" not in report.corpus.splits


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
    with raises_on_command_line(CorpusError, "--images .*no such folder", "data import-multi30k"):
        import_multi30k(root, tmp_path / "noimages", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_with_flickr30k_captions(multi30k_text, flickr_placeholders, tmp_path):
    """Five Flickr30K captions for every training image but the last two replace task1's English one."""
    train_names = (multi30k_text / "task1" / "image_splits" / "train.txt").read_text().split()
    with gzip.open(multi30k_text / "task1" / "raw" / "train.en.gz", "rt", encoding="utf-8") as handle:
        task1_en = handle.read().split("\n")[: len(train_names)]
    covered = train_names[:-2]
    lines = [
        f"{name}#{n}\t{task1_en[i] if n == 2 else f'Caption {n} of image {name} .'}"
        for i, name in enumerate(covered)
        for n in range(5)
    ]
    val_name = (multi30k_text / "task1" / "image_splits" / "val.txt").read_text().split()[0]
    test_name = (multi30k_text / "task1" / "image_splits" / "test_2016_flickr.txt").read_text().split()[0]
    lines += [f"{name}#{n}\tAn image outside the training set ." for name in (val_name, test_name) for n in range(5)]
    token = tmp_path / "results_20130124.token"
    token.write_text("\n".join(lines) + "\n")

    runner = CliRunner()
    out = tmp_path / "m"
    result = runner.invoke(
        app,
        [
            "data",
            "import-multi30k",
            str(out),
            "--text",
            str(multi30k_text),
            "--images",
            str(flickr_placeholders),
            "--no-task2",
            "--flickr30k-captions",
            str(token),
        ],
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "train 29000, val 1014, test 1000 images" in output
    assert (
        "Flickr30K: 144990 English captions for 28998 of 29000 training images (replacing their task1 English caption)"
        in output
    )
    assert (
        f"2 images of results_20130124.token (10 captions) not among the Multi30K training images, ignored (first: "
        f"{val_name}, {test_name})"
        in output
    )
    assert (
        f"2 training images without a Flickr30K caption in results_20130124.token keep the task1 English caption "
        f"(first: {train_names[-2]}, {train_names[-1]})"
        in output
    )

    corpus = Corpus.open(out)
    english = corpus.captions("train", "en")
    assert len(english) == 144990 + 2 and len(corpus.captions("train", "de")) == 29000
    by_image = {}
    for caption in english:
        by_image.setdefault(caption.image_id, []).append(caption)
    stem = covered[7].rsplit(".", 1)[0]
    assert [c.cap_id for c in by_image[stem]] == [f"{stem}#en#{n}" for n in range(5)]
    assert [c.text for c in by_image[stem]][2] == task1_en[7]  # task1's caption is there once, as one of the five
    assert all(len(by_image[name.rsplit(".", 1)[0]]) == 5 for name in covered)
    last = train_names[-1].rsplit(".", 1)[0]
    assert [(c.cap_id, c.text) for c in by_image[last]] == [(f"{last}#en#0", task1_en[-1])]
    assert len(corpus.captions("val", "en")) == 1014  # val and test keep task1 only
    info = runner.invoke(app, ["data", "info", str(out)])
    assert info.exit_code == 0 and "144992" in info.output and "Descriptions: none yet" in info.output


# Real Flickr30K captions of the first Multi30K training images (task1's English caption of
# 1000092795.jpg is its caption 1, of 1000268201.jpg its caption 3).
FLICKR30K = {
    "1000092795.jpg": [
        "Two young guys with shaggy hair look at their hands while hanging out in the yard .",
        "Two young , White males are outside near many bushes .",
        "Two men in green shirts are standing in a yard .",
        "A man in a blue shirt standing in a garden .",
        "Two friends enjoy time spent together .",
    ],
    "10002456.jpg": [
        "Several men in hard hats are operating a giant pulley system .",
        "Workers look down from up above on a piece of equipment .",
        "Two men working on a machine wearing hard hats .",
        "Four men on top of a tall structure .",
        "Three men on a large rig .",
    ],
    "1000268201.jpg": [
        "A child in a pink dress is climbing up a set of stairs in an entry way .",
        "A little girl in a pink dress going into a wooden cabin .",
        "A little girl climbing the stairs to her playhouse .",
        "A little girl climbing into a wooden playhouse .",
        "A girl going into a wooden building .",
    ],
    "1018148011.jpg": ["A group of people stand in the back of a truck filled with cotton ."],  # a val image
}


@pytest.fixture
def small_multi30k(multi30k_text, tmp_path):
    """The first four real training images (en, de) and one validation image."""
    root = tmp_path / "text"
    (root / "task1" / "raw").mkdir(parents=True)
    (root / "task1" / "image_splits").mkdir()
    for split, count in (("train", 4), ("val", 1)):
        names = (multi30k_text / "task1" / "image_splits" / f"{split}.txt").read_text().split()[:count]
        (root / "task1" / "image_splits" / f"{split}.txt").write_text("\n".join(names) + "\n")
        for lang in ("en", "de"):
            with gzip.open(multi30k_text / "task1" / "raw" / f"{split}.{lang}.gz", "rt", encoding="utf-8") as handle:
                lines = handle.read().split("\n")[:count]
            with gzip.open(root / "task1" / "raw" / f"{split}.{lang}.gz", "wt", encoding="utf-8") as handle:
                handle.write("\n".join(lines) + "\n")
    images = tmp_path / "images"
    images.mkdir()
    for name in ["1000092795.jpg", "10002456.jpg", "1000268201.jpg", "1000344755.jpg", "1018148011.jpg"]:
        (images / name).touch()
    return root, images


def _token_file(path, captions=FLICKR30K):
    path.write_text(
        "".join(f"{name}#{n}\t{text}\n" for name, texts in captions.items() for n, text in enumerate(texts))
    )
    return path


def _csv_file(path, captions=FLICKR30K):
    rows = [f"{name}| {n}| {text}" for name, texts in captions.items() for n, text in enumerate(texts)]
    path.write_bytes(("\ufeffimage_name| comment_number| comment\r\n" + "\r\n".join(rows) + "\r\n").encode())
    return path


@pytest.mark.parametrize("write", [_token_file, _csv_file], ids=["token", "csv"])
def test_flickr30k_caption_formats(small_multi30k, tmp_path, write):
    text, images = small_multi30k
    captions_file = write(tmp_path / ("results_20130124.token" if write is _token_file else "results.csv"))
    report = import_multi30k(text, images, tmp_path / "out", flickr30k_captions=captions_file)
    corpus = report.corpus
    english = {}
    for caption in corpus.captions("train", "en"):
        english.setdefault(caption.image_id, []).append((caption.cap_id, caption.text, caption.origin))
    for name in ("1000092795.jpg", "10002456.jpg", "1000268201.jpg"):
        stem = name[:-4]
        assert english[stem] == [(f"{stem}#en#{n}", t, "human") for n, t in enumerate(FLICKR30K[name])]
    assert english["1000344755"] == [
        ("1000344755#en#0", "A man in a blue shirt is standing on a ladder cleaning a window.", "human")
    ]
    assert [c.cap_id for c in corpus.captions("train", "de")][:2] == ["1000092795#de#0", "10002456#de#0"]
    assert corpus.captions("val", "en")[0].cap_id == "1018148011#en#0"  # val keeps task1
    assert report.notes == [
        f"Flickr30K: 15 English captions for 3 of 4 training images (replacing their task1 English caption) from "
        f"{captions_file}",
        f"Flickr30K: 1 image of {captions_file.name} (1 caption) not among the Multi30K training images, ignored "
        f"(first: 1018148011.jpg)",
    ]
    assert report.warnings == [
        f"1 training image without a Flickr30K caption in {captions_file.name} keeps the task1 English caption (first: "
        f"1000344755.jpg)"
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (
            "1000092795.jpg#0\tTwo men .\n1000092795.jpg#1\n",
            r"results.token:2: expected `<image>.jpg#<n><TAB><caption>`, found '1000092795.jpg#1'",
        ),
        (
            "1000092795.jpg#0\tTwo men .\n\n1000092795.jpg#x\tTwo men .\n",
            r"results.token:3: expected `<image>.jpg#<n><TAB><caption>`",
        ),
        ("1000092795.jpg\tTwo men .\n", r"results.token:1: expected `<image>.jpg#<n><TAB><caption>`"),
        (
            "1000092795.jpg#0\tTwo\u2028men .\n1000092795.jpg#0\tTwo men .\n",
            r"results.token:2: caption 0 of 1000092795.jpg appears twice \(also line 1\)",
        ),
        (
            "image_name| comment_number| comment\n2199200615.jpg| 4 A dog runs across the grass .\n",
            r"results.token:2: expected `image_name\| comment_number\| comment`, found '2199200615.jpg\| 4 A dog",
        ),
        (
            "image_name| comment_number| comment\n2199200615.jpg| 4| \n",
            r"results.token:2: expected `image_name\| comment_number\| comment`",
        ),
        ("\n\n", r"results.token: no captions"),
    ],
)
def test_bad_flickr30k_lines_are_named(small_multi30k, tmp_path, content, message):
    text, images = small_multi30k
    (tmp_path / "results.token").write_text(content)
    with pytest.raises(CorpusError, match=message):
        import_multi30k(text, images, tmp_path / "out", flickr30k_captions=tmp_path / "results.token")
    with raises_on_command_line(
        CorpusError, r"--flickr30k-captions .*nothing.token: no such file", "data import-multi30k"
    ):
        import_multi30k(text, images, tmp_path / "out", flickr30k_captions=tmp_path / "nothing.token")
    assert not (tmp_path / "out").exists()
