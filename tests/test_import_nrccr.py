import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from leccr_cli.cli import app
from leccr_cli.data.corpus import Corpus
from leccr_cli.data.nrccr import import_nrccr, parse_tag
from leccr_cli.data.video import FrameFeatures
from leccr_cli.errors import CorpusError


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
    (text / "m30ktrain_enc2de2enc.caption.txt").write_text("100#enc2de2enc#0 A dog is running.\n101#enc2de2enc#0 A red car.\n")
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
    corpus, missing = import_nrccr(tmp_path / "m30k", tmp_path / "out", images_dir=images)
    assert missing == 0
    corpus = Corpus.open(tmp_path / "out")
    assert corpus.name == "m30k" and corpus.splits == ["train", "test"]
    assert corpus.image_ids("train") == ["100", "101"]
    mt = corpus.captions("train", "de")
    assert [(c.cap_id, c.origin, c.source) for c in mt] == [("100#enc2de#0", "mt", "100#enc#0"), ("101#enc2de#0", "mt", "101#enc#0")]
    back = corpus.captions("train", "en", origin="back")
    assert back[0].source == "100#enc2de#0" and back[0].text == "A dog is running."
    test_en = corpus.captions("test", "en")
    assert [(c.origin, c.source) for c in test_en] == [("mt", "200#de#0")]
    assert corpus.captions("test", "de")[0].text == "Zwei Männer à la café."
    assert str(corpus.image_path("200")).endswith("images/200.jpg")


@pytest.mark.parametrize(
    "line, message",
    [
        ("201#de#0\n", r"m30ktest_de.caption.txt:2: no space between cap id and caption"),
        ("201 Ein Hund\n", r"m30ktest_de.caption.txt:2: cap id '201' has no '#'"),
        ("200#xx#1 Etwas\n", r"m30ktest_de.caption.txt:2: unknown tag 'xx'"),
        ("999#de#1 Etwas\n", r"image '999', which the test id list lacks"),
    ],
)
def test_bad_lines_are_named(tmp_path, line, message):
    images = _layout(tmp_path / "m30k", [line])
    with pytest.raises(CorpusError, match=message):
        import_nrccr(tmp_path / "m30k", tmp_path / "out", images_dir=images)
    assert not (tmp_path / "out").exists()


def test_missing_pieces(tmp_path):
    with pytest.raises(CorpusError, match="no TextData folder"):
        import_nrccr(tmp_path, tmp_path / "out")
    images = _layout(tmp_path / "m30k")
    (images / "101.jpg").unlink()
    with pytest.raises(CorpusError, match="1 of 3 listed images are missing.*101.jpg"):
        import_nrccr(tmp_path / "m30k", tmp_path / "out", images_dir=images)
    with pytest.raises(CorpusError, match="--images is required"):
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
    (root / "TextData" / "vatextrain_enc2zh.caption.txt").write_text("v1#enc2zh#0 一个男人在做饭。\nv2#enc2zh#0 孩子们在玩。\n")
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
    assert "Frame features: i3d" in info.output


def test_bad_modality(tmp_path):
    result = CliRunner().invoke(app, ["data", "import-nrccr", str(tmp_path), str(tmp_path / "o"), "--modality", "audio"])
    assert result.exit_code == 2 and "--modality 'audio'" in result.output
