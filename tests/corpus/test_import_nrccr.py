import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Corpus
from leccr_cli.corpus.importers.nrccr import import_nrccr, parse_tag
from leccr_cli.corpus.video import FrameFeatures
from leccr_cli.errors import CorpusError
from leccr_cli.testing import raises_on_command_line


@pytest.mark.parametrize(
    "tag, expected",
    [
        ("enc", ("en", "human", None)),
        ("de", ("de", "human", None)),
        ("enc2de", ("de", "mt", "enc")),
        ("enc2de2enc", ("en", "back", "enc2de")),
        ("zh2enc", ("en", "mt", "zh")),
        ("en2ja", ("ja", "mt", "en")),
    ],
)
def test_tags(tag, expected):
    assert parse_tag(tag) == expected


@pytest.mark.parametrize("tag", ["google", "enc2xx", "de2de", "enc2de2fr", "a2b2c2d"])
def test_bad_tags(tag):
    with pytest.raises(ValueError):
        parse_tag(tag)


def _layout(root, extra_lines=()):
    text = root / "TextData"
    text.mkdir(parents=True)
    (root / "FeatureData").mkdir()
    (text / "m30ktrain_enc.caption.txt").write_text("100#enc#0 A dog runs.\n101#enc#0 A red car.\n")
    (text / "m30ktrain_enc2de.caption.txt").write_text("100#enc2de#0 Ein Hund rennt.\n101#enc2de#0 Ein rotes Auto.\n")
    (text / "m30ktrain_enc2de2enc.caption.txt").write_text(
        "100#enc2de2enc#0 A dog is running.\n101#enc2de2enc#0 A red car.\n"
    )
    (text / "m30ktest_de.caption.txt").write_text("200#de#0 Zwei Männer à la café.\n" + "".join(extra_lines))
    (text / "m30ktest_de2enc.caption.txt").write_text("200#de2enc#0 Two men at the cafe.\n")
    (root / "FeatureData" / "train_id.txt").write_text("100\n101\n")
    (root / "FeatureData" / "test_id.txt").write_text("200\n")
    images = root / "images"
    images.mkdir()
    for i in ("100", "101", "200"):
        (images / f"{i}.jpg").touch()
    return images


def test_import_maps_tags_to_lang_origin_and_source(tmp_path):
    images = _layout(tmp_path / "m30k")
    report = import_nrccr(tmp_path / "m30k", tmp_path / "out", images_dir=images)
    assert report.missing_images == 0 and report.notes == []
    corpus = Corpus.open(tmp_path / "out")
    assert corpus.name == "m30k" and corpus.splits == ["train", "test"]
    assert corpus.image_ids("train") == ["100", "101"]
    mt = corpus.captions("train", "de")
    assert [(c.cap_id, c.origin, c.source) for c in mt] == [
        ("100#enc2de#0", "mt", "100#enc#0"),
        ("101#enc2de#0", "mt", "101#enc#0"),
    ]
    back = corpus.captions("train", "en", origin="back")
    assert back[0].source == "100#enc2de#0" and back[0].text == "A dog is running."
    test_en = corpus.captions("test", "en")
    assert [(c.origin, c.source) for c in test_en] == [("mt", "200#de#0")]
    assert corpus.captions("test", "de")[0].text == "Zwei Männer à la café."
    assert str(corpus.image_path("200")).endswith("images/200.jpg")


@pytest.mark.parametrize(
    "line, message",
    [
        ("201#de#0\n", r"m30ktest_de.caption.txt:2: no caption after the cap id in '201#de#0'"),
        ("201#de#0\t \n", r"m30ktest_de.caption.txt:2: no caption after the cap id"),
        ("201 Ein Hund\n", r"m30ktest_de.caption.txt:2: cap id '201' is not of the form <image_id>#<tag>#<n>"),
        ("201#de Ein Hund\n", r"m30ktest_de.caption.txt:2: cap id '201#de' is not of the form"),
        ("#de#0 Ein Hund\n", r"m30ktest_de.caption.txt:2: cap id '#de#0' is not of the form"),
        ("200#xx#1 Etwas\n", r"m30ktest_de.caption.txt:2: unknown tag 'xx'"),
        (
            "999#de#1 Etwas\n",
            r"m30ktest_de.caption.txt:2: caption 999#de#1 is of image '999', which the test id lists lack",
        ),
        (
            "200#de#1 Ein\u2028Hund\u0085läuft.\f\n\n201#de Hund\n",
            r"m30ktest_de.caption.txt:4: cap id '201#de' is not of the form",
        ),
    ],
)
def test_bad_lines_are_named(tmp_path, line, message):
    images = _layout(tmp_path / "m30k", [line])
    with pytest.raises(CorpusError, match=message):
        import_nrccr(tmp_path / "m30k", tmp_path / "out", images_dir=images)
    assert not (tmp_path / "out").exists()


def test_text_is_read_as_files_count_lines(tmp_path):
    """A BOM, tabs, CRLF, U+2028 and NEL inside captions: ids stay clean, captions whole, numbers right."""
    root = tmp_path / "m30k"
    images = _layout(root)
    text = root / "TextData"
    (text / "m30ktest_de.caption.txt").write_bytes(
        "\ufeff200#de#0\tZwei Männer\u2028im Café.\r\n200#de#1  Ein\u0085Mann.\r\n".encode()
    )
    (text / "m30ktest_de2enc.caption.txt").write_text("200#de2enc#0 Two men.\n")
    (root / "FeatureData" / "test_id.txt").write_bytes("\ufeff200\r\n".encode())
    (root / "image_ids.txt").write_bytes("\ufeff100 x/100.jpg\n101.jpg\n200 my photo.jpg\n".encode())
    (images / "x").mkdir()
    (images / "x" / "100.jpg").touch()
    (images / "my photo.jpg").touch()
    corpus = import_nrccr(root, tmp_path / "out", images_dir=images).corpus
    assert [(c.cap_id, c.text) for c in corpus.captions("test", "de")] == [
        ("200#de#0", "Zwei Männer\u2028im Café."),
        ("200#de#1", "Ein\u0085Mann."),
    ]
    assert corpus.image_ids("test") == ["200"]
    assert str(corpus.image_path("100")).endswith("images/x/100.jpg")
    assert str(corpus.image_path("200")).endswith("images/my photo.jpg")


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "TextData/m30ktest_de.caption.txt",
            b"200#de#0 Gut\n200#de#1 Caf\xe9\n",
            r"m30ktest_de.caption.txt:2: not UTF-8",
        ),
        (
            "FeatureData/test_id.txt",
            "\ufeff200\n201 202\n".encode(),
            r"test_id.txt:2: expected one id per line, found '201 202'",
        ),
        (
            "image_ids.txt",
            b"100 a.jpg\n\n100 b.jpg\n",
            r"image_ids.txt:3: image '100' is mapped to 'b.jpg', but line 1 maps it to 'a.jpg'",
        ),
    ],
)
def test_unreadable_lines_are_named(tmp_path, name, content, message):
    images = _layout(tmp_path / "m30k")
    (tmp_path / "m30k" / name).write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        import_nrccr(tmp_path / "m30k", tmp_path / "out", images_dir=images)
    assert not (tmp_path / "out").exists()


def _coco(root, ja_test=("j1", "j2", "s1"), zh_test=("z1", "s1", "z2", "z3")):
    """MSCOCO-like: ja and zh have their own val and test images (s1 is shared)."""
    text = root / "TextData"
    text.mkdir(parents=True)
    (root / "FeatureData" / "clip").mkdir(parents=True)
    (text / "mscocotrain_enc.caption.txt").write_text("t1#enc#0 A dog.\nt2#enc#0 A cat.\n")
    (text / "mscocotrain_enc2ja.caption.txt").write_text("t1#enc2ja#0 犬。\nt2#enc2ja#0 猫。\n")
    (text / "mscocotest_ja.caption.txt").write_text("".join(f"{i}#ja#0 日本語{i}\n" for i in ja_test))
    (text / "mscocotest_zh.caption.txt").write_text("".join(f"{i}#zh#0 中文{i}\n" for i in zh_test))
    (text / "mscocotest_google_ja2enc.caption.txt").write_text("".join(f"{i}#ja2enc#0 English {i}\n" for i in ja_test))
    (text / "mscocoval_ja.caption.txt").write_text("v1#ja#0 日本語\n")
    (text / "mscocoval_zh.caption.txt").write_text("v2#zh#0 中文\n")
    (root / "FeatureData" / "train_id.txt").write_text("t1\nt2\n")
    (root / "FeatureData" / "ja_val_id.txt").write_text("v1\n")
    (root / "FeatureData" / "zh_val_id.txt").write_text("v2\n")
    (root / "FeatureData" / "clip" / "ja_test_id.txt").write_text("\n".join(ja_test) + "\n")
    (root / "FeatureData" / "clip" / "zh_test_id.txt").write_text("\n".join(zh_test) + "\n")


def test_languages_keep_their_own_galleries(tmp_path):
    root = tmp_path / "mscoco"
    _coco(root)
    (root / "FeatureData" / "fr_test_id.txt").write_text("j1\nx9\n")  # a language without captions
    result = CliRunner().invoke(
        app, ["data", "import-nrccr", str(root), str(tmp_path / "out"), "--allow-missing-images"]
    )
    assert result.exit_code == 0, result.output
    assert "test ja: own gallery of 3 images" in result.output
    assert "fr_test_id.txt: no human fr captions in test; its images join the split only" in result.output
    corpus = Corpus.open(tmp_path / "out")
    # the union: FeatureData/ lists first, then those one folder down, each in name order
    assert corpus.image_ids("test") == ["j1", "x9", "j2", "s1", "z1", "z2", "z3"]
    assert corpus.gallery("test", "ja") == ["j1", "j2", "s1"]
    assert corpus.gallery("test", "zh") == ["s1", "z1", "z2", "z3"]  # in the split's order
    assert corpus.gallery("test", "en") == corpus.image_ids("test")  # ja2enc queries: no own list
    assert corpus.gallery("val", "ja") == ["v1"] and corpus.gallery("val", "zh") == ["v2"]
    assert corpus.image_ids("val") == ["v1", "v2"]
    assert corpus.gallery_languages("test") == ["ja", "zh"] and corpus.gallery_languages("train") == []
    info = CliRunner().invoke(app, ["data", "info", str(tmp_path / "out")])
    assert info.exit_code == 0, info.output
    rows = [[cell.strip() for cell in line.split("│")[1:-1]] for line in info.output.splitlines() if "│" in line]
    test_rows = rows[rows.index(["test", "7", "en", "7", "-", "3", "-"]) :]
    assert test_rows[1:3] == [["", "", "ja", "3 own", "3", "-", "-"], ["", "", "zh", "4 own", "4", "-", "-"]], (
        info.output
    )
    assert ["val", "2", "ja", "1 own", "1", "-", "-"] in rows


def test_language_captions_must_be_of_their_own_list(tmp_path):
    root = tmp_path / "mscoco"
    _coco(root)
    (root / "TextData" / "mscocotest_ja.caption.txt").write_text("j1#ja#0 日本語\nz1#ja#0 日本語\n")
    with pytest.raises(
        CorpusError,
        match=r"mscocotest_ja.caption.txt:2: caption z1#ja#0 is of image 'z1', which .*ja_test_id.txt \(the ja test "
            r"list\) lacks",
    ):
        import_nrccr(root, tmp_path / "out", allow_missing_images=True)
    (root / "TextData" / "mscocotest_ja.caption.txt").write_text("j1#ja#0 日本語\n")
    (root / "FeatureData" / "ja_test_id.txt").write_text("j1\n")
    with pytest.raises(
        CorpusError,
        match=r"clip/ja_test_id.txt and .*FeatureData/ja_test_id.txt both list the ja test images, differently \(3 vs "
            r"1 ids\)",
    ):
        import_nrccr(root, tmp_path / "out", allow_missing_images=True)
    assert not (tmp_path / "out").exists()


def test_missing_pieces(tmp_path):
    with pytest.raises(CorpusError, match="no TextData folder"):
        import_nrccr(tmp_path, tmp_path / "out")
    images = _layout(tmp_path / "m30k")
    (images / "101.jpg").unlink()
    with pytest.raises(CorpusError, match="1 of 3 listed images are missing.*101.jpg"):
        import_nrccr(tmp_path / "m30k", tmp_path / "out", images_dir=images)
    with raises_on_command_line(CorpusError, "--images is required", "data import-nrccr"):
        import_nrccr(tmp_path / "m30k", tmp_path / "out")


def _bigfile(folder, ids, matrix):
    folder.mkdir(parents=True)
    (folder / "shape.txt").write_text(f"{len(ids)} {matrix.shape[1]}")
    (folder / "id.txt").write_text(" ".join(ids))
    matrix.astype(np.float32).tofile(folder / "feature.bin")


def test_video_corpus_with_frame_features(tmp_path):
    root = tmp_path / "vatex"
    (root / "TextData").mkdir(parents=True)
    (root / "TextData" / "vatextrain.caption.txt").write_text("v1#enc#0 A man cooks.\nv2#enc#0 Kids play.\n")
    (root / "TextData" / "vatextrain_enc2zh.caption.txt").write_text(
        "v1#enc2zh#0 一个男人在做饭。\nv2#enc2zh#0 孩子们在玩。\n"
    )
    frames = ["v1_0", "v1_1", "v1_2", "v2_0", "v2_1"]
    matrix = np.arange(5 * 4, dtype=np.float32).reshape(5, 4)
    _bigfile(root / "FeatureData" / "i3d", frames, matrix)
    (root / "FeatureData" / "i3d" / "video2frames.txt").write_text(str({"v1": frames[:3], "v2": frames[3:]}))
    runner = CliRunner()
    result = runner.invoke(
        app, ["data", "import-nrccr", str(root), str(tmp_path / "out"), "--modality", "video", "--video-feature", "i3d"]
    )
    assert result.exit_code == 0, result.output
    corpus = Corpus.open(tmp_path / "out")
    assert corpus.modality == "video" and corpus.video_feature_sets() == ["i3d"]
    assert corpus.captions("train", "zh")[0].text == "一个男人在做饭。"
    features = FrameFeatures(corpus.path / "video" / "i3d.safetensors")
    assert torch.equal(features.frames("v2"), torch.from_numpy(matrix[3:]))
    batch, mask = features.batch(["v2", "v1"], max_frames=2)
    assert batch.shape == (2, 2, 4) and mask.all()
    assert torch.equal(batch[1], torch.from_numpy(matrix[[0, 2]]))
    batch, mask = features.batch(["v2", "v1"], max_frames=8)
    assert mask.tolist() == [[True, True, False], [True, True, True]]
    info = runner.invoke(app, ["data", "info", str(tmp_path / "out")])
    assert "Frame features: i3d (2 videos, 2-3 frames of 4 values)" in " ".join(info.output.split())


def test_bad_modality(tmp_path):
    result = CliRunner().invoke(
        app, ["data", "import-nrccr", str(tmp_path), str(tmp_path / "o"), "--modality", "audio"]
    )
    assert result.exit_code == 2 and "--modality 'audio'" in result.output


def _video_layout(root):
    (root / "TextData").mkdir(parents=True)
    (root / "TextData" / "vatextrain.caption.txt").write_text("v1#enc#0 A man cooks.\nv2#enc#0 Kids play.\n")
    frames = ["v1_0", "v1_1", "v1_2", "v2_0", "v2_1"]
    _bigfile(root / "FeatureData" / "i3d", frames, np.ones((5, 4)))
    (root / "FeatureData" / "i3d" / "video2frames.txt").write_text(str({"v1": frames[:3], "v2": frames[3:]}))
    return root / "FeatureData" / "i3d"


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("shape.txt", "5 5", r"i3d/feature.bin: 80 bytes, but .*i3d/shape.txt says 5 x 5 float32 values = 100 bytes"),
        (
            "feature.bin",
            b"\0" * 84,
            r"i3d/feature.bin: 84 bytes, but .*i3d/shape.txt says 5 x 4 float32 values = 80 bytes",
        ),
        ("shape.txt", "5", r"i3d/shape.txt: expected two positive integers `<rows> <dim>`, found '5'"),
        ("shape.txt", "5 x 4", r"i3d/shape.txt: expected two positive integers"),
        ("id.txt", "v1_0 v1_1 v1_2 v2_0", r"i3d/id.txt: 4 ids, but .*i3d/shape.txt says 5 rows"),
        ("id.txt", "v1_0 v1_1 v1_2 v2_0 v1_1", r"i3d/id.txt: id 'v1_1' appears more than once"),
        (
            "video2frames.txt",
            str({"v1": ["v1_0", "v1_9", "v1_8"], "v2": ["v2_0", "v2_7"]}),
            r"i3d/video2frames.txt: 3 frames of 2 videos are not among the 5 ids of .*i3d/id.txt \(first: frame 'v1_9' "
            r"of video 'v1'\)",
        ),
        ("video2frames.txt", str({"v1": ["v1_0"]}), r"video2frames.txt: no frames for 1 of 2 videos \(first: v2\)"),
        ("video2frames.txt", "[1, 2]", r"video2frames.txt: holds a list, not a dict"),
        ("video2frames.txt", "{'v1': 'v1_0'}", r"video2frames.txt: the entry for 'v1' is not a list of frame ids"),
        ("video2frames.txt", "{'v1': [", r"video2frames.txt: not a dict literal \(SyntaxError"),
        (
            "video2frames.txt",
            None,
            r"i3d/id.txt: 2 of 2 videos have no features and there is no video2frames.txt \(first: v1, v2\)",
        ),
        ("feature.bin", None, r"i3d: not a BigFile feature folder \(feature.bin is missing\)"),
    ],
)
def test_bad_bigfiles_are_named_and_nothing_is_written(tmp_path, name, content, message):
    feature_dir = _video_layout(tmp_path / "vatex")
    path = feature_dir / name
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(CorpusError, match=message) as caught:
        import_nrccr(tmp_path / "vatex", tmp_path / "out", modality="video", video_feature="i3d")
    assert "\n" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vatex"]  # no output, no partial folder
