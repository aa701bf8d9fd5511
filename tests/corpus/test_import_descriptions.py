import json

import pytest
from typer.testing import CliRunner

from leccr_cli.cli.main import app
from leccr_cli.corpus.corpus import Caption, Corpus, ImageRow, write_corpus
from leccr_cli.corpus.importers.descriptions import import_descriptions, read_descriptions
from leccr_cli.errors import CorpusError, InvalidArgument
from leccr_cli.testing import raises_on_command_line

# gallery order: b, a, c (train), then d (test); "a" is listed in two splits
IMAGES = [ImageRow("b", "train", "b.jpg"), ImageRow("a", "train", "a.jpg"), ImageRow("c", "train", "c.jpg"),
          ImageRow("d", "test", "d.jpg"), ImageRow("a", "test", "a.jpg")]
CAPTIONS = [Caption(f"{i}#en#{s}", i, s, "en", "human", f"Image {i}.") for i, s, _ in IMAGES]
TEXTS = {
    "a": "A brown dog runs on green grass.\nIt carries a red ball.",
    "b": "Zwei Männer\u2028vor einem Café.",
    "c": "A child in a pink dress.",
    "d": "一只猫坐在窗台上。",
}


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(
        tmp_path / "corpus", name="toy", modality="image", media_root="/m", images=IMAGES, captions=CAPTIONS
    )


def _folder(path, texts=TEXTS):
    path.mkdir()
    for image_id, text in texts.items():
        (path / f"{image_id}.txt").write_bytes(("\ufeff" + text + "\n").encode())
    (path / "notes.md").write_text("not read")
    return path


def _jsonl(path, texts=TEXTS):
    path.write_text(
        "".join(json.dumps({"id": i, "text": t, "score": 1}, ensure_ascii=False) + "\n" for i, t in texts.items())
    )
    return path


def _tsv(path, texts=TEXTS):
    path.write_text("id\ttext\n" + "".join(f"{i}\t{t.replace(chr(10), ' ')}\r\n" for i, t in texts.items()))
    return path


@pytest.mark.parametrize("make, name", [(_folder, "descs"), (_jsonl, "descs.jsonl"), (_tsv, "descs.tsv")])
def test_each_format_round_trips_in_gallery_order(corpus, tmp_path, make, name):
    source = make(tmp_path / name)
    report = import_descriptions(corpus, source, "mine")
    assert (report.written, report.images, report.unknown, report.missing) == (4, 4, [], [])
    rows = Corpus.open(corpus.path).description_rows("mine")
    assert [r["image_id"] for r in rows] == ["b", "a", "c", "d"]
    expected = dict(TEXTS, a=TEXTS["a"].replace("\n", " ")) if make is _tsv else TEXTS
    assert {r["image_id"]: r["text"] for r in rows} == expected
    assert {(r["model"], r["prompt"]) for r in rows} == {("imported", "imported")}


def test_cli_records_model_and_prompt_and_reports_gaps(corpus, tmp_path):
    source = _jsonl(tmp_path / "d.jsonl", {"c": "A child.", "zz1": "Unknown.", "a": "A dog.", "zz2": "Unknown too."})
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "data",
            "import-descriptions",
            str(corpus.path),
            str(source),
            "--name",
            "qwen",
            "--model",
            "Qwen/Qwen2-VL-7B",
            "--prompt",
            "Describe.",
        ],
    )
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "2 of 4 images described" in output
    assert "ignored 2 ids that" in output and "(first: zz1, zz2); --strict refuses them" in output
    assert "2 images have no description (first: b, d)" in output
    rows = Corpus.open(corpus.path).description_rows("qwen")
    assert [(r["image_id"], r["text"], r["model"], r["prompt"]) for r in rows] == [
        ("a", "A dog.", "Qwen/Qwen2-VL-7B", "Describe."),
        ("c", "A child.", "Qwen/Qwen2-VL-7B", "Describe."),
    ]
    strict = runner.invoke(
        app, ["data", "import-descriptions", str(corpus.path), str(source), "--name", "q2", "--strict"]
    )
    assert strict.exit_code == 2
    assert (
        "2 of 4 ids in" in strict.output
        and "are not images of" in strict.output
        and "(first: zz1, zz2)" in strict.output
    )
    assert not (corpus.path / "descriptions" / "q2").exists()
    info = runner.invoke(app, ["data", "info", str(corpus.path)])
    assert "│ qwen   │ 2 / 3 │ 1 / 2 │" in info.output


VIDEO_TEXTS = {
    "video7011": "A woman sings on a stage.\nThe crowd claps.",
    "video7010": "A man cooks pasta in a small kitchen.",
    "-0Cu7Q4wY_8_000059_000069": "一个男人在弹吉他。",
}


@pytest.mark.parametrize("make, name", [(_folder, "videochat2"), (_jsonl, "v.jsonl"), (_tsv, "v.tsv")])
def test_each_format_round_trips_for_a_video_corpus(tmp_path, make, name):
    videos = [ImageRow(v, split, v) for v, split in zip(VIDEO_TEXTS, ("train", "train", "test"))] + [
        ImageRow("video9", "val", "video9")
    ]
    caps = [Caption(f"{v.image_id}#enc#0", v.image_id, v.split, "en", "human", "A clip.") for v in videos]
    corpus = write_corpus(
        tmp_path / "vc", name="msrvtt", modality="video", media_root=".", images=videos, captions=caps
    )
    source = make(tmp_path / name, {**VIDEO_TEXTS, "video404": "Not in the corpus."})
    report = import_descriptions(
        corpus, source, "videochat2", model="VideoChat2", prompt="Describe the video in detail."
    )
    assert (report.written, report.images, report.unknown, report.missing) == (3, 4, ["video404"], ["video9"])
    rows = Corpus.open(corpus.path).description_rows("videochat2")
    expected = {v: t.replace("\n", " ") if make is _tsv else t for v, t in VIDEO_TEXTS.items()}
    assert [(r["image_id"], r["text"]) for r in rows] == list(expected.items())
    assert {(r["model"], r["prompt"]) for r in rows} == {("VideoChat2", "Describe the video in detail.")}
    with pytest.raises(CorpusError, match=r"1 of 4 ids in \S+ are not videos of \S+ \(first: video404\)"):
        import_descriptions(corpus, source, "strict", strict=True)
    with raises_on_command_line(
        CorpusError,
        r"1 video has no description.*first: video9.*import-descriptions \S+ SOURCE --name videochat2 --overwrite",
        "train",
    ):
        from leccr_cli.corpus.corpus import check_descriptions

        check_descriptions(Corpus.open(corpus.path), "videochat2", ["video7010", "video9"])


def test_existing_source_needs_overwrite(corpus, tmp_path):
    import_descriptions(corpus, _jsonl(tmp_path / "one.jsonl", {"a": "First."}), "mine")
    second = _jsonl(tmp_path / "two.jsonl", {"a": "Second.", "b": "Other."})
    with raises_on_command_line(
        CorpusError, r"descriptions/mine exists \(pass --overwrite", "data import-descriptions"
    ):
        import_descriptions(corpus, second, "mine")
    assert corpus.descriptions("mine") == {"a": "First."}
    import_descriptions(corpus, second, "mine", overwrite=True)
    assert Corpus.open(corpus.path).descriptions("mine") == {"b": "Other.", "a": "Second."}
    assert sorted(p.name for p in (corpus.path / "descriptions").iterdir()) == ["mine"]


@pytest.mark.parametrize(
    "file_name, content, message",
    [
        (
            "d.jsonl",
            '{"id": "a", "text": "ok"}\n\n{"id": "b", "text": "ok"\n',
            r"d.jsonl:3: not JSON \(Expecting ',' delimiter at column 25\)",
        ),
        (
            "d.jsonl",
            '{"id": "a", "text": "ok"}\n["b", "ok"]\n',
            r"d.jsonl:2: expected an object with keys \"id\" and \"text\"",
        ),
        ("d.jsonl", '{"id": "a", "description": "ok"}\n', r"d.jsonl:1: expected an object with keys"),
        ("d.jsonl", '{"id": 7, "text": "ok"}\n', r"d.jsonl:1: \"id\" is 7, not a string \(quote it\)"),
        (
            "d.jsonl",
            '{"id": "a", "text": "ok\u2028still line one"}\n{"id": "b", "text": "  "}\n',
            r"d.jsonl:2: the description of 'b' is empty",
        ),
        (
            "d.jsonl",
            '{"id": "a", "text": "ok"}\n{"id": "a", "text": "again"}\n',
            r"d.jsonl:2: id 'a' appears twice \(also line 1\)",
        ),
        ("d.jsonl", '{"id": "", "text": "ok"}\n', r"d.jsonl:1: the id is empty"),
        ("d.jsonl", "\n", r"d.jsonl: no descriptions"),
        ("d.tsv", "a\tA dog.\nb A cat.\n", r"d.tsv:2: no tab between id and description in 'b A cat.'"),
        ("d.tsv", "a\tA dog.\nb\t \n", r"d.tsv:2: no tab between id and description"),
        ("d.tsv", "a\tA dog.\nc\tA child.\n\na\tA dog again.\n", r"d.tsv:4: id 'a' appears twice \(also line 1\)"),
        ("d.tsv", b"a\tA dog.\nb\tCaf\xe9\n", r"d.tsv:2: not UTF-8"),
        ("d.csv", "a,A dog.\n", r"d.csv: cannot tell the format from the suffix '.csv'"),
    ],
)
def test_bad_files_name_file_and_line(corpus, tmp_path, file_name, content, message):
    source = tmp_path / file_name
    source.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(CorpusError, match=message) as caught:
        import_descriptions(corpus, source, "mine")
    assert "\n" not in str(caught.value)
    assert not (corpus.path / "descriptions").exists()


def test_bad_folders_names_and_options(corpus, tmp_path):
    folder = _folder(tmp_path / "descs", {"a": "A dog.", "b": "  \n", "c": ""})
    with pytest.raises(CorpusError, match=r"descs: 2 description files are empty \(first: b.txt, c.txt\)"):
        import_descriptions(corpus, folder, "mine")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorpusError, match=r"empty: no <id>.txt files"):
        read_descriptions(tmp_path / "empty")
    with pytest.raises(CorpusError, match=r"nothing: no such file or folder"):
        read_descriptions(tmp_path / "nothing")
    good = _jsonl(tmp_path / "d.jsonl", {"a": "A dog."})
    with pytest.raises(CorpusError, match=r"description source name '../x' is not a plain folder name"):
        import_descriptions(corpus, good, "../x")
    with raises_on_command_line(InvalidArgument, r"--model is empty", "data import-descriptions"):
        import_descriptions(corpus, good, "mine", model=" ")
    nobody = _jsonl(tmp_path / "n.jsonl", {"x1": "A dog.", "x2": "A cat."})
    with pytest.raises(
        CorpusError,
        match=r"none of the 2 ids in .*n.jsonl is an image of .* \(first: x1, x2\) \(ids are the corpus's image ids, "
            r"e.g. b, a, ...\)",
    ):
        import_descriptions(corpus, nobody, "mine")
    assert not (corpus.path / "descriptions").exists()
    result = CliRunner().invoke(app, ["data", "import-descriptions", str(corpus.path), str(nobody), "--name", "mine"])
    assert result.exit_code == 2 and result.output.startswith("error: none of the 2 ids")
